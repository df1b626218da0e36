"""Run every benchmark module's `run()` and write one JSON file: `python -m harness.bench --out results/bench.json`.

`--only NAME ...` runs those modules and updates their figures in the existing file, keeping the others.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from importlib import import_module
from pathlib import Path

from rich.console import Console

from harness.store import atomic_write_json, package_versions

MODULES = (
    "harness.bench.align", "harness.bench.signals", "harness.bench.fusion_step", "harness.bench.real_pair",
    "harness.bench.world_build", "harness.bench.generation", "harness.bench.extraction_memory",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results/bench.json"))
    parser.add_argument(
        "--only", nargs="*", default=None,
        help="Module suffixes to run, e.g. align real_pair world_build; their figures replace those in an existing --out file",
    )
    args = parser.parse_args()
    console = Console()
    figures: dict[str, object] = {}
    measured: dict[str, str] = {}  # module -> when its figures were measured
    if args.only and args.out.is_file():
        previous = json.loads(args.out.read_text())
        figures.update(previous.get("figures", {}))
        measured.update(previous.get("measured", {}))
        for module in MODULES:  # reports from before `measured` existed: their modules ran at `when`
            suffix = module.rsplit(".", 1)[1]
            if f"{suffix}_bench_seconds" in figures:
                measured.setdefault(suffix, previous.get("when", ""))
    for name in MODULES:
        if args.only and name.rsplit(".", 1)[1] not in args.only:
            continue
        start = time.perf_counter()
        console.print(f"[bold]{name}[/bold]")
        result = import_module(name).run()
        for key, value in result.items():
            console.print(f"  {key}: {value}")
        figures.update(result)
        figures[f"{name.rsplit('.', 1)[1]}_bench_seconds"] = round(time.perf_counter() - start, 2)
        measured[name.rsplit(".", 1)[1]] = datetime.now(timezone.utc).isoformat()
    report = {
        "when": datetime.now(timezone.utc).isoformat(),
        "measured": measured,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()},
        "packages": package_versions(),
        "figures": figures,
    }
    atomic_write_json(args.out, report)
    console.print(f"wrote {args.out}")
    print(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
