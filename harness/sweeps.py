"""`harness sweep`, `harness run --seeds` and `harness ablate`: a grid of experiments × seeds, run cell by cell,
resumable, then one summary, one table and one figure for the whole grid.

Every cell is checked (its experiment validated, its models and data found) before the first one runs, so a typo
in the last grid value costs nothing. Cells share every cached stage: the signals do not depend on the training
seed (teacher-forced top-k never does; greedy generation ignores it), and the unfused target's and the sources'
evaluations are keyed by their weights, so after the first cell a new seed costs one training and one evaluation.

The sweep's folder is named by a hash of its cells, so the same command finds it again: a cell whose run finished
(its manifest says done, its config.yaml is the cell's experiment) is skipped, a killed cell runs again and its
stages resume from the cache. The folder holds sweep.json (the cells and their runs), runs/<run-id>/ (one run
directory per cell), summary.json (harness/analysis/replicates.py), tables/grid.{md,tex,csv}, tables/versus.md
(the swept methods, else schedules, head to head at each setting of the other grid values) and plots/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape

from harness import distributed, pipeline
from harness.config import MAX_SEED, Experiment, belongs_to_other_methods, with_overrides
from harness.errors import HarnessError
from harness.store import atomic_write_json, atomic_write_text, check_writable, locked, stable_hash

console = Console(stderr=True, soft_wrap=True)

Kind = Literal["sweep", "seeds", "ablation"]
KINDS = ("sweep", "seeds", "ablation")  # the folder's prefix: `harness sweep`, `run --seeds`, `ablate`
MAX_CELLS = 10_000


@dataclass(frozen=True)
class Cell:
    """One run of the grid: the grid values of its point, its seed, and the validated experiment."""

    index: int
    values: dict[str, Any]
    seed: int
    exp: Experiment

    @property
    def point(self) -> str:
        """The grid point as a row label: the method's name, its schedule where that is swept, then `field=value`
        with the last part of each other field path (the whole path where two axes end alike)."""
        named = ("method.name", "method.schedule.name")  # shown by their values: `profuser reversed`
        lasts = [k.rsplit(".", 1)[-1] for k in self.values if k not in named]
        schedule = self.exp.method.own_parameters().get("schedule")
        parts = [self.exp.method.name] + ([schedule.name] if schedule is not None and named[1] in self.values else [])
        parts += [f"{k if lasts.count(k.rsplit('.', 1)[-1]) > 1 else k.rsplit('.', 1)[-1]}={_text(v)}"
                  for k, v in self.values.items() if k not in named]  # fmt: skip
        return " ".join(parts)

    def describe(self) -> str:
        """The progress line's words: every grid field in full, and the seed."""
        return " ".join([*(f"{k}={_text(v)}" for k, v in self.values.items()), f"seed {self.seed}"])


@dataclass
class SweepPlan:
    """What a sweep will run, every cell validated: the thing `--dry-run` prints."""

    kind: Kind
    axes: dict[str, list[Any]]
    seeds: list[int]
    cells: list[Cell]
    folder: Path
    plans: dict[int, pipeline.Plan]  # cell index -> its validated pipeline plan


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return "null" if value is None else str(value)


def _check_seeds(seeds: Sequence[int] | None, default: int) -> list[int]:
    if seeds is None:
        return [default]
    found = list(seeds)
    if not found:
        raise HarnessError("--seeds needs at least one seed", "sweep")
    for s in found:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
            raise HarnessError(f"a seed must be a whole number from 0 to {MAX_SEED}, got {s!r}", "sweep")
    if len(set(found)) != len(found):
        raise HarnessError(f"--seeds repeats a seed ({', '.join(map(str, found))})", "sweep")
    return found


def _check_axes(grid: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    for key, values in grid.items():
        if key in ("seed", "seeds"):
            raise HarnessError("the training seed is swept with --seeds, not --grid seed=...", "sweep")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise HarnessError(f"--grid {key}: give one or more values (KEY=V1,V2,...)", "sweep")
        texts = [_text(v) for v in values]
        if len(set(texts)) != len(texts):
            raise HarnessError(f"--grid {key}: a value is repeated ({', '.join(texts)})", "sweep")
        axes[key] = list(values)
    return axes


def plan_sweep(
    base: Experiment, grid: Mapping[str, Sequence[Any]] | None, seeds: Sequence[int] | None, out: Path,
    kind: Kind = "sweep",
) -> SweepPlan:
    """Every cell of grid × seeds as a validated experiment (`base` with the cell's grid values and seed), each
    grid point checked end to end by pipeline.plan; a bad value is one line naming its cell."""
    axes = _check_axes(grid or {})
    points = [_for_its_method(dict(zip(axes, combo, strict=True)), base) for combo in itertools.product(*axes.values())]
    unique = list({repr(sorted(p.items())): p for p in points}.values())
    return plan_points([(values, base) for values in unique], seeds, out, kind, axes)


def _for_its_method(values: dict[str, Any], base: Experiment) -> dict[str, Any]:
    """A grid point without the values of `method.<field>` axes its method does not have: swept with the method,
    `method.schedule.switch` varies ProFuser and leaves FuseLLM one point (the grid's duplicates are then dropped)."""
    if "method.name" not in values:  # one method: its axes are all its own, or errors
        return values
    method = str(values["method.name"])
    return {k: v for k, v in values.items()
            if not (k.startswith("method.") and belongs_to_other_methods(method, k.split(".")[1]))}  # fmt: skip


def plan_points(
    points: Sequence[tuple[dict[str, Any], Experiment]], seeds: Sequence[int] | None, out: Path, kind: Kind,
    axes: dict[str, list[Any]] | None = None,
) -> SweepPlan:
    """The sweep of explicit grid points (grid values, the experiment they apply to) × seeds; `seeds` None runs
    each point with its experiment's own seed."""
    if kind not in KINDS:
        raise HarnessError(f"unknown sweep kind '{kind}'", "sweep")
    cells: list[Cell] = []
    plans: dict[int, pipeline.Plan] = {}
    for values, base in points:
        first: pipeline.Plan | None = None
        for seed in _check_seeds(seeds, base.seed):
            where = "grid cell " + (" ".join(f"{k}={_text(v)}" for k, v in values.items()) or base.method.name)
            exp = with_overrides(base, {**values, "seed": seed}, where)
            if first is None:  # models, corpus and data do not depend on the seed: one check per point
                try:
                    first = pipeline.plan(exp, out)
                except HarnessError as exc:
                    raise HarnessError(f"{where}: {exc}", exc.where) from None
            plans[len(cells)] = dataclasses.replace(first, exp=exp)
            cells.append(Cell(len(cells), dict(values), seed, exp))
            if len(cells) > MAX_CELLS:
                raise HarnessError(f"the grid has more than {MAX_CELLS} cells; split it", "sweep")
    yamls = [c.exp.to_yaml() for c in cells]
    if len(set(yamls)) != len(yamls):
        raise HarnessError("two cells of the grid are the same experiment (a grid value equal to another?)", "sweep")
    if len({(c.point, c.seed) for c in cells}) != len(cells):
        raise HarnessError("two grid points have the same label (values that print alike); give them apart", "sweep")
    check_writable(out, "results folder --out")
    folder = out / f"{kind}-{stable_hash(yamls, 10)}"
    return SweepPlan(kind, axes or _axes_of(cells), sorted({c.seed for c in cells}), cells, folder, plans)


def _axes_of(cells: list[Cell]) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    for c in cells:
        for k, v in c.values.items():
            if _text(v) not in map(_text, axes.setdefault(k, [])):
                axes[k].append(v)
    return axes


def print_sweep_plan(p: SweepPlan) -> None:
    """What `--dry-run` prints: the cells in order, where they go, and what the first cell's run does."""
    points = len({c.point for c in p.cells})
    console.print(f"[bold]{p.kind}[/bold]: {len(p.cells)} run(s) = {points} grid point(s) × {len(p.seeds)} seed(s) "
                  f"({', '.join(map(str, p.seeds))})")  # fmt: skip
    for key, values in p.axes.items():
        console.print(escape(f"  grid {key}: {', '.join(map(_text, values))}"))
    for c in p.cells:
        console.print(escape(f"  run {c.index + 1}/{len(p.cells)}: {c.describe()}"))
    console.print(escape(f"  folder: {p.folder}/ (runs/, summary.json, tables/, plots/)"))
    first = p.plans[0]
    for i, stage in enumerate(first.stages, 1):
        console.print(escape(f"  run 1: {i}. {stage}"))
    for note in first.notes:
        console.print(escape(f"  note: {note}"))
    from harness.analysis.power_from_runs import planned_power
    from harness.analysis.replicates import versus_axis

    axis = versus_axis({k: list(dict.fromkeys(map(_text, v))) for k, v in p.axes.items()})
    compared = len(set(map(_text, p.axes[axis]))) if axis else 0
    pairs = points // compared * compared * (compared - 1) // 2 if compared else 0
    from harness.pipeline import planned_documents

    documents = planned_documents(first)
    for line in planned_power(first, documents, seeds=len(p.seeds), points=points, versus_pairs=pairs,
                              results=p.folder.parent):  # fmt: skip
        console.print(escape(f"  {line}"))
    console.print("dry run: nothing downloaded or written")


def _finished(runs: Path, cell: Cell) -> Path | None:
    """The finished run of `cell` in the sweep's runs/ folder: status done and the cell's very experiment."""
    from harness.analysis.report import run_status

    if not runs.is_dir():
        return None
    want = cell.exp.to_yaml()
    for d in sorted(runs.iterdir()):
        config = d / "config.yaml"
        if config.is_file() and config.read_text(encoding="utf-8") == want and run_status(d) == "done":
            return d
    return None


def _leftovers(runs: Path) -> list[Path]:
    """Runs a killed sweep left in its runs/ folder: status running, or killed before their manifest was written
    (the sweep's lock says that nobody runs them now). Failed runs are kept: their manifest says why."""
    if not runs.is_dir():
        return []
    out = []
    for d in sorted(p for p in runs.iterdir() if p.is_dir()):
        manifest = d / "manifest.json"
        if not manifest.is_file():
            out.append(d)
            continue
        try:
            status = json.loads(manifest.read_text(encoding="utf-8")).get("status")
        except (OSError, ValueError, AttributeError):
            continue  # not ours to judge: left alone
        if status == "running":
            out.append(d)
    return out


def _listing(p: SweepPlan, done: dict[int, Path]) -> dict[str, Any]:
    return {
        "kind": p.kind, "axes": p.axes, "seeds": p.seeds,
        "cells": [{"index": c.index, "values": c.values, "seed": c.seed, "point": c.point,
                   **({"run": f"runs/{done[c.index].name}", "status": "done"} if c.index in done else {"status": "to do"})}
                  for c in p.cells],
    }  # fmt: skip


def run_sweep(p: SweepPlan, progress: bool = True) -> Path:
    """Run every cell not finished yet (one line per cell says which), then write the sweep's outputs."""
    main = distributed.is_main()
    console.quiet = not main
    runs = p.folder / "runs"
    from filelock import Timeout

    lock = locked(p.folder, timeout=0) if main else contextlib.nullcontext()
    try:
        with lock:
            done: dict[int, Path] = {}
            for c in p.cells:
                found = distributed.from_main(str(_finished(runs, c) or "") if main else "")
                if found:
                    done[c.index] = Path(found)
            if main:
                for old in _leftovers(runs):
                    console.print(escape(f"removing '{old.name}', a run left unfinished by a killed sweep"))
                    shutil.rmtree(old)
                atomic_write_json(p.folder / "sweep.json", _listing(p, done))
            total = len(p.cells)
            for c in p.cells:
                if c.index in done:
                    console.print(escape(f"run {c.index + 1}/{total}: {c.describe()}: finished before ({done[c.index].name}), skipped"))
                    continue
                console.print(f"[bold]run {c.index + 1}/{total}[/bold]: " + escape(c.describe()))
                variant = {k: v for k, v in c.values.items() if k not in ("method.name", "method.schedule.name")}
                done[c.index] = pipeline.run(c.exp, runs, progress, p.plans[c.index], variant or None)
                if main:
                    atomic_write_json(p.folder / "sweep.json", _listing(p, done))
            if main:
                write_outputs(p, done)
            distributed.barrier()
    except Timeout:
        raise HarnessError(f"another process is running this sweep ('{p.folder}'); wait for it or kill it", "sweep") from None
    return p.folder


def _groups(p: SweepPlan, done: dict[int, Path]) -> list[tuple[str, dict[str, Any], list[Path]]]:
    """The grid points in order, each with its seeds' run directories."""
    points: dict[str, tuple[dict[str, Any], list[Path]]] = {}
    for c in p.cells:
        points.setdefault(c.point, (c.values, []))[1].append(done[c.index])
    return [(label, values, dirs) for label, (values, dirs) in points.items()]


def write_outputs(p: SweepPlan, done: dict[int, Path]) -> dict[str, Any]:
    """summary.json, the grid's table (md, tex, csv, and on stdout) and its figures; for an ablation also
    ablation.md and runs.json, as `harness ablate` always wrote them."""
    from harness.analysis import plots
    from harness.analysis.over_seeds import render_versus
    from harness.analysis.replicates import MARKER_NOTE, summarise_points
    from harness.analysis.report import build_ablation_table, build_grid_table, render, to_rich

    groups = _groups(p, done)
    summary = {"kind": p.kind, "sweep_id": p.folder.name, "axes": p.axes, "seeds": p.seeds,
               **summarise_points(groups)}  # fmt: skip
    atomic_write_json(p.folder / "summary.json", summary)
    p_adj = {(c["point"], c["task"]): c["p_adjusted"] for c in summary["comparisons"]}
    title = {"sweep": "Grid", "seeds": "Seeds", "ablation": "Schedule ablation"}[p.kind]
    table = build_grid_table([(label, dirs) for label, _, dirs in groups], f"{title} ({p.folder.name})", p_adj,
                             MARKER_NOTE)  # fmt: skip
    for fmt, ext in (("md", "md"), ("latex", "tex"), ("csv", "csv")):
        atomic_write_text(p.folder / "tables" / f"grid.{ext}", render(table, fmt))
    pipeline.table_console().print(to_rich(table))
    if summary["versus"]:
        atomic_write_text(p.folder / "tables" / "versus.md", render_versus(summary["versus"]))
    all_runs = [d for _, _, dirs in groups for d in dirs]
    if p.kind == "ablation":
        ablation = build_ablation_table(all_runs, p.cells[0].exp.method.name)
        atomic_write_text(p.folder / "ablation.md", render(ablation, "md"))
        atomic_write_json(p.folder / "runs.json", [str(d) for d in all_runs])
    try:
        plots.plot_task_scores(table, p.folder / "plots")
        plots.plot_grid(summary, p.folder / "plots")
        if p.kind == "ablation":
            plots.plot_ablation(all_runs, p.folder / "plots", p.cells[0].exp.method.name)
    except Exception as exc:  # a figure must never cost the numbers; say so and go on
        console.print(f"[yellow]plots skipped: {exc}[/yellow]")
    console.print(escape(f"{p.kind}: {len(done)} run(s) in {p.folder}"))
    return summary
