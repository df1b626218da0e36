"""Seed replicates of a grid point, summarised: per-seed values, their mean and 95% t-interval, and a comparison
with the unfused target that says whether a difference is beyond document sampling and beyond seed noise.

A sweep (harness/sweeps.py) hands over its grid points, each with the run directories of its seeds; everything
here is read from those runs' summary.json and per-sample files, so a sweep's summary can be recomputed from its
runs (`summarise_points`). The tests are harness.analysis.stats.compare_over_seeds; docs/statistics.md says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.analysis.report import load_summary
from harness.analysis.stats import (
    BASELINE_LABEL,
    compare_over_seeds,
    holm,
    load_samples,
    seed_summary,
    t_interval,
)
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


def summarise_points(points: Sequence[Point], *, seed: int = 0) -> dict[str, Any]:
    """The `points` and `comparisons` of a sweep's summary.json.

    points: each grid point's label, grid values, runs by seed, scores (label -> task -> per-seed values, mean,
    sd, ci95) and `gain` (the method minus target-base, per seed, with its t-interval). comparisons: each point's
    method against target-base on each task, over its seeds (`compare_over_seeds`), Holm-adjusted across every
    comparison of the sweep on `p_value`. `seed` drives the Monte Carlo permutation tests of continuous metrics.
    """
    out_points: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for label, values, dirs in points:
        summaries = {}
        for d in dirs:
            s = load_summary(Path(d))
            if s.get("seed") in summaries:
                raise HarnessError(f"grid point '{label}' has seed {s['seed']} twice", "report")
            summaries[s["seed"]] = s
        runs = {str(k): Path(d).name for k, d in zip(summaries, dirs, strict=True)}
        first = next(iter(summaries.values()))
        out_points.append({"label": label, "values": values, "method": first["method"],
                           "schedule": first.get("schedule"), "runs": runs, **_point_scores(summaries)})  # fmt: skip
        method = first["method"]
        for task, info in first["tasks"].items():
            pairs = [(load_samples(Path(d), method, task, info["metric"]),
                      load_samples(Path(d), BASELINE_LABEL, task, info["metric"])) for d in dirs]  # fmt: skip
            binary = bool(info.get("binary", all(v in (0.0, 1.0) for a, b in pairs for v in (*a.values(), *b.values()))))
            comp = asdict(compare_over_seeds(pairs, binary, seed=seed))
            comp["per_seed"] = {str(s): v for s, v in zip(summaries, comp["per_seed"], strict=True)}
            rows.append({"point": label, "task": task, "a": method, "b": BASELINE_LABEL, **comp,
                         "interval": "t-over-seeds" if comp["ci_low"] is not None else None})  # fmt: skip
    for row, p_adj in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
        row["p_adjusted"] = p_adj
    return {"points": out_points, "comparisons": rows}


MARKER_NOTE = (
    "† p_adj < 0.05, ‡ p_adj < 0.01 vs target-base over the point's seeds: both the test over documents (the "
    "per-document differences summed over seeds: exact sign test for binary metrics, sign-flip permutation "
    "otherwise) and the paired t-test over the seeds must reject (the larger p), Holm-corrected across every "
    "point × task of the sweep (docs/statistics.md). With fewer than 3 seeds the t-test can hardly reject."
)
