"""The Python API: the README's example on the micro world, and the same result as the CLI for the same settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import harness
from harness.config import SandboxSpec
from harness.errors import HarnessError

MICRO = {"sandbox.size": "micro", "train.max_steps": 12, "corpus.limit": 64, "eval.tasks": ["sandbox"], "eval.limit": 5,
         "eval.task_limits": {}, "eval.compare_sources": False}  # fmt: skip


def _comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("run_id", "timings_s")}


def test_run_from_python_matches_the_cli(tmp_path: Path, session_cache: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    exp = harness.load_experiment("sandbox", {"method.name": "fusellm", **MICRO})
    fused = harness.run(exp, tmp_path / "api", progress=False)
    assert fused.method == "fusellm" and (fused.dir / "summary.json").is_file()
    scores = fused.scores()
    assert set(scores) == {"sandbox_knowledge", "sandbox_reasoning", "sandbox_safety"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert set(fused.scores("target-base")) == set(scores)
    assert {c["a"] for c in fused.comparisons} == {"fusellm"}
    assert "fusellm" in fused.table() and "target-base" in fused.table()
    with pytest.raises(HarnessError, match="no row 'nobody'"):
        fused.scores("nobody")

    sets = [x for k, v in MICRO.items() if k not in ("eval.tasks", "eval.limit", "eval.task_limits")
            for x in ("--set", f"{k}={json.dumps(v)}")]  # fmt: skip
    env = dict(os.environ, HARNESS_CACHE_DIR=str(session_cache))
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "-m", "fusellm", "-t", "sandbox", "--limit", "5", "-q",
         "--out", str(tmp_path / "cli"), *sets], env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (cli_dir,) = list((tmp_path / "cli").iterdir())
    assert _comparable(harness.load_run(cli_dir).summary) == _comparable(fused.summary)
    # the same cached stages, so the same keys
    keys = [json.loads((d / "manifest.json").read_text())["cache_keys"] for d in (fused.dir, cli_dir)]
    assert keys[0] == keys[1]

    assert "fusellm" in harness.compare([fused, cli_dir], "csv")

    # `signals inspect` and `plot` from Python: what the CLI prints, and the figures
    selection = harness.inspect_signals(fused, plots=False)
    assert set(selection["training"]) == {"llama-knowledge", "neox-reasoning", "gpt2-safety"} and selection["audit"]
    shown = subprocess.run([sys.executable, "-m", "harness.cli", "signals", "inspect", str(fused.dir), "--json"],
                           env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert shown.returncode == 0 and json.loads(shown.stdout) == selection, shown.stderr[-2000:]
    figures = harness.plot([fused], tmp_path / "figures")
    assert {p.suffix for p in figures} == {".pdf", ".png"} and all(p.parent == tmp_path / "figures" for p in figures)


def test_schedule_variants_and_evaluate(tmp_path: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    exp = harness.load_experiment("sandbox", MICRO)
    variants = harness.schedule_variants(exp, ["progressive", "reversed"])
    assert [v.method.schedule.name for v in variants] == ["progressive", "reversed"]
    assert exp.method.schedule.name == "progressive"  # the original is left alone
    with pytest.raises(HarnessError, match="unknown schedule"):
        harness.schedule_variants(exp, ["sideways"])
    base = harness.evaluate("sandbox:gpt2-safety", ["sandbox_safety"], limit=4, out=tmp_path, progress=False,
                            sandbox=SandboxSpec(size="micro"))  # fmt: skip
    assert base.summary["label"] == "sandbox-gpt2-safety" and list(base.scores()) == ["sandbox_safety"]


def test_sweep_from_python_over_seeds_and_again_resumes(tmp_path: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    exp = harness.load_experiment("sandbox", {"method.name": "fusellm", **MICRO})
    grid = harness.sweep(exp, seeds=[0, 1], out=tmp_path, kind="seeds", progress=False)
    assert grid.dir.name.startswith("seeds-") and [r.summary["seed"] for r in grid.runs] == [0, 1]
    assert {c["k"] for c in grid.summary["comparisons"]} == {2} and grid.summary["points"][0]["label"] == "fusellm"
    assert "| fusellm |" in grid.table() and "fusellm" in grid.table("csv")
    with pytest.raises(HarnessError, match="unknown table format"):
        grid.table("html")
    again = harness.sweep(exp, seeds=[0, 1], out=tmp_path, kind="seeds", progress=False)
    assert again.dir == grid.dir and [r.dir for r in again.runs] == [r.dir for r in grid.runs]
    with pytest.raises(HarnessError, match="not a finished sweep"):
        harness.load_sweep(grid.runs[0].dir)
