"""GOLD (methods/gold.py) against TRL's own implementation (trl.experimental.gold, ULDLoss's hybrid distance and
GOLDTrainer.generalized_jsd_loss) on the same tensors, and through the registry and the config."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from harness.config import MethodSpec
from harness.errors import HarnessError
from harness.registry import available_methods, get_method
from methods.base import FusionBatch, SeqBatch, Signal

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
gold_trainer = pytest.importorskip("trl.experimental.gold.gold_trainer")

B, T, V, K = 2, 8, 11, 4


class _Vocab:
    """A tokenizer as ULDLoss reads it (get_vocab only)."""

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return self.vocab


def trl_uld(matched_ids: set[int], weights: tuple[float, float] | tuple[None, None], beta: float):  # type: ignore[no-untyped-def]
    """TRL's ULDLoss with the hybrid distance; the teacher's vocabulary shares the strings of `matched_ids` with
    the student's (the same ids), so TRL's own vocabulary matching finds exactly those."""
    config = SimpleNamespace(
        uld_crossentropy_weight=0.0, uld_distillation_weight=1.0, uld_student_temperature=1.0, uld_teacher_temperature=1.0,
        uld_skip_student_eos=False, uld_skip_teacher_eos=False, use_extended_uld=True, uld_token_merge_strategy="observed",
        uld_use_hybrid_loss=True, uld_hybrid_matched_weight=weights[0], uld_hybrid_unmatched_weight=weights[1], beta=beta,
    )
    student = _Vocab({f"s{i}": i for i in range(V)})
    teacher = _Vocab({(f"s{i}" if i in matched_ids else f"t{i}"): i for i in range(V)})
    loss = gold_trainer.ULDLoss(config, student_tokenizer=student, teacher_tokenizer=teacher if matched_ids else student)
    if not matched_ids:  # TRL's mapping needs one shared string to build; its hybrid then takes the empty branch
        loss._teacher_matched_ids = set()
    return loss


def make_view(seed: int) -> SeqBatch:
    """Response tokens with a source teacher (k distinct ids, a top-k: mass < 1), and ones with the fallback one-hot."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, V, (B, T), generator=gen)
    labels = input_ids.clone()
    labels[:, :2] = -100
    labels[1, 7:] = -100  # padding
    topk_ids = torch.stack([torch.randperm(V, generator=gen)[:K] for _ in range(B * T)]).reshape(B, T, K)
    topk_logp = torch.log_softmax(torch.randn(B, T, K + 3, generator=gen, dtype=torch.float64), -1)[..., :K]
    topk_logp[0, 3, 3] = float("-inf")  # fewer than k entries after vocabulary mapping
    for b, t in ((0, 4), (1, 2), (1, 5)):  # no source token aligned: the one-hot on the token itself
        topk_ids[b, t] = 0
        topk_ids[b, t, 0] = input_ids[b, t]
        topk_logp[b, t] = float("-inf")
        topk_logp[b, t, 0] = 0.0
    return SeqBatch(input_ids, (labels != -100).long(), labels, topk_ids, topk_logp)


def per_token_trl(view: SeqBatch, logits: torch.Tensor, beta: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Token by token through TRL: a matched token's teacher ids are its matched vocabulary with weights (1, 0), an
    unmatched token has no matched vocabulary; dense [1, V] probabilities on both sides."""
    matched, other = [], []
    for b in range(B):
        for t in range(1, T):
            if view.labels[b, t] == -100:
                continue
            present = torch.isfinite(view.topk_logp[b, t])
            teacher = torch.zeros(1, V, dtype=torch.float64)
            teacher[0, view.topk_ids[b, t][present]] = view.topk_logp[b, t][present].exp()
            student = torch.softmax(logits[b, t - 1].double(), -1)[None]
            is_fallback = present.sum() == 1 and view.topk_logp[b, t, 0] == 0 and view.topk_ids[b, t, 0] == view.labels[b, t]
            if is_fallback:
                other.append(trl_uld(set(), (None, None), beta)._compute_hybrid_uld_loss(student, teacher))
            else:
                ids = set(view.topk_ids[b, t][present].tolist())
                matched.append(trl_uld(ids, (1.0, 0.0), beta)._compute_hybrid_uld_loss(student, teacher))
    return matched, other


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_gold_distance_is_trls_hybrid_uld_token_by_token(beta: float) -> None:
    view = make_view(1)
    logits = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    matched, other = per_token_trl(view, logits.detach(), beta)
    assert len(matched) == 8 and len(other) == 3
    n = len(matched) + len(other)
    method = get_method("gold")(MethodSpec(name="gold", jsd_beta=beta, matched_weight=0.3, unmatched_weight=2.0,
                                           crossentropy_weight=0.0, distillation_weight=1.0))  # fmt: skip
    parts = method.loss(FusionBatch({Signal.TRAINING: view}), {Signal.TRAINING: logits}, 0, 1)
    expected = 0.3 * sum(matched) / n + 2.0 * sum(other) / n
    torch.testing.assert_close(parts.total, expected.squeeze(), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(parts.components["jsd_matched"], (sum(matched) / n).squeeze(), atol=1e-9, rtol=1e-9)
    parts.total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_gold_matched_term_is_trls_generalized_jsd() -> None:
    """The matched part on [N, k] entries equals GOLDTrainer.generalized_jsd_loss on the same probabilities."""
    from methods.gold import generalized_jsd

    gen = torch.Generator().manual_seed(3)
    q = torch.softmax(torch.randn(5, V, generator=gen, dtype=torch.float64), -1)[:, :K]
    p = torch.softmax(torch.randn(5, V, generator=gen, dtype=torch.float64), -1)[:, :K]
    present = torch.ones(5, K, dtype=torch.bool)
    for beta in (0.0, 0.3, 1.0):
        ref = gold_trainer.GOLDTrainer.generalized_jsd_loss(q, p, beta=beta, logits_are_probs=True)
        torch.testing.assert_close(generalized_jsd(q.log(), p.log(), present, beta).mean(), ref)


def test_gold_adaptive_weights_are_the_matched_share_and_ce_is_added() -> None:
    view = make_view(2)
    logits = torch.randn(B, T, V, dtype=torch.float64)
    matched, other = per_token_trl(view, logits, 0.5)
    n = len(matched) + len(other)
    parts = get_method("gold")(MethodSpec(name="gold")).loss(FusionBatch({Signal.TRAINING: view}), {Signal.TRAINING: logits}, 0, 1)
    share = len(matched) / n
    assert parts.weights["w_matched"] == pytest.approx(share) and parts.weights["w_other"] == pytest.approx(1 - share)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), view.labels[:, 1:].reshape(-1), ignore_index=-100)
    distance = share * sum(matched) / n + (1 - share) * sum(other) / n
    torch.testing.assert_close(parts.total, (0.9 * ce + 0.1 * distance).squeeze(), atol=1e-9, rtol=1e-9)


def test_gold_is_registered_with_its_parameters_validated_at_plan_time() -> None:
    from harness import load_experiment, plan

    assert "gold" in available_methods() and get_method("gold").needs == {Signal.TRAINING}
    for bad, message in (({"method.matched_weight": 0.5}, "matched_weight and unmatched_weight"), ({"method.jsd_beta": 2.0}, "jsd_beta")):
        with pytest.raises(HarnessError, match=message):
            plan(load_experiment("sandbox", {"method.name": "gold", **bad}))
