"""Paired significance tests, bootstrap CIs, Holm correction and effect sizes over per-sample results.

Two systems evaluated on the same documents are compared document by document (matched by each document's
hash, `doc_hash` in the per-sample files), which is far more powerful than comparing two accuracies: most
documents are answered the same way by both.
- binary metrics (acc, exact_match): exact McNemar test on the discordant pairs, with the interval that test
  inverts (exact Clopper-Pearson for the share of discordant pairs a wins, scaled to the difference), so the
  interval excludes 0 exactly when p < 0.05; effect size: signed Cohen's g.
- continuous metrics: sign-flip permutation test of the mean difference (exact for n <= 13, else Monte Carlo
  with a fixed seed), percentile bootstrap CI of the mean difference (fixed seed); effect size: Cohen's d_z.
- one table: Holm's step-down correction across all its comparisons (family-wise error rate).
- across seeds: mean, sd and a 95% t-interval over the seeds; a paired t-test (or Wilcoxon signed-rank) over the
  seeds; and `compare_over_seeds`, which asks two questions of k seeds' per-document scores: does the mean over
  these seeds beat b on the population of documents (an exact or permutation sign test over documents of the
  per-document differences summed over seeds: documents are the unit, so the same document scored k times is not
  counted as k independent pairs), and would a new seed (a t-test over the k per-seed differences).
docs/statistics.md says which test is used when and how to recompute a summary's p-values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Container, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from harness.errors import HarnessError

BASELINE_LABEL = "target-base"
N_PERMUTATIONS = 10_000  # sign-flip resamples; the test is exact whenever 2**n <= this
_MAX_BATCH_ELEMENTS = 4_000_000  # resampled values held in memory at once

DocKey = int | str  # a document's identity in a per-sample file: its doc_hash (or doc_id in files without one)
Samples = Mapping[Any, float] | Sequence[float] | np.ndarray  # {DocKey: score}, or scores in pairing order


@dataclass(frozen=True)
class Comparison:
    """One paired comparison a − b. `effect` names the effect size: 'cohen_g' (binary) or 'cohen_dz' (continuous;
    None where undefined: one document, or differences without variance). `interval` names the 95% CI."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    effect_size: float | None
    n: int
    effect: str = ""
    interval: str = ""


@dataclass(frozen=True)
class SeedComparison:
    """A comparison over seeds: one score per seed for each side, paired by seed."""

    mean_a: float
    sd_a: float
    mean_b: float
    sd_b: float
    delta: float
    p_value: float
    test: str
    n: int


def _paired_arrays(a: Samples, b: Samples) -> tuple[np.ndarray, np.ndarray]:
    """Align two samples by doc_id (mappings) or by position (sequences); differing document sets are an error."""
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise TypeError("compare both sides as doc_id mappings or both as sequences, not one of each")
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if a.keys() != b.keys():
            only_a, only_b = len(a.keys() - b.keys()), len(b.keys() - a.keys())
            raise HarnessError(
                f"the two sides were evaluated on different documents ({only_a} only in a, {only_b} only in b); "
                "evaluate both on the same documents (same task, data and limit)",
                "stats",
            )
        ids = sorted(a, key=lambda k: (isinstance(k, str), k))  # ints in numeric order, then hashes
        xa = np.array([a[i] for i in ids], dtype=float)
        xb = np.array([b[i] for i in ids], dtype=float)
    else:
        xa, xb = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
        if xa.shape != xb.shape:
            raise HarnessError(f"paired samples differ in length ({xa.size} vs {xb.size})", "stats")
    if xa.size == 0:
        raise HarnessError("no documents to compare", "stats")
    if not (np.isfinite(xa).all() and np.isfinite(xb).all()):
        raise HarnessError("per-sample scores contain NaN or infinite values", "stats")
    return xa, xb


def _constant(x: np.ndarray) -> bool:
    """All values equal up to floating-point noise (0.3 − 0.1 and 0.5 − 0.3 differ in the last bit)."""
    return bool(x.size == 0 or np.ptp(x) <= 1e-12 * max(1.0, float(np.max(np.abs(x)))))


def bootstrap_ci(
    diff: np.ndarray, *, seed: int = 0, n_boot: int = 2000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences (resampling documents, so pairs stay together)."""
    diff = np.asarray(diff, dtype=float)
    if diff.size < 2 or _constant(diff):
        m = float(diff.mean())
        return m, m  # no variability to resample
    res = sps.bootstrap(
        (diff,),
        np.mean,
        n_resamples=n_boot,
        batch=max(1, _MAX_BATCH_ELEMENTS // diff.size),
        vectorized=True,
        confidence_level=level,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mcnemar_interval(only_a: int, only_b: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The CI of the paired difference that the exact McNemar test inverts.

    The test conditions on the d = only_a + only_b discordant pairs and asks whether a wins half of them. The exact
    (Clopper-Pearson) interval [lo, hi] for a's share of them excludes 1/2 exactly when the two-sided exact p is
    below 1 − level; scaled to the difference, (d / n)(2·share − 1), the interval excludes 0 exactly then. Like the
    test, it treats d as given: when every discordant pair favours one side, that end is the observed difference.
    """
    d = only_a + only_b
    if d == 0:
        return 0.0, 0.0
    ci = sps.binomtest(only_a, d, 0.5).proportion_ci(confidence_level=level, method="exact")
    scale = d / n
    return scale * (2 * float(ci.low) - 1), scale * (2 * float(ci.high) - 1)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Exact McNemar p-value and signed Cohen's g = n_a / (n_a + n_b) − 0.5 (n_a: docs only a gets right)."""
    only_a = int(np.sum((a == 1) & (b == 0)))
    only_b = int(np.sum((a == 0) & (b == 1)))
    both = int(np.sum((a == 1) & (b == 1)))
    neither = int(np.sum((a == 0) & (b == 0)))
    p = float(mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue)
    g = only_a / (only_a + only_b) - 0.5 if only_a + only_b else 0.0
    return min(p, 1.0), g


def sign_flip_test(
    diff: np.ndarray, *, seed: int = 0, n_resamples: int = N_PERMUTATIONS
) -> tuple[float, bool]:
    """Two-sided paired permutation test of mean(diff) = 0 by random sign flips; returns (p, exact)."""
    diff = np.asarray(diff, dtype=float)
    if np.all(diff == 0) or diff.size == 1:  # one document: both sign patterns are as extreme as the observed one
        return 1.0, True
    exact = 2 ** min(diff.size, 64) <= n_resamples
    res = sps.permutation_test(
        (diff,),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        batch=max(1, _MAX_BATCH_ELEMENTS // diff.size),
        alternative="two-sided",
        random_state=np.random.default_rng(seed),
    )
    return min(float(res.pvalue), 1.0), exact


def cohen_dz(diff: np.ndarray) -> float | None:
    """Mean paired difference over its standard deviation; 0 when all differences are 0; None (undefined, never
    ±inf) for a single document or when every difference is the same non-zero value."""
    if np.all(diff == 0):
        return 0.0
    if diff.size < 2 or _constant(diff):
        return None
    return float(np.mean(diff)) / float(np.std(diff, ddof=1))


def compare_paired(a: Samples, b: Samples, binary: bool, *, seed: int = 0, n_boot: int = 2000) -> Comparison:
    """Paired comparison of a − b over the same documents: test, bootstrap CI of the mean difference, effect size.

    `a`/`b` are {doc_id: score} (matched by doc_id) or equal-length sequences (matched by position).
    """
    xa, xb = _paired_arrays(a, b)
    diff = xa - xb
    effect: float | None
    if binary:
        bad = ~np.isin(xa, (0.0, 1.0)) | ~np.isin(xb, (0.0, 1.0))
        if bad.any():
            raise HarnessError(
                f"metric declared binary but {int(bad.sum())} scores are not 0/1; mark the task binary: false",
                "stats",
            )
        p, effect = mcnemar_exact(xa, xb)
        only_a, only_b = int(np.sum(diff > 0)), int(np.sum(diff < 0))
        ci_low, ci_high = mcnemar_interval(only_a, only_b, int(diff.size))
        test, effect_name, interval = "mcnemar-exact", "cohen_g", "mcnemar-exact-conditional"
    else:
        p, exact = sign_flip_test(diff, seed=seed)
        effect = cohen_dz(diff)
        ci_low, ci_high = bootstrap_ci(diff, seed=seed, n_boot=n_boot)
        test, effect_name = ("permutation-exact" if exact else "permutation-mc"), "cohen_dz"
        interval = "bootstrap-percentile"
    return Comparison(
        delta=float(diff.mean()), ci_low=ci_low, ci_high=ci_high, p_value=p, test=test,
        effect_size=effect, n=int(diff.size), effect=effect_name, interval=interval,
    )  # fmt: skip


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error control), in the input order."""
    if len(p_values) == 0:
        return []
    return [float(p) for p in multipletests(np.asarray(p_values, dtype=float), method="holm")[1]]


def seed_summary(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over seeds; sd is NaN for a single seed."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise HarnessError("no seeds to summarise", "stats")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean over seeds, mean ± t(k−1)·sd/√k; None for fewer than two seeds. With two
    seeds t(1) = 12.71, so the interval is mean ± 8.99·sd: two seeds say little about a third."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, x.size - 1)) * sd / math.sqrt(x.size)
    return mean - half, mean + half


def compare_seeds(
    a: Sequence[float], b: Sequence[float], test: Literal["t", "wilcoxon"] = "t"
) -> SeedComparison:
    """Paired test over seeds (scores of a and b for seed 1..k): paired t-test, or Wilcoxon signed-rank (scipy's,
    exact for small k: with 2 seeds its smallest two-sided p is 0.5).

    When every seed gives the same difference the t statistic is 0/0 or ±inf and no t-test p exists; the exact
    sign-flip test over the seeds is used instead (p = 1 for no difference, else 2 / 2^k: every seed agreeing is
    the most extreme of the 2^k equally likely sign patterns), and `test` says so.
    """
    if test not in ("t", "wilcoxon"):
        raise HarnessError(f"unknown seed test '{test}'; use 't' or 'wilcoxon'", "stats")
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.shape != xb.shape or xa.size < 2:
        raise HarnessError("a test over seeds needs the same >= 2 seeds on both sides", "stats")
    if not (np.isfinite(xa).all() and np.isfinite(xb).all()):
        raise HarnessError("seed scores contain NaN or infinite values", "stats")
    diff = xa - xb
    name = "paired-t" if test == "t" else "wilcoxon"
    if np.all(diff == 0):
        p = 1.0
    elif test == "wilcoxon":
        p = float(sps.wilcoxon(diff, zero_method="wilcox").pvalue)
    elif _constant(diff):
        p, name = min(1.0, 2.0 / 2**diff.size), "sign-flip-exact"
    else:
        p = float(sps.ttest_rel(xa, xb).pvalue)
    (ma, sa), (mb, sb) = seed_summary(xa), seed_summary(xb)
    return SeedComparison(ma, sa, mb, sb, float(diff.mean()), p, name, int(xa.size))


@dataclass(frozen=True)
class SeedsComparison:
    """a − b over k seeds, each seed paired with b on the same documents.

    `per_seed`: each seed's mean difference; `delta` their mean; [ci_low, ci_high] the 95% t-interval over seeds
    (None with one seed). Two tests, two questions: `p_pooled` (test `test_pooled`) treats documents as the unit
    and the seeds as fixed: is the mean of these seeds better on this task's documents? `p_seeds` (`test_seeds`,
    None with one seed) treats seeds as the unit and the documents as fixed: would a new seed be? `p_value` is the
    larger: the intersection-union test that both hold, a level-α test of "better beyond document sampling and
    beyond seed noise"."""

    delta: float
    per_seed: list[float]
    ci_low: float | None
    ci_high: float | None
    p_pooled: float
    test_pooled: str
    p_seeds: float | None
    test_seeds: str | None
    p_value: float
    n: int
    k: int


def _seed_matrix(pairs: Sequence[tuple[Samples, Samples]]) -> np.ndarray:
    """The k × n matrix of per-document differences a_s − b_s; every seed must cover the same documents."""
    if not pairs:
        raise HarnessError("a comparison over seeds needs at least one seed", "stats")
    rows: list[np.ndarray] = []
    keys: set[Any] | None = None
    for a, b in pairs:
        xa, xb = _paired_arrays(a, b)
        if isinstance(a, Mapping):
            these = set(a)
            if keys is not None and these != keys:
                raise HarnessError("the seeds were evaluated on different documents; evaluate every seed on the "
                                   "same documents (same task, data and limit)", "stats")  # fmt: skip
            keys = these
        elif rows and xa.size != rows[0].size:
            raise HarnessError(f"the seeds have different numbers of documents ({rows[0].size} vs {xa.size})", "stats")
        rows.append(xa - xb)
    return np.vstack(rows)


def signed_sum_test(values: Sequence[int] | np.ndarray) -> float:
    """Exact two-sided p of the sign-flip test of sum(values) = 0 for whole-number values.

    Under the null every value's sign is a fair coin, independently. With c_j values of size j, the sum is
    Σ_j j·(2·B_j − c_j), B_j ~ Binomial(c_j, 1/2): its distribution is the convolution of k binomials, so the test
    is exact for any number of documents. For values in {−1, 0, 1} (one seed of a binary metric) this is the exact
    McNemar test.
    """
    m = np.abs(np.asarray(values, dtype=np.int64))
    m = m[m != 0]
    if m.size == 0:
        return 1.0
    pmf = np.ones(1)  # of T = Σ |value| over the values whose sign is +
    for j in np.unique(m):
        c = int(np.sum(m == j))
        spaced = np.zeros(j * c + 1)
        spaced[:: int(j)] = sps.binom.pmf(np.arange(c + 1), c, 0.5)
        pmf = np.convolve(pmf, spaced)
    total = int(m.sum())
    observed = int(np.sum(np.asarray(values, dtype=np.int64)[np.asarray(values) > 0]))
    extreme = abs(2 * observed - total)
    t = np.arange(pmf.size)
    p = float(pmf[np.abs(2 * t - total) >= extreme].sum())
    return min(p, 1.0)


def compare_over_seeds(
    pairs: Sequence[tuple[Samples, Samples]], binary: bool, *, seed: int = 0
) -> SeedsComparison:
    """a − b over seeds: `pairs[s]` holds seed s's per-document scores of a and of b (mappings by document or
    sequences in one order; b may be the same for every seed, as the unfused target is).

    Binary metrics: the exact sign test over documents of each document's difference summed over the seeds
    (`signed_sum_test`); continuous ones: the sign-flip permutation test of the per-document mean differences.
    Both reduce to the single-seed tests of `compare_paired` for one seed. Over seeds: the paired t-test of the k
    per-seed means (`compare_seeds`), with the t-interval of the mean difference.
    """
    diff = _seed_matrix(pairs)
    k, n = diff.shape
    if binary:
        bad = ~np.isin(diff, (-1.0, 0.0, 1.0))
        if bad.any():
            raise HarnessError(f"metric declared binary but {int(bad.sum())} differences are not -1/0/1", "stats")
        p_pooled, test_pooled = signed_sum_test(np.rint(diff.sum(axis=0)).astype(np.int64)), "pooled-sign-exact"
    else:
        p_pooled, exact = sign_flip_test(diff.mean(axis=0), seed=seed)
        test_pooled = "pooled-permutation-exact" if exact else "pooled-permutation-mc"
    per_seed = diff.mean(axis=1)
    p_seeds: float | None = None
    test_seeds: str | None = None
    if k > 1:
        over = compare_seeds(list(per_seed), [0.0] * k)
        p_seeds, test_seeds = over.p_value, over.test
    ci = t_interval(per_seed)
    return SeedsComparison(
        delta=float(per_seed.mean()), per_seed=[float(v) for v in per_seed],
        ci_low=None if ci is None else ci[0], ci_high=None if ci is None else ci[1],
        p_pooled=p_pooled, test_pooled=test_pooled, p_seeds=p_seeds, test_seeds=test_seeds,
        p_value=max(p_pooled, p_seeds if p_seeds is not None else 0.0), n=int(n), k=int(k),
    )  # fmt: skip


def load_samples(run_dir: Path, label: str, task: str, metric: str) -> dict[DocKey, float]:
    """{document: score} from `run_dir/eval/<label>/<task>.jsonl`, keyed by each document's identity.

    The identity is the row's `doc_hash` (lm-eval's hash of the document), so that two runs pair the same
    documents whatever their order; a document that occurs k times keeps one key per occurrence (`hash#2`, ...).
    Files written before doc hashes were recorded are keyed by `doc_id`.
    """
    path = Path(run_dir) / "eval" / label / f"{task}.jsonl"
    if not path.is_file():
        raise HarnessError(
            f"no per-sample results at '{path}'; was '{label}' evaluated on '{task}'?", "stats"
        )
    out: dict[DocKey, float] = {}
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:  # a cut or damaged line is a user-fixable problem of that file, named, not a traceback
                row = json.loads(raw.decode("utf-8"))
                value = float(row[metric])
                doc = int(row["doc_id"])
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise HarnessError(f"'{path}' line {lineno} is not a UTF-8 JSON line (cut or damaged?)", "stats") from None
            except (KeyError, TypeError, ValueError):
                raise HarnessError(f"'{path}' line {lineno} lacks a numeric 'doc_id' or metric '{metric}'", "stats") from None
            key = doc_key(row, out)
            if "doc_hash" not in row and key in out:
                raise HarnessError(f"'{path}' has doc_id {doc} twice", "stats")
            out[key] = value
    return out


def doc_key(row: Mapping[str, Any], taken: Container[DocKey]) -> DocKey:
    """The key a per-sample row pairs on: its `doc_hash`, `hash#k` for the k-th occurrence of a document already
    in `taken`; its `doc_id` in files written before doc hashes were recorded."""
    if "doc_hash" not in row:
        return int(row["doc_id"])
    key, k = str(row["doc_hash"]), 1
    while key in taken:
        k += 1
        key = f"{row['doc_hash']}#{k}"
    return key


def _is_binary(task_info: Mapping[str, Any], a: Mapping[DocKey, float], b: Mapping[DocKey, float]) -> bool:
    """The task's declared `binary` flag; when absent, binary iff every score on both sides is 0 or 1."""
    if "binary" in task_info:
        return bool(task_info["binary"])
    return all(v in (0.0, 1.0) for v in (*a.values(), *b.values()))


def compare_runs(
    run_dir: Path,
    a: str | Sequence[str] | None = None,
    b: str = BASELINE_LABEL,
    tasks: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    seed: int = 0,
    n_boot: int = 2000,
) -> list[dict[str, Any]]:
    """The `comparisons` list of a summary: each task × each label in `a` against `b`, Holm-adjusted across all.

    Labels name eval/<label>/ folders of the run. tasks: {task: {"metric": ..., "binary": ...}} (default: the run's
    summary.json `tasks`). a=None recomputes exactly the (task, a, b) triples already in the summary's
    `comparisons`, so `compare_runs(run_dir)` checks a summary against its per-sample files.
    """
    run_dir = Path(run_dir)
    summary: dict[str, Any] = {}
    if tasks is None or a is None:
        path = run_dir / "summary.json"
        if not path.is_file():
            raise HarnessError(
                f"'{run_dir}' has no summary.json; pass the labels and tasks to compare", "stats"
            )
        summary = json.loads(path.read_text())
    task_info: Mapping[str, Mapping[str, Any]] = tasks if tasks is not None else summary.get("tasks", {})
    if a is None:
        triples = [(c["task"], c["a"], c["b"]) for c in summary.get("comparisons", [])]
    else:
        labels = [a] if isinstance(a, str) else list(a)
        triples = [(t, label, b) for label in labels for t in task_info]
    return _compare([(task, run_dir, a_label, run_dir, b_label) for task, a_label, b_label in triples], task_info,
                    seed=seed, n_boot=n_boot)  # fmt: skip


def compare_across_runs(
    a: tuple[Path, str],
    b: tuple[Path, str],
    tasks: Mapping[str, Mapping[str, Any]],
    *,
    seed: int = 0,
    n_boot: int = 2000,
    common_only: bool = False,
) -> list[dict[str, Any]]:
    """a − b on each task for two labels of two runs, e.g. profuser's run against fusellm's, Holm-adjusted across
    the tasks. Paired by document hash: both runs must have evaluated the same documents (same task, data and
    limit), unless `common_only`, which pairs the documents both evaluated (the settings check is the caller's:
    harness.analysis.report.check_comparable)."""
    return _compare([(t, a[0], a[1], b[0], b[1]) for t in tasks], tasks, seed=seed, n_boot=n_boot,
                    common_only=common_only)  # fmt: skip


_ORDER = ("task", "a", "b", "delta", "ci_low", "ci_high", "interval", "p_value", "p_adjusted", "test", "effect_size",
          "effect", "n")  # fmt: skip


def _compare(
    items: Sequence[tuple[str, Path, str, Path, str]],
    task_info: Mapping[str, Mapping[str, Any]],
    *,
    seed: int,
    n_boot: int,
    common_only: bool = False,
) -> list[dict[str, Any]]:
    """Rows of paired comparisons (task, run and label of a, run and label of b), Holm-adjusted across all rows."""
    rows: list[dict[str, Any]] = []
    for task, a_run, a_label, b_run, b_label in items:
        if task not in task_info:
            raise HarnessError(f"task '{task}' has no metric in the summary's tasks", "stats")
        metric = task_info[task]["metric"]
        a_scores = load_samples(a_run, a_label, task, metric)
        b_scores = load_samples(b_run, b_label, task, metric)
        if common_only:
            shared = a_scores.keys() & b_scores.keys()
            if not shared:
                raise HarnessError(f"{task}: '{a_label}' and '{b_label}' share no document (different data?)", "stats")
            a_scores = {k: v for k, v in a_scores.items() if k in shared}
            b_scores = {k: v for k, v in b_scores.items() if k in shared}
        binary = _is_binary(task_info[task], a_scores, b_scores)
        comp = compare_paired(a_scores, b_scores, binary, seed=seed, n_boot=n_boot)
        rows.append({"task": task, "a": a_label, "b": b_label, **asdict(comp)})
    for row, p_adj in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
        row["p_adjusted"] = p_adj
    return [{k: r[k] for k in _ORDER} for r in rows]
