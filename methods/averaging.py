"""Distribution averaging: the teacher is the uniform mixture of all sources' distributions on the reference.

    P_S = (1/n) * sum_i P_i          (each P_i: source i's top-k, renormalised over its k entries)
    L_train = lam * CE(y) + (1 - lam) * CE(P_S, P_T)        as in FuseLLM

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


@register_method("averaging")
class Averaging(FusionMethod):
    description = "Averaging: CE on the reference plus CE to the uniform mixture of all sources' top-k distributions"
    needs = frozenset({Signal.TRAINING})

    def combine(self, candidates: list[SourceTargets]) -> SourceTargets:
        if not candidates:
            raise ValueError("averaging needs at least one candidate")
        lengths = {c.topk_ids.shape[0] for c in candidates}
        if len(lengths) != 1:
            raise ValueError(f"candidates are aligned to different token counts {sorted(lengths)}; align them to the target first")
        log_n = math.log(len(candidates))
        logp = [teacher_logprobs(c.topk_ids, c.topk_logp.float()) - log_n for c in candidates]
        return SourceTargets(
            source="+".join(c.source for c in candidates),
            ce=sum(c.ce for c in candidates) / len(candidates),
            topk_ids=torch.cat([c.topk_ids for c in candidates], dim=-1),
            topk_logp=torch.cat(logp, dim=-1),
        )

    def loss(self, batch: FusionBatch, student_logits: dict[Signal, torch.Tensor], step: int, total_steps: int) -> LossParts:
        return training_loss(self.spec, batch.views[Signal.TRAINING], student_logits[Signal.TRAINING])
