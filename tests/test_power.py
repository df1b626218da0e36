"""`harness power`: every reported MDE is checked by simulating the harness's own tests at that difference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar

import harness
from harness.analysis.stats import load_samples, signed_sum_test
from harness.cli import main


def _mde(**kwargs: object) -> dict:
    [row] = harness.power(**kwargs)  # type: ignore[arg-type]
    return row


def _exact_mcnemar_p(only_a: np.ndarray, only_b: np.ndarray) -> np.ndarray:
    """statsmodels' exact McNemar p, vectorised: 2·P(Bin(d, 1/2) ≤ min(n_a, n_b)), capped at 1."""
    d = only_a + only_b
    return np.where(d > 0, np.minimum(1.0, 2 * sps.binom.cdf(np.minimum(only_a, only_b), d, 0.5)), 1.0)


def test_the_vectorised_exact_mcnemar_is_statsmodels() -> None:
    for a, b in [(0, 0), (5, 0), (3, 9), (20, 31), (7, 7)]:
        want = mcnemar([[10, a], [b, 10]], exact=True).pvalue
        assert _exact_mcnemar_p(np.array([a]), np.array([b]))[0] == pytest.approx(min(want, 1.0))


@pytest.mark.parametrize(("n", "p_d", "m"), [(40, 0.2, 1), (100, 0.3, 1), (300, 0.2, 1), (300, 0.1, 6), (1000, 0.15, 3)])
def test_simulated_mcnemar_power_at_the_reported_mde_is_the_requested_power(n: int, p_d: float, m: int) -> None:
    row = _mde(n=n, p_discordant=p_d, comparisons=m)
    delta = row["mde"]
    assert delta is not None and 0 < delta <= p_d and row["alpha_per_comparison"] == pytest.approx(0.05 / m)
    rng = np.random.default_rng(0)
    p_a, p_b = (p_d + delta) / 2, (p_d - delta) / 2  # documents only a (only b) gets right
    counts = rng.multinomial(n, [p_a, p_b, 1 - p_d], size=40_000)
    simulated = np.mean(_exact_mcnemar_p(counts[:, 0], counts[:, 1]) < 0.05 / m)
    assert simulated == pytest.approx(0.8, abs=0.03)


def test_the_issue_example_and_the_normal_approximation_at_small_n() -> None:
    row = _mde(n=300, p_discordant=0.2)
    assert 0.07 < row["mde"] < 0.078  # "about 7 points" (issue 26), exactly 7.4
    small = _mde(n=40, p_discordant=0.3)
    assert small["mde"] > small["mde_normal"]  # the exact test needs more than the normal approximation promises


def test_mde_and_documents_needed_are_inverse() -> None:
    need = _mde(mde=0.05, p_discordant=0.2)["n"]
    assert _mde(n=need, p_discordant=0.2)["mde"] <= 0.05 + 1e-9
    assert _mde(n=need - 40, p_discordant=0.2)["mde"] > 0.05
    cont = _mde(mde=0.1, sd_diff=0.5)["n"]
    assert cont == math.ceil(cont) and _mde(n=cont, sd_diff=0.5)["mde"] <= 0.1 + 1e-9


def test_simulated_pooled_sign_test_over_seeds_at_the_reported_mde() -> None:
    n, p_d, seeds = 200, 0.2, 3
    row = _mde(n=n, p_discordant=p_d, seeds=seeds)
    delta = row["mde"]
    assert delta < _mde(n=n, p_discordant=p_d)["mde"]  # seeds independent given the document add power
    rng = np.random.default_rng(1)
    p_a, p_b = (p_d + delta) / 2, (p_d - delta) / 2
    per_seed = rng.choice([1, -1, 0], p=[p_a, p_b, 1 - p_d], size=(2000, seeds, n))  # a − b per seed and document
    sums = per_seed.sum(axis=1)
    simulated = np.mean([signed_sum_test(s) < 0.05 for s in sums])  # the sweep's own test over documents
    assert simulated == pytest.approx(0.8, abs=0.03)


def test_correlated_seeds_add_less_and_identical_seeds_nothing() -> None:
    one = _mde(n=300, sd_diff=1.0)["mde"]
    assert _mde(n=300, sd_diff=1.0, seeds=4, seed_correlation=1.0)["mde"] == pytest.approx(one, rel=1e-4)
    half = _mde(n=300, sd_diff=1.0, seeds=4, seed_correlation=0.5)["mde"]
    assert _mde(n=300, sd_diff=1.0, seeds=4)["mde"] < half < one


@pytest.mark.parametrize(("n", "sd"), [(30, 1.0), (100, 0.4), (400, 2.0)])
def test_simulated_sign_flip_power_at_the_reported_continuous_mde(n: int, sd: float) -> None:
    delta = _mde(n=n, sd_diff=sd)["mde"]
    rng = np.random.default_rng(2)
    sims, flips = 3000, 600
    diffs = rng.normal(delta, sd, size=(sims, n))
    signs = rng.choice([-1.0, 1.0], size=(flips, n))
    observed = np.abs(diffs.mean(axis=1))
    resampled = np.abs(signs @ diffs.T) / n  # flips × sims: the sign-flip distribution of each simulated mean
    p = (np.sum(resampled >= observed[None, :] - 1e-12, axis=0) + 1) / (flips + 1)
    assert np.mean(p < 0.05) == pytest.approx(0.8, abs=0.03)


def test_cli_json_and_text() -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["power", "--n", "300", "--p-discordant", "0.2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert {"n", "p_discordant", "alpha", "power", "mde"} <= out.keys() and out["n"] == 300
    assert out["mde"] == pytest.approx(_mde(n=300, p_discordant=0.2)["mde"])
    text = runner.invoke(main, ["power", "--n", "300", "--p-discordant", "0.2", "-M", "6"]).output
    assert "α/M = 0.008333" in text and "pts" in text
    needed = runner.invoke(main, ["power", "--mde", "0.03", "--p-discordant", "0.2"]).output
    assert "documents needed to detect 3.0 pts" in needed


@pytest.mark.parametrize("args", [["--n", "300"], ["--n", "300", "--p-discordant", "0.2", "--sd-diff", "1"],
                                  ["--p-discordant", "0.2"], ["--mde", "0.3", "--p-discordant", "0.2"]])  # fmt: skip
def test_bad_questions_are_one_line_errors(args: list[str]) -> None:
    res = CliRunner().invoke(main, ["power", *args])
    assert res.exit_code == 2 and res.output.count("\n") <= 1 and "harness: power:" in res.output


# ----------------------------------------------------------------------------- from finished runs, in reports


def _add_margins_and_clusters(run: Path, label: str, seed: int) -> None:
    """Per-sample rows as evaluation writes them for a multiple-choice task: the margin's sign is the 0/1 outcome."""
    rng = np.random.default_rng(seed)
    path = run / "eval" / label / "facts_qa.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        size = abs(rng.normal(1.0, 0.7)) + 0.05
        r["margin"] = size if r["acc"] == 1.0 else -size
        r["cluster"] = f"subject{r['doc_id'] % 8}"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_from_a_run_estimates_each_pair_and_reports_mde(tmp_path: Path) -> None:
    from tests.test_report import N_DOCS, make_run

    run = make_run(tmp_path, "pro")
    rows = harness.power(source=run, task="arith_gsm", comparisons=2)
    pairs = {(r["a"], r["b"]) for r in rows}
    assert ("profuser", "target-base") in pairs and all(r["n"] == N_DOCS for r in rows)
    xa = load_samples(run, "profuser", "arith_gsm", "exact_match")
    xb = load_samples(run, "target-base", "arith_gsm", "exact_match")
    row = next(r for r in rows if (r["a"], r["b"]) == ("profuser", "target-base"))
    p_d = np.mean([xa[k] != xb[k] for k in xa])
    assert row["p_discordant"] == pytest.approx(p_d) and row["observed_delta"] == pytest.approx(np.mean([xa[k] - xb[k] for k in xa]))
    assert row["mde"] == pytest.approx(_mde(n=N_DOCS, p_discordant=p_d, comparisons=2)["mde"])
    res = CliRunner().invoke(main, ["power", "--from", str(run), "--task", "harm_score"])
    assert res.exit_code == 0 and "| harm_score | profuser | target-base |" in res.output


def test_from_a_sweep_pools_its_seeds(tmp_path: Path) -> None:
    from tests.test_report import make_run

    runs = tmp_path / "sweep" / "runs"
    for s in (0, 1):
        make_run(runs, f"pro-{s}", seed=s)
    (tmp_path / "sweep" / "sweep.json").write_text("{}")
    summary = {"points": [{"label": "profuser", "values": {}, "method": "profuser", "runs": {"0": "pro-0", "1": "pro-1"}}]}
    (tmp_path / "sweep" / "summary.json").write_text(json.dumps(summary))
    [row] = harness.power(source=tmp_path / "sweep", task="arith_gsm")
    assert row["seeds"] == 2 and row["observed_seeds"] == 2 and 0 <= row["estimated_rho"] <= 1


def test_head_to_head_names_the_mde_of_rows_that_are_not_significant(tmp_path: Path) -> None:
    from harness.analysis.report import head_to_head, render_head_to_head
    from tests.test_report import TASKS, make_run

    a = make_run(tmp_path, "pro", method="profuser", schedule="progressive")
    b = make_run(tmp_path, "fuse", method="fusellm", schedule="linear")
    frame = head_to_head([a, b], "profuser", "fusellm")
    md = render_head_to_head(frame, "md")
    quiet = frame[frame["p_adjusted"] >= 0.05]
    assert len(quiet) > 0
    for row in quiet.to_dict("records"):
        xa = load_samples(a, "profuser", row["task"], TASKS[row["task"]][1])
        xb = load_samples(b, "fusellm", row["task"], TASKS[row["task"]][1])
        if row["binary"]:
            want = _mde(n=len(xa), p_discordant=np.mean([xa[k] != xb[k] for k in xa]), comparisons=len(frame))
            if want["mde"] is None:  # even every discordant document for one side would often not pass α/M
                assert math.isnan(row["mde"]) and "(n.s., MDE beyond reach)" in md
            else:
                assert row["mde"] == pytest.approx(want["mde"])
                assert f"(n.s., MDE {100 * row['mde']:.1f} pts)" in md
    assert md.count("n.s., MDE") == len(quiet)


def test_margin_is_compared_head_to_head_with_its_paired_test_and_clusters(tmp_path: Path) -> None:
    from tests.test_report import make_run

    a = make_run(tmp_path, "pro", method="profuser", schedule="progressive")
    b = make_run(tmp_path, "fuse", method="fusellm", schedule="linear")
    _add_margins_and_clusters(a, "profuser", 1)
    _add_margins_and_clusters(b, "fusellm", 2)
    res = CliRunner().invoke(main, ["report", str(a), str(b), "--versus", "profuser:fusellm", "--metric", "margin"])
    assert res.exit_code == 0, res.output
    assert "on margin" in res.output and "| facts_qa |" in res.output and "arith_gsm" not in res.output
    assert "permutation" in res.output and "documents in 8 clusters; clustered SE" in res.output
    bad = CliRunner().invoke(main, ["report", str(a), "--metric", "margin"])
    assert bad.exit_code == 2 and "--versus" in bad.output


def _sandbox_run(root: Path, name: str, method: str, base: np.ndarray, mine: np.ndarray) -> None:
    run = root / name
    for label, x in (("target-base", base), (method, mine)):
        path = run / "eval" / label / "sandbox_knowledge.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps({"doc_id": i, "doc_hash": f"h{i}", "acc": float(v)}) + "\n" for i, v in enumerate(x)))
    info = {"metric": "acc", "value": float(mine.mean()), "n": len(mine), "binary": True}
    (run / "summary.json").write_text(json.dumps({"method": method, "tasks": {"sandbox_knowledge": info}}))


def test_the_dry_run_prints_each_task_s_documents_and_mde(tmp_path: Path) -> None:
    args = ["run", "-m", "profuser", "-t", "sandbox_knowledge", "--out", str(tmp_path), "--dry-run"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    m = 1 + 2  # the method and both sources against target-base, one task
    want = _mde(n=300, p_discordant=0.2, comparisons=m)["mde"]  # the default world: 300 documents per skill
    assert f"sandbox_knowledge: 300 documents; vs target-base MDE {100 * want:.1f} pts (p_discordant 0.2, assumed)" in " ".join(res.output.split())
    rng = np.random.default_rng(0)
    base = (rng.random(40) < 0.5).astype(float)
    _sandbox_run(tmp_path, "earlier", "fusellm", base, np.where(np.arange(40) < 4, 1 - base, base))  # 4 of 40 differ
    res = CliRunner().invoke(main, args)
    want = _mde(n=300, p_discordant=0.1, comparisons=m)["mde"]
    assert f"vs target-base MDE {100 * want:.1f} pts (p_discordant 0.1, 1 earlier pair(s)" in " ".join(res.output.split())


def test_a_sweep_s_head_to_head_rows_carry_their_mde(tmp_path: Path) -> None:
    from harness.analysis.over_seeds import render_versus
    from harness.analysis.replicates import summarise_points
    from tests.test_report import make_run

    pro = [make_run(tmp_path, f"pro{s}", schedule="progressive", seed=s) for s in (0, 1)]
    lin = [make_run(tmp_path, f"lin{s}", schedule="linear", seed=s) for s in (0, 1)]
    points = [("profuser progressive", {"method.schedule.name": "progressive"}, pro),
              ("profuser linear", {"method.schedule.name": "linear"}, lin)]  # fmt: skip
    versus = summarise_points(points)["versus"]
    row = next(v for v in versus if v["task"] == "arith_gsm")
    pairs = [(load_samples(a, "profuser", "arith_gsm", "exact_match"), load_samples(b, "profuser", "arith_gsm", "exact_match"))
             for a, b in zip(pro, lin, strict=True)]  # fmt: skip
    from harness.analysis.power_from_runs import estimate_pair, from_estimate

    want = from_estimate(estimate_pair("arith_gsm", "a", "b", pairs, True), comparisons=len(versus)).mde
    assert row["mde"] == pytest.approx(want) and row["binary"] is True
    quiet = [v for v in versus if v["p_adjusted"] >= 0.05]
    assert render_versus(versus).count("(n.s., MDE") == len(quiet) > 0
    from harness.analysis.power import seeds_test_mde

    assert row["mde_seeds"] == seeds_test_mde(list(row["per_seed"].values()), len(versus), True)
    assert render_versus(versus).count("; over seeds ") == len(quiet)  # two seeds: the t-test's reach is shown too


@pytest.mark.parametrize("k,sd,m", [(3, 0.02, 1), (5, 0.03, 9), (10, 0.01, 21)])
def test_simulated_t_test_over_seeds_at_its_reported_mde(k: int, sd: float, m: int) -> None:
    """The seed half of a sweep's decision: per-seed differences ~ N(MDE, sd) are detected by the paired t-test at
    α/M with the requested power (what `compare_seeds` runs on them)."""
    from harness.analysis.power import seeds_test_mde

    observed = np.random.default_rng(1).normal(0, 1, k)
    observed = (observed - observed.mean()) / observed.std(ddof=1) * sd  # exactly this SD
    delta = seeds_test_mde(list(observed), comparisons=m, binary=True)
    assert delta is not None and delta > 0
    draws = np.random.default_rng(2).normal(delta, sd, (20_000, k))
    p = sps.ttest_1samp(draws, 0.0, axis=1).pvalue
    assert abs(float(np.mean(p < 0.05 / m)) - 0.8) < 0.03


def test_with_three_seeds_and_many_rows_the_seed_test_binds() -> None:
    """At k = 3 over 63 rows the critical t has 2 degrees of freedom at α/63: a 2-point seed SD needs 52 points,
    and a binary metric's reach (100 points) ends near an SD of 3.8 points."""
    from harness.analysis.power import seeds_test_mde

    assert 0.5 < seeds_test_mde([0.0, 0.02, 0.04], comparisons=63, binary=True) < 0.7  # type: ignore[operator]
    assert seeds_test_mde([0.0, 0.05, 0.10], comparisons=63, binary=True) is None
    assert seeds_test_mde([0.03, 0.03, 0.03], comparisons=63, binary=True) is None  # sign-flip over seeds: p ≥ 1/4
    assert seeds_test_mde([0.03], comparisons=1, binary=True) is None
