"""FuseChat-3.0's implicit model fusion (FuseAI, 2024-2025): SFT on the judged best response, then DPO on pairs.

    stage (a), the first `sft_share` of the updates:   L = CE(y_w)
    stage (b), the rest:   L = mean over pairs of -log sigmoid(beta * (r_w - r_l)),   r = log pi(y|x) - log pi_ref(y|x)

y_w is the judged best response of inference mode (the selection store's winner) and y_l another candidate's
response to the same prompt; log pi(y|x) is the sum of the target's log-probabilities over the response tokens.
With `length_normalized`, r is divided by the response's token count: FuseChat-3.0's LN-DPO for Llama targets
(TRL's `sigmoid_norm`). pi_ref is the target as it is at the start of stage (b), i.e. after the SFT stage, as in
FuseChat-3.0 (DPO from the SFT model): its log-probabilities of every pair are computed once at the switch and kept
sealed in the run's training cache, so no second model is held in memory, and a run resumed in stage (b) reads them
back. The learning rate warms up and decays once per stage (two training runs in FuseChat-3.0), the DPO stage's
peak at `dpo_lr_scale` x train.lr: at the sandbox's SFT rate (2e-3) DPO collapsed the target on the default world
(knowledge 97.3 -> 5.0, reasoning 14.0 -> 0.0 at seed 0).

Pairs (`rejected`), from every candidate's judge score: `best-worst` pairs the winner with the lowest-scored
candidate (FuseChat-3.0: best and worst), `best-each` with every candidate scored below it; a pair is kept when the
winner's score exceeds the other's by more than 0, at least `min_margin` and at most `max_margin` (FuseChat-3.0 kept
reward-model margins in [0.01, 0.1]; the sandbox's reference judge scores 0 or 1). Lowest-score ties go to the
candidate listed first; scores that are not numbers never pair. Every item's chosen response is trained in stage (a),
so with `best-each` a prompt with several pairs counts once per pair there. Where FuseChat-3.0 splits its prompts
between the stages (4:6), here both stages see every prompt and `sft_share` splits the updates.
"""

from __future__ import annotations

import io
import math
from typing import Literal

import pydantic
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.registry import register_method
from harness.store import read_sealed, write_sealed
from methods.base import (
    FusionBatch,
    FusionMethod,
    LossParts,
    MethodParams,
    PairView,
    SeqBatch,
    Signal,
    StageContext,
    View,
)
from methods.losses import next_token_ce, score_view

REFERENCE_FILE = "reference_logps.pt"


class FuseChat3Params(MethodParams):
    """The stage split, DPO's beta and the pair rule."""

    sft_share: float = pydantic.Field(default=0.4, ge=0.0, le=1.0, description="Fraction of the updates in stage (a), SFT; the rest is DPO.")
    dpo_beta: float = pydantic.Field(default=0.1, gt=0.0, le=1e6, description="DPO's beta (TRL's default 0.1).")
    pairs: Literal["best-worst", "best-each"] = pydantic.Field(default="best-worst", description="Which candidates are paired as rejected with the winner.")
    min_margin: float = pydantic.Field(default=0.0, ge=0.0, le=1e6, description="Smallest judge-score margin of a kept pair (it must also exceed 0).")
    max_margin: float | None = pydantic.Field(default=None, ge=0.0, le=1e6, description="Largest margin of a kept pair (None: no bound).")
    length_normalized: bool = pydantic.Field(default=False, description="LN-DPO: each log-ratio divided by its response's token count.")
    dpo_lr_scale: float = pydantic.Field(
        default=0.16, gt=0.0, le=1.0,
        description="Peak learning rate of the DPO stage as a share of train.lr (FuseChat-3.0, Llama-3.1-8B: 8e-7 against SFT's 5e-6).",
    )


def sequence_logps(view: SeqBatch, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] sum of log q(y_t) over each row's counted response tokens (shifted once), and [B] their count."""
    counted = view.labels[:, 1:] != -100
    log_q = torch.log_softmax(logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    picked = log_q.gather(-1, view.labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * counted).sum(-1), counted.sum(-1)


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float,
    chosen_len: torch.Tensor | None = None, rejected_len: torch.Tensor | None = None,
) -> torch.Tensor:
    """[P] -log sigmoid(beta * (r_w - r_l)) of each pair; with lengths, each log-ratio is divided by its length."""
    r_w, r_l = chosen - ref_chosen, rejected - ref_rejected
    if chosen_len is not None and rejected_len is not None:
        r_w, r_l = r_w / chosen_len.clamp(min=1), r_l / rejected_len.clamp(min=1)
    return -F.logsigmoid(beta * (r_w - r_l))


@register_method("fusechat3")
class FuseChat3(FusionMethod):
    description = "FuseChat-3.0: SFT on the judged best response, then DPO on (best, worst) pairs of the candidates"
    needs = frozenset({Signal.INFERENCE})
    needs_pairs = True
    Params = FuseChat3Params
    params: FuseChat3Params
    reference: torch.Tensor | None = None  # [items, 2]: pi_ref's log-probabilities of (chosen, rejected)

    def rejected(self, winner: str, scores: dict[str, float]) -> list[str]:
        p = self.params
        best = scores.get(winner, math.nan)

        def kept(name: str) -> bool:
            margin = best - scores[name]
            return name != winner and margin > 0 and margin >= p.min_margin and (p.max_margin is None or margin <= p.max_margin)

        others = [n for n, s in scores.items() if n != winner and math.isfinite(s) and math.isfinite(best)]
        if p.pairs == "best-worst":
            others = [min(others, key=lambda n: scores[n])] if others else []
        return [n for n in others if kept(n)]

    def switch(self, total_steps: int) -> int:
        return min(total_steps, max(0, round(self.params.sft_share * total_steps)))

    def stage_starts(self, total_steps: int) -> list[int]:
        switch = self.switch(total_steps)
        return [0, switch] if 0 < switch < total_steps else [0]

    def lr_scale(self, stage: int) -> float:
        return self.params.dpo_lr_scale if stage == 1 else 1.0

    def views_at(self, step: int, total_steps: int) -> frozenset[View]:
        if step < self.switch(total_steps):
            return frozenset({Signal.INFERENCE})
        return frozenset({Signal.INFERENCE, PairView.REJECTED})

    def begin_stage(self, stage: int, context: StageContext) -> None:
        """At the switch to DPO: pi_ref's log-probabilities of every item, computed once with the model as it is."""
        if context.step < self.switch(context.total_steps):
            return  # the SFT stage
        path = context.cache_dir / REFERENCE_FILE
        found = read_sealed(path, "reference log-probabilities")
        if found is not None:
            self.reference = torch.load(io.BytesIO(found), weights_only=True)
            return
        if not context.first_update:
            raise HarnessError(
                f"the reference log-probabilities of this DPO stage are missing ('{path}') and the model has moved on since; "
                "delete the run's training cache folder to train again", "train",
            )
        rows: dict[int, torch.Tensor] = {}
        views: frozenset[View] = frozenset({Signal.INFERENCE, PairView.REJECTED})
        for batch in context.batches():
            batch, logits = context.score(batch, views)
            chosen, _ = sequence_logps(batch.views[Signal.INFERENCE], logits[Signal.INFERENCE])
            rejected, _ = sequence_logps(batch.views[PairView.REJECTED], logits[PairView.REJECTED])
            index = batch.views[Signal.INFERENCE].index
            assert index is not None
            for i, c, r in zip(index.tolist(), chosen.float().cpu(), rejected.float().cpu(), strict=True):
                rows[i] = torch.stack([c, r])
        self.reference = torch.stack([rows[i] for i in range(len(rows))])
        if context.is_main:
            buf = io.BytesIO()
            torch.save(self.reference, buf)
            write_sealed(path, buf.getvalue())

    def loss(self, batch: FusionBatch, student_logits: dict[View, torch.Tensor], step: int, total_steps: int) -> LossParts:
        chosen_view = batch.views[Signal.INFERENCE]
        if step < self.switch(total_steps):
            ce = next_token_ce(score_view(chosen_view, student_logits[Signal.INFERENCE]))
            return LossParts(ce, {"sft": ce}, {"stage": 0.0})
        if self.reference is None or chosen_view.index is None:
            raise RuntimeError("fusechat3: DPO stage without reference log-probabilities (begin_stage was not called)")
        rejected_view = batch.views[PairView.REJECTED]
        chosen, chosen_len = sequence_logps(chosen_view, student_logits[Signal.INFERENCE])
        rejected, rejected_len = sequence_logps(rejected_view, student_logits[PairView.REJECTED])
        ref = self.reference.to(chosen.device)[chosen_view.index]
        paired = rejected_len > 0
        lengths = (chosen_len, rejected_len) if self.params.length_normalized else (None, None)
        per_pair = dpo_loss(chosen, rejected, ref[:, 0].to(chosen.dtype), ref[:, 1].to(chosen.dtype), self.params.dpo_beta, *lengths)
        n = paired.sum()
        dpo = (per_pair * paired).sum() / n.clamp(min=1)  # 0, still attached to the graph, when no row is a pair
        margin = ((chosen - ref[:, 0]) - (rejected - ref[:, 1])).detach()
        return LossParts(
            dpo,
            {"dpo": dpo, "reward_margin": (self.params.dpo_beta * margin * paired).sum() / n.clamp(min=1), "pairs": n.float()},
            {"stage": 1.0, "dpo_beta": self.params.dpo_beta},
        )
