"""One self-contained HTML report over runs and sweeps: tables, figures, run metadata and a flips browser.

The file opens offline and can be attached to a review: the page is rendered on this side from one Jinja2
template (templates/report.html.j2), with an inline stylesheet, a few lines of inline script for the filters, and
every figure embedded as a PNG data URI; nothing is fetched from a network. Every table is the Markdown table the
other formats print (harness/analysis/report.py, tables/grid.md and tables/versus.md of a sweep), rendered by
markdown-it, so a number in the HTML is the number in the Markdown. The flips browser lists, per task and pair of
models, the documents where the two differ (harness/analysis/flips.py): each fusion run's model against its target,
and every two fusion runs of the same seed and target (the head-to-head pairs).
"""

from __future__ import annotations

import base64
import itertools
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.analysis.flips import Flips, Side, find_flips, shorten
from harness.analysis.report import (
    HolmScope,
    build_table,
    config_key,
    head_to_head,
    load_summary,
    read_json_file,
    render,
    render_head_to_head,
    variant_text,
)
from harness.analysis.stats import BASELINE_LABEL
from harness.errors import HarnessError

FLIPS_PER_GROUP = 25  # documents listed per task, pair and group (the counts cover all)
TEMPLATE = "report.html.j2"


@dataclass(frozen=True)
class Figure:
    title: str
    uri: str  # data:image/png;base64,...


@dataclass(frozen=True)
class SweepSection:
    name: str
    grid: str  # HTML of tables/grid.md
    versus: str | None  # HTML of tables/versus.md
    figures: list[Figure]


@dataclass(frozen=True)
class RunMeta:
    """What makes a run reproducible: its identity, versions, git sha, world fingerprint, cache keys and config."""

    run_id: str
    name: str
    status: str
    git_sha: str | None
    python: str | None
    packages: dict[str, Any]
    world: str | None
    cache_keys: dict[str, Any]
    config: str


def markdown_html(text: str) -> str:
    """Markdown (the tables' own rendering) as HTML; raw HTML in the text is escaped, never passed through."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figures(paths: Sequence[Path]) -> list[Figure]:
    return [Figure(p.stem.replace("_", " "), _png(p)) for p in sorted(paths) if p.suffix == ".png"]


def run_name(summary: dict[str, Any], with_schedule: bool = False) -> str:
    """A run's row as a person reads it: method (or evaluated model), its schedule where runs differ in it, sweep
    variant and seed."""
    own = summary.get("method") or summary.get("label") or summary.get("run_id") or "?"
    schedule = summary.get("schedule") if with_schedule and summary.get("method") else None
    parts = [str(own), f"({schedule})" if schedule else "", variant_text(summary.get("variant"))]
    if summary.get("method") and summary.get("seed") is not None:
        parts.append(f"seed {summary['seed']}")
    return " ".join(p for p in parts if p)


def _meta(run: Path) -> RunMeta:
    summary = load_summary(run)
    manifest = read_json_file(run / "manifest.json") if (run / "manifest.json").is_file() else {}
    manifest = manifest if isinstance(manifest, dict) else {}
    world = manifest.get("sandbox_world") or {}
    world_text = (f"{world.get('size')} seed {world.get('seed')}: key {world.get('key')}, fingerprint "
                  f"{world.get('fingerprint')}") if isinstance(world, dict) and world else None  # fmt: skip
    config = run / "config.yaml"
    return RunMeta(
        run_id=str(summary["run_id"]), name=run_name(summary), status=str(manifest.get("status", "?")),
        git_sha=manifest.get("git_sha"), python=manifest.get("python"), packages=dict(manifest.get("packages") or {}),
        world=world_text, cache_keys=dict(manifest.get("cache_keys") or {}),
        config=config.read_text(encoding="utf-8") if config.is_file() else "",
    )  # fmt: skip


def _head_to_heads(
    runs: Sequence[Path], summaries: Sequence[dict[str, Any]], allow_mismatch: bool, shown: Sequence[Path] = ()
) -> list[str]:
    """`report --versus` for every two methods that each ran in one configuration among `runs` (one run, or seed
    replicates paired by seed; Markdown as HTML), except two whose runs all lie in the sweep folders `shown`,
    whose own head-to-head table the page already holds."""
    configs: dict[str, set[tuple[str, str, str, str]]] = {}
    inside: dict[str, bool] = {}
    for run, s in zip(runs, summaries, strict=True):
        if s.get("method"):
            configs.setdefault(s["method"], set()).add(config_key(s))
            inside[s["method"]] = inside.get(s["method"], True) and any(run.resolve().is_relative_to(f.resolve()) for f in shown)
    methods = [m for m, keys in configs.items() if len(keys) == 1]
    out = []
    tasks = {s["method"]: set(s["tasks"]) for s in summaries if s.get("method") in methods}
    for a, b in itertools.combinations(methods, 2):
        if not tasks[a] & tasks[b] or (inside[a] and inside[b]):
            continue
        frame = head_to_head(runs, a, b, allow_mismatch=allow_mismatch)
        out.append(markdown_html(render_head_to_head(frame, "md")))
    return out


def flip_pairs(runs: Sequence[Path]) -> list[tuple[Side, Side]]:
    """The pairs the flips browser shows: each fusion run's model against its target, then every two fusion runs
    with the same seed and target (in the order given)."""
    fused = [(run, s) for run in runs if (s := load_summary(run)).get("method")]
    schedules: dict[str, set[Any]] = {}
    for _, s in fused:
        schedules.setdefault(s["method"], set()).add(s.get("schedule"))

    def name(s: dict[str, Any]) -> str:
        return run_name(s, with_schedule=len(schedules[s["method"]]) > 1)

    pairs = [(Side(run, s["method"], name(s)), Side(run, BASELINE_LABEL, BASELINE_LABEL)) for run, s in fused]
    for (ra, sa), (rb, sb) in itertools.combinations(fused, 2):
        same = sa.get("seed") == sb.get("seed") and (sa.get("models") or {}).get("target") == (sb.get("models") or {}).get("target")
        if same:
            pairs.append((Side(ra, sa["method"], name(sa)), Side(rb, sb["method"], name(sb))))
    return pairs


def _flips(runs: Sequence[Path], limit: int) -> list[Flips]:
    found = []
    for a, b in flip_pairs(runs):
        tasks = [t for t in load_summary(a.run)["tasks"] if t in load_summary(b.run)["tasks"]]
        for task in tasks:
            if (a.run / "eval" / a.label / f"{task}.jsonl").is_file() and (b.run / "eval" / b.label / f"{task}.jsonl").is_file():
                found.append(find_flips(a, b, task, limit=limit))
    return found


def render_html(
    given: Sequence[Path], runs: Sequence[Path], *, allow_mismatch: bool = False, holm_scope: HolmScope = "run",
    flips_per_group: int = FLIPS_PER_GROUP, skipped: Sequence[str] = (),
) -> str:
    """The report as one HTML document. `given`: the folders the user named (sweep folders keep their grid table,
    head-to-head table and figures); `runs`: the finished runs among them (`api.finished`)."""
    import jinja2

    from harness.analysis.plots import make_plots
    from harness.store import package_versions

    if not runs:
        raise HarnessError("an HTML report needs at least one finished run", "report")
    runs = [Path(r) for r in runs]
    summaries = [load_summary(r) for r in runs]
    table_md = render(build_table(runs, allow_mismatch=allow_mismatch, holm_scope=holm_scope), "md")
    sweeps = []
    covered = []  # sweep folders whose head-to-head table the page shows
    for folder in map(Path, given):
        if not (folder / "sweep.json").is_file():
            continue
        tables = folder / "tables"
        grid = tables / "grid.md"
        versus = tables / "versus.md"
        if versus.is_file():
            covered.append(folder)
        sweeps.append(SweepSection(
            folder.name, markdown_html(grid.read_text(encoding="utf-8")) if grid.is_file() else "",
            markdown_html(versus.read_text(encoding="utf-8")) if versus.is_file() else None,
            _figures(list((folder / "plots").glob("*.png"))),
        ))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="harness-html-") as tmp:
        figures = _figures(make_plots(runs, Path(tmp)))
    flips = _flips(runs, flips_per_group)
    env = jinja2.Environment(loader=jinja2.PackageLoader("harness.analysis", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)  # fmt: skip
    env.filters["shorten"] = shorten
    return env.get_template(TEMPLATE).render(
        version=package_versions().get("fusion-harness") or "?", table=markdown_html(table_md), sweeps=sweeps,
        head_to_heads=_head_to_heads(runs, summaries, allow_mismatch, covered),
        figures=figures, flips=flips,
        tasks=list(dict.fromkeys(f.task for f in flips)), pairs=list(dict.fromkeys(_pair(f) for f in flips)),
        pair=_pair, per_group=flips_per_group, metas=[_meta(r) for r in runs], skipped=list(skipped),
    )  # fmt: skip


def _pair(f: Flips) -> str:
    return f"{f.a.name} vs {f.b.name}"
