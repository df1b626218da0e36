"""The whole pipeline end to end on the micro sandbox world: build, signals, train, evaluate, compare, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.analysis.stats import compare_runs


def _harness(args: list[str], cwd: Path, cache: Path, data: Path | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HARNESS_CACHE_DIR=str(cache))
    if data is not None:
        env["HARNESS_DATA_DIR"] = str(data)
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200
    )


MICRO = ["--set", "sandbox.size=micro", "--set", "train.max_steps=12", "--set", "corpus.limit=64", "-q"]


def test_profuser_end_to_end_on_micro_world(tmp_path: Path, session_cache: Path, shared_data: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    # a real benchmark asked of sandbox specialists: the sandbox skills join the table, and one line under it
    # says what the numbers mean
    proc = _harness(
        ["run", "--method", "profuser", "--tasks", "gsm8k", "--limit", "6", "--out", "results", *MICRO],
        tmp_path, session_cache, shared_data,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = list((tmp_path / "results").iterdir())
    assert len(run_dirs) == 1
    run = run_dirs[0]
    summary = json.loads((run / "summary.json").read_text())
    tasks = {"sandbox_knowledge", "sandbox_reasoning", "sandbox_safety", "gsm8k"}
    assert set(summary["tasks"]) == tasks and set(summary["baseline"]) == tasks
    assert summary["added_tasks"] == ["sandbox"] and "near chance on real benchmarks (gsm8k)" in summary["reading"]
    table = proc.stdout[proc.stdout.index("target-base"):]
    reading = [line for line in proc.stdout.splitlines() if line.startswith("reading the table")]
    assert reading == [summary["reading"]] and "sandbox_safety" in table.split(reading[0])[0]
    assert "--preset small-real" in reading[0] and "real-hetero" in reading[0] and "-t sandbox" in reading[0]
    assert "near chance" not in proc.stderr  # said once, under the table
    assert set(summary["sources"]) == {"neox-reasoning", "gpt2-safety"}
    for label in ("target-base", "neox-reasoning", "gpt2-safety", "profuser"):
        for task in tasks:
            lines = (run / "eval" / label / f"{task}.jsonl").read_text().splitlines()
            assert len(lines) == 6
    # every comparison can be recomputed from the per-sample files
    assert compare_runs(run) == summary["comparisons"]
    assert {c["a"] for c in summary["comparisons"]} == {"profuser", "neox-reasoning", "gpt2-safety"}
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 12 and {"w_inf", "w_train"} <= set(log[-1]["weights"])
    assert (run / "tables" / "results.md").is_file() and (run / "signals" / "selection.json").is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done" and {"signals.training", "signals.inference", "train"} <= set(manifest["cache_keys"])
    # the stdout carries the comparison table
    assert "profuser" in proc.stdout and "target-base" in proc.stdout
    # the signal audit: the target teaches itself exactly; every source's end of sequence lands on the target's
    # (neox-reasoning's EOS is also its BOS, gpt2-safety's also its BOS and padding)
    audit = json.loads((run / "signals" / "audit.json").read_text())
    for mode in ("training", "inference"):
        own = audit[mode]["llama-knowledge"]
        assert own["aligned_fraction"] == 1.0 and own["top1_agreement"] == 1.0 and own["lost_mass"] == 0.0
        for source in ("neox-reasoning", "gpt2-safety"):
            fig = audit[mode][source]
            assert fig["stop_mass"] > 0 and fig["stop_to_stop"] > 0.999, (mode, source, fig)
            # the sandbox's tokenizers put spaces on opposite sides of words by design: 40-77% of the target's
            # tokens have a source token with the identical span (measured), and those agree on their top-1
            assert 0.3 < fig["aligned_fraction"] < 1.0 and fig["top1_agreement"] > 0.95 and fig["lost_mass"] < 0.01
            # ordinary text never lands on byte-fallback ids; how often windows cut the answer; in inference mode
            # how many generations were cut off at max_new_tokens
            assert fig["byte_mass"] < 0.01 and 0.0 <= fig["answer_cut"] <= 1.0
            assert (fig["cut_off"] is None) == (mode == "training")
    shown = _harness(["signals", "inspect", str(run)], tmp_path, session_cache, shared_data)
    assert shown.returncode == 0 and "signal audit" in shown.stdout and "gpt2-safety" in shown.stdout
    assert "on byte fallback" in shown.stdout and "cut off" in shown.stdout

    # the manifest says which world the run used: its fingerprint, scores and whether it is the reference world
    world = json.loads((micro_world.root / "world.json").read_text())
    used = manifest["sandbox_world"]
    assert (used["size"], used["seed"], used["key"]) == ("micro", 0, micro_world.key)
    assert used["fingerprint"] == world["fingerprint"] and used["scores"] == world["scores"]
    assert used["reference"]["status"] in {"reference", "differs"} and used["built_with"] == world["built_with"]

    # a second method reuses the cached signals: its run records the same training-mode key
    proc2 = _harness(
        ["run", "--method", "fusellm", "--tasks", "sandbox", "--limit", "6", "--out", "results", *MICRO],
        tmp_path, session_cache, shared_data,
    )
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert "near chance" not in proc2.stdout + proc2.stderr  # sandbox skills only: nothing to explain
    run2 = next(d for d in (tmp_path / "results").iterdir() if d != run)
    manifest2 = json.loads((run2 / "manifest.json").read_text())
    assert manifest2["cache_keys"]["signals.training"] == manifest["cache_keys"]["signals.training"]


@pytest.mark.parametrize("method", ["inference-only", "averaging"])
def test_other_methods_run(method: str, tmp_path: Path, session_cache: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    proc = _harness(["run", "--method", method, "--tasks", "sandbox", "--limit", "4", "--out", "r", *MICRO], tmp_path, session_cache, None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list((tmp_path / "r").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == method and len(summary["tasks"]) == 3


def test_gold_runs_with_its_hybrid_distance(tmp_path: Path, session_cache: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    proc = _harness(["run", "-m", "gold", "-t", "sandbox", "--limit", "4", "--out", "r", "--set", "method.jsd_beta=0.2",
                     "--set", "eval.compare_sources=false", *MICRO], tmp_path, session_cache, None)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list((tmp_path / "r").iterdir())
    assert json.loads((run / "summary.json").read_text())["method"] == "gold"
    last = json.loads((run / "train_log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 12 and {"ce_train", "jsd_matched", "l1_other"} <= set(last["components"])
    # span-matched and fallback tokens both occur on the sandbox's tokenizers (40-77% aligned, test above)
    assert 0.2 < last["weights"]["w_matched"] < 0.9 and last["weights"]["w_ce"] == 0.9
    assert "jsd_beta: 0.2" in (run / "config.yaml").read_text()


def test_fusechat3_runs_sft_then_dpo_against_the_sft_model(tmp_path: Path, session_cache: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    proc = _harness(["run", "-m", "fusechat3", "-t", "sandbox", "--limit", "4", "--out", "r", "--set", "method.sft_share=0.5",
                     "--set", "eval.compare_sources=false", *MICRO], tmp_path, session_cache, None)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list((tmp_path / "r").iterdir())
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [set(r["components"]) for r in log[:6]] == [{"sft"}] * 6
    assert all(set(r["components"]) == {"dpo", "pairs", "reward_margin"} for r in log[6:]) and len(log) == 12
    # the reference is the model at the switch: at the first DPO update policy and reference agree, loss = log 2
    assert abs(log[6]["components"]["dpo"] - 0.693147) < 1e-4 and log[6]["components"]["pairs"] > 0
    key = json.loads((run / "manifest.json").read_text())["cache_keys"]["train"]
    assert (session_cache / "train" / key / "reference_logps.pt.sha256").is_file()


def test_ablate_runs_each_schedule_and_writes_the_ablation_table(tmp_path: Path, session_cache: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    args = ["ablate", "--method", "profuser", "--schedule", "progressive,reversed", "--tasks", "sandbox", "--limit", "4",
            "--seeds", "0,1", "--out", "r", "--set", "eval.compare_sources=false", *MICRO]  # fmt: skip
    proc = _harness(args, tmp_path, session_cache, None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ablation,) = list((tmp_path / "r").glob("ablation-*/"))
    runs = sorted((ablation / "runs").iterdir())
    cells = [json.loads((d / "summary.json").read_text()) for d in runs]
    assert sorted((s["schedule"], s["seed"]) for s in cells) == [("progressive", 0), ("progressive", 1),
                                                                 ("reversed", 0), ("reversed", 1)]  # fmt: skip
    keys = [json.loads((d / "manifest.json").read_text())["cache_keys"] for d in runs]
    assert len({k["signals.training"] for k in keys}) == 1 and len({k["train"] for k in keys}) == 4
    table = (ablation / "ablation.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith(("| progressive", "| reversed"))]
    assert len(rows) == 2 and all("±" in row for row in rows)  # each schedule: mean ± t-interval over 2 seeds
    assert sorted(Path(p).name for p in json.loads((ablation / "runs.json").read_text())) == [d.name for d in runs]
    assert "run 4/4: method.schedule.name=reversed seed 1" in proc.stderr
    summary = json.loads((ablation / "summary.json").read_text())
    assert [p["label"] for p in summary["points"]] == ["profuser progressive", "profuser reversed"]
    assert (ablation / "plots" / "ablation.png").is_file() and (ablation / "plots" / "grid_gain.png").is_file()
    # the same command again resumes: every run is finished, so nothing runs
    again = _harness(args, tmp_path, session_cache, None)
    assert again.returncode == 0 and again.stderr.count("finished before") == 4, again.stderr[-2000:]
    assert sorted((ablation / "runs").iterdir()) == runs
