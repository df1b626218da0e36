"""`harness run --num-processes 2 --accelerate-config fsdp` on CPU processes: accelerate's FSDP2 plugin over gloo.

Slow (several minutes on 2 cores): one single-process run, one FSDP run killed with SIGKILL after its first
sharded checkpoint and run again to the end, and `harness eval` on the exported model. Same global batch as
tests/test_multiprocess.py (2 processes x 2 examples against one process accumulating 2 micro-batches of 2)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RUN = ["run", "--method", "profuser", "--tasks", "sandbox", "--limit", "4", "-q",
       "--set", "sandbox.size=micro", "--set", "corpus.limit=48", "--set", "train.max_steps=6",
       "--set", "train.checkpoint_every=2", "--set", "signals.shard_size=8", "--set", "eval.compare_sources=false"]  # fmt: skip
FSDP = ["--set", "train.batch_size=2", "--num-processes", "2", "--accelerate-config", "fsdp"]


def _env(cache: Path) -> dict[str, str]:
    return dict(os.environ, HARNESS_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")


def _cache(tmp: Path, name: str, world: Path) -> Path:
    cache = tmp / f"cache-{name}"
    shutil.copytree(world, cache / "sandbox" / world.name)
    return cache


def _run(tmp: Path, name: str, cache: Path, extra: list[str]) -> Path:
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *RUN, "--out", str(tmp / name), *extra],
                          cwd=tmp, env=_env(cache), capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return max((tmp / name).iterdir())  # the newest run directory


def _curve(run_dir: Path) -> list[tuple[int, float, int]]:
    rows = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["tokens"]) for r in rows]


def test_fsdp_over_two_cpu_processes_gives_the_single_process_curve_resumes_and_exports(tmp_path: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    world = Path(micro_world.root)
    one = _run(tmp_path, "one", _cache(tmp_path, "one", world), ["--set", "train.batch_size=2", "--set", "train.grad_accum=2"])

    # the FSDP run, killed with SIGKILL (the launcher and both processes) once its step-2 checkpoint is complete
    cache = _cache(tmp_path, "fsdp", world)
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *RUN, "--out", str(tmp_path / "fsdp"), *FSDP],
                            cwd=tmp_path, env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 1200
    while not list(cache.glob("train/*/checkpoints/step-2/trainer_state.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "the FSDP run ended before its first checkpoint"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (checkpoint,) = cache.glob("train/*/checkpoints/step-2")
    assert len(list((checkpoint / "pytorch_model_fsdp_0").glob("*.distcp"))) == 2  # one shard per process
    assert len(list((checkpoint / "optimizer_0").glob("*.distcp"))) == 2

    two = _run(tmp_path, "fsdp", cache, FSDP)  # the same command again: resumes from the sharded checkpoint
    c1, c2 = _curve(one), _curve(two)
    assert [s for s, _, _ in c1] == [s for s, _, _ in c2] == list(range(1, 7))
    assert [t for _, _, t in c1] == [t for _, _, t in c2]
    for (_, a, _), (_, b, _) in zip(c1, c2, strict=True):
        assert b == pytest.approx(a, rel=1e-3)

    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["status"] == "done"
    assert manifest["training"] == {
        "processes": 2, "device": "cpu", "mixed_precision": "no", "engine": "accelerate FSDP2",
        "sharding": "parameters, gradients and optimizer state (full shard)", "checkpoint": "SHARDED_STATE_DICT",
    }  # fmt: skip

    # the fused model is one ordinary HF folder (full weights, the model's own class) that `harness eval` reads
    final = cache / "train" / manifest["cache_keys"]["train"] / "final"
    assert json.loads((final / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    proc2 = subprocess.run([sys.executable, "-m", "harness.cli", "eval", "--model", str(final), "--tasks", "sandbox",
                            "--sandbox-size", "micro", "--limit", "4", "-q", "--out", str(tmp_path / "eval")],
                           cwd=tmp_path, env=_env(cache), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    (eval_dir,) = list((tmp_path / "eval").iterdir())
    fused = json.loads((two / "summary.json").read_text())
    evaluated = json.loads((eval_dir / "summary.json").read_text())
    for task in ("sandbox_knowledge", "sandbox_reasoning", "sandbox_safety"):
        assert evaluated["tasks"][task]["value"] == fused["tasks"][task]["value"], task
