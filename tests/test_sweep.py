"""Seeds and grids on the micro world: `run --seeds`, `sweep --grid` and `ablate` run every cell, share the cached
signals, write one seed-aware summary, table and figure, and resume after `kill -9`; every cell is validated first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as sps
from test_robustness import _kill_when  # tests/ is on sys.path (rootdir-relative)

import harness
from harness.analysis.replicates import summarise_points
from harness.cli import main
from harness.config import load_experiment
from harness.signals.inference_mode import Responder

MICRO = ["--set", "sandbox.size=micro", "--set", "train.max_steps=12", "--set", "corpus.limit=64", "--limit", "5",
         "-t", "sandbox", "--set", "eval.compare_sources=false", "-q"]  # fmt: skip


def _harness(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HARNESS_CACHE_DIR=str(cache))
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _runs(folder: Path) -> list[Path]:
    return [folder / c["run"] for c in _json(folder / "sweep.json")["cells"]]


def test_run_with_seeds_shares_signals_and_summarises_over_seeds(tmp_path: Path, session_cache: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    proc = _harness(["run", "-m", "profuser", "--seeds", "0,1", "--out", "r", *MICRO], tmp_path, session_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = list((tmp_path / "r").glob("seeds-*/"))
    assert "run 1/2: seed 0" in proc.stderr and "run 2/2: seed 1" in proc.stderr
    runs = _runs(folder)
    assert [_json(r / "summary.json")["seed"] for r in runs] == [0, 1]
    keys = [_json(r / "manifest.json")["cache_keys"] for r in runs]
    # teacher-forced signals never depend on the seed, greedy generation neither (its stores are shared); the
    # judges' tie draw is seeded, so the inference-mode selection, and with it the set, is per seed; training too
    assert keys[0]["signals.training"] == keys[1]["signals.training"]
    sets = [_json(session_cache / "signals" / "sets" / f"{k['signals.inference']}.json") for k in keys]
    assert sets[0]["candidates"] == sets[1]["candidates"]
    assert keys[0]["train"] != keys[1]["train"]

    summary = _json(folder / "summary.json")
    (point,) = summary["points"]
    assert point["label"] == "profuser" and point["runs"] == {"0": runs[0].name, "1": runs[1].name}
    run_summaries = [_json(r / "summary.json") for r in runs]
    for task in run_summaries[0]["tasks"]:
        values = [s["tasks"][task]["value"] for s in run_summaries]
        stats = point["scores"]["profuser"][task]
        assert stats["per_seed"] == {"0": values[0], "1": values[1]} and stats["mean"] == pytest.approx(np.mean(values))
        if values[0] != values[1]:
            ci = sps.ttest_1samp(values, 0.0).confidence_interval(0.95)
            assert stats["ci95"] == pytest.approx([ci.low, ci.high])
        else:
            assert stats["ci95"] == pytest.approx([values[0], values[0]])
        base = [s["baseline"][task]["value"] for s in run_summaries]
        assert point["scores"]["target-base"][task]["per_seed"] == {"0": base[0], "1": base[1]}
    avg_gain = [np.mean([s["tasks"][t]["value"] - s["baseline"][t]["value"] for t in s["tasks"]]) for s in run_summaries]
    assert list(point["gain"]["avg"]["per_seed"].values()) == pytest.approx(avg_gain)
    assert len(summary["comparisons"]) == 3
    for comp in summary["comparisons"]:
        assert comp["k"] == 2 and comp["n"] == 5 and comp["p_value"] == max(comp["p_pooled"], comp["p_seeds"])
        assert comp["test_pooled"] == "pooled-sign-exact"  # the sandbox tasks are binary
    # the summary is recomputed from the runs' files
    again = summarise_points([("profuser", {}, runs)])
    assert again["points"] == summary["points"] and again["comparisons"] == summary["comparisons"]
    assert again["versus"] == summary.get("versus", [])  # one method: nothing to compare head to head

    table = (folder / "tables" / "grid.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| profuser"))
    assert row.count("±") == 4 and "95% t-interval over the seeds" in table and "k = 2" in table
    assert (folder / "plots" / "task_scores.png").is_file()
    assert harness.load_sweep(folder).table() == table
    # `harness report` reads a sweep folder as its runs: one row over both seeds
    report = _harness(["report", str(folder)], tmp_path, session_cache)
    assert report.returncode == 0, report.stderr
    assert "| profuser |" in report.stdout and report.stdout.count("±") >= 4


def test_a_killed_sweep_resumes_where_it_stopped(tmp_path: Path, session_cache: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    args = ["sweep", "-m", "profuser", "--grid", "method.schedule.switch=0.25,0.75", "--out", "r", *MICRO]
    env = dict(os.environ, HARNESS_CACHE_DIR=str(session_cache))
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    assert _kill_when(proc, lambda: len(list(tmp_path.glob("r/sweep-*/runs/*/"))) == 2), "finished before the kill"
    (folder,) = list((tmp_path / "r").glob("sweep-*/"))
    listing = _json(folder / "sweep.json")
    assert [c["status"] for c in listing["cells"]] == ["done", "to do"]
    first = _runs_done(folder)
    assert not (folder / "summary.json").exists()

    resumed = _harness(args, tmp_path, session_cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"run 1/2: method.schedule.switch=0.25 seed 0: finished before ({first[0].name}), skipped" in resumed.stderr
    assert "left unfinished by a killed sweep" in resumed.stderr and "run 2/2: method.schedule.switch=0.75 seed 0" in resumed.stderr
    runs = sorted((folder / "runs").iterdir())
    assert len(runs) == 2 and all(_json(r / "manifest.json")["status"] == "done" for r in runs)
    assert _json(runs[1] / "summary.json")["variant"] == {"method.schedule.switch": 0.75}
    summary = _json(folder / "summary.json")
    assert [p["label"] for p in summary["points"]] == ["profuser switch=0.25", "profuser switch=0.75"]
    assert (folder / "plots" / "grid_gain.png").is_file() and (folder / "tables" / "grid.tex").is_file()

    # a third time: nothing to run, the same summary
    again = _harness(args, tmp_path, session_cache)
    assert again.returncode == 0 and again.stderr.count("skipped") == 2
    assert _json(folder / "summary.json") == summary and sorted((folder / "runs").iterdir()) == runs
    # the runs' own tables keep the grid points apart
    report = _harness(["report", *(str(r) for r in runs)], tmp_path, session_cache)
    assert "profuser (switch=0.25)" in report.stdout and "profuser (switch=0.75)" in report.stdout
    # every point against the reference value of one axis: here switch=0.75 against switch=0.25, task by task
    against = _harness(["report", str(folder), "--against", "method.schedule.switch=0.25"], tmp_path, session_cache)
    assert against.returncode == 0, against.stderr
    rows = [line for line in against.stdout.splitlines() if line.startswith("| profuser switch=0.75 |")]
    late, early = (_json(r / "summary.json")["tasks"] for r in runs)
    assert len(rows) == len(late) == 3
    for line in rows:
        task, delta = line.split(" | ")[2], line.split(" | ")[4]
        assert float(delta) == pytest.approx(100 * (late[task]["value"] - early[task]["value"]), abs=0.05)
    bad = _harness(["report", str(folder), "--against", "signals.alignment=span"], tmp_path, session_cache)
    assert bad.returncode == 2 and "no grid axis 'signals.alignment'" in bad.stderr


def _runs_done(folder: Path) -> list[Path]:
    return [folder / c["run"] for c in _json(folder / "sweep.json")["cells"] if c["status"] == "done"]


def test_every_cell_is_validated_before_anything_runs(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["sweep", "--set", "sandbox.size=micro", "-t", "sandbox", "--out", str(tmp_path / "r")]
    ok = runner.invoke(main, [*base, "--grid", "method.name=profuser,fusellm", "--grid",
                              "method.schedule.switch=0.25,0.75", "--seeds", "0,1", "--dry-run"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    # the switch is ProFuser's own parameter: FuseLLM, which has none, is one grid point
    assert "6 run(s) = 3 grid point(s) × 2 seed(s)" in ok.stderr
    assert "run 3/6: method.name=profuser method.schedule.switch=0.75 seed 0" in ok.stderr
    assert "run 6/6: method.name=fusellm seed 1" in ok.stderr
    assert not (tmp_path / "r").exists()  # a dry run writes nothing
    bad = {
        ("--grid", "method.schedule.switch=0.25,2"): "grid cell method.schedule.switch=2: method.schedule.switch",
        ("--grid", "method.schedul.switch=0.5"): "grid cell method.schedul.switch=0.5: method.schedul: method 'profuser' has no parameter 'schedul'",
        ("--grid", "method.name=profuser,nosuch"): "grid cell method.name=nosuch",
        ("--grid", "seed=1,2"): "swept with --seeds",
        ("--grid", "method.name=profuser,profuser"): "a value is repeated",
        ("--grid", "train.lr"): "--grid expects KEY=V1,V2",
        ("--grid", "train.lr=1e-4,"): "an empty value",
        ("--seeds", "0,0"): "repeats a seed",
        ("--seeds", "0,-1"): "from 0 to",
        ("--seed", "1", "--seeds", "0,1"): "--seed or --seeds, not both",
        (): "needs --grid",
    }
    for extra, message in bad.items():
        result = runner.invoke(main, [*base, *extra, "--dry-run"])
        assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1, (extra, result.stderr)
    assert not (tmp_path / "r").exists()
    twice = runner.invoke(main, [*base, "--grid", "train.lr=1e-4", "--grid", "train.lr=1e-5", "--dry-run"])
    assert twice.exit_code == 2 and "given twice" in twice.stderr
    # a list value keeps its commas; the same cells from the API
    listed = runner.invoke(main, [*base, "--grid", "eval.tasks=[sandbox_safety],[sandbox_knowledge,sandbox_safety]",
                                  "--dry-run"])  # fmt: skip
    assert listed.exit_code == 0 and "eval.tasks=[sandbox_knowledge,sandbox_safety] seed 0" in listed.stderr
    exp = load_experiment("sandbox", {"sandbox.size": "micro", "eval.tasks": ["sandbox"]})
    plan = harness.plan_sweep(exp, {"method.name": ["profuser", "fusellm"]}, [0, 1], tmp_path / "r")
    assert [c.describe() for c in plan.cells][1] == "method.name=profuser seed 1" and len(plan.cells) == 4
    assert plan.folder == harness.plan_sweep(exp, {"method.name": ["profuser", "fusellm"]}, [0, 1], tmp_path / "r").folder


def test_greedy_generation_shares_one_store_across_seeds_and_sampling_does_not() -> None:
    from harness.config import SignalSpec

    def identity(seed: int, sample: bool) -> dict:
        spec = SignalSpec(do_sample=sample, gen_temperature=0.7)
        return Responder(spec, seed, generate_fn=lambda *a, **k: []).identity(None)  # type: ignore[arg-type]

    assert identity(0, False) == identity(3, False)
    assert identity(0, True) != identity(3, True)
