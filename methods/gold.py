"""GOLD (TRL's General On-policy Logit Distillation, trl/experimental/gold/gold_trainer.py): ULD with a hybrid
distance, direct where the two tokenizers agree and by sorted values where they do not.

    L = w_ce * CE(y) + w_distill * D
    D = w_m * (1/N) sum_{t matched} JSD_beta(P_S(t), Q(t)) + w_u * (1/N) sum_{t other} sum_i |p_(i)(t) - q_(i)(t)|

over the N response tokens of (x, y) that have a teacher (training mode, the MinCE source, as ULD).

- matched: the token's teacher came from an aligned source token (under the default `span` alignment, the source
  token with the identical character span), so its ids are target ids that mean what they say and are compared id
  by id: TRL's generalized JSD (`GOLDTrainer.generalized_jsd_loss`, beta 0 = KL(P_S || Q), 1 = KL(Q || P_S))
  over the teacher's top-k ids, on the stored probabilities and the student's probabilities at those ids, neither
  renormalised (TRL compares the raw matched entries the same way).
- other: no source token aligned, so the teacher is the fallback one-hot on the reference token (the stored rows
  say which: one entry, log-probability 0, on the token itself). Compared as ULD does, by sorted values only, over
  the whole vocabulary: the k largest pairwise plus the student's mass below its k largest (the teacher has none
  there), which is TRL's untruncated sorted L1 for a teacher holding only its top-k (methods/uld.py truncates).
- weights w_m, w_u: TRL's `uld_hybrid_matched_weight` / `uld_hybrid_unmatched_weight` when both are given, else
  TRL's adaptive rule, the matched share; w_ce, w_distill: `uld_crossentropy_weight` / `uld_distillation_weight`.

Where this departs from TRL. TRL splits the *vocabulary* (token strings present in both tokenizers vs the rest) at
every aligned position, and merges the probabilities of multi-token groups. The harness's teachers are already
mapped onto the target's vocabulary when signals are extracted (exact ids, else the nearest by edit distance) and
unaligned positions keep no source distribution, so the split that survives is over *positions*, and the adaptive
weight is the share of matched positions in the batch where TRL's is the share of matched vocabulary. Reduction:
the mean over the batch's tokens (the harness's convention), where TRL averages per sequence first.
Defaults: w_ce 0.9 and w_distill 0.1, the harness's ULD scale (lam 0.9) so that `gold` and `uld` differ only in
the distance; TRL's defaults are 0 and 1 (on-policy, without a reference answer).
"""

from __future__ import annotations

import pydantic
import torch

from harness.registry import register_method
from methods.base import FusionBatch, FusionMethod, LossParts, MethodParams, SeqBatch, Signal, View
from methods.losses import next_token_ce, score_view


class GOLDParams(MethodParams):
    """GOLD's weights, TRL's names without the `uld_` prefix."""

    crossentropy_weight: float = pydantic.Field(default=0.9, ge=0.0, le=1e6, description="w_ce: weight of CE on the reference.")
    distillation_weight: float = pydantic.Field(default=0.1, ge=0.0, le=1e6, description="w_distill: weight of the hybrid distance.")
    jsd_beta: float = pydantic.Field(
        default=0.5, ge=0.0, le=1.0, description="Generalized JSD interpolation on matched tokens (TRL's `beta`): 0 forward KL, 1 reverse KL."
    )
    matched_weight: float | None = pydantic.Field(default=None, ge=0.0, le=1e6, description="w_m; None (with unmatched_weight None): the matched share.")
    unmatched_weight: float | None = pydantic.Field(default=None, ge=0.0, le=1e6, description="w_u; set together with matched_weight.")

    @pydantic.model_validator(mode="after")
    def _both_or_neither(self) -> GOLDParams:
        if (self.matched_weight is None) != (self.unmatched_weight is None):
            raise ValueError("matched_weight and unmatched_weight are set together (or both left out: adaptive)")
        return self


def fallback_rows(ids: torch.Tensor, logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N] rows whose teacher is the fallback one-hot on the reference token (no source token aligned)."""
    present = torch.isfinite(logp)
    return (present.sum(-1) == 1) & (logp[:, 0] == 0) & (ids[:, 0] == labels)


def generalized_jsd(log_q: torch.Tensor, log_p: torch.Tensor, present: torch.Tensor, beta: float) -> torch.Tensor:
    """[N] sum over the present entries of TRL's generalized JSD between student q and teacher p (probabilities as
    given): beta KL(p || m) + (1 - beta) KL(q || m), m = (1 - beta) q + beta p; beta 0: KL(p || q), 1: KL(q || p)."""
    log_p = log_p.masked_fill(~present, 0.0)
    if beta == 0:
        per = log_p.exp() * (log_p - log_q)
    elif beta == 1:
        per = log_q.exp() * (log_q - log_p)
    else:
        log_m = torch.logaddexp(log_q + torch.log1p(torch.tensor(-beta, dtype=log_q.dtype)), log_p + torch.log(torch.tensor(beta, dtype=log_q.dtype)))
        per = beta * log_p.exp() * (log_p - log_m) + (1 - beta) * log_q.exp() * (log_q - log_m)
    return torch.where(present, per, 0.0).sum(-1)


def full_sorted_l1(log_q: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """[N] sum_i |p_(i) - q_(i)| over the whole vocabulary for a teacher that is its k stored entries (ids distinct):
    the k largest of each side pairwise, plus the student's mass below its k largest."""
    k = teacher_logp.shape[-1]
    p = teacher_logp.float().exp().sort(-1, descending=True).values  # absent entries (-inf) are 0
    q = log_q.topk(min(k, log_q.shape[-1]), dim=-1).values.exp()
    tail = (1.0 - q.sum(-1)).clamp(min=0.0)
    if q.shape[-1] < k:
        q = torch.nn.functional.pad(q, (0, k - q.shape[-1]))
    return (p.to(q.dtype) - q).abs().sum(-1) + tail


def hybrid_distance(view: SeqBatch, logits: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """The per-token sums of D's two parts over the counted response tokens of `view`, and their token counts."""
    vocab, k = logits.shape[-1], view.topk_logp.shape[-1]
    counted = view.labels != -100
    counted[:, 0] = False  # token 0 has no position predicting it
    tokens = counted.reshape(-1).nonzero().squeeze(1)
    ids, logp = view.topk_ids.reshape(-1, k)[tokens], view.topk_logp.reshape(-1, k)[tokens]
    rows = logits.reshape(-1, vocab)[tokens - 1]  # row i-1 predicts token i
    log_q = torch.log_softmax(rows.to(torch.promote_types(rows.dtype, torch.float32)), dim=-1)
    present = torch.isfinite(logp)
    has_teacher = present.any(-1)
    other = has_teacher & fallback_rows(ids, logp, view.labels.reshape(-1)[tokens])
    matched = has_teacher & ~other
    picked = log_q.gather(-1, ids.masked_fill(~present, 0))
    jsd = generalized_jsd(picked, logp.to(log_q.dtype), present, beta)
    l1 = full_sorted_l1(log_q, logp)
    return {
        "jsd_sum": (jsd * matched).sum(), "l1_sum": (l1 * other).sum(),
        "n_matched": matched.sum(), "n_other": other.sum(),
    }


@register_method("gold")
class GOLD(FusionMethod):
    description = "GOLD (TRL): CE on the reference plus JSD on span-matched tokens and ULD's sorted L1 on the rest"
    needs = frozenset({Signal.TRAINING})
    Params = GOLDParams
    params: GOLDParams

    def loss(self, batch: FusionBatch, student_logits: dict[View, torch.Tensor], step: int, total_steps: int) -> LossParts:
        p = self.params
        view, logits = batch.views[Signal.TRAINING], student_logits[Signal.TRAINING]
        ce = next_token_ce(score_view(view, logits))
        parts = hybrid_distance(view, logits, p.jsd_beta)
        n = (parts["n_matched"] + parts["n_other"]).clamp(min=1)
        if p.matched_weight is None or p.unmatched_weight is None:
            w_m = float(parts["n_matched"] / n)  # TRL's adaptive rule: the matched share
            w_u = 1.0 - w_m
        else:
            w_m, w_u = p.matched_weight, p.unmatched_weight
        jsd, l1 = parts["jsd_sum"] / n, parts["l1_sum"] / n
        distance = w_m * jsd + w_u * l1
        total = p.crossentropy_weight * ce + p.distillation_weight * distance
        return LossParts(
            total,
            {"ce_train": ce, "jsd_matched": jsd, "l1_other": l1, "gold_train": distance},
            {"w_ce": p.crossentropy_weight, "w_distill": p.distillation_weight, "w_matched": w_m, "w_other": w_u},
        )

