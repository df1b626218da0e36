"""The training data of a fusion method: per example, every view the method needs, in the target's tokens.

A view (methods/base.py token conventions) holds input_ids [T], labels [T] (-100 on the prompt) and the sparse
teacher topk_ids / topk_logp [T, k] (-inf on the prompt and where absent). TRAINING is (prompt, reference)
with the teacher `method.combine`d from every candidate's store; INFERENCE is (prompt, judged best response)
with the winner's teacher. Both views cover the same example ids: an example missing from a needed view, or
whose view has no response token, is dropped and listed in `dataset.dropped` with the reason.

A method with `needs_pairs` (fusechat3) gets one item per preference pair: the INFERENCE view is the chosen
(judged best) response, the REJECTED view another candidate's response to the same prompt, as the method's
`rejected` picks them from every candidate's judge score (the selection store's `scores`). An example with no
pair is one item whose REJECTED view has no response token (labels all -100).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from harness.errors import HarnessError
from harness.signals.comparable_ce import comparable_ces
from harness.signals.store import ExampleSignal, SignalReader, SignalSet
from methods.base import FusionBatch, FusionMethod, PairView, SeqBatch, Signal, SourceTargets, View

log = logging.getLogger(__name__)


@dataclass
class ViewItem:
    """One example in one view, unpadded."""

    input_ids: torch.Tensor  # [T] long
    labels: torch.Tensor  # [T] long, -100 on the prompt
    topk_ids: torch.Tensor  # [T, k] long, the teacher for token i (predicted from position i-1)
    topk_logp: torch.Tensor  # [T, k] float32, -inf where absent
    index: int = -1  # the item's position in the dataset


FusionItem = dict[View, ViewItem]


def _full(ex: ExampleSignal, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The example's teacher over all T positions (prompt rows empty), cut to `length` tokens."""
    k = ex.topk_ids.shape[1]
    ids = np.zeros((len(ex.input_ids), k), dtype=np.int64)
    logp = np.full((len(ex.input_ids), k), -np.inf, dtype=np.float32)
    ids[ex.resp_start :] = ex.topk_ids
    logp[ex.resp_start :] = ex.topk_logp
    return torch.from_numpy(ids[:length]), torch.from_numpy(logp[:length])


def _tokens(ex: ExampleSignal, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = torch.from_numpy(ex.input_ids[:length].astype(np.int64))
    labels = input_ids.clone()
    labels[: ex.resp_start] = -100
    return input_ids, labels


def _comparable(rows: Mapping[str, ExampleSignal]) -> dict[str, float]:
    """Each candidate's CE over the answer characters every candidate's window covers (stores without the
    per-token columns keep their own CE)."""
    if all("token_logp" in ex.extras and "token_end" in ex.extras for ex in rows.values()):
        ces, _ = comparable_ces({n: (ex.extras["token_logp"], ex.extras["token_end"]) for n, ex in rows.items()})
        return ces
    return {n: ex.ce for n, ex in rows.items()}


class FusionDataset(Dataset[FusionItem]):
    """Examples with every view `method.needs`, read lazily from memory-mapped signal shards."""

    def __init__(
        self,
        signal_sets: Mapping[Signal, SignalSet],
        method: FusionMethod,
        max_length: int | None = None,
        cache_shards: int = 32,
    ) -> None:
        self.method = method
        self.views = sorted(method.needs, key=lambda m: m.value)
        self.max_length = max_length
        missing = [v.value for v in self.views if v not in signal_sets]
        if missing:
            raise HarnessError(
                f"method '{method.name}' needs {' and '.join(missing)} signals; extract them first", "signals"
            )
        self.training: dict[str, SignalReader] = {}
        self.inference: SignalReader | None = None
        per_view: dict[Signal, list[SignalReader]] = {}
        if Signal.TRAINING in self.views:
            sset = signal_sets[Signal.TRAINING]
            self.training = {n: SignalReader(s, cache_shards) for n, s in sset.stores().items()}
            per_view[Signal.TRAINING] = list(self.training.values())
        if Signal.INFERENCE in self.views:
            sel = signal_sets[Signal.INFERENCE].selection_store()
            if sel is None:
                raise HarnessError(
                    "inference signals have no judged selection; extract them again", "signals"
                )
            self.inference = SignalReader(sel, cache_shards)
            per_view[Signal.INFERENCE] = [self.inference]
        order = next(iter(per_view.values()))[0].ids()
        every = set().union(*(r.index for readers in per_view.values() for r in readers))
        order += sorted(every - set(order))
        self.ids: list[str] = []
        self.dropped: dict[str, str] = {}
        for ex_id in order:
            reason = self._unusable(ex_id, per_view)
            if reason:
                self.dropped[ex_id] = reason
            else:
                self.ids.append(ex_id)
        if self.dropped:
            log.warning(
                "fusion data: %d of %d examples dropped (e.g. %s: %s)",
                len(self.dropped),
                len(order),
                *next(iter(self.dropped.items())),
            )
        if not self.ids:
            raise HarnessError(
                "no example has every signal view the method needs; check the corpus and max_length",
                "signals",
            )
        self.items: list[tuple[str, str | None]] = [(ex_id, None) for ex_id in self.ids]
        self.candidates: dict[str, SignalReader] = {}
        if method.needs_pairs:
            self._pair_items(signal_sets[Signal.INFERENCE], cache_shards)

    def _pair_items(self, sset: SignalSet, cache_shards: int) -> None:
        """One item per (example, rejected candidate) that the method pairs with the judged winner."""
        self.candidates = {n: SignalReader(s, cache_shards) for n, s in sset.stores().items()}
        selection = sset.selection_store()
        assert selection is not None
        names = selection.meta.candidates
        ids, winners, scores = (selection.column(c) for c in ("id", "winner", "scores"))
        judged = {i: (w, dict(zip(names, sc, strict=True))) for i, w, sc in zip(ids, winners, scores, strict=True)}
        self.items = []
        for ex_id in self.ids:
            winner, by_name = judged[ex_id]
            usable = [
                name for name in self.method.rejected(winner, by_name)
                if name != winner and name in self.candidates and self._unusable(ex_id, {Signal.INFERENCE: [self.candidates[name]]}) is None
            ]
            self.items += [(ex_id, name) for name in usable] or [(ex_id, None)]
        log.info("fusion data: %d preference pairs over %d examples", sum(r is not None for _, r in self.items), len(self.ids))

    def _unusable(self, ex_id: str, per_view: dict[Signal, list[SignalReader]]) -> str | None:
        for view, readers in per_view.items():
            for reader in readers:
                if ex_id not in reader.index:
                    return f"no {view.value} signals"
                if reader.n_response[ex_id] <= 0:
                    return f"no response token in the {view.value} view"
                if self.max_length is not None and reader.resp_start[ex_id] >= self.max_length:
                    return f"prompt fills max_length in the {view.value} view"
        return None

    def __len__(self) -> int:
        return len(self.items)

    def _length(self, ex: ExampleSignal) -> int:
        return len(ex.input_ids) if self.max_length is None else min(len(ex.input_ids), self.max_length)

    def _training_view(self, ex_id: str) -> ViewItem:
        rows = {name: reader.get(ex_id) for name, reader in self.training.items()}
        first = next(iter(rows.values()))
        length = self._length(first)
        for name, ex in rows.items():
            if not np.array_equal(ex.input_ids, first.input_ids):
                raise HarnessError(
                    f"example '{ex_id}': signals of '{name}' use another target tokenization; extract again",
                    "signals",
                )
        ces = _comparable(rows)
        teacher = self.method.combine(
            [SourceTargets(name, ces[name], *_full(ex, length)) for name, ex in rows.items()]
        )
        return ViewItem(*_tokens(first, length), teacher.topk_ids, teacher.topk_logp.float())

    def _inference_view(self, ex_id: str) -> ViewItem:
        assert self.inference is not None
        ex = self.inference.get(ex_id)
        length = self._length(ex)
        input_ids, labels = _tokens(ex, length)
        if ex.extras.get("teach") is False:  # signals.truncated drop: every candidate was cut off
            labels[:] = -100
        return ViewItem(input_ids, labels, *_full(ex, length))

    def _rejected_view(self, ex_id: str, name: str | None, chosen: ViewItem) -> ViewItem:
        if name is None:  # no pair: the chosen tokens, none of them counted
            return ViewItem(chosen.input_ids, torch.full_like(chosen.labels, -100), chosen.topk_ids, torch.full_like(chosen.topk_logp, float("-inf")))
        ex = self.candidates[name].get(ex_id)
        length = self._length(ex)
        return ViewItem(*_tokens(ex, length), *_full(ex, length))

    def __getitem__(self, index: int) -> FusionItem:
        ex_id, rejected = self.items[index]
        item: FusionItem = {}
        if Signal.TRAINING in self.views:
            item[Signal.TRAINING] = self._training_view(ex_id)
        if Signal.INFERENCE in self.views:
            item[Signal.INFERENCE] = self._inference_view(ex_id)
        if self.method.needs_pairs:
            item[PairView.REJECTED] = self._rejected_view(ex_id, rejected, item[Signal.INFERENCE])
        for view in item.values():
            view.index = index
        return item


def build_fusion_dataset(
    signal_sets: Mapping[Signal, SignalSet] | Sequence[SignalSet],
    method: FusionMethod,
    max_length: int | None = None,
) -> FusionDataset:
    """The dataset a method trains on, from the signal sets of the modes it needs (a mapping or a list)."""
    sets = dict(signal_sets) if isinstance(signal_sets, Mapping) else {s.mode: s for s in signal_sets}
    return FusionDataset(sets, method, max_length)


def collate(items: Sequence[FusionItem]) -> FusionBatch:
    """Pad each view to its longest example and widest teacher: labels -100, topk_logp -inf, ids 0."""
    views: dict[View, SeqBatch] = {}
    for view in items[0]:
        parts = [item[view] for item in items]
        b = len(parts)
        t = max(len(p.input_ids) for p in parts)
        k = max(p.topk_ids.shape[1] for p in parts)
        input_ids = torch.zeros((b, t), dtype=torch.long)
        attention = torch.zeros((b, t), dtype=torch.long)
        labels = torch.full((b, t), -100, dtype=torch.long)
        topk_ids = torch.zeros((b, t, k), dtype=torch.long)
        topk_logp = torch.full((b, t, k), float("-inf"), dtype=torch.float32)
        for i, p in enumerate(parts):
            n, kk = len(p.input_ids), p.topk_ids.shape[1]
            input_ids[i, :n] = p.input_ids
            attention[i, :n] = 1
            labels[i, :n] = p.labels
            topk_ids[i, :n, :kk] = p.topk_ids
            topk_logp[i, :n, :kk] = p.topk_logp
        index = torch.tensor([p.index for p in parts], dtype=torch.long)
        views[view] = SeqBatch(input_ids, attention, labels, topk_ids, topk_logp, index)
    return FusionBatch(views)
