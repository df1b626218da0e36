"""ProFuser (Shi et al. 2024): inference mode and training mode, weighted by a schedule over training.

    L = w_inf(t) * L_infer + w_train(t) * L_train
    L_infer = CE(y~) + beta * KL(P_S^best || P_T)                  (methods/inference_only.py)
    L_train = lam * CE(y) + (1 - lam) * CE(P_S^MinCE, P_T)        (methods/fusellm.py)

(w_inf, w_train) come from the method's own `schedule` (methods/schedules.py; paper: progressive, inference mode
first); with `schedule.restart_warmup` the learning rate warms up again at the switch. A term whose weight is 0 at a step is not computed, and its view's forward pass is skipped.
"""

from __future__ import annotations

import torch
from pydantic import Field

from harness.registry import register_method
from methods.base import FusionBatch, FusionMethod, LossParts, Signal, View
from methods.fusellm import training_loss
from methods.inference_only import InferenceParams, inference_loss
from methods.schedules import ScheduleSpec, stage_starts, weights


class ProFuserParams(InferenceParams):
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, description="How w_inf and w_train move over training.")


@register_method("profuser")
class ProFuser(FusionMethod):
    description = "ProFuser: inference-mode and training-mode fusion, weighted by a schedule (paper: progressive)"
    needs = frozenset({Signal.TRAINING, Signal.INFERENCE})
    Params = ProFuserParams
    params: ProFuserParams

    def stage_starts(self, total_steps: int) -> list[int]:
        return stage_starts(self.params.schedule, total_steps) if self.params.schedule.restart_warmup else [0]

    def views_at(self, step: int, total_steps: int) -> frozenset[Signal]:
        w_inf, w_train = weights(self.params.schedule, step, total_steps)
        return frozenset(v for v, w in ((Signal.INFERENCE, w_inf), (Signal.TRAINING, w_train)) if w > 0)

    def loss(self, batch: FusionBatch, student_logits: dict[View, torch.Tensor], step: int, total_steps: int) -> LossParts:
        w_inf, w_train = weights(self.params.schedule, step, total_steps)
        total: torch.Tensor | float = 0.0
        components: dict[str, torch.Tensor] = {}
        if w_inf > 0:
            infer = inference_loss(self.spec, self.params.beta, batch.views[Signal.INFERENCE], student_logits[Signal.INFERENCE])
            total, components = total + w_inf * infer.total, components | infer.components
        if w_train > 0:
            train = training_loss(self.spec, batch.views[Signal.TRAINING], student_logits[Signal.TRAINING])
            total, components = total + w_train * train.total, components | train.components
        weights_ = {"w_inf": w_inf, "w_train": w_train, "lam": self.spec.lam, "beta": self.params.beta}
        return LossParts(torch.as_tensor(total), components, weights_)
