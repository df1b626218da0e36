"""Local benchmark files (laid out as shared/data, see its MANIFEST.md) -> the hub datasets' schemas.

The task YAMLs `include:` lm-eval's own task definitions, so each converter writes the fields those definitions read
(the hub dataset's schema) and lm-eval's `process_docs`, prompts and metrics apply unchanged.

Each task's sources are checked, hashed by content and converted once into
`<cache>/offline-data/<task>-<hash>/<task folder>/<split>.jsonl`, written to a temporary folder and renamed,
so a reader never sees a half-converted task and a changed source file gets a fresh folder. The folder is
sealed (harness/store.py) and verified when reused. The hash is also the data part of the evaluation cache key.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.store import seal, temp_dir, verified

CONVERTER_VERSION = 3  # 2: the hub's schemas for lm-eval's own task definitions; 3: converted folders are sealed
Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Source:
    """A file (or a folder of files matching `pattern`) a task needs, and what it must contain."""

    path: str
    what: str
    pattern: str | None = None


SOURCES: dict[str, tuple[Source, ...]] = {
    "mmlu": (
        Source("mmlu/hendrycks_format/test", "headerless MMLU CSVs <subject>_test.csv (question,A,B,C,D,answer letter)",
               "*_test.csv"),
        Source("mmlu/hendrycks_format/dev", "headerless MMLU CSVs <subject>_dev.csv, 5 few-shot rows per subject",
               "*_dev.csv"),
    ),
    "gsm8k": (
        Source("gsm8k/test.jsonl", "GSM8K test, JSON lines {question, answer ending '#### N'}"),
        Source("gsm8k/train.jsonl", "GSM8K train, JSON lines {question, answer} (few-shot examples)"),
    ),
    "truthfulqa": (Source("truthfulqa/v0/mc_task.json", "TruthfulQA v0 (817 questions): [{question, mc1_targets, mc2_targets}]"),),
    "arc_challenge": (Source("arc/arc_challenge_test.llmfoundry.jsonl", "llm-foundry ARC-Challenge, JSON lines {query, choices, gold}"),),
    "hellaswag": (Source("hellaswag/hellaswag_val.derived.jsonl", "HellaSwag validation, JSON lines {idx, ctx, label, endings}"),),
    "winogrande": (Source("winogrande/winogrande_dev.llmfoundry.jsonl",
                          "llm-foundry WinoGrande dev, JSON lines {context_options, continuation, gold}"),),
    "advbench": (Source("advbench/harmful_behaviors.csv", "AdvBench CSV with columns goal,target"),),
    "xstest": (Source("xstest/xstest_prompts.csv", "XSTest v2 CSV with columns id,prompt,type,label,focus,note"),),
}  # fmt: skip


@dataclass(frozen=True)
class PreparedData:
    """Converted files of one task: `root` is the data root the YAML's relative `data_files` resolve against."""

    task: str
    root: Path
    key: str


def _files(data_dir: Path, src: Source) -> list[Path]:
    path = data_dir / src.path
    if src.pattern is None:
        return [path] if path.is_file() else []
    return sorted(path.glob(src.pattern)) if path.is_dir() else []


def missing_sources(task: str, data_dir: Path) -> list[Source]:
    return [src for src in SOURCES[task] if not _files(data_dir, src)]


def check_layout(tasks: list[str], data_dir: Path) -> None:
    """A one-line HarnessError naming the first missing file a requested task needs, and what it should hold."""
    if not data_dir.is_dir():
        raise HarnessError(f"data dir '{data_dir}' does not exist (set HARNESS_DATA_DIR / --data-dir to a folder laid "
                           "out as shared/data, see docs/evaluation.md)", "data")  # fmt: skip
    for task in tasks:
        for src in missing_sources(task, data_dir):
            kind = f"folder with {src.pattern} files" if src.pattern else "file"
            raise HarnessError(f"{task} needs {data_dir / src.path} ({kind}: {src.what}); lay the data dir out as "
                               "shared/data (see docs/evaluation.md)", "data")  # fmt: skip


def source_hash(task: str, data_dir: Path) -> str:
    """Content hash of a task's source files (relative names and bytes) and of the converter version."""
    h = hashlib.sha256(f"{task}:{CONVERTER_VERSION}".encode())
    for src in SOURCES[task]:
        for path in _files(data_dir, src):
            h.update(str(path.relative_to(data_dir)).encode() + b"\0")
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _bad(path: Path, where: str, why: str) -> HarnessError:
    return HarnessError(f"{path} {where}: {why}", "data")


def _read_jsonl(path: Path) -> Rows:
    rows = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad(path, f"line {n}", "not UTF-8 text") from None
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise _bad(path, f"line {n}", f"not JSON ({exc.msg})") from None
                if not isinstance(rows[-1], dict):
                    raise _bad(path, f"line {n}", f"a JSON {type(rows[-1]).__name__}, not an object") from None
    return rows


def _need(path: Path, n: int, row: dict[str, Any], keys: tuple[str, ...]) -> None:
    if not isinstance(row, dict):
        raise _bad(path, f"row {n}", f"a JSON {type(row).__name__}, not an object")
    lost = [k for k in keys if k not in row]
    if lost:
        raise _bad(path, f"row {n}", f"missing field(s) {', '.join(lost)}")


def _mmlu_split(folder: Path, suffix: str) -> dict[str, Rows]:
    by_subject: dict[str, Rows] = {}
    for path in sorted(folder.glob(f"*{suffix}.csv")):
        subject = path.name[: -len(f"{suffix}.csv")]
        rows = []
        with open(path, encoding="utf-8", newline="") as fh:
            for n, rec in enumerate(csv.reader(fh), 1):
                if len(rec) != 6 or rec[5].strip() not in ("A", "B", "C", "D"):
                    raise _bad(path, f"row {n}", "expected 6 columns question,A,B,C,D,answer letter")
                rows.append(
                    {
                        "question": rec[0],
                        "subject": subject,
                        "choices": rec[1:5],
                        "answer": "ABCD".index(rec[5].strip()),
                    }
                )
        by_subject[subject] = rows
    return by_subject


def round_robin(by_subject: dict[str, Rows]) -> Rows:
    """Interleave subjects (sorted by name): the first k*57 documents hold k per subject while they last."""
    groups = [by_subject[s] for s in sorted(by_subject)]
    longest = max((len(g) for g in groups), default=0)
    return [g[i] for i in range(longest) for g in groups if i < len(g)]


def _mmlu(data_dir: Path) -> dict[str, Rows]:
    test = _mmlu_split(data_dir / "mmlu/hendrycks_format/test", "_test")
    dev = _mmlu_split(data_dir / "mmlu/hendrycks_format/dev", "_dev")
    lacking = sorted(set(test) - set(dev))
    if lacking:
        raise HarnessError(f"mmlu dev has no few-shot file for subject(s) {', '.join(lacking)}", "data")
    return {"mmlu/test.jsonl": round_robin(test), "mmlu/dev.jsonl": [r for s in sorted(dev) for r in dev[s]]}


def _gsm8k(data_dir: Path) -> dict[str, Rows]:
    out = {}
    for split in ("test", "train"):
        path = data_dir / f"gsm8k/{split}.jsonl"
        rows = _read_jsonl(path)
        for n, row in enumerate(rows, 1):
            _need(path, n, row, ("question", "answer"))
        out[f"gsm8k/{split}.jsonl"] = [{"question": r["question"], "answer": r["answer"]} for r in rows]
    return out


def _targets(path: Path, n: int, targets: Any) -> dict[str, list[Any]]:
    if not isinstance(targets, dict) or not targets:
        raise _bad(path, f"item {n}", "targets must be a non-empty {answer: 0/1} mapping")
    return {"choices": list(targets), "labels": [int(v) for v in targets.values()]}


def _truthfulqa(data_dir: Path) -> dict[str, Rows]:
    path = data_dir / "truthfulqa/v0/mc_task.json"
    try:
        items = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise _bad(path, f"line {exc.lineno}", "not JSON") from None
    rows = []
    for n, item in enumerate(items, 1):
        _need(path, n, item, ("question", "mc1_targets", "mc2_targets"))
        rows.append({"question": item["question"], "mc1_targets": _targets(path, n, item["mc1_targets"]),
                     "mc2_targets": _targets(path, n, item["mc2_targets"])})  # fmt: skip
    return {"truthfulqa/validation.jsonl": rows}


def _arc(data_dir: Path) -> dict[str, Rows]:
    """llm-foundry's {query, choices, gold} -> the hub's ARC schema {id, question, choices: {text, label}, answerKey}."""
    path = data_dir / "arc/arc_challenge_test.llmfoundry.jsonl"
    rows = []
    for n, row in enumerate(_read_jsonl(path), 1):
        _need(path, n, row, ("query", "choices", "gold"))
        question = re.sub(r"\nAnswer:\s*$", "", row["query"].removeprefix("Question: "))
        labels = [chr(ord("A") + i) for i in range(len(row["choices"]))]
        rows.append({"id": f"arc_challenge/{n - 1}", "question": question,
                     "choices": {"text": list(row["choices"]), "label": labels}, "answerKey": labels[int(row["gold"])]})  # fmt: skip
    return {"arc_challenge/test.jsonl": rows}


# The activity labels of HellaSwag's WikiHow items (wikiHow's categories). Every other label is an ActivityNet
# caption class, whose context ends in the incomplete noun phrase the hub keeps apart as `ctx_b`.
WIKIHOW_CATEGORIES = frozenset({
    "Arts and Entertainment", "Cars & Other Vehicles", "Computers and Electronics", "Education and Communications",
    "Family Life", "Finance and Business", "Food and Entertaining", "Health", "Hobbies and Crafts",
    "Holidays and Traditions", "Home and Garden", "Home,Categories", "Personal Care and Style", "Pets and Animals",
    "Philosophy and Religion", "Relationships", "Sports and Fitness", "Travel", "Uncategorized", "Work World",
    "Youth",
})  # fmt: skip
_LAST_SENTENCE_END = re.compile(r"[.!?][\"')]*\s+(?=[^.!?]*$)")


def hellaswag_split_context(text: str) -> dict[str, str]:
    """`activity_label: ctx` (the extraction's one line) -> the hub's activity_label, ctx_a and ctx_b.

    The hub stores an ActivityNet context as the complete sentences (`ctx_a`) and the incomplete noun phrase that
    the endings continue (`ctx_b`, "the lady"); lm-eval capitalises `ctx_b`. The extraction joined them, so
    `ctx_b` is recovered as the text after the last sentence end. WikiHow contexts have an empty `ctx_b`.
    """
    label, sep, body = text.partition(": ")
    if not sep:
        return {"activity_label": "", "ctx_a": text, "ctx_b": ""}
    if label in WIKIHOW_CATEGORIES:
        return {"activity_label": label, "ctx_a": body, "ctx_b": ""}
    end = _LAST_SENTENCE_END.search(body)
    cut = end.end() if end else 0
    return {"activity_label": label, "ctx_a": body[:cut].rstrip(), "ctx_b": body[cut:]}


def _hellaswag(data_dir: Path) -> dict[str, Rows]:
    """The extraction's {idx, ctx, label, endings} -> the hub's schema, so that lm-eval's `process_docs` applies."""
    path = data_dir / "hellaswag/hellaswag_val.derived.jsonl"
    rows = []
    for n, row in enumerate(_read_jsonl(path), 1):
        _need(path, n, row, ("ctx", "label", "endings"))
        parts = hellaswag_split_context(row["ctx"])
        rows.append({"ind": row.get("idx", n - 1), **parts, "ctx": f"{parts['ctx_a']} {parts['ctx_b']}".strip(),
                     "split": "val", "endings": list(row["endings"]), "label": str(row["label"])})  # fmt: skip
    return {"hellaswag/validation.jsonl": rows}


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _winogrande(data_dir: Path) -> dict[str, Rows]:
    """llm-foundry's partial-scoring rows {context_options, continuation, gold} -> the hub's {sentence, option1,
    option2, answer}: the sentence is the options' common prefix, a blank and the continuation, so lm-eval's
    functions rebuild exactly the same two contexts and target."""
    path = data_dir / "winogrande/winogrande_dev.llmfoundry.jsonl"
    rows = []
    for n, row in enumerate(_read_jsonl(path), 1):
        _need(path, n, row, ("context_options", "continuation", "gold"))
        options = list(row["context_options"])
        if len(options) != 2 or "_" in options[0] + options[1]:
            raise _bad(path, f"row {n}", "expected two context options without '_'")
        head = _common_prefix(*options)
        rows.append({"sentence": f"{head}_ {row['continuation'].strip()}", "option1": options[0][len(head):],
                     "option2": options[1][len(head):], "answer": str(int(row["gold"]) + 1)})  # fmt: skip
    return {"winogrande/validation.jsonl": rows}


def _read_csv(path: Path, columns: tuple[str, ...]) -> Rows:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        lost = [c for c in columns if c not in (reader.fieldnames or [])]
        if lost:
            raise _bad(path, "header", f"missing column(s) {', '.join(lost)}")
        return list(reader)


def _advbench(data_dir: Path) -> dict[str, Rows]:
    rows = _read_csv(data_dir / "advbench/harmful_behaviors.csv", ("goal", "target"))
    return {"advbench/test.jsonl": [{"prompt": r["goal"], "target": r["target"]} for r in rows]}


def _xstest(data_dir: Path) -> dict[str, Rows]:
    rows = _read_csv(data_dir / "xstest/xstest_prompts.csv", ("id", "prompt", "type", "label"))
    safe = [
        {"id": r["id"], "prompt": r["prompt"], "type": r["type"]}
        for r in rows
        if r["label"].strip() == "safe"
    ]
    return {"xstest/test.jsonl": safe}


CONVERTERS: dict[str, Callable[[Path], dict[str, Rows]]] = {
    "mmlu": _mmlu, "gsm8k": _gsm8k, "truthfulqa": _truthfulqa, "arc_challenge": _arc, "hellaswag": _hellaswag,
    "winogrande": _winogrande, "advbench": _advbench, "xstest": _xstest,
}  # fmt: skip


def _convert(task: str, data_dir: Path) -> dict[str, Rows]:
    """A task's converted rows, or a one-line error for source files that are not what SOURCES describes."""
    try:
        return CONVERTERS[task](data_dir)
    except HarnessError:
        raise
    except UnicodeDecodeError:
        raise HarnessError(f"{task}: a source file under '{data_dir}' is not UTF-8 text", "data") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, csv.Error) as exc:
        raise HarnessError(f"{task}: the source files under '{data_dir}' are malformed ({type(exc).__name__}: "
                           f"{exc}); see docs/evaluation.md for the layout", "data") from None  # fmt: skip


def check_data(tasks: list[str], data_dir: Path, cache_dir: Path) -> None:
    """At plan time: every task's files are there and convert (in memory; a verified converted copy in the
    cache counts), so a malformed row fails before any signal is computed, not at evaluation."""
    check_layout(tasks, data_dir)
    for task in dict.fromkeys(tasks):
        if task in CONVERTERS and not (cache_dir / "offline-data" / f"{task}-{source_hash(task, data_dir)}").is_dir():
            _convert(task, data_dir)


def prepare(task: str, data_dir: Path, cache_dir: Path) -> PreparedData:
    """Check, hash and (once) convert one task's local files; returns the converted data root."""
    check_layout([task], data_dir)
    key = source_hash(task, data_dir)
    final = cache_dir / "offline-data" / f"{task}-{key}"
    if verified(final, "converted benchmark data"):
        return PreparedData(task, final, key)
    tmp = temp_dir(final.parent, f".{task}-")
    try:
        for rel, rows in _convert(task, data_dir).items():
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
        seal(tmp)
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():  # not a concurrent writer of the same content: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PreparedData(task, final, key)
