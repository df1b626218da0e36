"""What finished runs say about power: per task and pair of systems, the documents, seeds and discordance (or SD
of differences) read from the per-sample files, and the minimum detectable differences they imply, for
`harness power --from`, the MDE of head-to-head rows in reports, and the dry run's lines. The formulas are
harness/analysis/power.py's.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.analysis.power import ASSUMED_P_DISCORDANT, PowerResult, mde_text, power_analysis, size_text
from harness.errors import HarnessError

# ----------------------------------------------------------------------------- estimates from finished runs


@dataclass(frozen=True)
class PairEstimate:
    """What finished per-sample files say about one pair of systems on one task: the documents, the seeds, the
    observed difference, the discordance (binary) or SD of differences (continuous, one seed) and the correlation
    of a document's difference between seeds (None with one seed)."""

    task: str
    a: str
    b: str
    n: int
    seeds: int
    binary: bool
    delta: float
    p_discordant: float | None
    sd_diff: float | None
    rho: float | None


def estimate_pair(task: str, a: str, b: str, pairs: Sequence[tuple[Mapping[Any, float], Mapping[Any, float]]],
                  binary: bool) -> PairEstimate:
    """The estimate from each seed's ({document: score} of a, of b), paired on the documents all seeds share."""
    shared = set.intersection(*(set(x) & set(y) for x, y in pairs))
    if not shared:
        raise HarnessError(f"{task}: '{a}' and '{b}' share no document", "power")
    keys = sorted(shared, key=str)
    diff = np.array([[x[k] - y[k] for k in keys] for x, y in pairs], dtype=float)  # seeds × documents
    rho = None
    if diff.shape[0] > 1:
        cors = [np.corrcoef(u, v)[0, 1] for u, v in itertools.combinations(diff, 2) if u.std() > 0 and v.std() > 0]
        rho = float(min(1.0, max(0.0, np.mean(cors)))) if cors else None
    p_d = float(np.mean(diff != 0)) if binary else None
    sd = None if binary else float(np.mean([row.std(ddof=1) for row in diff])) if diff.shape[1] > 1 else None
    return PairEstimate(task, a, b, len(keys), diff.shape[0], binary, float(diff.mean()), p_d, sd, rho)


def _labels(run_dir: Path) -> list[str]:
    from harness.analysis.stats import BASELINE_LABEL

    summary = json.loads((run_dir / "summary.json").read_text())
    order = [summary.get("method") or summary.get("label"), *(summary.get("sources") or {}), BASELINE_LABEL]
    present = {p.name for p in (run_dir / "eval").iterdir() if p.is_dir()} if (run_dir / "eval").is_dir() else set()
    return [x for x in dict.fromkeys(order) if x in present] + sorted(present - set(order))


def estimate(path: Path, task: str | None = None) -> list[PairEstimate]:
    """Per task and pair of systems, the estimates from a finished run (every two of its rows) or a sweep folder
    (every two grid points, and each point against target-base, over their common seeds)."""
    from harness.analysis.stats import BASELINE_LABEL, load_samples
    from harness.store import read_json_file

    path = Path(path)
    if (path / "sweep.json").is_file():
        summary = read_json_file(path / "summary.json", "power")
        groups: list[tuple[str, str, dict[int, tuple[Path, Path]]]] = []
        points = summary.get("points") or []
        runs = {p["label"]: {int(s): path / "runs" / r for s, r in p["runs"].items()} for p in points}
        methods = {p["label"]: p["method"] for p in points}
        for p in points:
            groups.append((p["label"], BASELINE_LABEL, {s: (d, d) for s, d in runs[p["label"]].items()}))
        for pa, pb in itertools.combinations(points, 2):
            common = {s: (runs[pa["label"]][s], runs[pb["label"]][s]) for s in runs[pa["label"]] if s in runs[pb["label"]]}
            if common:
                groups.append((pa["label"], pb["label"], common))
        out = []
        for a, b, seed_runs in groups:
            first = json.loads(next(iter(seed_runs.values()))[0].joinpath("summary.json").read_text())
            for t, info in first["tasks"].items():
                if task is not None and t != task:
                    continue
                la, lb = methods[a], methods.get(b, b)
                pairs = [(load_samples(ra, la, t, info["metric"]), load_samples(rb, lb, t, info["metric"]))
                         for ra, rb in seed_runs.values()]  # fmt: skip
                out.append(estimate_pair(t, a, b, pairs, bool(info.get("binary", True))))
        return _nonempty(out, path, task)
    if not (path / "summary.json").is_file():
        raise HarnessError(f"'{path}' is neither a finished run nor a sweep folder (no summary.json)", "power")
    summary = read_json_file(path / "summary.json", "power")
    out = []
    for t, info in summary["tasks"].items():
        if task is not None and t != task:
            continue
        labels = [x for x in _labels(path) if (path / "eval" / x / f"{t}.jsonl").is_file()]
        for a, b in itertools.combinations(labels, 2):
            pair = (load_samples(path, a, t, info["metric"]), load_samples(path, b, t, info["metric"]))
            out.append(estimate_pair(t, a, b, [pair], bool(info.get("binary", True))))
    return _nonempty(out, path, task)


def _nonempty(rows: list[PairEstimate], path: Path, task: str | None) -> list[PairEstimate]:
    if not rows:
        raise HarnessError(f"'{path}' has no pair of systems evaluated on {task or 'any task'}", "power")
    return rows


def from_estimate(e: PairEstimate, *, alpha: float = 0.05, power: float = 0.8, comparisons: int = 1,
                  seeds: int | None = None, mde: float | None = None) -> PowerResult:
    """The power question for the setting an estimate describes (its documents and seeds unless `seeds`)."""
    s = seeds or e.seeds
    rho = e.rho if e.rho is not None else 0.0
    p_d = e.p_discordant if e.binary else None
    if e.binary and not p_d:
        p_d = 1.0 / max(e.n, 1)  # no discordant document seen: at most about one in n
    return power_analysis(n=None if mde is not None else e.n, mde=mde, p_discordant=p_d,
                          sd_diff=None if e.binary else (e.sd_diff or 1e-9), alpha=alpha, power=power,
                          comparisons=comparisons, seeds=s, rho=rho)  # fmt: skip


def pair_mde(a: Mapping[Any, float], b: Mapping[Any, float], binary: bool, *, comparisons: int = 1,
             alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The MDE of one finished paired comparison (its documents and observed discordance or SD of differences),
    at Holm's first step over `comparisons`: what a "not significant" there still allows."""
    e = estimate_pair("", "a", "b", [(a, b)], binary)
    return from_estimate(e, alpha=alpha, power=power, comparisons=comparisons).mde


def annotate_head_to_head(frame: Any, a: tuple[Path, str], b: tuple[Path, str],
                          tasks: Mapping[str, Mapping[str, Any]]) -> None:
    """Adds to each head-to-head row its MDE (`mde`, Holm over the table's rows at its first step), `binary`, and,
    where the per-sample files record clusters, the cluster-robust SE and 95% interval of Δ (`cluster_se`,
    `iid_se`, `cluster_ci_low`, `cluster_ci_high`, `clusters`; harness/analysis/clusters.py)."""
    from harness.analysis.clusters import clustered_difference, read_clusters
    from harness.analysis.stats import _is_binary, load_samples

    extra: dict[str, list[Any]] = {k: [] for k in ("binary", "mde", "cluster_se", "iid_se", "cluster_ci_low",
                                                   "cluster_ci_high", "clusters")}  # fmt: skip
    for task in frame["task"]:
        metric = tasks[task]["metric"]
        xa, xb = load_samples(a[0], a[1], task, metric), load_samples(b[0], b[1], task, metric)
        shared = xa.keys() & xb.keys()
        xa, xb = {k: xa[k] for k in shared}, {k: xb[k] for k in shared}
        binary = _is_binary(tasks[task], xa, xb)
        extra["binary"].append(binary)
        extra["mde"].append(pair_mde(xa, xb, binary, comparisons=len(frame)))
        clusters = read_clusters(a[0], a[1], task)
        found = clustered_difference(xa, xb, clusters) if clusters and len(set(clusters.values())) > 1 else None
        extra["cluster_se"].append(None if found is None else found.se)
        extra["iid_se"].append(None if found is None else found.se_iid)
        extra["cluster_ci_low"].append(None if found is None else found.ci_low)
        extra["cluster_ci_high"].append(None if found is None else found.ci_high)
        extra["clusters"].append(None if found is None else found.clusters)
    for key, values in extra.items():
        frame[key] = values


# ----------------------------------------------------------------------------- the dry run's power lines

ASSUMED_SD_DIFF = 0.2  # continuous per-document scores in [0, 1] (TruthfulQA MC2), when no earlier run says


def _earlier_runs(results: Path, limit: int = 40) -> list[tuple[Path, dict[str, Any]]]:
    """Finished runs under a results folder (plain runs and sweeps' runs/), newest first, for estimates."""
    if not results.is_dir():
        return []
    found = []
    for path in sorted([*results.glob("*/summary.json"), *results.glob("*/runs/*/summary.json")],
                       key=lambda p: p.stat().st_mtime, reverse=True)[:limit]:  # fmt: skip
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and isinstance(summary.get("tasks"), dict):
            found.append((path.parent, summary))
    return found


def _pair_spread(a: Mapping[Any, float], b: Mapping[Any, float], binary: bool) -> float | None:
    shared = [k for k in a if k in b]
    if len(shared) < 2:
        return None
    diff = np.array([a[k] - b[k] for k in shared])
    return float(np.mean(diff != 0)) if binary else float(diff.std(ddof=1))


def _estimates_from_runs(task: str, binary: bool, runs: list[tuple[Path, dict[str, Any]]]) -> dict[str, list[float]]:
    """Discordances (binary) or SDs of differences seen on `task` in earlier runs: each method against
    target-base within its run ("target"), and every two runs of different methods ("between")."""
    from harness.analysis.stats import BASELINE_LABEL, load_samples

    out: dict[str, list[float]] = {"target": [], "between": []}
    by_method: dict[str, dict[Any, float]] = {}
    for run_dir, summary in runs:
        info, method = summary["tasks"].get(task), summary.get("method")
        if not info or not method:
            continue
        try:
            mine = load_samples(run_dir, method, task, info["metric"])
            base = load_samples(run_dir, BASELINE_LABEL, task, info["metric"])
        except HarnessError:
            continue
        if (v := _pair_spread(mine, base, binary)) is not None:
            out["target"].append(v)
        by_method.setdefault(method, mine)
    for (_, x), (_, y) in itertools.combinations(by_method.items(), 2):
        if (v := _pair_spread(x, y, binary)) is not None:
            out["between"].append(v)
    return out


def planned_power(plan: Any, documents: Mapping[str, tuple[int | None, bool]], *, seeds: int = 1, points: int = 1,
                  versus_pairs: int = 0, results: Path | None = None, alpha: float = 0.05,
                  power: float = 0.8) -> list[str]:
    """The dry run's lines: per task, the documents to evaluate and the MDE against target-base and between the
    compared methods, each at Holm's first step over its family, with where the discordance comes from (earlier
    runs under `results`, else an assumed value, said so). `plan`: a harness.pipeline.Plan; `documents`: per task
    of the plan, (documents evaluated or None where only evaluation counts them, binary metric); `points` grid
    points (each against target-base), `versus_pairs` the pairs of points compared head to head (a sweep's
    versus)."""
    exp = plan.exp
    sources = len(exp.sources) if exp.eval.compare_sources and points == 1 else 0
    m_target = len(plan.tasks) * (points if points > 1 else 1 + sources)
    m_between = len(plan.tasks) * versus_pairs
    earlier = _earlier_runs(Path(results)) if results is not None else []
    pooled = (f"{seeds} seeds pooled over documents, assumed independent given the document" if seeds > 1
              else "one seed")  # fmt: skip
    lines = [f"power ({power:.0%}, α = {alpha:g}, {pooled}): minimum detectable differences at Holm's first step "
             f"over {m_target} comparisons against target-base"
             + (f" and {m_between} between methods" if m_between else "")]  # fmt: skip
    for task in plan.tasks:
        n, binary = documents[task]
        if n is None:
            lines.append(f"  {task}: every document (counted at evaluation; `harness power --n N` sizes it)")
            continue
        seen = _estimates_from_runs(task, binary, earlier)
        parts = [f"  {task}: {n} documents"]
        for key, m in (("target", m_target), ("between", m_between)):
            if key == "between" and not m:
                continue
            values = seen[key] or seen["target"]
            if values:
                spread = float(np.mean(values))
                origin = f"{len(values)} earlier pair(s) in {results}" + ("" if seen[key] else ", against target-base")
            else:
                spread = ASSUMED_P_DISCORDANT if binary else ASSUMED_SD_DIFF
                origin = "assumed"
            if binary and spread == 0:
                spread = 1.0 / n
            kw = {"p_discordant": spread} if binary else {"sd_diff": spread}
            res = power_analysis(n=n, comparisons=m, seeds=seeds, alpha=alpha, power=power, **kw)  # type: ignore[arg-type]
            what = "vs target-base" if key == "target" else "between methods"
            name = "p_discordant" if binary else "SD of differences"
            over_seeds = f", t-test over seeds {size_text(res.mde_seeds_t, binary)}" if res.mde_seeds_t is not None else ""
            parts.append(f"{what} {mde_text(res.mde, binary)} ({name} {spread:.2g}, {origin}{over_seeds})")
        lines.append("; ".join(parts))
    return lines
