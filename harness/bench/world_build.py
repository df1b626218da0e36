"""World-build benchmark: the micro world built with one specialist process per CPU against one process.

`world_build_speedup` = sequential wall time / parallel wall time, both cold builds of the micro world in
fresh caches, in the same run (goal: >= 1.7 on 2 cores). Both must give the same fingerprint. The specialists
are not equal in cost, so the figure is bounded by how they pack onto the CPUs: `world_build_ideal_speedup`
is the sum of the per-specialist times of the sequential build over the longest-first schedule of those
times on `world_build_jobs` processes (no start-up costs). The load average is recorded, since other
processes on the machine take CPU time from the parallel build first.
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


def run(size: str = "micro", jobs: int | None = None) -> dict[str, Any]:
    from harness.sandbox.build import build_world
    from harness.sandbox.pinned import available_cpus

    jobs = jobs or min(3, available_cpus())
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        sequential = build_world(size, 0, cache_dir=Path(tmp) / "sequential", progress=False, jobs=1)
        sequential_s = time.perf_counter() - start
        start = time.perf_counter()
        parallel = build_world(size, 0, cache_dir=Path(tmp) / "parallel", progress=False, jobs=jobs)
        parallel_s = time.perf_counter() - start
        seq_meta, par_meta = (json.loads((w.root / "world.json").read_text()) for w in (sequential, parallel))
    if seq_meta["fingerprint"] != par_meta["fingerprint"]:
        raise AssertionError("the parallel build gave another world than the sequential one")
    per_source = [seq_meta["timings_s"][name] for name in seq_meta["models"]]
    return {
        "world_build_speedup": round(sequential_s / parallel_s, 2),
        "world_build_ideal_speedup": round(sum(per_source) / longest_first_makespan(per_source, jobs), 2),
        "world_build_seconds": {"sequential": round(sequential_s, 1), "parallel": round(parallel_s, 1)},
        "world_build_specialist_seconds": {
            "sequential": {k: v for k, v in seq_meta["timings_s"].items() if k != "total"},
            "parallel": {k: v for k, v in par_meta["timings_s"].items() if k != "total"},
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
