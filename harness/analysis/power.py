"""Power and minimum detectable differences (MDE) of the paired comparisons the harness runs.

Before a run: can N documents (and S seeds, M comparisons) detect the difference one cares about? After one:
how large a difference does a "not significant" still allow? The tests are those of harness/analysis/stats.py:
- binary metrics: the exact McNemar test. Its power is computed exactly, by summing over the binomial
  distribution of the number of discordant documents d ~ Bin(N, p_d) and, given d, of the documents a wins
  ~ Bin(d, (1 + Δ/p_d) / 2), the rejection region of the exact test at each d. A difference Δ needs at least
  Δ documents in a hundred to be discordant, so Δ ≤ p_d.
- continuous metrics: the sign-flip permutation test of the mean difference, whose power is that of the paired
  t-test (noncentral t with N − 1 degrees of freedom, ncp = √N·Δ/σ, σ the per-document SD of differences).
- S seeds are pooled over documents as the sweep's `p_pooled` is: each document's differences are summed over
  the seeds and the sum's sign is tested. Seeds of one document correlate (an easy document stays easy); `rho`
  is the correlation of a document's difference between two seeds (0: seeds independent given the document,
  the most seeds can add; 1: every seed gives the same answers, seeds add nothing). With S > 1 the binary power
  uses the normal approximation of that exact test (tests/test_power.py checks it by simulation).
- M comparisons Holm-corrected: Holm's first (most conservative) step compares the smallest p with α/M; a
  comparison that passes α/M passes Holm whatever the other p-values are, so the MDE is computed at α/M, a
  guarantee (Holm may reject at a smaller difference when other comparisons are significant too).
docs/statistics.md gives the formulas and how they were checked.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize
from scipy import stats as sps

from harness.errors import HarnessError

ASSUMED_P_DISCORDANT = 0.2  # used when no comparable run says otherwise: two fine-tunes of one model disagree often
_MAX_N = 10_000_000


# ----------------------------------------------------------------------------- power of one setting


def _mcnemar_critical(d: np.ndarray, alpha: float) -> np.ndarray:
    """Largest c with 2·P(Bin(d, 1/2) ≤ c) < α (reject when min(x, d − x) ≤ c, as statsmodels' exact test);
    −1 where no outcome rejects."""
    c = sps.binom.ppf(alpha / 2, d, 0.5)
    c = np.where(2 * sps.binom.cdf(c, d, 0.5) < alpha, c, c - 1)
    return np.where(d > 0, c, -1)


def mcnemar_power(n: int, p_discordant: float, delta: float, alpha: float) -> float:
    """Exact power of the two-sided exact McNemar test at level α: P(p < α) when each document is discordant
    with probability p_discordant and a − b has expectation delta (|delta| ≤ p_discordant)."""
    if not 0 < p_discordant <= 1 or abs(delta) > p_discordant + 1e-12:
        return 0.0 if not 0 < p_discordant <= 1 else math.nan
    d = np.arange(n + 1)
    weight = sps.binom.pmf(d, n, p_discordant)
    keep = weight > 1e-16  # the discordant counts that carry probability
    d, weight = d[keep], weight[keep]
    c = _mcnemar_critical(d, alpha)
    q = min(1.0, max(0.0, (1 + delta / p_discordant) / 2))
    reject = np.where(c >= 0, sps.binom.cdf(c, d, q) + sps.binom.sf(d - c - 1, d, q), 0.0)
    return float(np.sum(weight * reject))


def pooled_sign_power(n: int, p_discordant: float, delta: float, alpha: float, seeds: int, rho: float) -> float:
    """Power of the sweep's pooled test over documents (per-document differences summed over `seeds`, exact sign
    test) by the normal approximation of that conditional test; with one seed see `mcnemar_power`.

    Per document the sum T has mean S·Δ and variance S·(p_d − Δ²)·(1 + (S − 1)·ρ); the test compares |ΣT| with
    z·√ΣT², and ΣT² ≈ N·E[T²]."""
    if abs(delta) > p_discordant:
        return math.nan
    s = seeds
    var_t = s * (p_discordant - delta**2) * (1 + (s - 1) * rho)
    if var_t <= 0:
        return 1.0 if delta != 0 else 0.0
    z = sps.norm.ppf(1 - alpha / 2)
    crit = z * math.sqrt(n * (var_t + (s * delta) ** 2))
    mean, sd = n * s * delta, math.sqrt(n * var_t)
    return float(sps.norm.sf((crit - mean) / sd) + sps.norm.cdf((-crit - mean) / sd))


def t_power(n: int, sd_diff: float, delta: float, alpha: float) -> float:
    """Power of the two-sided paired t-test (and, closely, of the sign-flip permutation test) on n differences
    with SD sd_diff and mean delta: noncentral t, n − 1 degrees of freedom."""
    if n < 2:
        return 0.0
    if sd_diff <= 0:
        return 1.0 if delta != 0 else 0.0
    df, ncp = n - 1, math.sqrt(n) * delta / sd_diff
    crit = sps.t.ppf(1 - alpha / 2, df)
    found = float(sps.nct.sf(crit, df, abs(ncp)) + sps.nct.cdf(-crit, df, abs(ncp)))
    return found if math.isfinite(found) else 1.0  # scipy's nct gives NaN far out in the tail, where power is 1


def binary_power(n: int, p_discordant: float, delta: float, alpha: float, seeds: int = 1, rho: float = 0.0) -> float:
    """Power of the harness's test over documents for a binary metric: exact for one seed, else the pooled test."""
    if seeds == 1:
        return mcnemar_power(n, p_discordant, delta, alpha)
    return pooled_sign_power(n, p_discordant, delta, alpha, seeds, rho)


def continuous_power(n: int, sd_diff: float, delta: float, alpha: float, seeds: int = 1, rho: float = 0.0) -> float:
    """Power of the sign-flip test of the per-document mean over `seeds` of the differences (SD sd_diff per seed,
    correlation rho between two seeds of one document)."""
    return t_power(n, sd_diff * math.sqrt((1 + (seeds - 1) * rho) / seeds), delta, alpha)


# ----------------------------------------------------------------------------- the question a user asks


@dataclass(frozen=True)
class PowerResult:
    """One power question answered. `mde` and `n` are the solved ones: given n, the minimum detectable
    difference (a fraction for binary metrics, the metric's unit otherwise; None when even the largest difference
    the discordance allows is not detected with this power); given mde, the documents needed."""

    n: int | None
    mde: float | None
    metric: str  # "binary" or "continuous"
    p_discordant: float | None
    sd_diff: float | None
    alpha: float
    alpha_per_comparison: float
    power: float
    comparisons: int
    seeds: int
    rho: float
    test: str
    mde_normal: float | None = None  # the normal approximation's MDE, for comparison (binary, one seed)
    mde_seeds_t: float | None = None  # the MDE of the t-test over the S per-seed differences (sweeps' p_seeds)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(alpha: float, power: float, comparisons: int, seeds: int, rho: float) -> None:
    if not 0 < alpha < 1:
        raise HarnessError(f"alpha must lie in (0, 1), got {alpha}", "power")
    if not 0 < power < 1:
        raise HarnessError(f"power must lie in (0, 1), got {power}", "power")
    if comparisons < 1 or seeds < 1:
        raise HarnessError("comparisons and seeds must be at least 1", "power")
    if not 0 <= rho <= 1:
        raise HarnessError(f"the seed correlation must lie in [0, 1], got {rho}", "power")


def _power_fn(p_discordant: float | None, sd_diff: float | None, alpha: float, seeds: int, rho: float):  # type: ignore[no-untyped-def]
    if p_discordant is not None:
        return lambda n, delta: binary_power(n, p_discordant, delta, alpha, seeds, rho)
    assert sd_diff is not None
    return lambda n, delta: continuous_power(n, sd_diff, delta, alpha, seeds, rho)


def _solve_mde(fn: Any, n: int, power: float, upper: float) -> float | None:
    """The difference at which fn(n, ·) reaches `power` (fn increases with the difference)."""
    if fn(n, upper) < power:
        return None
    return float(optimize.brentq(lambda x: fn(n, x) - power, 1e-12, upper, xtol=1e-7))


def _solve_n(fn: Any, mde: float, power: float) -> int | None:
    """The smallest N (by bisection; exact McNemar power is slightly saw-toothed in N) with fn(N, mde) ≥ power."""
    hi = 2
    while fn(hi, mde) < power:
        hi *= 2
        if hi > _MAX_N:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fn(mid, mde) >= power else (mid, hi)
    return hi


def power_analysis(
    *,
    n: int | None = None,
    mde: float | None = None,
    p_discordant: float | None = None,
    sd_diff: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    comparisons: int = 1,
    seeds: int = 1,
    rho: float = 0.0,
) -> PowerResult:
    """The minimum detectable difference of a paired comparison on `n` documents, or (given `mde`) the documents
    needed. Binary metrics take `p_discordant` (the share of documents the two systems answer differently),
    continuous ones `sd_diff` (the per-document SD of the differences, one seed). Holm over `comparisons` is
    guaranteed by testing at α/M. `seeds` are pooled over documents, `rho` the correlation of a document's
    difference between two seeds."""
    _check(alpha, power, comparisons, seeds, rho)
    if (n is None) == (mde is None):
        raise HarnessError("give either the documents (--n) or the difference to detect (--mde), not both", "power")
    if (p_discordant is None) == (sd_diff is None):
        raise HarnessError("give either --p-discordant (binary metric) or --sd-diff (continuous metric)", "power")
    if p_discordant is not None and not 0 < p_discordant <= 1:
        raise HarnessError(f"p_discordant must lie in (0, 1], got {p_discordant}", "power")
    if sd_diff is not None and not sd_diff > 0:
        raise HarnessError(f"sd_diff must be positive, got {sd_diff}", "power")
    if n is not None and not 1 <= n <= _MAX_N:
        raise HarnessError(f"n must lie in [1, {_MAX_N}], got {n}", "power")
    a = alpha / comparisons
    fn = _power_fn(p_discordant, sd_diff, a, seeds, rho)
    binary = p_discordant is not None
    upper = p_discordant if binary else 100.0 * sd_diff  # type: ignore[operator]
    test = ("exact McNemar (exact power)" if seeds == 1 else "pooled exact sign test over documents (normal approx.)") \
        if binary else "sign-flip permutation / paired t (noncentral t)"  # fmt: skip
    notes = []
    if comparisons > 1:
        notes.append(f"Holm over {comparisons} comparisons, guaranteed at its first step: α/M = {a:.4g}")
    if seeds > 1:
        notes.append(f"{seeds} seeds pooled over documents, seed correlation ρ = {rho:g}"
                     + (" (seeds independent given the document: the most seeds can add)" if rho == 0 else ""))
    if n is not None:
        found = _solve_mde(fn, n, power, upper)
        if found is None and binary:
            notes.append(f"not reachable: even Δ = p_discordant = {p_discordant:g} has power below {power:g}")
        mde_normal = None
        if binary and seeds == 1:
            mde_normal = _solve_mde(lambda k, x: pooled_sign_power(k, p_discordant, x, a, 1, 0.0), n, power, upper)  # type: ignore[arg-type]
        seeds_t = _seeds_t_mde(n, p_discordant, sd_diff, a, power, seeds, rho) if seeds > 1 else None
        if seeds_t is not None:
            notes.append("a sweep's p_value also needs the t-test over the seeds (p_seeds) to reject: its MDE, "
                         "counting document noise only, is mde_seeds_t")  # fmt: skip
        return PowerResult(n, found, "binary" if binary else "continuous", p_discordant, sd_diff, alpha, a, power,
                           comparisons, seeds, rho, test, mde_normal, seeds_t, "; ".join(notes))  # fmt: skip
    assert mde is not None
    if not mde > 0 or (binary and mde > p_discordant):  # type: ignore[operator]
        raise HarnessError(f"the difference to detect must lie in (0, p_discordant = {p_discordant}] for a binary "
                           f"metric (every discordant document for one side), got {mde}" if binary else
                           f"the difference to detect must be positive, got {mde}", "power")  # fmt: skip
    needed = _solve_n(fn, mde, power)
    if needed is None:
        notes.append(f"not reachable with up to {_MAX_N} documents")
    return PowerResult(needed, mde, "binary" if binary else "continuous", p_discordant, sd_diff, alpha, a, power,
                       comparisons, seeds, rho, test, note="; ".join(notes))  # fmt: skip


def _seeds_t_mde(n: int, p_d: float | None, sd: float | None, alpha: float, power: float, seeds: int,
                 rho: float) -> float | None:
    """MDE of the paired t-test over `seeds` per-seed mean differences when they vary by document noise alone
    (SD √((1 − ρ)/N)·σ); training noise between seeds only makes it larger."""
    if rho >= 1:
        return None

    def fn(_: int, delta: float) -> float:
        sigma = math.sqrt(max(p_d - delta**2, 1e-12)) if p_d is not None else sd
        return t_power(seeds, sigma * math.sqrt((1 - rho) / n), delta, alpha)  # type: ignore[operator]

    return _solve_mde(fn, seeds, power, p_d if p_d is not None else 100.0 * sd)  # type: ignore[operator]


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
    from harness.analysis.report import read_json_file
    from harness.analysis.stats import BASELINE_LABEL, load_samples

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


# ----------------------------------------------------------------------------- one-line MDE for tables


def mde_text(value: float | None, binary: bool, unit: str = "") -> str:
    """'MDE 6.8 pts' for a fraction, 'MDE 0.31' (the metric's unit) otherwise; 'MDE beyond reach' when even every
    discordant document favouring one side would not be detected with this power."""
    if value is None or math.isnan(value):
        return "MDE beyond reach"
    if binary:
        return f"MDE {100 * value:.1f} pts"
    return f"MDE {value:.3g}{' ' + unit if unit else ''}"


def _size(value: float | None, binary: bool) -> str:
    if value is None:
        return "beyond reach"
    return f"{100 * value:.1f} pts" if binary else f"{value:.3g}"


def render_rows(rows: Sequence[Mapping[str, Any]], *, solve_n: bool = False) -> str:
    """`harness power`'s text: one sentence for one question, a Markdown table for estimates from runs."""
    if len(rows) == 1 and "task" not in rows[0]:
        r = rows[0]
        binary = r["metric"] == "binary"
        spread = f"p_discordant {r['p_discordant']:g}" if binary else f"SD of differences {r['sd_diff']:g}"
        setting = (f"{r['power']:.0%} power, α = {r['alpha']:g}" + (f" (α/M = {r['alpha_per_comparison']:.4g})"
                   if r["comparisons"] > 1 else "") + f", {spread}, {r['seeds']} seed(s); test: {r['test']}")  # fmt: skip
        if solve_n:
            head = (f"documents needed to detect {_size(r['mde'], binary)}: "
                    + (str(r["n"]) if r["n"] is not None else "beyond reach"))  # fmt: skip
        else:
            head = f"minimum detectable difference on {r['n']} documents: {_size(r['mde'], binary)}"
            if r.get("mde_normal") is not None:
                head += f" (normal approximation: {_size(r['mde_normal'], binary)})"
            if r.get("mde_seeds_t") is not None:
                head += f"; t-test over seeds: {_size(r['mde_seeds_t'], binary)}"
        return "\n".join([head, setting, *([r["note"]] if r["note"] else [])])
    lines = ["| task | a | b | documents | seeds | p_discordant / SD | seed corr. | observed Δ | "
             + ("documents needed |" if solve_n else "MDE |"), "|:--|:--|:--|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    for r in rows:
        binary = r["metric"] == "binary"
        spread = f"{r['p_discordant']:.3f}" if binary else f"{r['sd_diff']:.3g}"
        rho = "–" if r.get("estimated_rho") is None else f"{r['estimated_rho']:.2f}"
        delta = f"{100 * r['observed_delta']:+.1f} pts" if binary else f"{r['observed_delta']:+.3g}"
        last = str(r["n"]) if solve_n else _size(r["mde"], binary)
        n_docs = "–" if solve_n else str(r["n"])
        lines.append(f"| {r['task']} | {r['a']} | {r['b']} | {n_docs} | {r['seeds']} | {spread} | {rho} | {delta} | {last} |")
    r0 = rows[0]
    lines += ["", f"{r0['power']:.0%} power, α = {r0['alpha']:g}, Holm over {r0['comparisons']} comparison(s) "
              f"(guaranteed at α/M = {r0['alpha_per_comparison']:.4g}); binary metrics: exact McNemar for one seed, "
              "the pooled sign test over documents for several (docs/statistics.md, power)."]  # fmt: skip
    return "\n".join(lines)


def pair_mde(a: Mapping[Any, float], b: Mapping[Any, float], binary: bool, *, comparisons: int = 1,
             alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The MDE of one finished paired comparison (its documents and observed discordance or SD of differences),
    at Holm's first step over `comparisons`: what a "not significant" there still allows."""
    e = estimate_pair("", "a", "b", [(a, b)], binary)
    return from_estimate(e, alpha=alpha, power=power, comparisons=comparisons).mde


def secondary_metric_tasks(tasks: Mapping[str, Mapping[str, Any]], metric: str, *sides: tuple[Path, str]
                           ) -> dict[str, dict[str, Any]]:
    """The tasks whose per-sample files of every side record `metric` (e.g. `margin`), compared as continuous."""
    from harness.analysis.stats import load_samples

    out: dict[str, dict[str, Any]] = {}
    for task, info in tasks.items():
        try:
            for run_dir, label in sides:
                load_samples(run_dir, label, task, metric)
        except HarnessError:
            continue
        out[task] = {**info, "metric": metric, "binary": False}
    if not out:
        raise HarnessError(f"no task of these runs records '{metric}' per document (the answer margin is recorded "
                           "for multiple-choice tasks evaluated by this version; re-evaluate)", "report")  # fmt: skip
    return out


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


def planned_power(plan: Any, *, seeds: int = 1, points: int = 1, versus_pairs: int = 0, results: Path | None = None,
                  alpha: float = 0.05, power: float = 0.8) -> list[str]:
    """The dry run's lines: per task, the documents to evaluate and the MDE against target-base and between the
    compared methods, each at Holm's first step over its family, with where the discordance comes from (earlier
    runs under `results`, else an assumed value, said so). `plan`: a harness.pipeline.Plan; `points` grid points
    (each against target-base), `versus_pairs` the pairs of points compared head to head (a sweep's versus)."""
    from harness.evaluation.task_catalog import SANDBOX_TASKS, document_limits, task_info

    exp = plan.exp
    limits = document_limits(exp.eval.limit, exp.eval.task_limits, plan.tasks)
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
        n = limits.get(task)
        if n is None and task in SANDBOX_TASKS and exp.sandbox is not None:
            from harness.sandbox.build import RECIPES

            n = RECIPES[exp.sandbox.size].sizes.eval_per_skill
        if n is None:
            lines.append(f"  {task}: every document (counted at evaluation; `harness power --n N` sizes it)")
            continue
        binary = task_info(task).binary
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
            over_seeds = f", t-test over seeds {_size(res.mde_seeds_t, binary)}" if res.mde_seeds_t is not None else ""
            parts.append(f"{what} {mde_text(res.mde, binary)} ({name} {spread:.2g}, {origin}{over_seeds})")
        lines.append("; ".join(parts))
    return lines
