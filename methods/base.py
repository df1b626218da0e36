"""The contract between fusion methods and the shared backend.

A method declares which signals it needs, how it turns the per-example signals of several sources into
one sparse teacher distribution (`combine`), and its loss for a batch at a step (`loss`). It never sees
the optimizer, the device placement or the launcher: harness/training/loop.py owns those.

Token conventions (shared with harness/signals/ and harness/training/loop.py):
- `input_ids[b, i]` is token i of prompt + response in the *target's* tokenization.
- `labels[b, i]` is that token where it belongs to the response, else -100 (prompt and padding).
- `topk_ids[b, i, :]` / `topk_logp[b, i, :]` are the teacher's top-k distribution over the target vocabulary
  *for token i*, i.e. predicted from position i-1 (next-token convention, never the current token).
  Entries that do not exist (fewer than k after vocabulary mapping, padding) have logp = -inf.
- Losses shift once: student logits at positions [:-1] are scored against labels and teachers at [1:].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import ClassVar

import torch

from harness.config import MethodSpec
from harness.modes import Signal
from methods.params import MethodParams, Parameter

__all__ = [
    "FusionBatch", "FusionMethod", "LossParts", "MethodParams", "PairView", "Parameter", "SeqBatch", "Signal", "SourceTargets",
    "StageContext", "View",
]


class PairView(str, Enum):
    """A view beyond the two signal modes: the rejected response of a preference pair (methods that set
    `FusionMethod.needs_pairs`; the chosen one is the INFERENCE view)."""

    REJECTED = "rejected"


View = Signal | PairView


@dataclass
class SourceTargets:
    """One source's signal for one example, already aligned to the target's tokens and vocabulary."""

    source: str
    ce: float  # length-normalised cross-entropy of the source on the response (its own tokenization)
    topk_ids: torch.Tensor  # [T, k] long, target vocabulary ids
    topk_logp: torch.Tensor  # [T, k] float, log-probabilities (-inf where absent)


@dataclass
class SeqBatch:
    """One view of a batch: a padded sequence of target tokens and the sparse teacher for each token."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long
    labels: torch.Tensor  # [B, T] long, -100 outside the response
    topk_ids: torch.Tensor  # [B, T, k] long
    topk_logp: torch.Tensor  # [B, T, k] float
    index: torch.Tensor | None = None  # [B] long: each row's item in the dataset (its order is fixed)

    def to(self, device: torch.device | str) -> SeqBatch:
        index = None if self.index is None else self.index.to(device)
        return SeqBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), self.topk_ids.to(device),
            self.topk_logp.to(device), index,
        )


@dataclass
class FusionBatch:
    """The views a method needs: TRAINING is (prompt, reference), INFERENCE is (prompt, best generated response)."""

    views: dict[View, SeqBatch]

    def to(self, device: torch.device | str) -> FusionBatch:
        return FusionBatch({k: v.to(device) for k, v in self.views.items()})


@dataclass
class LossParts:
    """The weighted total that is optimised, and every component and weight, logged separately."""

    total: torch.Tensor
    components: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class StageContext:
    """What the loop lends a method at the start of a training stage (`FusionMethod.begin_stage`): the model as it
    is now, scored without gradients, and a folder of the run's training cache for what the method computes once."""

    batches: Callable[[], Iterable[FusionBatch]]  # the whole dataset in order, unshuffled, on the model's device
    # the batch padded to its views' common length and their logits, without gradients (the loop's forward_views)
    score: Callable[[FusionBatch, frozenset[View]], tuple[FusionBatch, dict[View, torch.Tensor]]]
    cache_dir: Path
    is_main: bool  # only the main process writes to cache_dir
    step: int  # the update about to be computed (0-based)
    total_steps: int
    first_update: bool  # the stage starts now (False: a run resumed inside it)


class FusionMethod(ABC):
    """Base of every fusion method plugin. Subclasses set the class attributes and write `loss`."""

    name: ClassVar[str]
    description: ClassVar[str]
    needs: ClassVar[frozenset[Signal]]
    needs_pairs: ClassVar[bool] = False  # items are (chosen, rejected) pairs of inference mode (`rejected`)
    Params: ClassVar[type[MethodParams]] = MethodParams

    def __init__(self, spec: MethodSpec) -> None:
        """`spec` holds the shared fields (lam, temperature, ...); `self.params` this method's own, validated by
        `Params` (fields of `spec` that `Params` does not declare are another method's and are left out)."""
        self.spec = spec
        own = {k: v for k, v in spec.own_parameters().items() if k in self.Params.model_fields}
        self.params = self.Params.model_validate(own)

    def combine(self, candidates: list[SourceTargets]) -> SourceTargets:
        """Training mode: one teacher per example from all sources' signals. Default: MinCE (FuseLLM)."""
        return min(candidates, key=lambda c: c.ce)

    def stage_starts(self, total_steps: int) -> list[int]:
        """First update of each training stage; the loop restarts its learning-rate warm-up at each (default: one
        stage)."""
        return [0]

    def views_at(self, step: int, total_steps: int) -> frozenset[View]:
        """The views whose logits `loss` uses at this step (default: all of `needs`); the loop runs only these."""
        return frozenset(self.needs)

    def lr_scale(self, stage: int) -> float:
        """The peak learning rate of stage `stage` of `stage_starts` as a share of train.lr (default: 1)."""
        return 1.0

    def begin_stage(self, stage: int, context: StageContext) -> None:
        """Called by the loop before the first update of each stage of `stage_starts`, and when a run resumes
        inside a stage (default: nothing)."""
        return None

    def rejected(self, winner: str, scores: dict[str, float]) -> list[str]:
        """`needs_pairs` methods: the candidates whose responses are paired as rejected with the judged winner's,
        from every candidate's judge score (none: the example has no pair)."""
        return []

    @abstractmethod
    def loss(self, batch: FusionBatch, student_logits: dict[View, torch.Tensor], step: int, total_steps: int) -> LossParts:
        """The method's loss; `student_logits[view]` is [B, T, V] for each view in `views_at(step, total_steps)`."""
