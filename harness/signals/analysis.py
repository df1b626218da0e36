"""What the signals say: which candidate teaches each example (MinCE in training mode, the judges in inference
mode), and how well each source's teacher survived the move onto the target's tokens (the signal audit)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harness.modes import Signal
from harness.signals.comparable_ce import comparable_ces
from harness.signals.inputs import CorpusRow
from harness.signals.store import SignalSet, SignalStore
from harness.signals.teacher import AUDIT_COLUMNS


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
    mince: dict[str, str] = {}  # example id -> MinCE winner
    judged: dict[str, tuple[str, dict[str, float], str | None]] = {}  # id -> (judged winner, scores, skill)
    for sset in sets:
        if sset.mode is Signal.TRAINING:
            names = list(sset.candidates)
            stores = sset.stores()
            first = stores[names[0]]
            ces = _training_ces(stores, names)
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
        if sset.mode is Signal.TRAINING:
            mince = dict(zip(ids, winners, strict=True))
        else:
            rows = first.column("scores")
            judged = {i: (w, dict(zip(names, r, strict=True)), s) for i, w, r, s in zip(ids, winners, rows, skills, strict=True)}
        key = sset.mode.value
        out[key] = _fractions(winners, names)
        for skill in sorted({s for s in skills if s is not None}):
            mine = [w for w, s in zip(winners, skills, strict=True) if s == skill]
            entry = out["by_skill"].setdefault(skill, {"training": {}, "inference": {}, "n": len(mine)})
            entry[key] = _fractions(mine, names)
    if mince and judged:
        out["disagreement"] = disagreement_stats(mince, judged)
    return out


def _training_ces(stores: Mapping[str, SignalStore], names: Sequence[str]) -> np.ndarray:
    """[candidate, example] CEs as MinCE compares them: over the answer characters every candidate covers."""
    if not all({"token_logp", "token_end"} <= set(stores[n].columns()) for n in names):
        return np.array([stores[n].column("ce") for n in names], dtype=np.float64)
    per = {n: (stores[n].column("token_logp"), stores[n].column("token_end")) for n in names}
    n_examples = len(per[names[0]][0])
    out = np.empty((len(names), n_examples), dtype=np.float64)
    for e in range(n_examples):
        ces, _ = comparable_ces({n: (per[n][0][e], per[n][1][e]) for n in names})
        out[:, e] = [ces[n] for n in names]
    return out


def winner_reference_score(signal_sets: Mapping[Signal, SignalSet], corpus: Sequence[CorpusRow]) -> dict[str, Any] | None:
    """Inference mode: the reference scorer's mean score of the judged winners' responses, overall and per skill.

    With the reference judge this is the best any judge could do with these candidates; a learned judge (reward
    models) falls short of it by its mistakes. None without inference-mode signals."""
    from harness.signals.judges import ReferenceJudge

    sset = signal_sets.get(Signal.INFERENCE)
    selection = sset.selection_store() if sset is not None else None
    if selection is None:
        return None
    rows = {r.id: r for r in corpus}
    scorer = ReferenceJudge()
    by_skill: dict[str, list[float]] = {}
    for example, response in zip(selection.column("id"), selection.column("response"), strict=True):
        row = rows[example]
        score = scorer.score(response, row.reference, {"skill": row.skill})
        by_skill.setdefault(row.skill or "all", []).append(score)
    every = [v for values in by_skill.values() for v in values]
    return {
        "overall": round(sum(every) / len(every), 6) if every else None,
        "by_skill": {k: round(sum(v) / len(v), 6) for k, v in sorted(by_skill.items())},
    }


def disagreement_stats(
    mince: Mapping[str, str], judged: Mapping[str, tuple[str, Mapping[str, float], str | None]]
) -> dict[str, dict[str, Any]]:
    """How often the two modes' signals disagree, overall and per skill, over the examples both modes scored.

    `disagreement`: the share of examples where the MinCE winner is judged worse than the best candidate (it is
    not among the judges' top scores); independent of how the judges break ties. `decisive`: how many examples
    the judges score unevenly (someone better than someone), and `disagreement_decisive` the share of those where
    MinCE picks a worse one: where every candidate is judged alike, the two signals cannot disagree.
    `winner_differs`: the share where the MinCE winner is not the judged winner, ties included (so it depends on
    the tie rule). `judged` maps id -> (judged winner, {candidate: score}, skill)."""
    groups: dict[str, list[tuple[bool, bool, bool]]] = {"overall": []}
    for i, (winner, scores, skill) in judged.items():
        if i not in mince:
            continue
        values = [v for v in scores.values() if not math.isnan(v)]
        best = max(values) if values else math.nan
        mine = scores.get(mince[i], math.nan)
        worse = bool(values) and (math.isnan(mine) or mine < best)
        decisive = bool(values) and min(values) < best
        row = (worse, decisive, mince[i] != winner)
        groups["overall"].append(row)
        if skill is not None:
            groups.setdefault(skill, []).append(row)

    def share(a: int, b: int) -> float | None:
        return round(a / b, 6) if b else None

    return {
        name: {
            "n": len(rows),
            "disagreement": share(sum(r[0] for r in rows), len(rows)),
            "decisive": sum(r[1] for r in rows),
            "disagreement_decisive": share(sum(r[0] for r in rows), sum(r[1] for r in rows)),
            "winner_differs": share(sum(r[2] for r in rows), len(rows)),
        }
        for name, rows in groups.items()
    }


def _fractions(winners: Sequence[str], names: Sequence[str]) -> dict[str, float]:
    total = len(winners)
    return {n: (sum(w == n for w in winners) / total if total else 0.0) for n in names}


def signal_audit(signal_sets: Mapping[Signal, SignalSet] | Sequence[SignalSet]) -> dict[str, dict[str, Any]]:
    """Per mode and per candidate (a source -> target pair; the target itself when it competes), over every
    example of its store:

    target_tokens: response tokens of the target; aligned_fraction: the share of them whose teacher is the
    source's distribution at the token with the identical span (the rest fall back to a one-hot);
    top1_agreement: among those, the share whose top-1 target token reads as the source's own top-1 (the same
    text, or both a stop token); stop_mass: the source's mean probability on its stop tokens (EOS, end of turn)
    there; stop_to_stop: the share of that mass landing on the target's stop tokens; lost_mass: the share of the
    source's top-k mass on ids that map to no target token; byte_mass: the share of it landing on the target's
    byte-fallback ids (`<0x2C>`; near 0 on ordinary text); answer_cut: the share of examples whose answer this
    model's window (signals.max_length) cuts before its end; cut_off (inference mode): the share of this
    candidate's generations cut off at signals.max_new_tokens. None where a figure has no denominator."""
    sets = list(signal_sets.values()) if isinstance(signal_sets, Mapping) else list(signal_sets)
    out: dict[str, dict[str, Any]] = {}
    for sset in sets:
        out[sset.mode.value] = {name: store_audit(store) for name, store in sset.stores().items()}
    return out


def store_audit(store: SignalStore) -> dict[str, Any]:
    """`signal_audit`'s figures for one candidate store (None for stores written before the audit existed)."""
    names = ["n_tokens", "resp_start", "n_aligned", *AUDIT_COLUMNS]
    totals = dict.fromkeys(names, 0.0)
    for table in store.iter_shards():
        if not set(AUDIT_COLUMNS) <= set(table.column_names):
            return {"target_tokens": None}
        for name in names:
            totals[name] += float(np.sum(table.column(name).to_numpy().astype(np.float64)))
    tokens = totals["n_tokens"] - totals["resp_start"]
    aligned = totals["n_aligned"]

    def share(a: float, b: float) -> float | None:
        return round(a / b, 6) if b > 0 else None

    def flag_share(name: str) -> float | None:
        if name not in store.columns():
            return None
        flags = [bool(v) for v in store.column(name)]
        return share(sum(flags), len(flags))

    cut_off = flag_share("finished")
    return {
        "target_tokens": int(tokens),
        "aligned_fraction": share(aligned, tokens),
        "top1_agreement": share(totals["audit_top1_same"], aligned),
        "stop_mass": share(totals["audit_stop_mass"], aligned),
        "stop_to_stop": share(totals["audit_stop_to_stop"], totals["audit_stop_mass"]),
        "lost_mass": share(totals["audit_lost_mass"], totals["audit_mass"]),
        "byte_mass": share(totals["audit_byte_mass"], totals["audit_mass"]),
        "answer_cut": flag_share("answer_cut"),
        "cut_off": None if cut_off is None else round(1.0 - cut_off, 6),
    }
