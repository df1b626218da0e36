"""Which candidate teaches each example, by MinCE in training mode and by the judges in inference mode."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harness.modes import Signal
from harness.signals.inputs import CorpusRow
from harness.signals.store import SignalSet


def selection_stats(
    signal_sets: Mapping[Signal, SignalSet] | Sequence[SignalSet], corpus: Sequence[CorpusRow] | None = None
) -> dict[str, Any]:
    """Which candidate would teach each example: per candidate the fraction of examples it wins by MinCE in
    training mode and by judge vote in inference mode, overall and per corpus skill.

    Returns {"training": {cand: frac}, "inference": {cand: frac}, "by_skill": {skill: {"training": {...},
    "inference": {...}, "n": count}}}; a mode absent from `signal_sets` gives an empty dict. Skills come from
    `corpus` when given, else from the stores."""
    sets = list(signal_sets.values()) if isinstance(signal_sets, Mapping) else list(signal_sets)
    skill_of = {r.id: r.skill for r in corpus} if corpus is not None else None
    out: dict[str, Any] = {"training": {}, "inference": {}, "by_skill": {}}
    for sset in sets:
        if sset.mode is Signal.TRAINING:
            names = list(sset.candidates)
            stores = sset.stores()
            first = stores[names[0]]
            ces = np.array([stores[n].column("ce") for n in names], dtype=np.float64)
            winners = [names[i] for i in np.where(np.isnan(ces), np.inf, ces).argmin(axis=0)]
        else:
            selection = sset.selection_store()
            if selection is None:
                continue
            first = selection
            names = list(first.meta.candidates)
            winners = first.column("winner")
        ids, skills = first.column("id"), first.column("skill")
        if skill_of is not None:
            skills = [skill_of.get(i) for i in ids]
        key = sset.mode.value
        out[key] = _fractions(winners, names)
        for skill in sorted({s for s in skills if s is not None}):
            mine = [w for w, s in zip(winners, skills, strict=True) if s == skill]
            entry = out["by_skill"].setdefault(skill, {"training": {}, "inference": {}, "n": len(mine)})
            entry[key] = _fractions(mine, names)
    return out


def _fractions(winners: Sequence[str], names: Sequence[str]) -> dict[str, float]:
    total = len(winners)
    return {n: (sum(w == n for w in winners) / total if total else 0.0) for n in names}
