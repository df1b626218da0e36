"""How ProFuser weighs its inference-mode and training-mode terms over training: (w_inf, w_train) at a step.

`step` is the 0-based index of the optimizer update being computed and `total_steps` the number of updates
in the run, so the fraction of training done is f = step / total_steps. With the ScheduleSpec defaults
stage1 = (1, 0), stage2 = (0.1, 1), switch = 0.5:

- progressive (paper): stage1 while f < switch, then stage2.  Inference mode first: (1, 0) then (0.1, 1).
- reversed: training mode first. Same switch, each stage's two weights swapped:
  (stage1[1], stage1[0]) while f < switch, then (stage2[1], stage2[0]), i.e. (0, 1) then (1, 0.1).
- simultaneous: (1, 1) at every step (the stages are ignored).
- linear: stage1 + (stage2 - stage1) * a with a = step / (total_steps - 1): stage1 at the first update,
  stage2 at the last (switch is ignored).
- cosine: the same with a = (1 - cos(pi * step / (total_steps - 1))) / 2: flat at both ends.

`stage_starts` gives the first update of each stage; with `restart_warmup` the training loop runs its learning-
rate schedule (linear warm-up, cosine decay) once per stage instead of once per run, as if the paper's two
stages were two training runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pydantic import Field, field_validator, model_validator

from methods.params import MethodParams

Weights = tuple[float, float]


def _progressive(spec: ScheduleSpec, step: int, total: int) -> Weights:
    return spec.stage1 if step < spec.switch * total else spec.stage2


def _reversed(spec: ScheduleSpec, step: int, total: int) -> Weights:
    w_inf, w_train = _progressive(spec, step, total)
    return w_train, w_inf


def _simultaneous(spec: ScheduleSpec, step: int, total: int) -> Weights:
    return 1.0, 1.0


def _interpolate(spec: ScheduleSpec, a: float) -> Weights:
    (i1, t1), (i2, t2) = spec.stage1, spec.stage2
    return i1 + (i2 - i1) * a, t1 + (t2 - t1) * a


def _fraction(step: int, total: int) -> float:
    return min(1.0, step / (total - 1)) if total > 1 else 0.0


def _linear(spec: ScheduleSpec, step: int, total: int) -> Weights:
    return _interpolate(spec, _fraction(step, total))


def _cosine(spec: ScheduleSpec, step: int, total: int) -> Weights:
    return _interpolate(spec, (1.0 - math.cos(math.pi * _fraction(step, total))) / 2.0)


# The schedules by name: the one list of their names (config validation, `--schedule`, `ablate`).
SCHEDULES: dict[str, Callable[[ScheduleSpec, int, int], Weights]] = {
    "progressive": _progressive,
    "simultaneous": _simultaneous,
    "reversed": _reversed,
    "linear": _linear,
    "cosine": _cosine,
}
SCHEDULE_NAMES = tuple(SCHEDULES)


class ScheduleSpec(MethodParams):
    """How the weights of the inference-mode and training-mode terms move over training (`method.schedule`).

    progressive (paper default): (w_inf, w_train) = stage1 before `switch` (a fraction of total steps), stage2 after.
    reversed: training mode first, i.e. stage1 and stage2 with their two weights swapped.
    simultaneous: both terms at weight 1 for the whole run.
    linear / cosine: move from stage1 to stage2 smoothly over the whole run.
    """

    name: str = Field(default="progressive", description=f"One of {', '.join(SCHEDULE_NAMES)}.")
    switch: float = Field(default=0.5, ge=0.0, le=1.0, description="Fraction of steps spent in stage 1.")
    stage1: tuple[float, float] = Field(default=(1.0, 0.0), description="(w_inf, w_train) in stage 1.")
    stage2: tuple[float, float] = Field(default=(0.1, 1.0), description="(w_inf, w_train) in stage 2.")
    restart_warmup: bool = Field(
        default=False,
        description="progressive / reversed: treat the two stages as two training runs: the learning rate warms "
        "up and decays (train.warmup_ratio, cosine) within each stage, restarting at the switch.",
    )

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in SCHEDULES:
            raise ValueError(f"unknown schedule '{value}'; choose one of {', '.join(SCHEDULES)}")
        return value

    @model_validator(mode="after")
    def _non_negative(self) -> ScheduleSpec:
        for w in (*self.stage1, *self.stage2):
            if w < 0:
                raise ValueError("schedule weights (method.schedule.stage1, method.schedule.stage2) must be >= 0")
        return self


def weights(spec: ScheduleSpec, step: int, total_steps: int) -> Weights:
    """(w_inf, w_train) for the update with 0-based index `step` out of `total_steps`."""
    if total_steps < 1 or step < 0:
        raise ValueError(f"schedule needs 0 <= step and total_steps >= 1 (got step={step}, total_steps={total_steps})")
    w_inf, w_train = SCHEDULES[spec.name](spec, step, total_steps)
    return float(w_inf), float(w_train)


def stage_starts(spec: ScheduleSpec, total_steps: int) -> list[int]:
    """The 0-based first update of each stage: [0, first update at or after the switch] for the schedules with
    a switch (progressive, reversed) when it falls inside the run, else [0]."""
    if spec.name not in ("progressive", "reversed"):
        return [0]
    switch = math.ceil(spec.switch * total_steps)  # the first step with step >= switch * total
    return [0, switch] if 0 < switch < total_steps else [0]


def lr_factor(step: int, starts: list[int], total_steps: int, warmup_ratio: float) -> float:
    """The learning-rate multiplier at update `step`: transformers' cosine schedule with warm-up
    (get_cosine_schedule_with_warmup) run afresh in each stage [starts[i], starts[i+1]); with starts [0] it is
    that schedule over the whole run."""
    begin = max(s for s in starts if s <= step)
    end = min([s for s in starts if s > step] + [total_steps])
    local, length = step - begin, end - begin
    warmup = round(warmup_ratio * length)
    if local < warmup:
        return local / max(1, warmup)
    progress = (local - warmup) / max(1, length - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
