"""Distribution averaging: the teacher is a mixture of all sources' distributions on the reference.

    P_S = sum_i w_i * P_i            (each P_i: source i's top-k, renormalised over its k entries)
    L_train = lam * CE(y) + (1 - lam) * CE(P_S, P_T)        as in FuseLLM

`method.weighting` picks the w_i per example: `uniform` (1/n) or `avgce`, FuseLLM's AvgCE fusion function,
w = softmax(-CE_1, ..., -CE_n) over the sources' length-normalised cross-entropies on this example's reference
(a source that predicts the reference better weighs more; one with no prediction, CE = inf, weighs 0; if no
source predicted anything the weights fall back to uniform).

`combine` builds the mixture sparsely: it concatenates the sources' entries along k with
log P_i + log(1/n). Ids kept by several sources appear several times; the losses merge duplicates
(methods/losses.py), so the mixture is exact over the union of the kept ids.
"""

from __future__ import annotations

import math

import torch

from harness.registry import register_method
from methods.base import FusionBatch, FusionMethod, LossParts, Signal, SourceTargets
from methods.fusellm import training_loss
from methods.losses import teacher_logprobs


def mixture_log_weights(ces: list[float], weighting: str) -> list[float]:
    """log w_i of the mixture: uniform, or AvgCE's softmax over the negative cross-entropies."""
    n = len(ces)
    finite = [c for c in ces if math.isfinite(c)]
    if weighting == "uniform" or not finite:
        return [-math.log(n)] * n
    if weighting != "avgce":
        raise ValueError(f"unknown averaging weighting '{weighting}' (uniform or avgce)")
    scores = torch.tensor([-c if math.isfinite(c) else -math.inf for c in ces], dtype=torch.float64)
    return torch.log_softmax(scores, dim=0).tolist()


@register_method("averaging")
class Averaging(FusionMethod):
    description = "Averaging: CE on the reference plus CE to the mixture (uniform or AvgCE) of all sources' top-k distributions"
    needs = frozenset({Signal.TRAINING})

    def combine(self, candidates: list[SourceTargets]) -> SourceTargets:
        if not candidates:
            raise ValueError("averaging needs at least one candidate")
        lengths = {c.topk_ids.shape[0] for c in candidates}
        if len(lengths) != 1:
            raise ValueError(f"candidates are aligned to different token counts {sorted(lengths)}; align them to the target first")
        log_w = mixture_log_weights([c.ce for c in candidates], self.spec.weighting)
        logp = [teacher_logprobs(c.topk_ids, c.topk_logp.float()) + lw for c, lw in zip(candidates, log_w, strict=True)]
        ce = sum(math.exp(lw) * c.ce for c, lw in zip(candidates, log_w, strict=True) if lw > -math.inf)
        return SourceTargets(
            source="+".join(c.source for c in candidates),
            ce=float(ce),
            topk_ids=torch.cat([c.topk_ids for c in candidates], dim=-1),
            topk_logp=torch.cat(logp, dim=-1),
        )

    def loss(self, batch: FusionBatch, student_logits: dict[Signal, torch.Tensor], step: int, total_steps: int) -> LossParts:
        return training_loss(self.spec, batch.views[Signal.TRAINING], student_logits[Signal.TRAINING])
