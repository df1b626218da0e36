"""The documents behind a paired comparison: where two models' per-document results differ, and what each said.

A number like "+4.0 on gsm8k, p 0.03" is a count of flipped documents; this module lists them. Two sides, each a
label of a run directory (`eval/<label>/<task>.jsonl`, with `<task>.prompts.jsonl.gz` beside it), are paired by
document hash as harness/analysis/stats.py pairs them. Binary metrics give two groups, a right and b wrong and the
reverse; continuous metrics give the documents where each side scored higher, largest differences first. The
summary carries the counts and the test of the same pair from `stats.compare_across_runs`, Holm-adjusted across
the tasks both sides evaluated: the very p-value `harness report --versus` prints for two methods' runs.

A side is written `RUN[:LABEL]`: a run directory and a row of it (default: the fused model, or the evaluated
model of `harness eval`), or a sweep folder and a grid point with its seed, `SWEEP:POINT@SEED` (the seed may be
left out when the point has one).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.analysis.report import load_summary, sweep_point_runs, sweep_points
from harness.analysis.stats import BASELINE_LABEL, compare_across_runs
from harness.errors import HarnessError

PROMPT_CHARS = 240  # a shortened prompt keeps its end: the question comes after any shots
Group = Literal["a", "b"]


@dataclass(frozen=True)
class Side:
    """One model's results: the run directory that holds them, the eval/ label, and the name shown for it."""

    run: Path
    label: str
    name: str


@dataclass(frozen=True)
class Flip:
    """One document whose result differs between the sides. `group` is the side that did better; `prompt` is
    a's prompt (b's when it differs lies in `prompt_b`); texts are None where a run's files predate them."""

    group: Group
    doc_hash: str
    doc_id: int
    prompt: str | None
    gold: str | None
    answer_a: str | None
    answer_b: str | None
    value_a: float
    value_b: float
    prompt_b: str | None = None

    @property
    def difference(self) -> float:
        return self.value_a - self.value_b


@dataclass
class Flips:
    """The flipped documents of one task between two sides, with the counts and the paired test of all documents.

    counts: binary metrics `a_only`, `b_only`, `both`, `neither`; continuous `a_higher`, `b_higher`, `equal`.
    `flips` lists group a then group b (each cut to `limit` when one was given; the counts never are)."""

    task: str
    metric: str
    binary: bool
    a: Side
    b: Side
    n: int
    counts: dict[str, int]
    delta: float
    p_value: float
    p_adjusted: float
    n_tasks: int
    test: str
    flips: list[Flip] = field(default_factory=list)
    unpaired: int = 0  # documents only one side evaluated (left out of the pairing)

    def group(self, which: Group) -> list[Flip]:
        return [f for f in self.flips if f.group == which]

    def group_title(self, which: Group) -> str:
        first, second = (self.a.name, self.b.name) if which == "a" else (self.b.name, self.a.name)
        return f"{first} right, {second} wrong" if self.binary else f"{first} higher"

    def summary_line(self) -> str:
        """Counts per group and the test: the line `harness flips` prints first."""
        c = self.counts
        if self.binary:
            counts = (f"{self.a.name} right, {self.b.name} wrong: {c['a_only']} · {self.b.name} right, {self.a.name} "
                      f"wrong: {c['b_only']} · both right: {c['both']} · both wrong: {c['neither']}")  # fmt: skip
        else:
            counts = (f"{self.a.name} higher: {c['a_higher']} · {self.b.name} higher: {c['b_higher']} · "
                      f"equal: {c['equal']}")  # fmt: skip
        test = "exact McNemar" if self.test == "mcnemar-exact" else f"{self.test} test"
        holm = (f"p_adj {self.p_adjusted:.2g} (Holm across the {self.n_tasks} tasks both evaluated, as "
                "`harness report --versus` prints it)" if self.n_tasks > 1 else f"p_adj {self.p_adjusted:.2g}")  # fmt: skip
        unpaired = f" · evaluated by one side only, left out: {self.unpaired}" if self.unpaired else ""
        return (f"{self.task} ({self.metric}, {self.n} documents): {counts} · Δ {100 * self.delta:+.1f} points · "
                f"{test} p {self.p_value:.4g} · {holm}{unpaired}")  # fmt: skip

    def render(self, full: bool = False) -> str:
        """Plain text: the summary line, then each group's documents (prompts shortened unless `full`)."""
        lines = [f"{self.a.name} = {self.a.run}:{self.a.label}", f"{self.b.name} = {self.b.run}:{self.b.label}",
                 self.summary_line()]  # fmt: skip
        for which in ("a", "b"):
            shown = self.group(which)  # type: ignore[arg-type]
            total = self.counts["a_only" if which == "a" else "b_only"] if self.binary else \
                self.counts["a_higher" if which == "a" else "b_higher"]  # fmt: skip
            more = f", the {len(shown)} largest differences" if not self.binary and len(shown) < total else \
                (f", the first {len(shown)}" if len(shown) < total else "")  # fmt: skip
            lines += ["", f"## {self.group_title(which)} ({total} documents{more})"]  # type: ignore[arg-type]
            for f in shown:
                ident = f"doc {f.doc_id}" + (f" ({f.doc_hash[:12]})" if f.doc_hash != str(f.doc_id) else "")
                lines += ["", f"{ident}  {self.metric}: {self.a.name} {f.value_a:.4g} · {self.b.name} {f.value_b:.4g}"]
                lines += _indent("prompt", _text(None if f.prompt is None else shorten(f.prompt, full)))
                if f.prompt_b is not None:
                    lines += _indent(f"prompt ({self.b.name})", shorten(f.prompt_b, full))
                lines += _indent("gold", _text(f.gold))
                lines += _indent(self.a.name, _text(f.answer_a))
                lines += _indent(self.b.name, _text(f.answer_b))
        return "\n".join(lines) + "\n"

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """The JSON of `harness flips --json` (prompts shortened unless `full`)."""
        out = asdict(self)
        out["a"] = {"run": str(self.a.run), "label": self.a.label, "name": self.a.name}
        out["b"] = {"run": str(self.b.run), "label": self.b.label, "name": self.b.name}
        for f in out["flips"]:
            f["prompt"] = None if f["prompt"] is None else shorten(f["prompt"], full)
            if f["prompt_b"] is not None:
                f["prompt_b"] = shorten(f["prompt_b"], full)
        return out


def shorten(prompt: str, full: bool = False, chars: int = PROMPT_CHARS) -> str:
    """The prompt's last `chars` characters after an ellipsis (its question, not its shots), or all of it."""
    return prompt if full or len(prompt) <= chars else "…" + prompt[-chars:].lstrip()


def _text(value: str | None) -> str:
    if value is None:
        return "(not recorded: evaluated before prompts and answers were kept)"
    return value or "(empty)"


def _indent(name: str, text: str) -> list[str]:
    first, *rest = text.splitlines() or [""]
    return [f"  {name}: {first}", *(f"    {line}" for line in rest)]


# ---------------------------------------------------------------- resolving a side


def resolve_side(spec: str) -> Side:
    """`RUN[:LABEL]` or `SWEEP:POINT[@SEED]` as the run directory and eval/ label that hold its results."""
    path, label = Path(spec), None
    if not path.is_dir() and ":" in spec:
        head, _, label = spec.rpartition(":")
        path = Path(head)
    if not path.is_dir():
        raise HarnessError(f"'{path}' is not a run or sweep folder (write RUN[:LABEL] or SWEEP:POINT@SEED)", "flips")
    if (path / "sweep.json").is_file():
        return _sweep_side(path, label)
    summary = load_summary(path)
    own = summary.get("method") or summary.get("label")
    label = label or own
    if not label:
        raise HarnessError(f"'{path}' names no model of its own; give a label, e.g. '{path}:{BASELINE_LABEL}'", "flips")
    have = sorted(p.name for p in (path / "eval").iterdir() if p.is_dir()) if (path / "eval").is_dir() else []
    if label not in have:
        raise HarnessError(f"run '{path.name}' has no results of '{label}' (have: {', '.join(have) or 'none'})", "flips")
    return Side(path, label, label)


def _sweep_side(folder: Path, wanted: str | None) -> Side:
    """A grid point's fused model at one seed of a sweep folder (its summary.json lists points and their runs)."""
    points = sweep_points(folder, "flips")
    labels = [str(p.get("label")) for p in points]
    point_label, _, seed_text = (wanted or "").rpartition("@") if "@" in (wanted or "") else (wanted, "", "")
    if not point_label:
        if len(points) != 1:
            raise HarnessError(f"sweep '{folder.name}' has {len(points)} grid points; name one: "
                               + ", ".join(f"'{folder}:{lab}@SEED'" for lab in labels), "flips")  # fmt: skip
        point_label = labels[0]
    runs = sweep_point_runs(folder, point_label, "flips")
    if not seed_text:
        if len(runs) != 1:
            raise HarnessError(f"grid point '{point_label}' has seeds {', '.join(runs)}; choose one: "
                               f"'{folder}:{point_label}@{next(iter(runs), 0)}'", "flips")  # fmt: skip
        seed_text = next(iter(runs))
    if seed_text not in runs:
        raise HarnessError(f"grid point '{point_label}' has no seed {seed_text} (have: {', '.join(runs)})", "flips")
    run = runs[seed_text]
    method = load_summary(run).get("method")
    if not method:
        raise HarnessError(f"'{run}' is no fusion run", "flips")
    return Side(run, str(method), f"{point_label}@{seed_text}")


# ---------------------------------------------------------------- reading and pairing


def _task_info(side: Side, task: str) -> dict[str, Any]:
    """The summary entry of `task` for the side's row (its metric, filter and binary flag)."""
    summary = load_summary(side.run)
    for block in (summary["tasks"], summary.get("baseline") or {}, *(summary.get("sources") or {}).values()):
        if task in block:
            return dict(block[task])
    raise HarnessError(f"run '{side.run.name}' did not evaluate task '{task}' (have: {', '.join(summary['tasks'])})",
                       "flips")  # fmt: skip


def _shared_tasks(a: Side, b: Side) -> dict[str, dict[str, Any]]:
    """Tasks both sides have per-sample files of, with a's settings: the family `report --versus` adjusts over."""
    sa, sb = load_summary(a.run), load_summary(b.run)
    out = {}
    for task, info in sa["tasks"].items():
        if task in sb["tasks"] and (a.run / "eval" / a.label / f"{task}.jsonl").is_file() and \
                (b.run / "eval" / b.label / f"{task}.jsonl").is_file():  # fmt: skip
            out[task] = info
    return out


def _rows(side: Side, task: str) -> list[dict[str, Any]]:
    """The per-sample rows of one task, each with its prompt, gold and answer joined in (doc_id order)."""
    path = side.run / "eval" / side.label / f"{task}.jsonl"
    if not path.is_file():
        raise HarnessError(f"no per-sample results at '{path}'; was '{side.label}' evaluated on '{task}'?", "flips")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts: dict[int, dict[str, Any]] = {}
    prompts = path.with_name(f"{task}.prompts.jsonl.gz")
    if prompts.is_file():
        with gzip.open(prompts, "rt", encoding="utf-8") as fh:
            texts = {int(p["doc_id"]): p for p in map(json.loads, fh) if p}
    seen: dict[str, int] = {}
    for row in rows:  # the same keys as stats.load_samples: a repeated document gets hash#2, hash#3, ...
        base = str(row.get("doc_hash", row["doc_id"]))
        seen[base] = seen.get(base, 0) + 1
        row["_key"] = base if seen[base] == 1 else f"{base}#{seen[base]}"
        row["_text"] = texts.get(int(row["doc_id"]), {})
    return rows


def find_flips(a: Side, b: Side, task: str, *, limit: int | None = None) -> Flips:
    """The documents of `task` where `a` and `b` differ, in two groups, with counts and the paired test.

    Binary metrics list the documents in document order; continuous ones the largest differences first. `limit`
    caps each group's list (the counts and the test always cover every paired document)."""
    if limit is not None and limit < 0:
        raise HarnessError(f"limit must be 0 or more, got {limit}", "flips")
    info = _task_info(a, task)
    _task_info(b, task)
    metric = str(info["metric"])
    rows_a, rows_b = {r["_key"]: r for r in _rows(a, task)}, {r["_key"]: r for r in _rows(b, task)}
    shared = [k for k in rows_a if k in rows_b]
    if not shared:
        raise HarnessError(f"{task}: '{a.name}' and '{b.name}' share no document (different data?)", "flips")
    tasks = _shared_tasks(a, b)
    tasks.setdefault(task, info)
    tests = {r["task"]: r for r in compare_across_runs((a.run, a.label), (b.run, b.label), tasks, common_only=True)}
    test = tests[task]
    binary = test["test"] == "mcnemar-exact"
    flips: list[Flip] = []
    for key in shared:
        ra, rb = rows_a[key], rows_b[key]
        va, vb = float(ra[metric]), float(rb[metric])
        if va == vb:
            continue
        ta, tb = ra["_text"], rb["_text"]
        prompt_a, prompt_b = ta.get("prompt"), tb.get("prompt")
        flips.append(Flip(
            group="a" if va > vb else "b", doc_hash=str(ra.get("doc_hash", key)), doc_id=int(ra["doc_id"]),
            prompt=prompt_a, gold=ta.get("gold", tb.get("gold")), answer_a=ta.get("answer"), answer_b=tb.get("answer"),
            value_a=va, value_b=vb, prompt_b=prompt_b if prompt_b is not None and prompt_b != prompt_a else None,
        ))  # fmt: skip
    flips.sort(key=lambda f: f.doc_id)
    values = [(float(rows_a[k][metric]), float(rows_b[k][metric])) for k in shared]
    if binary:
        counts = {"a_only": sum(va > vb for va, vb in values), "b_only": sum(va < vb for va, vb in values),
                  "both": sum(va == vb == 1 for va, vb in values), "neither": sum(va == vb == 0 for va, vb in values)}  # fmt: skip
    else:
        flips.sort(key=lambda f: -abs(f.difference))
        counts = {"a_higher": sum(va > vb for va, vb in values), "b_higher": sum(va < vb for va, vb in values),
                  "equal": sum(va == vb for va, vb in values)}  # fmt: skip
    groups = [[f for f in flips if f.group == g][:limit] for g in ("a", "b")]
    return Flips(
        task=task, metric=metric, binary=binary, a=a, b=b, n=len(shared), counts=counts, delta=float(test["delta"]),
        p_value=float(test["p_value"]), p_adjusted=float(test["p_adjusted"]), n_tasks=len(tests), test=str(test["test"]),
        flips=groups[0] + groups[1], unpaired=len(rows_a) + len(rows_b) - 2 * len(shared),
    )  # fmt: skip
