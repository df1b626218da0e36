"""The experiment config: presets load, overrides apply, and bad values fail with one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import Experiment, load_experiment, preset_names
from harness.errors import HarnessError
from harness.evaluation.task_catalog import document_limits


def test_sandbox_preset_loads_with_paper_defaults() -> None:
    exp = load_experiment("sandbox")
    assert isinstance(exp, Experiment)
    assert exp.method.name == "profuser"
    assert exp.method.schedule.name == "progressive"
    assert exp.method.schedule.stage1 == (1.0, 0.0) and exp.method.schedule.stage2 == (0.1, 1.0)
    assert exp.method.lam == 0.9 and exp.signals.top_k == 10
    assert exp.target.path.startswith("sandbox:")
    assert "sandbox" in preset_names()


def test_overrides_reach_nested_fields() -> None:
    exp = load_experiment("sandbox", {"method.name": "profuser", "method.schedule.name": "linear", "eval.limit": 0, "train.lr": 1e-4})
    assert (exp.method.name, exp.method.schedule.name, exp.eval.limit, exp.train.lr) == ("profuser", "linear", 0, 1e-4)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"method.lam": 1.5}, "method.lam"),
        ({"signals.top_k": 0}, "signals.top_k"),
        ({"train.max_steps": -3}, "train.max_steps"),
        ({"method.schedule.switch": 2}, "method.schedule.switch"),
        ({"trian.lr": 1}, "unknown field"),
        ({"method.schedule.name": "sideways"}, "method.schedule.name"),
    ],
)
def test_bad_values_name_the_field(overrides: dict, fragment: str) -> None:
    with pytest.raises(HarnessError) as info:
        load_experiment("sandbox", overrides)
    line = info.value.one_line()
    assert fragment in line and "\n" not in line and line.startswith("harness: config:")


def test_yaml_that_does_not_parse(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("target: {name: x\nsources: [")
    with pytest.raises(HarnessError, match="not valid YAML"):
        load_experiment(str(bad))


def test_yaml_is_safe_loaded(tmp_path: Path) -> None:
    bad = tmp_path / "evil.yaml"
    bad.write_text("target: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(HarnessError, match="not valid YAML"):
        load_experiment(str(bad))


def test_non_utf8_preset(tmp_path: Path) -> None:
    bad = tmp_path / "latin.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(HarnessError, match="UTF-8"):
        load_experiment(str(bad))


def test_unknown_preset_lists_choices() -> None:
    with pytest.raises(HarnessError, match="sandbox"):
        load_experiment("no-such-preset")


def test_explicit_null_lifts_a_cap() -> None:
    exp = load_experiment("sandbox", {"corpus.limit": 5})
    assert exp.corpus.limit == 5
    assert load_experiment("sandbox", {"corpus.limit": None}).corpus.limit is None


def test_task_limits_cap_tasks_and_groups_and_the_cli_limit_clears_them() -> None:
    from harness.cli import _experiment_overrides

    exp = load_experiment("sandbox", {"eval.limit": 50, "eval.task_limits": {"sandbox": 0, "gsm8k": 10}})
    tasks = ["mmlu", "gsm8k", "sandbox_knowledge", "sandbox_safety"]
    assert document_limits(exp.eval.limit, exp.eval.task_limits, tasks) == {"mmlu": 50, "gsm8k": 10, "sandbox_knowledge": None, "sandbox_safety": None}
    flat = load_experiment("sandbox", _experiment_overrides(None, None, None, None, 7, None, ()))
    assert flat.eval.task_limits == {} and set(document_limits(flat.eval.limit, flat.eval.task_limits, tasks).values()) == {7}
    kept = load_experiment("sandbox", _experiment_overrides(None, None, None, None, None, None, ()))
    assert kept.eval.task_limits == {"sandbox": 0}  # no --limit: the preset's caps stay
