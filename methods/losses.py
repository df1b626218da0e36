"""Sparse top-k fusion losses, computed from the student's logits without any dense [T x V] teacher tensor.

A teacher is k (id, log-probability) pairs per token. Every loss here needs only the student's
log-probabilities log q = z - logsumexp(z) at a few ids per counted position (the label and the teacher's k
ids): `score_view` runs one log-softmax, as a plain next-token loss does, and reads N x (1 + k) entries of it.
So a fusion step costs what a plain step costs (harness/bench/fusion_step.py measures it).

Conventions (methods/base.py): position i of the student predicts token i+1, so logits are shifted once here.
A position counts when its label is not -100. Reduction: every loss is the mean over counted tokens of the
whole batch (token-level, not per sequence); the teacher terms average over counted tokens that have at
least one teacher entry (-inf log-probabilities mark absent entries; a position with none is skipped).

Teacher distribution P_S: duplicate ids are merged (their probabilities add, so concatenated teachers such
as `averaging`'s mixture work), then tempered and renormalised over the kept entries,
p_j = exp(logp_j / tau) / sum_i exp(logp_i / tau).

Directions of the fusion term (MethodSpec.kl_direction):
- forward: CE(P_S, P_T) = -sum_j p_j log q_j with q = softmax(z) over the full vocabulary (FuseLLM's form),
  and KL(P_S || P_T) = sum_j p_j (log p_j - log q_j) = CE - H(P_S), the same gradient;
- reverse: KL(Q || P_S) where Q is the student restricted to the teacher's support and renormalised there,
  Q_j = exp(z_j) / sum_i exp(z_i) over the kept ids (the student's mass outside the support is not seen).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from methods.base import SeqBatch

Direction = Literal["forward", "reverse"]


@dataclass
class StudentScores:
    """What the losses need from the student at the N counted positions of one view (next-token aligned)."""

    label_logq: torch.Tensor  # [N] log q(y_t): the student's log-probability of the reference token
    topk_logq: torch.Tensor  # [N, k] log q at the teacher's ids
    teacher_ids: torch.Tensor  # [N, k]
    teacher_logp: torch.Tensor  # [N, k] the teacher's raw log-probabilities (-inf: absent)

    @property
    def n_tokens(self) -> int:
        return int(self.label_logq.shape[0])


def score_view(view: SeqBatch, logits: torch.Tensor) -> StudentScores:
    """Shift once and keep the counted positions: logits [B, T, V] of `view` -> StudentScores of its response tokens.

    The log-softmax runs over all B*T rows in (at least) float32, exactly as a plain next-token loss does, and
    is then read at N x (1 + k) entries, so time and memory are the plain loss's (the [B*T x V] log-softmax
    and its gradient); the teacher side is only [N x k].
    """
    vocab = logits.shape[-1]
    counted = view.labels != -100
    counted[:, 0] = False  # token 0 has no position predicting it
    tokens = counted.reshape(-1).nonzero().squeeze(1)  # flat indices of the predicted tokens
    labels = view.labels.reshape(-1)[tokens]
    k = view.topk_ids.shape[-1]
    teacher_logp = view.topk_logp.reshape(-1, k)[tokens]
    present = torch.isfinite(teacher_logp)
    teacher_ids = view.topk_ids.reshape(-1, k)[tokens].masked_fill(~present, 0)
    log_q = torch.log_softmax(logits.reshape(-1, vocab).to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    picked = log_q[(tokens - 1).unsqueeze(1), torch.cat([labels[:, None], teacher_ids], 1)]  # row i-1 predicts token i
    return StudentScores(picked[:, 0], picked[:, 1:], teacher_ids, teacher_logp.masked_fill(~present, float("-inf")))


def teacher_logprobs(ids: torch.Tensor, logp: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log P_S over the k entries: duplicates merged into their first entry, tempered, renormalised; -inf if absent."""
    present = torch.isfinite(logp)
    same = (ids.unsqueeze(-1) == ids.unsqueeze(-2)) & present.unsqueeze(-1) & present.unsqueeze(-2)  # [..., k, k]
    merged = torch.logsumexp(logp.unsqueeze(-2).masked_fill(~same, float("-inf")), dim=-1)
    k = ids.shape[-1]
    earlier = torch.ones(k, k, dtype=torch.bool, device=ids.device).tril(-1)  # [j, i]: entry i comes before j
    first = present & ~(same & earlier).any(-1)
    scaled = (merged / temperature).masked_fill(~first, float("-inf"))
    norm = torch.logsumexp(scaled, dim=-1, keepdim=True)
    return torch.where(first, scaled - norm.masked_fill(~torch.isfinite(norm), 0.0), float("-inf"))


def _mean(per_token: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Mean over counted tokens; 0 (still attached to the graph) when none count."""
    return (per_token * counted).sum() / counted.sum().clamp(min=1)


def next_token_ce(s: StudentScores) -> torch.Tensor:
    """CE(y) = mean over counted tokens of -log q(y_t)."""
    return _mean(-s.label_logq, torch.ones_like(s.label_logq))


def sparse_cross_entropy(s: StudentScores, temperature: float = 1.0) -> torch.Tensor:
    """CE(P_S, P_T) = mean over counted tokens of -sum_j p_j log q_{id_j}, log q = z - logsumexp(z)."""
    log_p = teacher_logprobs(s.teacher_ids, s.teacher_logp, temperature)
    p = log_p.exp()  # 0 where absent, so absent ids contribute nothing
    per_token = -(p * s.topk_logq).sum(-1)
    return _mean(per_token, torch.isfinite(log_p).any(-1))


def sparse_kl(s: StudentScores, temperature: float = 1.0, direction: Direction = "forward") -> torch.Tensor:
    """forward: KL(P_S || P_T) = sum_j p_j (log p_j - log q_j); reverse: KL(Q || P_S), Q = P_T renormalised on the support."""
    log_p = teacher_logprobs(s.teacher_ids, s.teacher_logp, temperature)
    kept = torch.isfinite(log_p)
    safe_log_p = log_p.masked_fill(~kept, 0.0)
    if direction == "forward":
        per_token = torch.where(kept, safe_log_p.exp() * (safe_log_p - s.topk_logq), 0.0).sum(-1)
    else:
        any_kept = kept.any(-1, keepdim=True)  # rows without a teacher get a finite dummy: no NaN in backward
        z = torch.where(any_kept, s.topk_logq.masked_fill(~kept, float("-inf")), 0.0)
        log_q = torch.where(kept, s.topk_logq - torch.logsumexp(z, dim=-1, keepdim=True), 0.0)
        per_token = torch.where(kept, log_q.exp() * (log_q - safe_log_p), 0.0).sum(-1)
    return _mean(per_token, kept.any(-1))


def fusion_term(s: StudentScores, temperature: float = 1.0, direction: Direction = "forward") -> torch.Tensor:
    """The training-mode fusion term: CE(P_S, P_T) (forward, FuseLLM) or KL(Q || P_S) (reverse)."""
    return sparse_cross_entropy(s, temperature) if direction == "forward" else sparse_kl(s, temperature, "reverse")
