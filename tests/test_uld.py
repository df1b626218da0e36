"""ULD (methods/uld.py) against a direct computation built here only, and through the registry and the loop."""

from __future__ import annotations

import torch

from harness.config import MethodSpec
from harness.registry import available_methods, get_method
from methods.base import FusionBatch, Signal
from methods.uld import sorted_distance
from tests.test_losses import B, K, T, V, make_view


def direct_uld(view, logits: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Token by token: the teacher's probabilities per id (duplicates added), both sides sorted over the whole
    vocabulary, the first K compared in L1; the mean over the tokens that have a teacher."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for b in range(B):
        for t in range(1, T):
            if view.labels[b, t] == -100:
                continue
            mass = torch.zeros(V, dtype=torch.float64)
            for j in range(K):
                if torch.isfinite(view.topk_logp[b, t, j]):
                    mass[view.topk_ids[b, t, j]] += view.topk_logp[b, t, j].double().exp()
            if mass.sum() == 0:
                continue
            q = torch.softmax(logits[b, t - 1].double(), -1)
            p_sorted = torch.sort(mass, descending=True).values[:K]
            q_sorted = torch.sort(q, descending=True).values[:K]
            total = total + (p_sorted - q_sorted).abs().sum()
            count += 1
    return total / count


def test_uld_distance_is_the_direct_computation() -> None:
    view = make_view(3)
    logits = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    got = sorted_distance(view, logits)
    torch.testing.assert_close(got.double(), direct_uld(view, logits.detach()), atol=1e-6, rtol=1e-6)
    got.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_uld_ignores_which_ids_carry_the_probabilities() -> None:
    view = make_view(4)
    logits = torch.randn(B, T, V, dtype=torch.float64)
    moved = make_view(4)
    moved.topk_ids = (moved.topk_ids + 5) % V  # the same probabilities on other ids (no vocabulary alignment)
    torch.testing.assert_close(sorted_distance(view, logits), sorted_distance(moved, logits))


def test_uld_is_registered_and_its_loss_is_lam_ce_plus_the_rest() -> None:
    assert "uld" in available_methods()
    cls = get_method("uld")
    assert cls.needs == {Signal.TRAINING} and cls.name == "uld"
    spec = MethodSpec(name="uld", lam=0.7)
    view = make_view(5)
    logits = torch.randn(B, T, V, dtype=torch.float64)
    parts = cls(spec).loss(FusionBatch({Signal.TRAINING: view}), {Signal.TRAINING: logits}, 0, 10)
    log_q = torch.log_softmax(logits[:, :-1], -1)
    labels = view.labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(log_q.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(parts.components["ce_train"], ce)
    torch.testing.assert_close(parts.total, 0.7 * ce + 0.3 * direct_uld(view, logits))
