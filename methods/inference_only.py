"""Inference-only fusion: learn the judged best generated response and its source's distribution on it.

    L_infer = CE(y~) + beta * KL(P_S^best || P_T)        over the tokens of the best response y~ to x

P_S^best is the top-k distribution of the source whose response the judges chose, tempered with
`temperature`; beta is the method's own parameter (`method.beta`, 1.0). `kl_direction: reverse` uses KL(Q || P_S) (methods/losses.py).
"""

from __future__ import annotations

import torch
from pydantic import Field

from harness.config import MethodSpec
from harness.registry import register_method
from methods.base import FusionBatch, FusionMethod, LossParts, MethodParams, SeqBatch, Signal, View
from methods.losses import next_token_ce, score_view, sparse_kl


class InferenceParams(MethodParams):
    beta: float = Field(default=1.0, ge=0.0, le=1e6, description="β: weight of the KL term in the inference-mode loss.")


def inference_loss(spec: MethodSpec, beta: float, view: SeqBatch, logits: torch.Tensor) -> LossParts:
    """CE(y~) + beta * KL(P_S^best || P_T) on the inference-mode view; shared with ProFuser."""
    s = score_view(view, logits)
    ce, kl = next_token_ce(s), sparse_kl(s, spec.temperature, spec.kl_direction)
    total = ce + beta * kl
    return LossParts(total, {"ce_infer": ce, "kl_infer": kl}, {"beta": beta})


@register_method("inference-only")
class InferenceOnly(FusionMethod):
    description = "Inference mode only: CE on the judged best response plus KL to its source's top-k distribution"
    needs = frozenset({Signal.INFERENCE})
    Params = InferenceParams
    params: InferenceParams

    def loss(self, batch: FusionBatch, student_logits: dict[View, torch.Tensor], step: int, total_steps: int) -> LossParts:
        return inference_loss(self.spec, self.params.beta, batch.views[Signal.INFERENCE], student_logits[Signal.INFERENCE])
