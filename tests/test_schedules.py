"""ProFuser's weight schedules at known steps."""

from __future__ import annotations

import math

import pytest

from methods.schedules import SCHEDULE_NAMES as SCHEDULES
from methods.schedules import ScheduleSpec, lr_factor, stage_starts, weights


def spec(name: str, **kw: object) -> ScheduleSpec:
    return ScheduleSpec(name=name, **kw)  # type: ignore[arg-type]


def test_every_configurable_schedule_is_implemented() -> None:
    for name in SCHEDULES:
        w_inf, w_train = weights(spec(name), 0, 10)
        assert w_inf >= 0 and w_train >= 0


def test_progressive_switches_at_the_configured_fraction() -> None:
    assert [weights(spec("progressive"), s, 10) for s in range(10)] == [(1.0, 0.0)] * 5 + [(0.1, 1.0)] * 5
    custom = spec("progressive", switch=0.3, stage1=(0.8, 0.2), stage2=(0.0, 1.0))
    assert [weights(custom, s, 10) for s in (0, 2, 3, 9)] == [(0.8, 0.2), (0.8, 0.2), (0.0, 1.0), (0.0, 1.0)]
    assert weights(spec("progressive", switch=0.0), 0, 10) == (0.1, 1.0)  # no stage 1 at all
    assert weights(spec("progressive", switch=1.0), 9, 10) == (1.0, 0.0)  # stage 1 throughout


def test_reversed_puts_training_mode_first() -> None:
    got = [weights(spec("reversed"), s, 10) for s in range(10)]
    assert got == [(0.0, 1.0)] * 5 + [(1.0, 0.1)] * 5


def test_simultaneous_is_one_and_one_throughout() -> None:
    assert {weights(spec("simultaneous", stage1=(0.3, 0.3)), s, 7) for s in range(7)} == {(1.0, 1.0)}


def test_linear_moves_from_stage1_to_stage2_over_the_run() -> None:
    s = spec("linear")
    assert weights(s, 0, 11) == (1.0, 0.0)
    assert weights(s, 10, 11) == pytest.approx((0.1, 1.0))
    assert weights(s, 5, 11) == pytest.approx((0.55, 0.5))  # halfway
    assert weights(s, 20, 11) == pytest.approx((0.1, 1.0))  # past the end: stays at stage 2


def test_cosine_is_flat_at_both_ends_and_meets_linear_halfway() -> None:
    s = spec("cosine")
    assert weights(s, 0, 9) == (1.0, 0.0)
    assert weights(s, 8, 9) == pytest.approx((0.1, 1.0))
    assert weights(s, 4, 9) == pytest.approx(weights(spec("linear"), 4, 9))
    a = (1 - math.cos(math.pi / 4)) / 2  # a quarter of the way: 2 of 8 intervals
    assert weights(s, 2, 9) == pytest.approx((1 - 0.9 * a, a))
    w_train = [weights(s, i, 9)[1] for i in range(9)]
    assert w_train == sorted(w_train) and w_train[1] - w_train[0] < w_train[4] - w_train[3]


def test_a_single_step_run_uses_stage1_and_bad_arguments_raise() -> None:
    assert weights(spec("linear"), 0, 1) == (1.0, 0.0)
    assert weights(spec("progressive"), 0, 1) == (1.0, 0.0)
    with pytest.raises(ValueError):
        weights(spec("linear"), 0, 0)
    with pytest.raises(ValueError):
        weights(spec("progressive"), -1, 10)


def test_stage_starts_mark_the_switch_of_staged_schedules_only() -> None:
    assert stage_starts(spec("progressive"), 10) == [0, 5]
    assert stage_starts(spec("reversed", switch=0.25), 10) == [0, 3]  # first step with step >= 2.5
    assert stage_starts(spec("progressive", switch=1.0), 10) == [0]  # no second stage inside the run
    for name in ("simultaneous", "linear", "cosine"):
        assert stage_starts(spec(name), 10) == [0]


def test_lr_factor_is_the_transformers_schedule_and_restarts_per_stage() -> None:
    import torch
    from transformers import get_cosine_schedule_with_warmup

    total, ratio = 20, 0.2
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = get_cosine_schedule_with_warmup(opt, round(ratio * total), total)
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert [lr_factor(s, [0], total, ratio) for s in range(total)] == pytest.approx(expected)
    # two stages of 10: each warms up over 2 updates and decays on its own
    restarted = [lr_factor(s, [0, 10], total, ratio) for s in range(total)]
    assert restarted[:10] == pytest.approx(restarted[10:])
    assert restarted[10] == 0.0 and restarted[9] < 0.1 and restarted[12] == pytest.approx(1.0)
