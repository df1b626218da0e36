"""FuseLLM (Wan et al. 2024): learn the reference and the best source's distribution on it.

    L_train = lam * CE(y) + (1 - lam) * CE(P_S, P_T)        over the response tokens of (x, y)

P_S is the MinCE source for the example (`FusionMethod.combine`: the source with the lowest length-normalised
CE on y), rebuilt from its top-k aligned entries with `temperature`; lam = MethodSpec.lam (0.9).
With `kl_direction: reverse` the second term is KL(Q || P_S) instead (methods/losses.py).
"""

from __future__ import annotations

import torch

from harness.config import MethodSpec
from harness.registry import register_method
from methods.base import FusionBatch, FusionMethod, LossParts, SeqBatch, Signal, View
from methods.losses import fusion_term, next_token_ce, score_view


def training_loss(spec: MethodSpec, view: SeqBatch, logits: torch.Tensor) -> LossParts:
    """lam * CE(y) + (1 - lam) * CE(P_S, P_T) on the training-mode view; shared with ProFuser."""
    s = score_view(view, logits)
    ce, fuse = next_token_ce(s), fusion_term(s, spec.temperature, spec.kl_direction)
    total = spec.lam * ce + (1.0 - spec.lam) * fuse
    return LossParts(total, {"ce_train": ce, "fuse_train": fuse}, {"lam": spec.lam})


@register_method("fusellm")
class FuseLLM(FusionMethod):
    description = "FuseLLM: CE on the reference plus CE to the MinCE source's top-k distribution (training mode)"
    needs = frozenset({Signal.TRAINING})

    def loss(self, batch: FusionBatch, student_logits: dict[View, torch.Tensor], step: int, total_steps: int) -> LossParts:
        return training_loss(self.spec, batch.views[Signal.TRAINING], student_logits[Signal.TRAINING])
