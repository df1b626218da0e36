"""Distribution averaging: the teacher is a mixture of all sources' distributions on the reference.

    P_S = sum_i w_i * P_i            (each P_i: source i's top-k, tempered and renormalised over its k entries)
    L_train = lam * CE(y) + (1 - lam) * CE(P_S, P_T)        as in FuseLLM

`method.weighting` picks the w_i per example: `uniform` (1/n) or `avgce`, FuseLLM's AvgCE fusion function as its
trainer computes it (FuseLLM/src/utils/trainer.py, `distill_weighted_as_gt`): reward r_i = 1 / exp(CE_i), weights
w = softmax(r_1, ..., r_n) over the sources' length-normalised cross-entropies on this example's reference (taken
over the same answer characters, harness/signals/comparable_ce.py). Rewards lie in (0, 1], so the weights stay
within a factor e of each other; a source with no prediction (CE = inf) has reward 0.

As in FuseLLM's collator, the temperature is applied to each source before mixing (softmax(logits_i / T) over
its top-k), and the mixture itself is not tempered again (the loss renormalises it over the kept entries with
temperature 1, which changes nothing where every source has a teacher).

`combine` builds the mixture sparsely: it concatenates the sources' entries along k with log P_i + log w_i. Ids
kept by several sources appear several times; the losses merge duplicates (methods/losses.py), so the mixture is
exact over the union of the kept ids (FuseLLM's scatter keeps one of two duplicates instead).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from harness.registry import register_method
from methods.base import FusionBatch, FusionMethod, LossParts, MethodParams, Signal, SourceTargets, View
from methods.fusellm import training_loss
from methods.losses import teacher_logprobs

WEIGHTINGS = ("uniform", "avgce")


def mixture_log_weights(ces: list[float], weighting: str) -> list[float]:
    """log w_i of the mixture: uniform, or AvgCE's softmax over the rewards exp(-CE_i) (FuseLLM's rule)."""
    n = len(ces)
    if weighting == "uniform":
        return [-math.log(n)] * n
    if weighting != "avgce":
        raise ValueError(f"unknown averaging weighting '{weighting}' ({' or '.join(WEIGHTINGS)})")
    rewards = torch.tensor([math.exp(-c) if not math.isnan(c) else 0.0 for c in ces], dtype=torch.float64)
    return torch.log_softmax(rewards, dim=0).tolist()


class AveragingParams(MethodParams):
    weighting: Literal["uniform", "avgce"] = Field(
        default="uniform",
        description="How sources are mixed per example: uniform, or avgce (FuseLLM's AvgCE: softmax over the "
        "rewards exp(-CE_i) of the sources' cross-entropies on the reference).",
    )


@register_method("averaging")
class Averaging(FusionMethod):
    description = "Averaging: CE on the reference plus CE to the mixture (uniform or AvgCE) of all sources' top-k distributions"
    needs = frozenset({Signal.TRAINING})
    Params = AveragingParams
    params: AveragingParams

    def combine(self, candidates: list[SourceTargets]) -> SourceTargets:
        if not candidates:
            raise ValueError("averaging needs at least one candidate")
        lengths = {c.topk_ids.shape[0] for c in candidates}
        if len(lengths) != 1:
            raise ValueError(f"candidates are aligned to different token counts {sorted(lengths)}; align them to the target first")
        log_w = mixture_log_weights([c.ce for c in candidates], self.params.weighting)
        tau = self.spec.temperature
        logp = [teacher_logprobs(c.topk_ids, c.topk_logp.float(), tau) + lw for c, lw in zip(candidates, log_w, strict=True)]
        ce = sum(math.exp(lw) * c.ce for c, lw in zip(candidates, log_w, strict=True) if math.isfinite(c.ce))
        return SourceTargets(
            source="+".join(c.source for c in candidates),
            ce=float(ce),
            topk_ids=torch.cat([c.topk_ids for c in candidates], dim=-1),
            topk_logp=torch.cat(logp, dim=-1),
        )

    def loss(self, batch: FusionBatch, student_logits: dict[View, torch.Tensor], step: int, total_steps: int) -> LossParts:
        # the sources were tempered before mixing (`combine`); the mixture is not tempered again
        untempered = self.spec.model_copy(update={"temperature": 1.0})
        return training_loss(untempered, batch.views[Signal.TRAINING], student_logits[Signal.TRAINING])
