"""Comparison tables from run summaries: Markdown, LaTeX (booktabs) and CSV, plus a rich table for the terminal.

Rows: `target-base`, each source, plain-evaluated models, then each method (runs of the same method, schedule,
target and sweep variant with different seeds are one row: the mean over seeds ± the half-width of its 95%
t-interval). Columns: tasks grouped by category, then
category averages and the overall average (macro means over tasks). Numbers are read from summary.json only;
the significance markers use the Holm-adjusted p-values the summaries carry (one Holm family per run), or, with
`holm="table"`, Holm over every comparison the table shows (see harness/analysis/stats.py). Runs whose settings
differ for a task (data, task version, shots, limit, metric) are refused unless `allow_mismatch`, and then the table
says what differs.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from harness.analysis.stats import BASELINE_LABEL, holm, seed_summary, t_interval
from harness.errors import HarnessError
from harness.store import atomic_write_text, read_json_file

CATEGORY_ORDER = ("knowledge", "reasoning", "safety")
MARKERS = ((0.01, "‡"), (0.05, "†"))  # strictest first: p_adjusted < threshold -> marker
RowKind = Literal["baseline", "source", "model", "method"]
ColumnKind = Literal["task", "category", "overall"]
FORMATS = {"md": "md", "markdown": "md", "latex": "latex", "tex": "latex", "csv": "csv"}
HolmScope = Literal["run", "table"]
HOLM_SCOPES = ("run", "table")
# What must agree for two runs' results on a task to be compared (summary.json `tasks` entries).
SETTINGS = ("metric", "filter", "data", "version", "shots", "limit")


@dataclass(frozen=True)
class Column:
    """One column: a task, a category average (`avg_<category>`) or the overall average (`avg`)."""

    key: str
    label: str
    kind: ColumnKind
    category: str | None = None
    metric: str | None = None
    filter: str | None = None  # the lm-eval filter of a task's metric ("none" for log-likelihood tasks)


@dataclass(frozen=True)
class Cell:
    """One score. With several seeds, `value` is their mean, `sd` their standard deviation, `ci` the half-width of
    the 95% t-interval of the mean over seeds, and `seeds` the per-seed values."""

    value: float | None
    sd: float | None = None
    n_seeds: int = 1
    ci: float | None = None
    seeds: tuple[float, ...] = ()
    n: int | None = None  # documents
    stderr: float | None = None
    binary: bool | None = None
    p_adjusted: float | None = None  # vs target-base; for several seeds the largest (every seed must pass)
    filters: dict[str, float] = field(default_factory=dict)  # the metric under further filters (gsm8k)

    @property
    def marker(self) -> str:
        if self.p_adjusted is None:
            return ""
        return next((m for threshold, m in MARKERS if self.p_adjusted < threshold), "")


@dataclass
class Row:
    label: str
    kind: RowKind
    cells: dict[str, Cell]
    run_ids: list[str] = field(default_factory=list)
    schedule: str | None = None


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    def percent(self, key: str) -> bool:
        """Whether a column is shown ×100: every task value of it (or of all tasks, for averages) lies in [0, 1]."""
        keys = (
            [key] if self._column(key).kind == "task" else [c.key for c in self.columns if c.kind == "task"]
        )
        vals = [
            r.cells[k].value for r in self.rows for k in keys if k in r.cells and r.cells[k].value is not None
        ]
        return all(0.0 <= v <= 1.0 for v in vals)  # type: ignore[operator]

    def display(self, row: Row, key: str) -> str:
        """The number as shown (percent with one decimal, or raw with one decimal); '' when missing."""
        cell = row.cells.get(key)
        if cell is None or cell.value is None:
            return ""
        return f"{cell.value * (100 if self.percent(key) else 1):.1f}"

    def best(self, key: str) -> set[int]:
        """Indices of the rows with the highest displayed value in a column (ties all count)."""
        shown = {i: self.display(r, key) for i, r in enumerate(self.rows)}
        nums = {i: float(s) for i, s in shown.items() if s}
        if len(nums) < 2:
            return set()
        top = max(nums.values())
        return {i for i, v in nums.items() if v == top}

    def categories(self) -> list[str]:
        return list(dict.fromkeys(c.category for c in self.columns if c.kind == "task" and c.category))

    def category_cell(self, row: Row, category: str) -> Cell | None:
        """A row's score for a category: its average column, or its only task when there is no average column."""
        if f"avg_{category}" in {c.key for c in self.columns}:
            return row.cells.get(f"avg_{category}")
        tasks = [c.key for c in self.columns if c.kind == "task" and c.category == category]
        return row.cells.get(tasks[0]) if len(tasks) == 1 else None

    def _column(self, key: str) -> Column:
        return next(c for c in self.columns if c.key == key)


# ---------------------------------------------------------------- reading runs


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_scores(path: Path, name: str, block: Any) -> None:
    """A block of scores {task: {"value": number, ...}} as the pipeline writes it."""
    if not isinstance(block, dict):
        raise HarnessError(f"'{path}': '{name}' must be a mapping of tasks to scores", "report")
    for task, entry in block.items():
        if not isinstance(entry, dict):
            raise HarnessError(f"'{path}': {name}.{task} must be a mapping with a 'value'", "report")
        for key in ("value", "stderr", "n"):
            if entry.get(key) is not None and not _is_number(entry[key]):
                raise HarnessError(f"'{path}': {name}.{task}.{key} must be a number, got {entry[key]!r}", "report")


def load_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json of a run, checked for the shape the tables read (a mapping of numbers), or a one-line error."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise HarnessError(f"'{run_dir}' has no summary.json; is it a finished run directory?", "report")
    summary = read_json_file(path)
    if not isinstance(summary, dict):
        raise HarnessError(f"'{path}' must hold a JSON object, not a {type(summary).__name__}", "report")
    if not isinstance(summary.get("tasks"), dict):
        raise HarnessError(f"'{path}' has no 'tasks' mapping", "report")
    _check_scores(path, "tasks", summary["tasks"])
    _check_scores(path, "baseline", summary.get("baseline") or {})
    sources = summary.get("sources") or {}
    if not isinstance(sources, dict):
        raise HarnessError(f"'{path}': 'sources' must be a mapping of model names to scores", "report")
    for name, block in sources.items():
        _check_scores(path, f"sources.{name}", block)
    comparisons = summary.get("comparisons") or []
    if not isinstance(comparisons, list) or not all(isinstance(c, dict) for c in comparisons):
        raise HarnessError(f"'{path}': 'comparisons' must be a list of mappings", "report")
    for c in comparisons:
        if c.get("p_adjusted") is not None and not _is_number(c["p_adjusted"]):
            raise HarnessError(f"'{path}': a comparison's p_adjusted must be a number, got {c['p_adjusted']!r}", "report")
    for key in ("method", "schedule", "label", "run_id"):
        if summary.get(key) is not None and not isinstance(summary[key], str):
            raise HarnessError(f"'{path}': '{key}' must be a string, got {summary[key]!r}", "report")
    if summary.get("seed") is not None and (isinstance(summary["seed"], bool) or not isinstance(summary["seed"], int)):
        raise HarnessError(f"'{path}': 'seed' must be a whole number, got {summary['seed']!r}", "report")
    summary.setdefault("run_id", Path(run_dir).name)
    return summary


def load_selection(run_dir: Path) -> dict[str, Any] | None:
    """signals/selection.json of a run ({mode: {source: share}, "by_skill": {...}}), None when absent."""
    path = Path(run_dir) / "signals" / "selection.json"
    if not path.is_file():
        return None
    sel = read_json_file(path, "signals")
    by_skill = (sel.get("by_skill") or {}) if isinstance(sel, dict) else None
    panels = [sel, *by_skill.values()] if isinstance(by_skill, dict) else [None]
    for panel in panels:
        modes = [panel.get(m) for m in ("training", "inference")] if isinstance(panel, dict) else [0]
        if not all(m is None or (isinstance(m, dict) and all(_is_number(v) for v in m.values())) for m in modes):
            raise HarnessError(f"'{path}' is malformed: expected {{mode: {{source: share}}}} with numbers", "signals")
    return sel


def run_status(run_dir: Path) -> str:
    """"done" (also "finished", as runs before `status` said), "running" (or killed), "failed", or why the folder
    is no run at all."""
    manifest = Path(run_dir) / "manifest.json"
    if manifest.is_file():
        try:
            status = json.loads(manifest.read_text(encoding="utf-8")).get("status") or "running"
        except (OSError, ValueError, AttributeError):
            return "an unreadable manifest.json"
        return "done" if status == "finished" else str(status)
    return "done" if (Path(run_dir) / "summary.json").is_file() else "no summary.json: not a run directory"


def select_runs(run_dirs: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """The finished runs among `run_dirs` and one line per folder left out (unfinished, failed, not a run, or a
    repeat of another run's configuration and seed: each seed counts once, the last folder given wins)."""
    kept: list[Path] = []
    skipped: list[str] = []
    for d in expand_sweeps(map(Path, run_dirs)):
        status = run_status(d)
        if status == "done" and not (d / "summary.json").is_file():
            status = "done but without summary.json"
        if status != "done":
            why = f"status '{status}' (unfinished, killed or failed)" if status in ("running", "failed") else status
            skipped.append(f"skipped '{d}': {why}")
        else:
            kept.append(d)
    summaries = {d: load_summary(d) for d in kept}
    last: dict[tuple[Any, ...], Path] = {}
    for d, s in summaries.items():
        if (key := _replicate_key(s)) is not None:
            earlier = last.get(key)
            if earlier is not None and not s.get("method") and summaries[earlier].get("model") != s.get("model"):
                raise HarnessError(f"'{earlier}' and '{d}' evaluated different models under one row label "
                                   f"'{key[1]}'; give one of them another --label", "report")  # fmt: skip
            last[key] = d
    out = []
    for d, s in summaries.items():
        key = _replicate_key(s)
        if key is not None and last[key] != d:
            what = f"seed {s['seed']}" if s.get("method") else "the evaluation"
            skipped.append(f"skipped '{d}': repeats {what} of '{last[key]}' (each counts once)")
        else:
            out.append(d)
    return out, skipped


def sweep_points(folder: Path, where: str = "report") -> list[dict[str, Any]]:
    """The grid points a finished sweep folder's summary.json lists (label, values, runs by seed)."""
    summary = read_json_file(folder / "summary.json") if (folder / "summary.json").is_file() else None
    points = summary.get("points") if isinstance(summary, dict) else None
    if not isinstance(points, list):
        raise HarnessError(f"'{folder}' is not a finished sweep (no summary.json with its points)", where)
    return points


def sweep_point_runs(folder: Path, label: str, where: str = "report") -> dict[str, Path]:
    """The run directories, by seed, of the grid point `label` of a finished sweep folder."""
    points = sweep_points(folder, where)
    labels = [str(p.get("label")) for p in points]
    if label not in labels:
        raise HarnessError(f"sweep '{folder.name}' has no grid point '{label}' (have: {', '.join(labels)})", where)
    return {str(seed): folder / "runs" / name for seed, name in (points[labels.index(label)].get("runs") or {}).items()}


def split_point(spec: str | Path) -> tuple[Path, str] | None:
    """`SWEEP:POINT` (a sweep folder and one of its grid points' labels) as its two parts; None for a folder."""
    text = str(spec)
    head, sep, label = text.rpartition(":")
    if Path(text).is_dir() or not sep or not label or not (Path(head) / "sweep.json").is_file():
        return None
    return Path(head), label


def expand_sweeps(dirs: Iterable[Path]) -> list[Path]:
    """Run directories, with each sweep folder (one holding sweep.json: `harness sweep`, `run --seeds`, `ablate`)
    replaced by the run directories of its cells, and each `SWEEP:POINT` by the runs of that grid point."""
    out: list[Path] = []
    for d in dirs:
        if (point := split_point(d)) is not None:
            out += sweep_point_runs(*point).values()
            continue
        listing = Path(d) / "sweep.json"
        if not listing.is_file():
            out.append(Path(d))
            continue
        data = read_json_file(listing)
        cells = (data.get("cells") if isinstance(data, dict) else None) or []
        out += [Path(d) / c["run"] for c in cells if isinstance(c, dict) and isinstance(c.get("run"), str)]
    return out


def _replicate_key(summary: dict[str, Any]) -> tuple[Any, ...] | None:
    """What makes two runs the same replicate: configuration and seed of a fusion run, the row label of a plain
    evaluation; None when a run says too little to tell."""
    if summary.get("method"):
        return None if summary.get("seed") is None else (*config_key(summary), summary["seed"])
    return ("eval", _run_label(summary))


def config_key(summary: dict[str, Any]) -> tuple[str, str, str, str]:
    """(method, schedule, target, variant): what a seed replicate shares; the variant is a sweep cell's other grid
    values (`harness sweep --grid`), '' for a plain run."""
    return (summary["method"], summary.get("schedule") or "", (summary.get("models") or {}).get("target") or "",
            variant_text(summary.get("variant")))  # fmt: skip


def variant_text(variant: Any) -> str:
    """A sweep cell's grid values as a short label: `switch=0.25 lr=0.0001` (the last part of each field path)."""
    if not isinstance(variant, dict) or not variant:
        return ""
    return " ".join(f"{str(k).rsplit('.', 1)[-1]}={_value_text(v)}" for k, v in variant.items())


def _value_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value_text(v) for v in value) + "]"
    return "null" if value is None else str(value)


def _settings_text(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("source", "?") + (f" {value['hash']}" if value.get("hash") else "")
    return "all" if value is None else str(value)


def check_comparable(
    summaries: Sequence[dict[str, Any]], tasks: Iterable[str] | None = None, allow_mismatch: bool = False
) -> list[str]:
    """Whether every run evaluated each task the same way (data, task version, shots, limit, metric, filter).

    A difference is a one-line HarnessError unless `allow_mismatch`; then one note per difference is returned for
    the table. Settings a summary does not record (runs written before they were) are not compared.
    """
    wanted = None if tasks is None else set(tasks)
    seen: dict[tuple[str, str], dict[str, list[str]]] = {}
    for s in summaries:
        blocks = (s["tasks"], s.get("baseline") or {}, *(s.get("sources") or {}).values())
        for block in blocks:
            for task, info in block.items():
                if wanted is not None and task not in wanted:
                    continue
                for key in SETTINGS:
                    if key in info:
                        runs = seen.setdefault((task, key), {}).setdefault(_settings_text(info[key]), [])
                        if s["run_id"] not in runs:
                            runs.append(s["run_id"])
    diffs = [
        f"{task} {key}: " + "; ".join(f"{value} ({', '.join(runs)})" for value, runs in values.items())
        for (task, key), values in seen.items()
        if len(values) > 1
    ]
    if diffs and not allow_mismatch:
        raise HarnessError(f"the runs evaluated tasks differently ({diffs[0]}{f'; and {len(diffs) - 1} more' if len(diffs) > 1 else ''}); "
                           "compare runs with the same settings (harness report --allow-mismatch compares them anyway, "
                           "and says what differs)", "report")  # fmt: skip
    return [f"Compared although settings differ (--allow-mismatch): {d}." for d in diffs]


def _catalog(summaries: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """task -> {category, metric, binary}, in order of first appearance."""
    cat: dict[str, dict[str, Any]] = {}
    for s in summaries:
        for block in (s["tasks"], s.get("baseline") or {}, *(s.get("sources") or {}).values()):
            for task, info in block.items():
                entry = cat.setdefault(task, {"category": None, "metric": None, "binary": None, "filter": None})
                for k in entry:
                    if entry[k] is None and info.get(k) is not None:
                        entry[k] = info[k]
    for entry in cat.values():
        entry["category"] = entry["category"] or "other"
    return cat


def _columns(catalog: dict[str, dict[str, Any]]) -> list[Column]:
    seen = list(dict.fromkeys(e["category"] for e in catalog.values()))
    cats = [c for c in CATEGORY_ORDER if c in seen] + [c for c in seen if c not in CATEGORY_ORDER]
    cols = [
        Column(t, t, "task", c, e["metric"], e["filter"]) for c in cats for t, e in catalog.items() if e["category"] == c
    ]
    # category averages only where some category has several tasks (else they repeat the task columns)
    if len(cats) > 1 and any(sum(e["category"] == c for e in catalog.values()) > 1 for c in cats):
        cols += [Column(f"avg_{c}", c.capitalize(), "category", c) for c in cats]
    cols.append(Column("avg", "Avg", "overall"))
    return cols


def _run_label(summary: dict[str, Any]) -> str:
    """The eval label of a plain `harness eval` run (no method)."""
    return summary.get("label") or (summary.get("models") or {}).get("target") or summary["run_id"]


def _values(block: dict[str, Any], columns: list[Column]) -> dict[str, float | None]:
    """Task values of one model plus its averages (an average needs every task of its group)."""
    vals: dict[str, float | None] = {
        c.key: block[c.key].get("value") for c in columns if c.kind == "task" and c.key in block
    }
    tasks = [c for c in columns if c.kind == "task"]
    for c in columns:
        if c.kind == "task":
            continue
        got = [vals.get(t.key) for t in tasks if c.kind == "overall" or t.category == c.category]
        present = [v for v in got if v is not None]
        vals[c.key] = sum(present) / len(present) if got and len(present) == len(got) else None
    return vals


def _comparison(summary: dict[str, Any], a: str, task: str) -> dict[str, Any] | None:
    for comp in summary.get("comparisons") or []:
        if comp.get("a") == a and comp.get("b") == BASELINE_LABEL and comp.get("task") == task:
            return comp
    return None


class _PValues:
    """The adjusted p-value behind each marker: the run's own Holm adjustment, or (scope "table") Holm over every
    comparison the table shows, collected on a first pass over the rows."""

    def __init__(self, scope: HolmScope) -> None:
        self.scope = scope
        self.used: dict[tuple[str, str, str], float] = {}  # (run_id, a, task) -> raw p
        self.adjusted: dict[tuple[str, str, str], float] | None = None

    def __call__(self, summary: dict[str, Any], a: str, task: str) -> float | None:
        comp = _comparison(summary, a, task)
        if comp is None:
            return None
        if self.scope == "run":
            return comp.get("p_adjusted")
        key = (summary["run_id"], a, task)
        if self.adjusted is None:
            self.used[key] = float(comp["p_value"])
            return float(comp["p_value"])
        return self.adjusted.get(key)

    def adjust(self) -> None:
        keys = list(self.used)
        self.adjusted = dict(zip(keys, holm([self.used[k] for k in keys]), strict=True))


def _row(
    label: str,
    kind: RowKind,
    blocks: list[dict[str, Any]],
    summaries: list[dict[str, Any]],
    a: str | None,
    columns: list[Column],
    catalog: dict[str, dict[str, Any]],
    schedule: str | None = None,
    p_of: Any = None,
) -> Row:
    """One row from one block of scores per seed (blocks[i] from summaries[i]); `a` names it in the comparisons."""
    p_of = p_of or _PValues("run")
    per_seed = [_values(b, columns) for b in blocks]
    cells: dict[str, Cell] = {}
    for c in columns:
        got = [v.get(c.key) for v in per_seed]
        if any(g is None for g in got):
            continue  # missing for some seed: shown as '–', never averaged over fewer seeds
        mean, sd = seed_summary(got)  # type: ignore[arg-type]
        sd_or_none = None if len(got) == 1 else sd
        interval = t_interval(got)  # type: ignore[arg-type]
        spread = {"ci": None if interval is None else (interval[1] - interval[0]) / 2,
                  "seeds": tuple(got) if len(got) > 1 else ()}  # fmt: skip
        if c.kind != "task":
            cells[c.key] = Cell(mean, sd_or_none, len(got), **spread)  # type: ignore[arg-type]
            continue
        ps = [p_of(s, a, c.key) for s in summaries] if a else []
        first = blocks[0][c.key]
        names = set.intersection(*(set(b[c.key].get("filters") or {}) for b in blocks))
        filters = {f: sum(b[c.key]["filters"][f] for b in blocks) / len(blocks) for f in sorted(names)}
        cells[c.key] = Cell(
            mean, sd_or_none, len(got), n=first.get("n"), stderr=first.get("stderr"), binary=catalog[c.key]["binary"],
            p_adjusted=max(ps) if ps and all(p is not None for p in ps) else None,  # type: ignore[type-var]
            filters=filters, **spread,  # type: ignore[arg-type]
        )  # fmt: skip
    return Row(label, kind, cells, [s["run_id"] for s in summaries], schedule)


def _method_groups(
    summaries: list[dict[str, Any]], method: str | None = None
) -> dict[tuple[str, str, str, str], list[dict[str, Any]]]:
    """(method, schedule, target, variant) -> the summaries of that configuration (seed replicates), in run order."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for s in summaries:
        if s.get("method") and (method is None or s["method"] == method):
            groups.setdefault(config_key(s), []).append(s)
    for key, members in groups.items():  # seeds, not folders: a repeated seed (a rerun) counts once, the last
        by_seed = {(m.get("seed") if m.get("seed") is not None else f"run:{i}"): m for i, m in enumerate(members)}
        groups[key] = list(by_seed.values())
    return groups


def _group_label(key: tuple[str, str, str, str], keys: Iterable[tuple[str, str, str, str]], head: str) -> str:
    """`head`, plus the schedule, target and/or variant where other groups of the same method differ in them."""
    same = [k for k in keys if k[0] == key[0]]
    extra = [key[i] for i in (1, 2, 3) if key[i] and len({k[i] for k in same}) > 1]
    return f"{head} ({', '.join(extra)})" if extra else head


def _notes(
    columns: list[Column], rows: list[Row], ablation: bool, scope: HolmScope = "run", family: int = 0,
    mismatch: Sequence[str] = (), marker_note: str | None = None,
) -> list[str]:
    groups: dict[str, list[str]] = {}
    for c in columns:
        if c.kind == "task":
            groups.setdefault(c.category or "other", []).append(c.key)
    seeds = any(cell.n_seeds > 1 for r in rows for cell in r.cells.values())
    tested = any(cell.p_adjusted is not None for r in rows for cell in r.cells.values())
    notes = [
        "Scores in % (metric × 100, one decimal) unless a metric exceeds 1; best per column in bold"
        + (f"; a row over k seeds shows their mean ± the half-width of its 95% t-interval over the seeds "
           f"(t(k−1)·sd/√k; {_seed_counts(rows)})." if seeds else "."),
    ]
    if tested and marker_note:
        notes.append(marker_note)
    elif tested:  # a plain `harness eval` has nothing to compare against
        where = (f"Holm-corrected across all {family} comparisons with target-base this table shows"
                 if scope == "table" else
                 "Holm-corrected within each run, over its tasks × (method + sources) compared with target-base")
        notes.append("† p_adj < 0.05, ‡ p_adj < 0.01 vs target-base: paired test over the same documents (exact "
                     f"McNemar for binary metrics, sign-flip permutation otherwise), {where}. The 95% CIs in "
                     "summary.json are per comparison, not adjusted for multiplicity.")  # fmt: skip
    for c in columns:
        cells = [r.cells[c.key] for r in rows if c.key in r.cells and r.cells[c.key].filters]
        if cells:
            others = ", ".join(sorted(cells[0].filters))
            notes.append(f"{c.key}: {c.metric} under lm-eval's {c.filter or 'headline'} filter; {others} is in "
                         "summary.json and the CSV.")  # fmt: skip
    notes.extend(mismatch)
    if any(len(ts) > 1 for ts in groups.values()) and len(groups) > 1:
        notes.append("Categories: " + "; ".join(f"{c}: {', '.join(ts)}" for c, ts in groups.items()) + ".")
    if ablation:
        notes.insert(0, "Rows: ProFuser training schedules (the order in which the two modes are weighted).")
    return notes


def _seed_counts(rows: list[Row]) -> str:
    """How many seeds the rows average, and what that makes the interval (with 2 seeds t(1) = 12.7)."""
    ks = sorted({cell.n_seeds for r in rows for cell in r.cells.values() if cell.n_seeds > 1})
    text = "k = " + ", ".join(map(str, ks))
    return text + ("; with 2 seeds that is ± 9.0·sd" if 2 in ks else "")


def build_table(
    run_dirs: Sequence[Path], *, allow_mismatch: bool = False, holm_scope: HolmScope = "run"
) -> Table:
    """The main comparison table over one or more run directories.

    holm_scope "run" marks cells with each run's own Holm-adjusted p-values (the family: that run's tasks × (method
    + sources)); "table" adjusts across every comparison the table shows.
    """
    if not run_dirs:
        raise HarnessError("give at least one run directory", "report")
    if holm_scope not in HOLM_SCOPES:
        raise HarnessError(f"unknown Holm scope '{holm_scope}'; choose run or table", "report")
    summaries = [load_summary(Path(d)) for d in run_dirs]
    mismatch = check_comparable(summaries, allow_mismatch=allow_mismatch)
    catalog = _catalog(summaries)
    columns = _columns(catalog)
    p_of = _PValues(holm_scope)
    rows = _table_rows(summaries, columns, catalog, p_of)
    if holm_scope == "table":
        p_of.adjust()
        rows = _table_rows(summaries, columns, catalog, p_of)
    notes = _notes(columns, rows, ablation=False, scope=holm_scope, family=len(p_of.used), mismatch=mismatch)
    return Table("Results", columns, rows, notes)


def _table_rows(
    summaries: list[dict[str, Any]], columns: list[Column], catalog: dict[str, dict[str, Any]], p_of: _PValues
) -> list[Row]:
    rows = _reference_rows(summaries, columns, catalog, p_of)
    seen = {r.label for r in rows}

    def add(row: Row) -> None:
        if row.label not in seen:
            seen.add(row.label)
            rows.append(row)

    for s in summaries:
        if not s.get("method"):
            add(_row(_run_label(s), "model", [s["tasks"]], [s], None, columns, catalog, p_of=p_of))
    groups = _method_groups(summaries)
    for key, members in groups.items():
        label = _group_label(key, groups, key[0])
        add(_row(label, "method", [m["tasks"] for m in members], members, key[0], columns, catalog, key[1] or None,
                 p_of=p_of))  # fmt: skip
    return rows


def _reference_rows(
    summaries: list[dict[str, Any]], columns: list[Column], catalog: dict[str, dict[str, Any]], p_of: Any
) -> list[Row]:
    """target-base (one row per target) and each source: the rows every method is compared with."""
    rows: list[Row] = []
    seen: set[str] = set()

    def add(row: Row) -> None:
        if row.label not in seen:
            seen.add(row.label)
            rows.append(row)

    targets = list(
        dict.fromkeys((s.get("models") or {}).get("target") for s in summaries if s.get("baseline"))
    )
    for target in targets:
        s = next(
            s for s in summaries if s.get("baseline") and (s.get("models") or {}).get("target") == target
        )
        label = BASELINE_LABEL if len(targets) == 1 else f"{BASELINE_LABEL} ({target})"
        add(_row(label, "baseline", [s["baseline"]], [s], None, columns, catalog, p_of=p_of))
    for s in summaries:
        for name, block in (s.get("sources") or {}).items():
            if name not in seen:
                add(_row(name, "source", [block], [s], name, columns, catalog, p_of=p_of))
    return rows


def build_grid_table(
    points: Sequence[tuple[str, Sequence[Path]]], title: str,
    p_adjusted: dict[tuple[str, str], float] | None = None, marker_note: str | None = None,
) -> Table:
    """A sweep's table: target-base and the sources, then one row per grid point (`points`: its label and the run
    directories of its seeds), each cell the mean over seeds ± the half-width of its 95% t-interval.
    `p_adjusted[(label, task)]` marks a point's cells (the sweep's seed-aware tests; `marker_note` says which)."""
    if not points or not all(dirs for _, dirs in points):
        raise HarnessError("a grid table needs at least one run per grid point", "report")
    members = {label: [load_summary(Path(d)) for d in dirs] for label, dirs in points}
    everything = [s for ms in members.values() for s in ms]
    mismatch = check_comparable(everything, allow_mismatch=True)  # a grid may sweep eval settings: say so
    catalog = _catalog(everything)
    columns = _columns(catalog)
    rows = _reference_rows(everything, columns, catalog, _PValues("run"))
    for label, ms in members.items():
        def p_of(summary: dict[str, Any], a: str, task: str, label: str = label) -> float | None:
            return None if p_adjusted is None else p_adjusted.get((label, task))

        rows.append(_row(label, "method", [m["tasks"] for m in ms], ms, ms[0]["method"], columns, catalog,
                         ms[0].get("schedule"), p_of=p_of))  # fmt: skip
    notes = _notes(columns, rows, ablation=False, mismatch=mismatch, marker_note=marker_note)
    return Table(title, columns, rows, notes)


def build_ablation_table(run_dirs: Sequence[Path], method: str = "profuser") -> Table:
    """Rows are the settings of `method`'s runs (seed replicates averaged): its schedule where it has one (ProFuser),
    else the swept parameters (a sweep cell's variant); columns tasks and averages."""
    summaries = [load_summary(Path(d)) for d in run_dirs]
    groups = _method_groups(summaries, method)
    if not groups:
        raise HarnessError(
            f"none of the {len(summaries)} runs used method '{method}'; nothing to ablate", "report"
        )
    members_all = [m for ms in groups.values() for m in ms]
    catalog = _catalog([{"tasks": m["tasks"]} for m in members_all])
    columns = _columns(catalog)
    rows = []
    for key, members in groups.items():
        schedule = key[1] or ""
        extra = [key[i] for i in (2, 3) if key[i] and len({k[i] for k in groups}) > 1]
        if not schedule and extra:  # no schedule: the row is named by what varied
            label = " ".join(extra)
        else:
            label = f"{schedule or 'default'} ({', '.join(extra)})" if extra else schedule or "default"
        rows.append(
            _row(label, "method", [m["tasks"] for m in members], members, method, columns, catalog, schedule)
        )
    mismatch = check_comparable(members_all, allow_mismatch=True)
    scheduled = any(key[1] for key in groups)
    title = f"{'Schedule' if scheduled else 'Parameter'} ablation ({method})"
    return Table(title, columns, rows, _notes(columns, rows, ablation=scheduled, mismatch=mismatch))


# ---------------------------------------------------------------- rendering


def _ci_text(table: Table, row: Row, key: str) -> str:
    """The half-width of a seed-averaged cell's 95% t-interval, as displayed; '' for one seed."""
    cell = row.cells.get(key)
    if cell is None or cell.ci is None or math.isnan(cell.ci):
        return ""
    return f"{cell.ci * (100 if table.percent(key) else 1):.1f}"


def render_markdown(table: Table) -> str:
    keys = [c.key for c in table.columns]
    best = {k: table.best(k) for k in keys}
    lines = [
        "| Model | " + " | ".join(_md_escape(c.label) for c in table.columns) + " |",
        "|:--|" + "--:|" * len(keys),
    ]
    for i, row in enumerate(table.rows):
        cells = []
        for k in keys:
            num = table.display(row, k)
            if not num:
                cells.append("–")
                continue
            num = f"**{num}**" if i in best[k] else num
            sd = _ci_text(table, row, k)
            cells.append(num + (f" ± {sd}" if sd else "") + row.cells[k].marker)
        lines.append(f"| {_md_escape(row.label)} | " + " | ".join(cells) + " |")
    return (
        f"**{table.title}**\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(f"{n}  " for n in table.notes).rstrip()
        + "\n"
    )


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "†": r"$^{\dagger}$", "‡": r"$^{\ddagger}$",
    "±": r"$\pm$", "×": r"$\times$", "<": r"$<$", ">": r"$>$", "–": "--",
}  # fmt: skip


def tex_escape(text: str) -> str:
    """Plain text (with the table's few Unicode signs) as LaTeX that compiles under pdflatex."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(table: Table) -> str:
    keys = [c.key for c in table.columns]
    best = {k: table.best(k) for k in keys}
    # group header: one \multicolumn per category of tasks, then one over the averages
    spans: list[tuple[str, int]] = []
    for c in table.columns:
        name = c.category.capitalize() if c.kind == "task" and c.category else "Average"
        if spans and spans[-1][0] == name:
            spans[-1] = (name, spans[-1][1] + 1)
        else:
            spans.append((name, 1))
    head, rules, col = [], [], 2
    for name, width in spans:
        head.append(rf"\multicolumn{{{width}}}{{c}}{{{tex_escape(name)}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + width - 1}}}")
        col += width
    body = []
    for i, row in enumerate(table.rows):
        if i and row.kind == "method" and table.rows[i - 1].kind != "method":
            body.append(r"\midrule")
        cells = []
        for k in keys:
            num = table.display(row, k)
            if not num:
                cells.append("--")
                continue
            text = rf"\textbf{{{num}}}" if i in best[k] else num
            sd = _ci_text(table, row, k)
            cells.append(
                text + (rf"{{\scriptsize$\pm${sd}}}" if sd else "") + tex_escape(row.cells[k].marker)
            )
        body.append(tex_escape(row.label) + " & " + " & ".join(cells) + r" \\")
    slug = re.sub(r"[^a-z0-9]+", "-", table.title.lower()).strip("-")
    caption = tex_escape(table.title + ". " + " ".join(table.notes))
    return "\n".join([
        r"\begin{table}[t]", r"\centering", r"\small",
        r"\begin{tabular}{l" + "r" * len(keys) + "}", r"\toprule",
        " & " + " & ".join(head) + r" \\", "".join(rules),
        "Model & " + " & ".join(tex_escape(c.label) for c in table.columns) + r" \\", r"\midrule",
        *body, r"\bottomrule", r"\end{tabular}",
        rf"\caption{{{caption}}}", rf"\label{{tab:{slug}}}", r"\end{table}", "",
    ])  # fmt: skip


def to_frame(table: Table) -> pd.DataFrame:
    """Raw numbers (fractions, not percent): value columns by key, `<key>_sd` with seeds, `<task>_p_adj`, and
    `<task>,<filter>` for a metric's further filters (gsm8k's flexible-extract)."""
    with_sd = any(c.n_seeds > 1 for r in table.rows for c in r.cells.values())
    filter_columns = list(dict.fromkeys(
        (k, f) for r in table.rows for k, c in r.cells.items() for f in c.filters
    ))  # fmt: skip
    records = []
    for row in table.rows:
        rec: dict[str, Any] = {"model": row.label, "kind": row.kind, "schedule": row.schedule or "",
                               "runs": ";".join(row.run_ids),
                               "n_seeds": max((c.n_seeds for c in row.cells.values()), default=1)}  # fmt: skip
        for c in table.columns:
            cell = row.cells.get(c.key)
            rec[c.key] = cell.value if cell else None
            if with_sd:
                rec[f"{c.key}_sd"] = cell.sd if cell else None
                rec[f"{c.key}_ci95"] = cell.ci if cell else None  # half-width of the t-interval over seeds
        for c in table.columns:
            if c.kind == "task":
                cell = row.cells.get(c.key)
                rec[f"{c.key}_p_adj"] = cell.p_adjusted if cell else None
        for key, name in filter_columns:
            cell = row.cells.get(key)
            rec[f"{key},{name}"] = cell.filters.get(name) if cell else None
        records.append(rec)
    return pd.DataFrame.from_records(records)


def render_csv(table: Table) -> str:
    buf = io.StringIO()
    to_frame(table).to_csv(buf, index=False, float_format="%.6g")
    return buf.getvalue()


def render(table: Table, fmt: str) -> str:
    """The table as `md`, `latex` (booktabs; needs \\usepackage{booktabs}) or `csv` text."""
    kind = FORMATS.get(fmt.lower())
    if kind is None:
        raise HarnessError(f"unknown table format '{fmt}'; choose md, latex or csv", "report")
    return {"md": render_markdown, "latex": render_latex, "csv": render_csv}[kind](table)


def to_rich(table: Table) -> Any:
    """A rich.table.Table for the terminal (best in bold, markers kept); print it with rich's Console."""
    from rich.table import Table as RichTable
    from rich.text import Text

    out = RichTable(title=table.title, caption="\n".join(table.notes), caption_justify="left")
    out.add_column("Model")
    for c in table.columns:
        out.add_column(c.label, justify="right")
    best = {c.key: table.best(c.key) for c in table.columns}
    for i, row in enumerate(table.rows):
        cells = []
        for c in table.columns:
            num = table.display(row, c.key)
            if not num:
                cells.append(Text("–", style="dim"))
                continue
            sd = _ci_text(table, row, c.key)
            text = Text(num, style="bold" if i in best[c.key] else "")
            text.append((f" ± {sd}" if sd else "") + row.cells[c.key].marker)
            cells.append(text)
        out.add_row(Text(row.label), *cells, end_section=row.kind != "method" and i + 1 < len(table.rows)
                    and table.rows[i + 1].kind == "method")  # fmt: skip
    return out


def write_tables(
    run_dirs: Sequence[Path], out_dir: Path, *, allow_mismatch: bool = False, holm_scope: HolmScope = "run"
) -> list[Path]:
    """results.{md,tex,csv} in `out_dir`, plus an ablation table for each method whose runs differ in its settings
    (schedule or swept parameters, on one target): ablation.{md,tex,csv}, or ablation-<method>.* when several."""
    tables = {"results": build_table(run_dirs, allow_mismatch=allow_mismatch, holm_scope=holm_scope)}
    summaries = [load_summary(Path(d)) for d in run_dirs]
    varied = [m for m in dict.fromkeys(s["method"] for s in summaries if s.get("method"))
              if len({(k[1], k[3]) for k in _method_groups(summaries, m)}) > 1]  # fmt: skip
    for method in varied:
        tables["ablation" if len(varied) == 1 else f"ablation-{method}"] = build_ablation_table(run_dirs, method)
    written = []
    for stem, table in tables.items():
        for fmt, ext in (("md", "md"), ("latex", "tex"), ("csv", "csv")):
            path = Path(out_dir) / f"{stem}.{ext}"
            atomic_write_text(path, render(table, fmt))
            written.append(path)
    return written


# ------------------------------------------------------------------------------------ two methods head to head


SeedRuns = dict[Any, tuple[Path, dict[str, Any]]]  # one --versus side: seed -> (run directory, summary)


def _versus_side(summaries: Sequence[dict[str, Any]], dirs: Sequence[Path], name: str) -> tuple[str, SeedRuns]:
    """The runs a `--versus` side names, by seed, and the eval/ label that holds their results. `name` is a row
    label of the main table (a method, or a method with what tells its configurations apart, e.g. `profuser
    (disagreement=0.5)`), a method with one configuration among the runs, or an evaluated model's label."""
    groups: dict[tuple[str, str, str, str], list[tuple[Path, dict[str, Any]]]] = {}
    for d, s in zip(dirs, summaries, strict=True):
        if s.get("method"):
            groups.setdefault(config_key(s), []).append((d, s))
    labels = {_group_label(key, groups, key[0]): key for key in groups}
    if name in labels:
        found = groups[labels[name]]
    else:
        found = [(d, s) for d, s in zip(dirs, summaries, strict=True)
                 if s.get("method") == name or (s.get("method") is None and s.get("label") == name)]  # fmt: skip
    if not found:
        have = [*labels, *(str(s["label"]) for s in summaries if not s.get("method") and s.get("label"))]
        raise HarnessError(f"no run of '{name}' among the run directories (have: {', '.join(have) or 'none'})", "report")
    configs = list(dict.fromkeys(config_key(s) for _, s in found))
    if len(configs) > 1:
        shown = ", ".join(f"'{label}'" for label, key in labels.items() if key in configs)
        raise HarnessError(f"runs of method '{name}' in {len(configs)} configurations: name one as the table labels "
                           f"it ({shown}), or give the runs (seeds) of one, e.g. a sweep's grid point as "
                           "SWEEP:POINT", "report")  # fmt: skip
    summary = found[0][1]
    return str(summary.get("method") or summary.get("label")), {s.get("seed"): (d, s) for d, s in found}


def head_to_head(
    run_dirs: Sequence[Path], a: str, b: str, *, allow_mismatch: bool = False, metric: str | None = None
) -> pd.DataFrame:
    """`a` against `b` on each task both evaluated: paired tests over the same documents (by document hash),
    Holm-adjusted across the tasks (harness.analysis.stats.compare_across_runs). One row per task, fractions not
    percent. `a` and `b` are methods, or row labels of the main table where a method ran in several configurations
    (`profuser (disagreement=0.5)`), or evaluated models. Runs that evaluated a task differently are refused unless
    `allow_mismatch`; then the documents both evaluated are paired and `frame.attrs["notes"]` says what differs.

    Where a side has several seeds (one configuration's replicates, e.g. a sweep's cells), the two are paired by
    seed over their common seeds and tested over documents and over seeds as a sweep's head-to-head rows are
    (`head_to_head_over_seeds`); a model evaluated once stands beside every seed."""
    dirs = [Path(d) for d in run_dirs]
    summaries = [load_summary(d) for d in dirs]
    (la, runs_a), (lb, runs_b) = _versus_side(summaries, dirs, a), _versus_side(summaries, dirs, b)
    runs_a, runs_b = _every_seed(runs_a, runs_b), _every_seed(runs_b, runs_a)
    notes: list[str] = []
    if len(runs_a) > 1 or len(runs_b) > 1:
        seeds = [seed for seed in runs_a if seed in runs_b]
        if not seeds:
            raise HarnessError(f"the runs of '{a}' (seeds {_seed_list(runs_a)}) and '{b}' (seeds "
                               f"{_seed_list(runs_b)}) share no seed to pair", "report")  # fmt: skip
        left = {m: [s for s in runs if s not in seeds] for m, runs in ((a, runs_a), (b, runs_b))}
        notes = [f"{m}: seed(s) {', '.join(map(str, s))} left out (no run of the other side with that seed)"
                 for m, s in left.items() if s]  # fmt: skip
        if len(seeds) > 1:
            return head_to_head_over_seeds({s: runs_a[s] for s in seeds}, {s: runs_b[s] for s in seeds}, (a, la),
                                           (b, lb), allow_mismatch=allow_mismatch, metric=metric, notes=notes)  # fmt: skip
        runs_a, runs_b = {seeds[0]: runs_a[seeds[0]]}, {seeds[0]: runs_b[seeds[0]]}
    (dir_a, sum_a), (dir_b, sum_b) = next(iter(runs_a.values())), next(iter(runs_b.values()))
    tasks = _shared_tasks(a, b, [sum_a], [sum_b])
    mismatch = _task_mismatch([sum_a, sum_b], tasks, allow_mismatch)
    if metric is not None:  # a secondary per-document metric (`margin`): continuous, compared the same way
        tasks = _tasks_recording(metric, tasks, (dir_a, la), (dir_b, lb))
    from harness.analysis.stats import compare_across_runs

    rows = compare_across_runs((dir_a, la), (dir_b, lb), tasks, common_only=bool(mismatch))
    frame = pd.DataFrame.from_records(rows).assign(a=a, b=b)
    for pos, (d, summary, label, shown) in ((3, (dir_a, sum_a, la, a)), (4, (dir_b, sum_b, lb, b))):
        frame.insert(pos, shown, [_task_value(d, summary, label, t, metric) for t in frame["task"]])
    from harness.analysis.power_from_runs import annotate_head_to_head

    annotate_head_to_head(frame, (dir_a, la), (dir_b, lb), tasks)
    frame.attrs["notes"] = [*mismatch, *notes]
    frame.attrs["metric"] = metric
    return frame


def head_to_head_over_seeds(
    runs_a: SeedRuns, runs_b: SeedRuns, a: tuple[str, str], b: tuple[str, str], *, allow_mismatch: bool = False,
    metric: str | None = None, notes: Sequence[str] = (),
) -> pd.DataFrame:
    """`a` against `b` paired by seed (`runs_*`: seed -> run, the same seeds on both sides; `a`, `b`: the name shown
    and the eval/ label of the results): per task, the test over documents of the per-document differences summed
    over seeds and the paired t-test over the seeds, the larger p Holm-adjusted across the tasks, each row with its
    MDE over documents and over seeds: the rows a sweep's summary gives its cells (harness.analysis.over_seeds),
    for runs from anywhere."""
    from harness.analysis.over_seeds import holm_with_mde, seeds_test_row

    (a_shown, la), (b_shown, lb) = a, b
    sums_a, sums_b = [s for _, s in runs_a.values()], [s for _, s in runs_b.values()]
    tasks = _shared_tasks(a_shown, b_shown, sums_a, sums_b)
    if _task_mismatch([*sums_a, *sums_b], tasks, allow_mismatch):
        raise HarnessError("a comparison over seeds pairs every seed on the same documents; these runs evaluated a "
                           "task differently (compare one seed's runs with --allow-mismatch instead)", "report")  # fmt: skip
    if metric is not None:
        tasks = _tasks_recording(metric, tasks, *((d, la) for d, _ in runs_a.values()), *((d, lb) for d, _ in runs_b.values()))
    rows = [{"a": a_shown, "b": b_shown, "task": task, **seeds_test_row(la, lb, task, info,
             {seed: (runs_a[seed][0], runs_b[seed][0]) for seed in runs_a})} for task, info in tasks.items()]  # fmt: skip
    holm_with_mde(rows)
    frame = pd.DataFrame.from_records(rows)
    for pos, (runs, label, shown) in ((3, (runs_a, la, a_shown)), (4, (runs_b, lb, b_shown))):
        frame.insert(pos, shown, [_mean(_task_value(d, s, label, t, metric) for d, s in runs.values()) for t in frame["task"]])
    frame.attrs["notes"] = list(notes)
    frame.attrs["metric"] = metric
    frame.attrs["seeds"] = list(runs_a)
    return frame


def _every_seed(side: SeedRuns, other: SeedRuns) -> SeedRuns:
    """A plain evaluation (no method, no seed: one model scored once) stands beside every seed of the other side,
    as the unfused target does in a sweep's comparisons."""
    (only, *more) = side.values()
    if more or only[1].get("method") or len(other) < 2:
        return side
    return {seed: only for seed in other}


def _seed_list(runs: dict[Any, Any]) -> str:
    return ", ".join(map(str, runs))


def _shared_tasks(a: str, b: str, sums_a: Sequence[dict[str, Any]], sums_b: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The tasks every run of both sides evaluated, with the first run of `a`'s task entry."""
    tasks = {t: info for t, info in sums_a[0]["tasks"].items() if all(t in s["tasks"] for s in (*sums_a, *sums_b))}
    if not tasks:
        raise HarnessError(f"the runs of '{a}' and '{b}' share no task", "report")
    return tasks


def _task_mismatch(summaries: Sequence[dict[str, Any]], tasks: dict[str, Any], allow_mismatch: bool) -> list[str]:
    """check_comparable over the compared models' `tasks` alone (not their targets' or sources' entries)."""
    only = [{**s, "tasks": {t: s["tasks"][t] for t in tasks}, "baseline": {}, "sources": {}} for s in summaries]
    return check_comparable(only, tasks, allow_mismatch=allow_mismatch)


def _task_value(run_dir: Path, summary: dict[str, Any], label: str, task: str, metric: str | None) -> float:
    """The run's score on `task`: the summary's value, or the mean of a secondary per-document `metric`."""
    if metric is None:
        return float(summary["tasks"][task]["value"])
    from harness.analysis.stats import load_samples

    return _mean(load_samples(run_dir, label, task, metric).values())


def _tasks_recording(metric: str, tasks: dict[str, Any], *sides: tuple[Path, str]) -> dict[str, dict[str, Any]]:
    """The tasks whose per-sample files of every side record `metric` (e.g. `margin`), compared as continuous."""
    from harness.analysis.stats import load_samples

    out: dict[str, dict[str, Any]] = {}
    for task, info in tasks.items():
        try:
            for run_dir, label in sides:
                load_samples(run_dir, label, task, metric)
        except HarnessError:
            continue
        out[task] = {**info, "metric": metric, "binary": False}
    if not out:
        raise HarnessError(f"no task of these runs records '{metric}' per document (the answer margin is recorded "
                           "for multiple-choice tasks evaluated by this version; re-evaluate)", "report")  # fmt: skip
    return out


def _mean(values: Iterable[float]) -> float:
    found = list(values)
    return sum(found) / len(found)


def render_head_to_head(frame: pd.DataFrame, fmt: str) -> str:
    """The head-to-head rows as `md` (percent points, 95% CI, Holm p) or `csv` (raw fractions)."""
    kind = FORMATS.get(fmt.lower())
    over_seeds = "p_seeds" in frame.columns
    if kind == "csv":
        buf = io.StringIO()
        out = frame.assign(per_seed=frame["per_seed"].map(json.dumps)) if over_seeds else frame
        out.to_csv(buf, index=False, float_format="%.6g")
        return buf.getvalue()
    if kind != "md":
        raise HarnessError("a head-to-head table is written as md or csv", "report")
    a, b = str(frame["a"].iloc[0]), str(frame["b"].iloc[0])
    metric = frame.attrs.get("metric")
    if over_seeds:
        from harness.analysis.over_seeds import render_versus

        seeds = ", ".join(map(str, frame.attrs.get("seeds", [])))
        title = f"**{a} vs {b}**{f' on {metric}' if metric else ''} (paired by seed over seeds {seeds}, Holm across tasks)"
        return "\n".join([title, "", render_versus(frame.to_dict("records"), metric=metric).rstrip("\n"),
                          *map(str, frame.attrs.get("notes", []))]) + "\n"  # fmt: skip
    scale, unit = (1.0, f"Δ ({metric})") if metric else (100.0, "Δ (points)")
    lines = [f"**{a} vs {b}**{f' on {metric}' if metric else ''} (paired over the same documents, Holm-adjusted "
             "across tasks)", "", f"| task | {a} | {b} | {unit} | 95% CI | p_adj | test |",
             "|:--|--:|--:|--:|:--|--:|:--|"]  # fmt: skip
    f = (lambda v: f"{v:.3g}") if metric else (lambda v: f"{100 * v:.1f}")
    for row in frame.to_dict("records"):
        p_cell = f"{row['p_adjusted']:.2g}"
        if row["p_adjusted"] >= 0.05 and "mde" in row:
            from harness.analysis.power import mde_text

            p_cell += f" (n.s., {mde_text(row['mde'], bool(row['binary']))})"
        lines.append(
            f"| {row['task']} | {f(row[a])} | {f(row[b])} | {scale * row['delta']:+.{3 if metric else 1}f} | "
            f"[{scale * row['ci_low']:+.{3 if metric else 1}f}, {scale * row['ci_high']:+.{3 if metric else 1}f}] | "
            f"{p_cell} | {row['test']} |"
        )
    lines += ["", f"p_adj: Holm across the {len(frame)} tasks of this table. 95% CI of the difference: for binary "
              "metrics the interval the exact McNemar test inverts (it excludes 0 exactly when p < 0.05), for "
              "continuous ones a percentile bootstrap; per task, not adjusted for multiplicity. MDE: the difference "
              f"this comparison detects with 80% power at Holm's first step (α/{len(frame)}), from its documents "
              "and observed discordance (SD of differences for a continuous metric; harness power); beyond reach: even "
              "every discordant document favouring one side would not reach that power."]  # fmt: skip
    for row in frame.to_dict("records"):
        if row.get("cluster_se") is not None:
            lines.append(f"{row['task']}: documents in {row['clusters']} clusters; clustered SE of Δ "
                         f"{scale * row['cluster_se']:.{3 if metric else 1}f} (iid {scale * row['iid_se']:.{3 if metric else 1}f}), "
                         f"95% CI [{scale * row['cluster_ci_low']:+.{3 if metric else 1}f}, "
                         f"{scale * row['cluster_ci_high']:+.{3 if metric else 1}f}] (docs/statistics.md, clusters)")  # fmt: skip
    lines += [str(n) for n in frame.attrs.get("notes", [])]
    return "\n".join(lines) + "\n"
