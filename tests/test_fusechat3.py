"""fusechat3 (methods/fusechat3.py): its DPO loss against TRL's DPOTrainer on the same log-probabilities, the pair
rule on judge scores, and the two stages."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness.config import MethodSpec
from harness.registry import get_method
from methods.base import FusionBatch, PairView, SeqBatch, Signal

dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")

B, T, V, K = 4, 9, 13, 3


def view(seed: int, response_from: int, drop_row: int | None = None) -> SeqBatch:
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, V, (B, T), generator=gen)
    labels = input_ids.clone()
    labels[:, :response_from] = -100
    labels[1, T - 2 :] = -100  # a shorter response (padding)
    if drop_row is not None:
        labels[drop_row] = -100  # an item without a pair
    return SeqBatch(input_ids, (labels != -100).long() | (torch.arange(T) < response_from).long(), labels,
                    torch.zeros(B, T, K, dtype=torch.long), torch.full((B, T, K), float("-inf")), torch.arange(B))  # fmt: skip


def trl_dpo_loss(chosen: SeqBatch, rejected: SeqBatch, logits_w: torch.Tensor, logits_l: torch.Tensor,
                 ref: torch.Tensor, beta: float, loss_type: str) -> torch.Tensor:  # fmt: skip
    """TRL's DPOTrainer._compute_loss itself, with precomputed reference log-probabilities and a stand-in model
    whose fused head returns the per-token log-probabilities of the completion tokens (0 elsewhere), as TRL's does."""
    labels = torch.cat([chosen.labels, rejected.labels])
    logits = torch.cat([logits_w, logits_l])
    completion = (labels != -100).long()
    log_q = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    per_token = log_q * completion[:, 1:]
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token), mean_logits=torch.zeros_like(per_token),
                              is_top1=torch.zeros_like(per_token, dtype=torch.bool), aux_loss=None)  # fmt: skip
    identity = lambda x: x  # noqa: E731
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=SimpleNamespace(device="cpu", gather_for_metrics=identity, gather=identity),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
        loss_weights=[1.0], beta=beta, use_weighting=False, label_smoothing=0.0, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    inputs = {"input_ids": torch.cat([chosen.input_ids, rejected.input_ids]), "attention_mask": torch.ones_like(labels),
              "completion_mask": completion, "ref_chosen_logps": ref[:, 0], "ref_rejected_logps": ref[:, 1]}  # fmt: skip
    return dpo_trainer.DPOTrainer._compute_loss(trainer, lambda **_: outputs, inputs, return_outputs=False)


@pytest.mark.parametrize(("length_normalized", "loss_type"), [(False, "sigmoid"), (True, "sigmoid_norm")])
def test_dpo_stage_loss_is_trls_dpo_loss(length_normalized: bool, loss_type: str) -> None:
    chosen, rejected = view(1, 3), view(2, 4)
    logits_w = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    logits_l = torch.randn(B, T, V, dtype=torch.float64)
    ref = torch.randn(B, 2, dtype=torch.float64) - 8.0
    spec = MethodSpec(name="fusechat3", dpo_beta=0.3, sft_share=0.5, length_normalized=length_normalized)
    method = get_method("fusechat3")(spec)
    method.reference = ref
    batch = FusionBatch({Signal.INFERENCE: chosen, PairView.REJECTED: rejected})
    assert method.views_at(5, 10) == {Signal.INFERENCE, PairView.REJECTED} and method.views_at(4, 10) == {Signal.INFERENCE}
    parts = method.loss(batch, {Signal.INFERENCE: logits_w, PairView.REJECTED: logits_l}, 5, 10)
    expected = trl_dpo_loss(chosen, rejected, logits_w.detach(), logits_l, ref, 0.3, loss_type)
    torch.testing.assert_close(parts.total, expected, atol=1e-10, rtol=1e-10)
    parts.total.backward()
    assert logits_w.grad is not None and logits_w.grad.abs().sum() > 0


def test_items_without_a_pair_are_left_out_of_the_dpo_mean_and_sft_comes_first() -> None:
    chosen, rejected = view(3, 3), view(4, 3, drop_row=2)
    logits_w, logits_l = torch.randn(B, T, V, dtype=torch.float64), torch.randn(B, T, V, dtype=torch.float64)
    method = get_method("fusechat3")(MethodSpec(name="fusechat3"))
    method.reference = torch.randn(B, 2, dtype=torch.float64) - 8.0
    parts = method.loss(FusionBatch({Signal.INFERENCE: chosen, PairView.REJECTED: rejected}),
                        {Signal.INFERENCE: logits_w, PairView.REJECTED: logits_l}, 4, 10)  # fmt: skip
    keep = [0, 1, 3]
    sub = lambda v: SeqBatch(*(t[keep] for t in (v.input_ids, v.attention_mask, v.labels, v.topk_ids, v.topk_logp, v.index)))  # noqa: E731
    expected = trl_dpo_loss(sub(chosen), sub(rejected), logits_w[keep], logits_l[keep], method.reference[keep], 0.1, "sigmoid")
    torch.testing.assert_close(parts.total, expected)
    assert parts.components["pairs"] == 3
    sft = method.loss(FusionBatch({Signal.INFERENCE: chosen}), {Signal.INFERENCE: logits_w}, 3, 10)  # 0.4 of 10: SFT
    ce = torch.nn.functional.cross_entropy(logits_w[:, :-1].reshape(-1, V), chosen.labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(sft.total, ce)
    assert method.stage_starts(10) == [0, 4]


def test_pair_rule_on_judge_scores() -> None:
    def rule(**params: object) -> object:
        return get_method("fusechat3")(MethodSpec(name="fusechat3", **params)).rejected

    scores = {"t": 0.9, "a": 0.2, "b": 0.5, "c": 0.2, "d": math.nan}
    assert rule()("t", scores) == ["a"]  # the worst; ties go to the first listed; NaN never pairs
    assert rule(pairs="best-each")("t", scores) == ["a", "b", "c"]
    assert rule(pairs="best-each", min_margin=0.5)("t", scores) == ["a", "c"]
    assert rule(pairs="best-each", max_margin=0.5)("t", scores) == ["b"]
    assert rule()("t", {"t": 1.0, "a": 1.0}) == []  # no margin, no preference
    assert rule()("d", scores) == []


def pair_items(n: int = 16) -> list[dict]:  # type: ignore[type-arg]
    """Dataset items as harness/training/dataset.py yields them for fusechat3: a chosen response drawn from the test
    teacher, a rejected one of uniform noise; the last item has no pair."""
    from harness.training.dataset import ViewItem
    from tests.test_train import VOCAB, _sequence

    gen = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        chosen = _sequence(gen, 4, 6)
        noise = torch.cat([chosen["input_ids"][:4], torch.randint(20, VOCAB, (6,), generator=gen)])
        labels = noise.clone()
        labels[: 4 if i < n - 1 else len(labels)] = -100
        rejected = {**chosen, "input_ids": noise, "labels": labels}
        items.append({v: ViewItem(x["input_ids"], x["labels"], x["topk_ids"], x["topk_logp"], i)
                      for v, x in ((Signal.INFERENCE, chosen), (PairView.REJECTED, rejected))})  # fmt: skip
    return items


def test_two_stages_through_the_loop_resume_inside_dpo_and_read_the_cached_reference(tmp_path: Path) -> None:
    from harness.config import TrainSpec
    from harness.errors import HarnessError
    from harness.training.dataset import collate
    from harness.training.loop import train
    from tests.test_train import tiny_model

    spec = TrainSpec(max_steps=8, batch_size=4, lr=3e-3, warmup_ratio=0.1, checkpoint_every=2)

    def fit(out, resume=False, on_step=None):  # type: ignore[no-untyped-def]
        method = get_method("fusechat3")(MethodSpec(name="fusechat3", sft_share=0.5))
        train(tiny_model(0), None, pair_items(), collate, method, spec, out, seed=0, resume=resume, progress=False, on_step=on_step)
        return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]

    full = fit(tmp_path / "full")
    assert [set(r["components"]) for r in full] == [{"sft"}] * 4 + [{"dpo", "pairs", "reward_margin"}] * 4
    assert full[4]["components"]["dpo"] == pytest.approx(math.log(2), abs=1e-6)  # reference = the model at the switch
    assert full[-1]["components"]["dpo"] < full[4]["components"]["dpo"]
    # the DPO stage warms up and decays again, peaking at dpo_lr_scale (0.16) of the SFT stage's peak
    assert max(r["lr"] for r in full[4:]) == pytest.approx(0.16 * max(r["lr"] for r in full[:4]))

    def stop(record):  # type: ignore[no-untyped-def]
        if record["step"] == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "cut", on_step=stop)
    resumed = fit(tmp_path / "cut", resume=True)
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full], abs=1e-6)

    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "lost", on_step=stop)
    (tmp_path / "lost" / "reference_logps.pt").unlink()
    with pytest.raises(HarnessError, match="reference log-probabilities"):
        fit(tmp_path / "lost", resume=True)
