"""World-build benchmark: the micro world built with one specialist process per CPU against one process.

`world_build_speedup` = sequential wall time / parallel wall time, both cold builds of the micro world in
fresh caches, in the same run (goal: >= 1.7 on 2 cores), each the fastest of `repeats` builds taken in the order
sequential, parallel, parallel, sequential (other jobs on the machine only ever add time). Every build must give
the same fingerprint. The specialists
are not equal in cost, so the figure is bounded by how they pack onto the CPUs: `world_build_ideal_speedup`
is the sum of the per-specialist times of the sequential build over the longest-first schedule of those
times on `world_build_jobs` processes (no start-up costs). The load average is recorded: on a shared machine the
parallel build gains only from idle cores (with Linux's autogroup scheduling, one session's processes share one
fair share of the CPUs, however many they are).
"""

from __future__ import annotations

import heapq
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def longest_first_makespan(seconds: list[float], workers: int) -> float:
    """Wall time of running jobs of these durations longest first, each on the first worker to be free."""
    free = [0.0] * max(1, workers)
    for duration in sorted(seconds, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def run(size: str = "micro", jobs: int | None = None, repeats: int = 2) -> dict[str, Any]:
    from harness.sandbox.build import build_world
    from harness.sandbox.pinned import available_cpus

    jobs = jobs or min(3, available_cpus())
    order = (["sequential", "parallel", "parallel", "sequential"] * repeats)[: 2 * repeats]
    seconds: dict[str, list[float]] = {"sequential": [], "parallel": []}
    metas: dict[str, dict[str, Any]] = {}
    load_before = os.getloadavg()
    for i, mode in enumerate(order):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            world = build_world(size, 0, cache_dir=Path(tmp), progress=False, jobs=1 if mode == "sequential" else jobs)
            seconds[mode].append(round(time.perf_counter() - start, 1))
            meta = json.loads((world.root / "world.json").read_text())
        if metas and meta["fingerprint"] != next(iter(metas.values()))["fingerprint"]:
            raise AssertionError(f"build {i} ({mode}) gave another world than the first")
        if seconds[mode][-1] == min(seconds[mode]):
            metas[mode] = meta
    per_source = [metas["sequential"]["timings_s"][name] for name in metas["sequential"]["models"]]
    return {
        "world_build_speedup": round(min(seconds["sequential"]) / min(seconds["parallel"]), 2),
        "world_build_ideal_speedup": round(sum(per_source) / longest_first_makespan(per_source, jobs), 2),
        "world_build_seconds": seconds,
        "world_build_specialist_seconds": {
            mode: {k: v for k, v in meta["timings_s"].items() if k != "total"} for mode, meta in metas.items()
        },
        "world_build_jobs": jobs,
        "world_build_cpus": available_cpus(),
        "world_build_same_fingerprint": True,
        "world_build_load_average": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
        "world_build_size": size,
    }
