"""`harness run --num-processes 2` on CPU processes (accelerate, gloo) against the same run in one process.

Each run gets a cache of its own (the micro world copied in), so the two-process run really extracts its signals,
trains and evaluates instead of finding them cached. Same global batch: 2 processes x 2 examples against one
process accumulating 2 micro-batches of 2. Each micro-batch's loss is a mean over its own counted tokens, and an
update averages its micro-batches (DDP averages processes the same way), so these two layouts are the same sum.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

RUN = ["run", "--method", "profuser", "--tasks", "sandbox", "--limit", "8", "-q",
       "--set", "sandbox.size=micro", "--set", "corpus.limit=48", "--set", "train.max_steps=6",
       "--set", "signals.shard_size=8", "--set", "eval.compare_sources=false"]  # fmt: skip


def _run(tmp: Path, name: str, world: Path, extra: list[str]) -> tuple[Path, Path]:
    cache = tmp / f"cache-{name}"
    shutil.copytree(world, cache / "sandbox" / world.name)
    env = dict(os.environ, HARNESS_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", *RUN, "--out", str(tmp / name), *extra],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run_dir,) = list((tmp / name).iterdir())  # one run directory, made by the main process only
    return run_dir, cache


def _signal_tables(cache: Path, run_dir: Path) -> dict[str, list[object]]:
    """Every shard of every store behind the run's signal sets, by candidate and mode."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    out: dict[str, list[object]] = {}
    for stage, key in manifest["cache_keys"].items():
        if not stage.startswith("signals."):
            continue
        entry = json.loads((cache / "signals" / "sets" / f"{key}.json").read_text())
        stores = {**entry["candidates"], **({"selection": entry["selection"]} if entry.get("selection") else {})}
        for name, path in stores.items():
            files = sorted((cache / "signals" / path).glob("shard-*.parquet"))  # relative to the signals folder
            assert files, f"no shards in {path}"
            out[f"{stage}/{name}"] = [pq.read_table(f) for f in files]
    return out


def test_two_processes_give_the_single_process_signals_curve_and_scores(tmp_path: Path, micro_world) -> None:  # type: ignore[no-untyped-def]
    world = Path(micro_world.root)
    one, cache1 = _run(tmp_path, "one", world, ["--set", "train.batch_size=2", "--set", "train.grad_accum=2"])
    two, cache2 = _run(tmp_path, "two", world, ["--set", "train.batch_size=2", "--num-processes", "2"])

    # signal extraction: each process wrote its shards; together they are exactly the single-process signals
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    signal_keys = {k: v for k, v in m1["cache_keys"].items() if k.startswith("signals.")}
    assert len(signal_keys) == 2 and signal_keys.items() <= m2["cache_keys"].items()
    assert m1["cache_keys"]["train"] != m2["cache_keys"]["train"]  # another layout of the batch: its own cache entry
    t1, t2 = _signal_tables(cache1, one), _signal_tables(cache2, two)
    assert set(t1) == set(t2) and len(t1) >= 7  # 3 candidates x 2 modes + the inference-mode selection
    for name in t1:  # NaN scores (a cut-off candidate left out of judging) compare equal by their JSON text
        assert all(a.equals(b) or json.dumps(a.to_pylist()) == json.dumps(b.to_pylist())
                   for a, b in zip(t1[name], t2[name], strict=True)), name  # fmt: skip

    # training: the same global batches give the same loss curve (all-reduced gradients, float32 on CPU)
    def curve(d: Path) -> list[tuple[int, float, int]]:
        rows = [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["tokens"]) for r in rows]

    c1, c2 = curve(one), curve(two)
    assert [s for s, _, _ in c1] == [s for s, _, _ in c2] == list(range(1, 7))
    assert [t for _, _, t in c1] == [t for _, _, t in c2]  # the same examples in each update
    for (_, a, _), (_, b, _) in zip(c1, c2, strict=True):
        assert b == pytest.approx(a, rel=1e-4)

    # evaluation: documents split over the processes, gathered by rank 0, the same per-sample results
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s1["baseline"] == s2["baseline"]
    for label in ("target-base", "profuser"):
        for task in ("sandbox_knowledge", "sandbox_reasoning", "sandbox_safety"):
            rows1 = (one / "eval" / label / f"{task}.jsonl").read_text().splitlines()
            rows2 = (two / "eval" / label / f"{task}.jsonl").read_text().splitlines()
            assert len(rows1) == 8
            if label == "target-base":  # the same weights: identical answers
                assert rows1 == rows2
    assert m2["status"] == "done" and (two / "tables" / "results.md").is_file()
