"""Paired tests, CIs and corrections checked against hand-computed cases and independent scipy/statsmodels calls."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import StratifiedTable, mcnemar
from statsmodels.stats.multitest import multipletests

from harness.analysis.stats import (
    bootstrap_ci,
    compare_over_seeds,
    compare_paired,
    compare_runs,
    compare_seeds,
    holm,
    load_samples,
    seed_summary,
    sign_flip_test,
    signed_sum_test,
    t_interval,
)
from harness.errors import HarnessError


def _binary_pairs(only_a: int, only_b: int, both: int, neither: int) -> tuple[list[float], list[float]]:
    a = [1.0] * only_a + [0.0] * only_b + [1.0] * both + [0.0] * neither
    b = [0.0] * only_a + [1.0] * only_b + [1.0] * both + [0.0] * neither
    return a, b


# ---------------------------------------------------------------- McNemar


def test_mcnemar_small_case_matches_hand_computation() -> None:
    # 10 discordant pairs favour a, 2 favour b: p = 2 * P(X <= 2 | n=12, 1/2) = 2 * (1 + 12 + 66) / 4096
    a, b = _binary_pairs(10, 2, 5, 3)
    comp = compare_paired(a, b, binary=True)
    assert comp.test == "mcnemar-exact"
    assert comp.p_value == pytest.approx(158 / 4096, rel=1e-12)
    assert comp.delta == pytest.approx((10 - 2) / 20)
    assert comp.n == 20
    assert comp.effect == "cohen_g"
    assert comp.effect_size == pytest.approx(10 / 12 - 0.5)  # signed Cohen's g, positive when a is better


def test_mcnemar_textbook_example_matches_scipy_binomtest() -> None:
    # Agresti (2002), presidential approval: 794 approve twice, 150 approve->disapprove, 86 the reverse, 570 never
    a, b = _binary_pairs(150, 86, 794, 570)
    comp = compare_paired(a, b, binary=True)
    assert comp.p_value == pytest.approx(sps.binomtest(86, 236, 0.5).pvalue, rel=1e-9)
    assert comp.p_value < 1e-4
    swapped = compare_paired(b, a, binary=True)
    assert swapped.p_value == pytest.approx(comp.p_value)
    assert swapped.effect_size == pytest.approx(-comp.effect_size)
    assert swapped.delta == pytest.approx(-comp.delta)


@pytest.mark.parametrize("binary", [True, False])
def test_identical_inputs_give_p_one_and_zero_everything(binary: bool) -> None:
    rng = np.random.default_rng(0)
    x = (rng.random(50) < 0.5).astype(float) if binary else rng.random(50)
    comp = compare_paired(x, x.copy(), binary=binary)
    assert comp.p_value == 1.0
    assert (comp.delta, comp.ci_low, comp.ci_high, comp.effect_size) == (0.0, 0.0, 0.0, 0.0)


def test_declared_binary_with_fractional_scores_is_a_user_error() -> None:
    with pytest.raises(HarnessError, match="binary"):
        compare_paired([0.5, 1.0], [0.0, 1.0], binary=True)


# ---------------------------------------------------------------- permutation test


def test_sign_flip_exact_small_case() -> None:
    # all 5 differences positive: only the all-plus and all-minus sign patterns are as extreme -> p = 2/32
    comp = compare_paired([1, 2, 3, 4, 5], [0, 0, 0, 0, 0], binary=False)
    assert comp.test == "permutation-exact"
    assert comp.p_value == pytest.approx(2 / 32)
    diffs = np.array([1, 2, 3, 4, 5], dtype=float)
    assert comp.effect_size == pytest.approx(diffs.mean() / diffs.std(ddof=1))  # Cohen's d_z
    assert comp.effect == "cohen_dz"


def _enumerated_p(diff: np.ndarray) -> float:
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=diff.size)))
    null = (signs * diff).mean(axis=1)
    observed = abs(diff.mean())
    return float(np.mean(np.abs(null) >= observed - 1e-12))


def test_sign_flip_matches_full_enumeration_exactly_and_by_monte_carlo() -> None:
    rng = np.random.default_rng(3)
    diff = rng.normal(0.4, 1.0, 16)
    truth = _enumerated_p(diff)
    exact_p, exact = sign_flip_test(diff, n_resamples=2**16)
    assert exact and exact_p == pytest.approx(truth, abs=1e-12)
    mc_p, exact = sign_flip_test(diff, seed=1)  # 10,000 random sign vectors
    assert not exact
    assert mc_p == pytest.approx(truth, abs=0.015)
    assert sign_flip_test(diff, seed=1) == (mc_p, False)  # fixed seed: the same p every time


# ---------------------------------------------------------------- bootstrap CI


def test_bootstrap_ci_is_seeded_and_brackets_the_delta() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.6, 0.2, 300), rng.normal(0.5, 0.2, 300)
    c1 = compare_paired(a, b, binary=False, seed=7)
    c2 = compare_paired(a, b, binary=False, seed=7)
    c3 = compare_paired(a, b, binary=False, seed=8)
    assert (c1.ci_low, c1.ci_high) == (c2.ci_low, c2.ci_high)
    assert (c1.ci_low, c1.ci_high) != (c3.ci_low, c3.ci_high)
    assert c1.ci_low < c1.delta < c1.ci_high
    se = np.std(a - b, ddof=1) / math.sqrt(300)  # the percentile interval is close to the normal one here
    assert c1.ci_high - c1.ci_low == pytest.approx(2 * 1.96 * se, rel=0.15)


@pytest.mark.parametrize("binary", [False, True])
def test_bootstrap_ci_covers_the_true_delta_about_95_percent(binary: bool) -> None:
    rng = np.random.default_rng(11)
    true_delta, reps, n, hits = 0.1, 150, 200, 0
    for rep in range(reps):
        if binary:  # a fixes 15% of b's failures and breaks 5% of b's successes; b succeeds with p = 0.5
            b = (rng.random(n) < 0.5).astype(float)
            flip = rng.random(n)
            a = np.where(b == 0, (flip < 0.3).astype(float), (flip >= 0.1).astype(float))
            true_delta = 0.5 * 0.3 - 0.5 * 0.1
        else:
            b = rng.normal(0.0, 1.0, n)
            a = b + true_delta + rng.normal(0.0, 0.5, n)
        low, high = bootstrap_ci(
            a - b, seed=rep, n_boot=1000
        )  # what compare_paired reports as ci_low/ci_high
        hits += low <= true_delta <= high
    assert 0.89 <= hits / reps <= 0.99


# ---------------------------------------------------------------- pairing by doc_id


def test_doc_id_mappings_pair_by_id_not_by_order() -> None:
    rng = np.random.default_rng(2)
    a = {i: float(v) for i, v in enumerate(rng.random(40))}
    b = {i: float(v) for i, v in enumerate(rng.random(40))}
    shuffled_b = {i: b[i] for i in rng.permutation(40).tolist()}
    by_id = compare_paired(a, shuffled_b, binary=False)
    by_pos = compare_paired([a[i] for i in range(40)], [b[i] for i in range(40)], binary=False)
    assert by_id == by_pos


def test_runs_pair_by_document_hash_whatever_the_order_and_doc_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    hashes = [f"{i:064x}" for i in rng.permutation(10_000)[:50]]
    a_vals, b_vals = rng.random(50), rng.random(50)
    for run, vals, order in ((tmp_path / "a", a_vals, range(50)), (tmp_path / "b", b_vals, rng.permutation(50))):
        path = run / "eval" / "m" / "t.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps({"doc_id": n, "doc_hash": hashes[i], "score": float(vals[i])}) + "\n"
                                for n, i in enumerate(order)))  # fmt: skip
    a, b = load_samples(tmp_path / "a", "m", "t", "score"), load_samples(tmp_path / "b", "m", "t", "score")
    assert set(a) == set(b) == set(hashes)
    assert compare_paired(a, b, binary=False).delta == pytest.approx(float((a_vals - b_vals).mean()))
    with pytest.raises(HarnessError, match="different documents"):
        compare_paired(a, {**{k: v for k, v in b.items() if k != hashes[0]}, "f" * 64: 0.5}, binary=False)


def test_different_document_sets_are_an_error() -> None:
    with pytest.raises(HarnessError, match="different documents"):
        compare_paired({0: 1.0, 1: 0.0}, {0: 1.0, 2: 0.0}, binary=True)
    with pytest.raises(HarnessError, match="length"):
        compare_paired([1.0, 0.0], [1.0], binary=True)


# ---------------------------------------------------------------- Holm


def test_holm_matches_hand_computation_and_statsmodels() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(4)
    many = rng.random(25) ** 3
    assert holm(many.tolist()) == pytest.approx(multipletests(many, method="holm")[1].tolist())
    assert holm([]) == []
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1


# ---------------------------------------------------------------- seeds


def test_seed_summary_and_tests_over_seeds() -> None:
    a, b = [0.61, 0.64, 0.60, 0.66], [0.55, 0.57, 0.56, 0.58]
    mean, sd = seed_summary(a)
    assert mean == pytest.approx(np.mean(a)) and sd == pytest.approx(np.std(a, ddof=1))
    assert math.isnan(seed_summary([0.5])[1])
    t = compare_seeds(a, b)
    assert t.test == "paired-t" and t.p_value == pytest.approx(sps.ttest_rel(a, b).pvalue)
    w = compare_seeds(a, b, test="wilcoxon")
    assert w.p_value == pytest.approx(sps.wilcoxon(a, b).pvalue)
    assert compare_seeds([0.5, 0.5], [0.5, 0.5]).p_value == 1.0
    with pytest.raises(HarnessError):
        compare_seeds([0.5], [0.4])


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_seed_tests_when_every_seed_improves_by_the_same_amount(k: int) -> None:
    a = [0.5 + 0.01 * i for i in range(k)]
    b = [x - 0.03 for x in a]  # the same difference (up to floating-point noise) on every seed
    t = compare_seeds(a, b)
    # no t-test p exists at zero variance: the exact sign-flip test over the seeds, 2 of 2^k sign patterns
    assert (t.test, t.p_value) == ("sign-flip-exact", pytest.approx(min(1.0, 2 / 2**k)))
    assert t.p_value > 0
    w = compare_seeds(a, b, test="wilcoxon")
    assert w.test == "wilcoxon" and w.p_value == pytest.approx(sps.wilcoxon(np.subtract(a, b)).pvalue)
    assert w.p_value == pytest.approx(2 / 2**k)  # exact signed-rank: all k ranks positive
    assert compare_seeds(a, b, test="wilcoxon").p_value >= (0.5 if k == 2 else 0)


def test_seed_tests_match_scipy_on_ordinary_data() -> None:
    rng = np.random.default_rng(8)
    for k in (2, 3, 6, 10):
        a = rng.normal(0.6, 0.05, k)
        b = a - rng.normal(0.02, 0.03, k)
        assert compare_seeds(a, b).p_value == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-12)
        assert compare_seeds(a, b, test="wilcoxon").p_value == pytest.approx(sps.wilcoxon(a, b).pvalue, rel=1e-12)
    assert compare_seeds([0.6, 0.5], [0.4, 0.3], test="wilcoxon").p_value == pytest.approx(0.5)
    with pytest.raises(HarnessError, match="unknown seed test"):
        compare_seeds([0.6, 0.5], [0.4, 0.3], test="sign")  # type: ignore[arg-type]


# ---------------------------------------------------------------- intervals that agree with the tests


def test_the_binary_interval_is_the_one_exact_mcnemar_inverts() -> None:
    # the audit's case: 5 discordant pairs for a, 0 for b, of 60 documents: p = 0.0625, so 0 must be inside
    a, b = _binary_pairs(5, 0, 21, 34)
    comp = compare_paired(a, b, binary=True)
    assert comp.p_value == pytest.approx(0.0625)
    assert comp.ci_low < 0 < comp.ci_high and comp.interval == "mcnemar-exact-conditional"
    share = sps.binomtest(5, 5).proportion_ci(method="exact")  # Clopper-Pearson for a's share of the 5
    assert (comp.ci_low, comp.ci_high) == pytest.approx(((5 / 60) * (2 * share.low - 1), (5 / 60) * (2 * share.high - 1)))
    # over many tables, the interval excludes 0 exactly when p < 0.05
    for only_a in range(0, 16):
        for only_b in range(0, 16):
            comp = compare_paired(*_binary_pairs(only_a, only_b, 30, 30), binary=True)
            assert (comp.ci_low > 0 or comp.ci_high < 0) == (comp.p_value < 0.05), (only_a, only_b)
            assert comp.ci_low <= comp.delta <= comp.ci_high


def test_one_document_and_constant_differences_give_defined_results() -> None:
    one = compare_paired([0.3], [0.1], binary=False)
    assert (one.p_value, one.effect_size, one.n, one.test) == (1.0, None, 1, "permutation-exact")
    same = compare_paired([0.3, 0.5, 0.9], [0.1, 0.3, 0.7], binary=False)  # every difference 0.2
    assert same.effect_size is None and same.p_value == pytest.approx(2 / 8)
    assert (same.ci_low, same.ci_high) == pytest.approx((0.2, 0.2))


def test_json_the_harness_writes_is_standard(tmp_path: Path) -> None:
    from harness.store import atomic_write_json, write_jsonl

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    atomic_write_json(tmp_path / "s.json", {"d": math.inf, "x": [math.nan, -math.inf, 1.5], "n": np.float64("nan")})
    assert strict((tmp_path / "s.json").read_text()) == {"d": None, "x": [None, None, 1.5], "n": None}
    write_jsonl(tmp_path / "r.jsonl", [{"acc": math.nan}, {"acc": 1.0}])
    assert [strict(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()] == [{"acc": None}, {"acc": 1.0}]


def test_monte_carlo_p_floor_is_two_over_resamples_plus_one() -> None:
    diff = np.linspace(0.5, 1.5, 40)  # every difference positive: no sign pattern is as extreme but the observed
    p, exact = sign_flip_test(diff)
    assert not exact and p == pytest.approx(2 / 10_001)  # two-sided: twice (0 + 1) / (10,000 + 1), about 2e-4


# ---------------------------------------------------------------- per-sample files and summaries


def _write_eval(run: Path, label: str, task: str, metric: str, values: dict[int, float]) -> None:
    path = run / "eval" / label / f"{task}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"doc_id": d, metric: v}) + "\n" for d, v in values.items()))


def _synthetic_run(tmp_path: Path) -> tuple[Path, dict[str, dict[str, object]]]:
    rng = np.random.default_rng(9)
    run = tmp_path / "run"
    tasks = {"know": {"metric": "acc", "binary": True}, "math": {"metric": "exact_match", "binary": True},
             "score": {"metric": "reward", "binary": False}}  # fmt: skip
    for task, info in tasks.items():
        n = 120
        ids = rng.permutation(1000)[:n].tolist()  # sparse, unordered doc ids
        if info["binary"]:
            base = (rng.random(n) < 0.4).astype(float)
            fused = np.where(rng.random(n) < 0.25, 1.0, base)
        else:
            base = rng.random(n)
            fused = base + rng.normal(0.05, 0.2, n)
        _write_eval(run, "target-base", task, str(info["metric"]), dict(zip(ids, base.tolist(), strict=True)))
        order = rng.permutation(n)
        _write_eval(run, "profuser", task, str(info["metric"]), {ids[i]: float(fused[i]) for i in order})
    return run, tasks


def test_summary_p_values_can_be_recomputed_from_per_sample_files(tmp_path: Path) -> None:
    run, tasks = _synthetic_run(tmp_path)
    comparisons = compare_runs(run, "profuser", "target-base", tasks, seed=0, n_boot=500)
    (run / "summary.json").write_text(json.dumps({"tasks": tasks, "comparisons": comparisons}))
    summary = json.loads((run / "summary.json").read_text())

    # independently: read the JSONL files, pair by doc_id, test with scipy, correct with statsmodels
    raw = []
    for comp in summary["comparisons"]:
        metric = tasks[comp["task"]]["metric"]
        rows = {}
        for label in ("profuser", "target-base"):
            lines = (run / "eval" / label / f"{comp['task']}.jsonl").read_text().splitlines()
            rows[label] = {json.loads(x)["doc_id"]: json.loads(x)[metric] for x in lines}
        ids = sorted(rows["profuser"])
        a = np.array([rows["profuser"][i] for i in ids])
        b = np.array([rows["target-base"][i] for i in ids])
        if tasks[comp["task"]]["binary"]:
            only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
            p = sps.binomtest(only_a, only_a + only_b, 0.5).pvalue
            assert comp["test"] == "mcnemar-exact"
        else:
            p = sps.permutation_test((a - b,), np.mean, permutation_type="samples", n_resamples=10_000,
                                     random_state=np.random.default_rng(0)).pvalue  # fmt: skip
        assert comp["delta"] == pytest.approx(float((a - b).mean()))
        assert comp["n"] == len(ids)
        assert comp["p_value"] == pytest.approx(p, rel=1e-9)
        raw.append(p)
    assert [c["p_adjusted"] for c in summary["comparisons"]] == pytest.approx(
        multipletests(raw, method="holm")[1]
    )
    # and the library's own recomputation from the summary alone reproduces every number
    assert compare_runs(run, n_boot=500) == summary["comparisons"]


def test_compare_runs_compares_several_labels_under_one_holm_family(tmp_path: Path) -> None:
    run, tasks = _synthetic_run(tmp_path)
    for task, info in tasks.items():
        values = load_samples(run, "target-base", task, str(info["metric"]))
        _write_eval(run, "copy", task, str(info["metric"]), values)
    comps = compare_runs(run, ["profuser", "copy"], "target-base", tasks, n_boot=200)
    assert [(c["a"], c["task"]) for c in comps] == [(a, t) for a in ("profuser", "copy") for t in tasks]
    assert all(c["p_value"] == 1.0 for c in comps if c["a"] == "copy")
    assert [c["p_adjusted"] for c in comps] == pytest.approx(holm([c["p_value"] for c in comps]))


def test_load_samples_errors_are_one_line_user_errors(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(HarnessError, match="no per-sample results"):
        load_samples(run, "profuser", "know", "acc")
    _write_eval(run, "profuser", "know", "acc", {1: 1.0})
    with (run / "eval" / "profuser" / "know.jsonl").open("a") as fh:
        fh.write(json.dumps({"doc_id": 1, "acc": 0.0}) + "\n")
    with pytest.raises(HarnessError, match="twice"):
        load_samples(run, "profuser", "know", "acc")
    with pytest.raises(HarnessError, match="lacks"):
        load_samples(run, "profuser", "know", "f1")


# ---------------------------------------------------------------- over seeds (harness sweep, run --seeds)


def test_t_interval_over_seeds_matches_scipy() -> None:
    x = [0.61, 0.58, 0.66]
    low, high = t_interval(x)  # type: ignore[misc]
    ci = sps.ttest_1samp(x, 0.0).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    low2, high2 = t_interval([0.5, 0.6])  # type: ignore[misc]
    assert (high2 - low2) / 2 == pytest.approx(12.7062 * np.std([0.5, 0.6], ddof=1) / math.sqrt(2), rel=1e-4)
    assert t_interval([0.5]) is None


def test_signed_sum_test_is_the_exact_sign_flip_distribution() -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(-3, 4, size=12)
    observed = abs(values.sum())
    patterns = np.array(list(itertools.product([-1, 1], repeat=values.size)))
    brute = float(np.mean(np.abs((patterns * np.abs(values)).sum(axis=1)) >= observed))
    assert signed_sum_test(values) == pytest.approx(brute, abs=1e-12)
    scipy_p = sps.permutation_test((values.astype(float),), np.sum, permutation_type="samples",
                                   n_resamples=10**6, alternative="two-sided").pvalue  # exact: 2^12 patterns
    assert signed_sum_test(values) == pytest.approx(scipy_p, abs=1e-12)
    # one seed of a binary metric: the exact McNemar test
    a, b = _binary_pairs(10, 2, 5, 3)
    assert signed_sum_test(np.array(a) - np.array(b)) == pytest.approx(
        mcnemar([[5, 10], [2, 3]], exact=True).pvalue, abs=1e-12)  # fmt: skip
    assert signed_sum_test([0, 0]) == 1.0


@pytest.mark.parametrize("binary", [True, False])
def test_one_seed_over_seeds_is_the_single_seed_test(binary: bool) -> None:
    rng = np.random.default_rng(4)
    a = (rng.random(40) < 0.6).astype(float) if binary else rng.random(40)
    b = (rng.random(40) < 0.45).astype(float) if binary else rng.random(40)
    over = compare_over_seeds([(a, b)], binary)
    single = compare_paired(a, b, binary)
    assert over.p_pooled == pytest.approx(single.p_value, abs=1e-12) and over.delta == pytest.approx(single.delta)
    assert over.p_seeds is None and over.ci_low is None and over.p_value == over.p_pooled and over.k == 1


def test_over_seeds_pools_documents_and_tests_seeds_like_scipy() -> None:
    rng = np.random.default_rng(5)
    base = rng.random(11)
    seeds = [base + 0.05 + rng.normal(0, 0.1, 11) for _ in range(3)]
    over = compare_over_seeds([(s, base) for s in seeds], binary=False)
    per_doc = np.mean([s - base for s in seeds], axis=0)
    exact = sps.permutation_test((per_doc,), np.mean, permutation_type="samples", n_resamples=10**6,
                                 alternative="two-sided").pvalue  # fmt: skip
    assert over.test_pooled == "pooled-permutation-exact" and over.p_pooled == pytest.approx(exact, abs=1e-12)
    per_seed = [float(np.mean(s - base)) for s in seeds]
    assert over.per_seed == pytest.approx(per_seed)
    assert over.p_seeds == pytest.approx(sps.ttest_1samp(per_seed, 0.0).pvalue, rel=1e-9)
    ci = sps.ttest_1samp(per_seed, 0.0).confidence_interval(0.95)
    assert (over.ci_low, over.ci_high) == pytest.approx((ci.low, ci.high))
    assert over.p_value == max(over.p_pooled, over.p_seeds)  # type: ignore[type-var]


def _cmh_p_over_seed_strata(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Cochran–Mantel–Haenszel as statsmodels computes it, every (seed, document) pair one stratum (the stratified
    McNemar test): each pair counted as independent of the others."""
    tables = [np.array([[x, 1 - x], [y, 1 - y]]) for a, b in pairs for x, y in zip(a, b, strict=True) if x != y]
    return float(StratifiedTable(tables).test_null_odds(correction=False).pvalue)


def test_the_same_document_in_k_seeds_is_not_k_independent_pairs() -> None:
    """Three identical seeds carry the evidence of one: the pooled test says so; CMH over seed strata counts every
    discordant document three times (docs/statistics.md: why the harness does not use it)."""
    a, b = (np.array(x) for x in _binary_pairs(6, 1, 20, 13))
    one = compare_over_seeds([(a, b)], binary=True)
    three = compare_over_seeds([(a, b)] * 3, binary=True)
    assert three.p_pooled == pytest.approx(one.p_pooled) and one.p_pooled > 0.1
    assert _cmh_p_over_seed_strata([(a, b)]) == pytest.approx(
        mcnemar([[20, 6], [1, 13]], exact=False, correction=False).pvalue)  # fmt: skip
    assert _cmh_p_over_seed_strata([(a, b)] * 3) < 0.01  # the same data, "significant"


def test_the_pooled_test_keeps_its_level_when_seeds_share_documents() -> None:
    """Under the null with document effects shared by every seed (a document is easy for a or for b, and stays so
    across seeds), the pooled test rejects about 5% of the time; CMH over seed strata far more often."""
    rng = np.random.default_rng(6)
    ours = cmh = 0
    trials = 300
    for _ in range(trials):
        n = 60
        lean = rng.choice([-0.4, 0.0, 0.4], size=n)  # per document, symmetric: no difference on average
        b = (rng.random(n) < 0.5).astype(float)
        pairs = []
        for _seed in range(3):
            flip = rng.random(n) < 0.5 + lean  # a is right where it leans, independently per seed
            pairs.append((np.where(flip, 1.0, 0.0), b))
        ours += compare_over_seeds(pairs, binary=True).p_pooled < 0.05
        cmh += _cmh_p_over_seed_strata(pairs) < 0.05
    assert ours / trials <= 0.08 and cmh / trials > 0.12, (ours, cmh)


def test_seeds_on_different_documents_are_an_error() -> None:
    with pytest.raises(HarnessError, match="different documents"):
        compare_over_seeds([({"x": 1.0, "y": 0.0}, {"x": 0.0, "y": 0.0}), ({"x": 1.0, "z": 0.0}, {"x": 0.0, "z": 0.0})],
                           binary=True)  # fmt: skip
