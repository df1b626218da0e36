"""Seed replicates of a grid point, summarised: per-seed values, their mean and 95% t-interval, and a comparison
with the unfused target that says whether a difference is beyond document sampling and beyond seed noise.

A sweep (harness/sweeps.py) hands over its grid points, each with the run directories of its seeds; everything
here is read from those runs' summary.json and per-sample files, so a sweep's summary can be recomputed from its
runs (`summarise_points`). The tests are harness.analysis.stats.compare_over_seeds; docs/statistics.md says why.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.analysis.over_seeds import holm_with_mde, seeds_test_row
from harness.analysis.report import load_summary
from harness.analysis.stats import BASELINE_LABEL, holm, seed_summary, t_interval
from harness.errors import HarnessError

Point = tuple[str, dict[str, Any], Sequence[Path]]  # label, grid values, run directories of its seeds


def spread(per_seed: dict[int, float]) -> dict[str, Any]:
    """Per-seed values with their mean, sd and 95% t-interval over the seeds (None for one seed)."""
    values = list(per_seed.values())
    mean, sd = seed_summary(values)
    ci = t_interval(values)
    return {"per_seed": {str(k): v for k, v in per_seed.items()}, "mean": mean, "sd": None if len(values) < 2 else sd,
            "ci95": None if ci is None else list(ci), "n_seeds": len(values)}  # fmt: skip


def _averages(block: dict[str, Any]) -> dict[str, float]:
    """The overall average over tasks (`avg`) and each category's (`avg_<category>`), as the tables compute them."""
    values = {t: e["value"] for t, e in block.items() if e.get("value") is not None}
    if len(values) != len(block) or not values:
        return {}
    out = {"avg": sum(values.values()) / len(values)}
    cats: dict[str, list[float]] = {}
    for t, e in block.items():
        cats.setdefault(e.get("category") or "other", []).append(values[t])
    if len(cats) > 1:
        out.update({f"avg_{c}": sum(v) / len(v) for c, v in cats.items()})
    return out


def _point_scores(summaries: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """label -> task (and average) -> spread over seeds, for the method, target-base and each source."""
    first = next(iter(summaries.values()))
    blocks = {first["method"]: "tasks", BASELINE_LABEL: "baseline", **{n: n for n in first.get("sources") or {}}}
    scores: dict[str, Any] = {}
    for label, where in blocks.items():
        per_seed = {seed: (s[where] if where in ("tasks", "baseline") else s["sources"][where]) for seed, s in summaries.items()}
        keys = list(dict.fromkeys(k for b in per_seed.values() for k in (*b, *_averages(b))))
        entry = {}
        for key in keys:
            vals = {seed: (b[key]["value"] if key in b else _averages(b).get(key)) for seed, b in per_seed.items()}
            if all(v is not None for v in vals.values()):
                entry[key] = spread(vals)  # type: ignore[arg-type]
        scores[label] = entry
    gain: dict[str, Any] = {}
    method = scores[first["method"]]
    for key, stats in method.items():
        base = scores[BASELINE_LABEL].get(key)
        if base is not None and stats["per_seed"].keys() == base["per_seed"].keys():
            gain[key] = spread({int(s): v - base["per_seed"][s] for s, v in stats["per_seed"].items()})
    return {"scores": scores, "gain": gain}


def versus_axis(axes: dict[str, Any]) -> str | None:
    """The grid field whose values are compared head to head: the method if it is swept, else the schedule."""
    return next((k for k in ("method.name", "method.schedule.name") if len(axes.get(k) or []) > 1), None)


def summarise_points(points: Sequence[Point], *, seed: int = 0) -> dict[str, Any]:
    """The `points`, `comparisons` and `versus` of a sweep's summary.json.

    points: each grid point's label, grid values, runs by seed, scores (label -> task -> per-seed values, mean,
    sd, ci95) and `gain` (the method minus target-base, per seed, with its t-interval). comparisons: each point's
    method against target-base on each task, over its seeds (`compare_over_seeds`), Holm-adjusted across every
    comparison of the sweep on `p_value`. versus: where the grid sweeps the method (else the schedule), every two
    points that differ only in it, head to head on each task over their common seeds, Holm-adjusted across
    `versus`. `seed` drives the Monte Carlo permutation tests of continuous metrics.
    """
    out_points: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    by_seed: dict[str, dict[Any, Path]] = {}
    for label, values, dirs in points:
        summaries = {}
        for d in dirs:
            s = load_summary(Path(d))
            if s.get("seed") in summaries:
                raise HarnessError(f"grid point '{label}' has seed {s['seed']} twice", "report")
            summaries[s["seed"]] = s
        runs = {str(k): Path(d).name for k, d in zip(summaries, dirs, strict=True)}
        by_seed[label] = {k: Path(d) for k, d in zip(summaries, dirs, strict=True)}
        first = next(iter(summaries.values()))
        out_points.append({"label": label, "values": values, "method": first["method"],
                           "schedule": first.get("schedule"), "runs": runs, **_point_scores(summaries)})  # fmt: skip
        method = first["method"]
        for task, info in first["tasks"].items():
            same = {s: (d, d) for s, d in by_seed[label].items()}  # both labels in each seed's run
            rows.append({"point": label, "task": task, "a": method, "b": BASELINE_LABEL,
                         **seeds_test_row(method, BASELINE_LABEL, task, info, same, seed)})
    for row, p_adj in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
        row["p_adjusted"] = p_adj
        del row["_estimate"]
    return {"points": out_points, "comparisons": rows, "versus": _versus(out_points, by_seed, seed)}


def _versus(points: list[dict[str, Any]], by_seed: dict[str, dict[Any, Path]], seed: int) -> list[dict[str, Any]]:
    """Head to head across the method (else the schedule) at each setting of the other grid values."""
    axes: dict[str, list[Any]] = {}
    for p in points:
        for k, v in p["values"].items():
            axes.setdefault(k, []).append(v)
    axis = versus_axis({k: list(dict.fromkeys(map(str, vs))) for k, vs in axes.items()})
    if axis is None:
        return []
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        rest = {k: v for k, v in p["values"].items() if k != axis}
        groups.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(p)
    rows: list[dict[str, Any]] = []
    for members in groups.values():
        for pa, pb in itertools.combinations(members, 2):
            seeds = [s for s in by_seed[pa["label"]] if s in by_seed[pb["label"]]]
            if not seeds:
                continue
            first_a = load_summary(by_seed[pa["label"]][seeds[0]])
            first_b = load_summary(by_seed[pb["label"]][seeds[0]])
            for task, info in first_a["tasks"].items():
                if task not in first_b["tasks"]:
                    continue
                runs = {s: (by_seed[pa["label"]][s], by_seed[pb["label"]][s]) for s in seeds}
                rows.append({"a": pa["label"], "b": pb["label"], "task": task,
                             **seeds_test_row(pa["method"], pb["method"], task, info, runs, seed)})
    holm_with_mde(rows)
    return rows


def against_reference(sweep_dir: Path, axis: str, reference: Any, *, seed: int = 0) -> list[dict[str, Any]]:
    """Every grid point of a finished sweep whose `axis` value is not `reference`, against the point with the same
    other grid values and `axis` = `reference` (e.g. each alignment strategy against `span`, method by method), on
    each task over their common seeds (`compare_over_seeds`), Holm-adjusted across all rows."""
    from harness.analysis.report import read_json_file

    summary = read_json_file(Path(sweep_dir) / "summary.json")
    points = summary.get("points") or []
    if not any(axis in p["values"] for p in points):
        raise HarnessError(f"the sweep '{sweep_dir}' has no grid axis '{axis}'", "report")
    if not any(str(p["values"].get(axis)) == str(reference) for p in points):
        raise HarnessError(f"the sweep '{sweep_dir}' has no point with {axis}={reference}", "report")
    runs = {p["label"]: {int(k): Path(sweep_dir) / "runs" / v for k, v in p["runs"].items()} for p in points}

    def rest(p: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in p["values"].items() if k != axis}, sort_keys=True, default=str)

    refs = {rest(p): p for p in points if str(p["values"].get(axis)) == str(reference)}
    rows: list[dict[str, Any]] = []
    for p in points:
        ref = refs.get(rest(p))
        if ref is None or ref is p:
            continue
        seeds = [k for k in runs[p["label"]] if k in runs[ref["label"]]]
        if not seeds:
            continue
        first = load_summary(runs[p["label"]][seeds[0]])
        for task, info in first["tasks"].items():
            pairs = {k: (runs[p["label"]][k], runs[ref["label"]][k]) for k in seeds}
            rows.append({"a": p["label"], "b": ref["label"], "task": task,
                         **seeds_test_row(p["method"], ref["method"], task, info, pairs, seed)})  # fmt: skip
    holm_with_mde(rows)
    return rows


MARKER_NOTE = (
    "† p_adj < 0.05, ‡ p_adj < 0.01 vs target-base over the point's seeds: both the test over documents (the "
    "per-document differences summed over seeds: exact sign test for binary metrics, sign-flip permutation "
    "otherwise) and the paired t-test over the seeds must reject (the larger p), Holm-corrected across every "
    "point × task of the sweep (docs/statistics.md); with one seed the test over documents alone. With fewer than "
    "3 seeds the t-test can hardly reject."
)
