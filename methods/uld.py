"""Universal Logit Distillation (Boizard et al. 2024): match sorted probability vectors, no vocabulary alignment.

    L = lam * CE(y) + (1 - lam) * ULD,   ULD = mean over response tokens t of sum_{i<k} |p_(i)(t) - q_(i)(t)|

p_(i) is the teacher's i-th largest probability for target token t, q_(i) the student's i-th largest over its
whole vocabulary (predicted from position t-1): the closed-form Wasserstein-1 distance between the two
distributions when every token is one unit from every other, truncated to the k largest entries. Which token
carries a probability does not matter, so the teacher's ids are never read: only the sorted values.

Signals: training mode only (the source teacher-forced on the reference), the MinCE source per example
(`FusionMethod.combine`). The store's top-k suffices: k sorted probabilities per response token, aligned to the
target's positions by `signals.alignment`. They are the values after vocabulary mapping (ids mapped to one
target id add up; ids with no target id are dropped: the signal audit's lost mass); where no source token is
aligned the teacher is the one-hot on the reference token. Probabilities are used as stored: the paper uses
no temperature, and `temperature` does not apply.

The paper writes CE + lambda * ULD; the (lam, 1 - lam) weights here are the other methods' form (the same loss
up to scale with lambda = (1 - lam) / lam) and share MethodSpec.lam.
"""

from __future__ import annotations

import torch

from harness.registry import register_method
from methods.base import FusionBatch, FusionMethod, LossParts, SeqBatch, Signal, View
from methods.losses import next_token_ce, score_view


def sorted_teacher(ids: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """[N, k] teacher probabilities in descending order, an id's entries added up (concatenated teachers), absent
    entries (-inf) as zeros; not renormalised: a top-k's mass below 1 is part of what the student matches."""
    present = torch.isfinite(logp)
    prob = logp.float().exp().masked_fill(~present, 0.0)
    same = (ids.unsqueeze(-1) == ids.unsqueeze(-2)) & present.unsqueeze(-1) & present.unsqueeze(-2)  # [N, k, k]
    k = ids.shape[-1]
    earlier = torch.ones(k, k, dtype=torch.bool, device=ids.device).tril(-1)  # [j, i]: entry i comes before j
    first = present & ~(same & earlier).any(-1)
    merged = torch.where(first, (same * prob.unsqueeze(-2)).sum(-1), 0.0)
    return merged.sort(dim=-1, descending=True).values


def sorted_distance(view: SeqBatch, logits: torch.Tensor) -> torch.Tensor:
    """ULD over the counted response tokens of `view`: sum_i |p_(i) - q_(i)| over the k largest entries, the mean
    over tokens with at least one teacher entry (0 when none)."""
    vocab, k = logits.shape[-1], view.topk_logp.shape[-1]
    counted = view.labels != -100
    counted[:, 0] = False  # token 0 has no position predicting it
    tokens = counted.reshape(-1).nonzero().squeeze(1)
    teacher = sorted_teacher(view.topk_ids.reshape(-1, k)[tokens], view.topk_logp.reshape(-1, k)[tokens])
    rows = logits.reshape(-1, vocab)[tokens - 1]  # row i-1 predicts token i
    log_q = torch.log_softmax(rows.to(torch.promote_types(rows.dtype, torch.float32)), dim=-1)
    student = log_q.topk(min(k, vocab), dim=-1).values.exp()
    if student.shape[-1] < k:
        student = torch.nn.functional.pad(student, (0, k - student.shape[-1]))
    per_token = (teacher - student).abs().sum(-1)
    has_teacher = (teacher > 0).any(-1)
    return (per_token * has_teacher).sum() / has_teacher.sum().clamp(min=1)


@register_method("uld")
class ULD(FusionMethod):
    description = "ULD: CE on the reference plus the L1 distance of sorted top-k probabilities (no vocabulary alignment)"
    needs = frozenset({Signal.TRAINING})

    def loss(self, batch: FusionBatch, student_logits: dict[View, torch.Tensor], step: int, total_steps: int) -> LossParts:
        view, logits = batch.views[Signal.TRAINING], student_logits[Signal.TRAINING]
        ce = next_token_ce(score_view(view, logits))
        uld = sorted_distance(view, logits)
        total = self.spec.lam * ce + (1.0 - self.spec.lam) * uld
        return LossParts(total, {"ce_train": ce, "uld_train": uld}, {"lam": self.spec.lam})
