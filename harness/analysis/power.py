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

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import integrate, optimize
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
    df, ncp = n - 1, math.sqrt(n) * abs(delta) / sd_diff
    crit = float(sps.t.ppf(1 - alpha / 2, df))

    def tail(found: float, normal_tail: Any) -> float:
        """scipy's nct can give NaN in a far tail (seen for the lower tail at 2 degrees of freedom): there,
        integrate the tail's definition, P(Z beyond ±crit·sqrt(V/df) − ncp) over V ~ chi2(df)."""
        if math.isfinite(found):
            return found
        return float(integrate.quad(lambda v: normal_tail(crit * math.sqrt(v / df)) * sps.chi2.pdf(v, df),
                                    0, math.inf, limit=200)[0])  # fmt: skip

    upper = tail(float(sps.nct.sf(crit, df, ncp)), lambda c: sps.norm.sf(c - ncp))
    lower = tail(float(sps.nct.cdf(-crit, df, ncp)), lambda c: sps.norm.cdf(-c - ncp))
    return min(1.0, upper + lower)


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
    upper = float(p_discordant if p_discordant is not None else 100.0 * sd_diff)  # type: ignore[operator]
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


def seeds_test_mde(per_seed: Sequence[float], comparisons: int, binary: bool, alpha: float = 0.05,
                   power: float = 0.8) -> float | None:
    """MDE of the paired t-test over the k per-seed differences at Holm's first step (α/M), from their observed SD.

    A sweep's row is significant only when this test rejects too (the larger p, docs/statistics.md), so with few
    seeds it binds: at k = 3 its critical t has 2 degrees of freedom. None: beyond reach (for a binary metric even a
    difference of 100 points would not be detected, or every seed agrees and the exact sign-flip test over seeds
    cannot go below 2/2^k)."""
    k = len(per_seed)
    if k < 2:
        return None
    a = alpha / comparisons
    sd = float(np.std(np.asarray(per_seed, dtype=float), ddof=1))
    if sd == 0:
        return 0.0 if 2 / 2**k <= a else None
    upper = 1.0 if binary else 1e3 * sd
    return _solve_mde(lambda _, delta: t_power(k, sd, delta, a), k, power, upper)


# ----------------------------------------------------------------------------- one-line MDE for tables


def mde_text(value: float | None, binary: bool, unit: str = "") -> str:
    """'MDE 6.8 pts' for a fraction, 'MDE 0.31' (the metric's unit) otherwise; 'MDE beyond reach' when even every
    discordant document favouring one side would not be detected with this power."""
    if value is None or math.isnan(value):
        return "MDE beyond reach"
    if binary:
        return f"MDE {100 * value:.1f} pts"
    return f"MDE {value:.3g}{' ' + unit if unit else ''}"


def size_text(value: float | None, binary: bool) -> str:
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
            head = (f"documents needed to detect {size_text(r['mde'], binary)}: "
                    + (str(r["n"]) if r["n"] is not None else "beyond reach"))  # fmt: skip
        else:
            head = f"minimum detectable difference on {r['n']} documents: {size_text(r['mde'], binary)}"
            if r.get("mde_normal") is not None:
                head += f" (normal approximation: {size_text(r['mde_normal'], binary)})"
            if r.get("mde_seeds_t") is not None:
                head += f"; t-test over seeds: {size_text(r['mde_seeds_t'], binary)}"
        return "\n".join([head, setting, *([r["note"]] if r["note"] else [])])
    lines = ["| task | a | b | documents | seeds | p_discordant / SD | seed corr. | observed Δ | "
             + ("documents needed |" if solve_n else "MDE |"), "|:--|:--|:--|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    for r in rows:
        binary = r["metric"] == "binary"
        spread = f"{r['p_discordant']:.3f}" if binary else f"{r['sd_diff']:.3g}"
        rho = "–" if r.get("estimated_rho") is None else f"{r['estimated_rho']:.2f}"
        delta = f"{100 * r['observed_delta']:+.1f} pts" if binary else f"{r['observed_delta']:+.3g}"
        last = str(r["n"]) if solve_n else size_text(r["mde"], binary)
        n_docs = "–" if solve_n else str(r["n"])
        lines.append(f"| {r['task']} | {r['a']} | {r['b']} | {n_docs} | {r['seeds']} | {spread} | {rho} | {delta} | {last} |")
    r0 = rows[0]
    lines += ["", f"{r0['power']:.0%} power, α = {r0['alpha']:g}, Holm over {r0['comparisons']} comparison(s) "
              f"(guaranteed at α/M = {r0['alpha_per_comparison']:.4g}); binary metrics: exact McNemar for one seed, "
              "the pooled sign test over documents for several (docs/statistics.md, power)."]  # fmt: skip
    return "\n".join(lines)
