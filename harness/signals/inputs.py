"""The shared inputs of signal extraction: the fusion corpus, the models, and what identifies each of them.

A corpus row is a prompt and its reference answer; a model handle names a model to load when its turn comes.
Their fingerprints (corpus hash, model file hashes, tokenizer identity) are part of every signal cache key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.config import ModelSpec
from harness.errors import HarnessError
from harness.models import ResolvedModel, conversion_tag, hub_commit, identity_files
from harness.signals.align import vocab_fingerprint
from harness.store import file_digests, stable_hash


@dataclass(frozen=True)
class ModelHandle:
    """A model to load when its turn comes: its label, where it is, and how it renders chats."""

    name: str
    model: ResolvedModel
    chat_template: str | None = None
    trust_remote_code: bool = False

    @classmethod
    def from_spec(cls, spec: ModelSpec, resolved: ResolvedModel) -> ModelHandle:
        return cls(spec.name, resolved, spec.chat_template, spec.trust_remote_code)


@dataclass(frozen=True)
class CorpusRow:
    """One fusion example: a prompt and its reference answer (`skill`, if known, feeds the selection
    analysis)."""

    id: str
    prompt: str
    reference: str
    skill: str | None = None


def _text(value: Any, n: int, name: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise HarnessError(f"corpus row {n}: '{name}' is not UTF-8 text", "corpus") from None
    if not isinstance(value, str):
        raise HarnessError(f"corpus row {n}: '{name}' must be text, got {type(value).__name__}", "corpus")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise HarnessError(f"corpus row {n}: '{name}' is not UTF-8 text", "corpus") from None
    return value


def validate_corpus(rows: Sequence[CorpusRow | Mapping[str, Any]]) -> list[CorpusRow]:
    """Rows (CorpusRow or JSONL dicts) -> checked CorpusRows, or a one-line HarnessError (first problem)."""
    if not rows:
        raise HarnessError("the fusion corpus is empty", "corpus")
    out: list[CorpusRow] = []
    seen: set[str] = set()
    for n, row in enumerate(rows):
        data = asdict(row) if isinstance(row, CorpusRow) else row
        if not isinstance(data, Mapping):
            raise HarnessError(f"corpus row {n} is not a record with 'prompt' and 'reference'", "corpus")
        for name in ("prompt", "reference"):
            if data.get(name) is None:
                raise HarnessError(f"corpus row {n} has no '{name}'", "corpus")
        prompt = _text(data["prompt"], n, "prompt")
        if not prompt.strip():
            raise HarnessError(f"corpus row {n}: 'prompt' is empty", "corpus")
        ex_id = _text(data["id"], n, "id") if data.get("id") is not None else str(n)
        if ex_id in seen:
            raise HarnessError(f"corpus row {n}: id '{ex_id}' appears twice", "corpus")
        seen.add(ex_id)
        skill = _text(data["skill"], n, "skill") if data.get("skill") is not None else None
        out.append(CorpusRow(ex_id, prompt, _text(data["reference"], n, "reference"), skill))
    return out


def _normalise_record(record: Any) -> Any:
    """Instruction-style rows (Alpaca `instruction`/`input`/`output`, GPTeacher `response`) -> prompt/reference."""
    if not isinstance(record, Mapping) or "prompt" in record or "instruction" not in record:
        return record
    extra = record.get("input") or ""
    prompt = f"{record['instruction']}\n\n{extra}" if extra else record["instruction"]
    reference = record.get("output", record.get("response"))
    return {**{k: v for k, v in record.items() if k in ("id", "skill")}, "prompt": prompt, "reference": reference}


def load_corpus(path: Path, limit: int | None = None) -> list[CorpusRow]:
    """The fusion corpus: JSONL or a JSON array of rows with `prompt` and `reference` (optional `id`, `skill`),
    or instruction-style rows (`instruction`, `input`, `output`/`response`); the first `limit` rows."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"corpus file '{path}' does not exist", "corpus")
    records: list[Any] = []
    if path.suffix == ".json":
        try:
            loaded = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise HarnessError(f"corpus file '{path}' is not UTF-8 text", "corpus") from None
        except json.JSONDecodeError as exc:
            raise HarnessError(f"corpus file '{path}' is not valid JSON (line {exc.lineno})", "corpus") from None
        if not isinstance(loaded, list):
            raise HarnessError(f"corpus file '{path}' must hold a JSON array of rows", "corpus")
        records = loaded[:limit] if limit is not None else loaded
        return validate_corpus([_normalise_record(r) for r in records])
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if limit is not None and len(records) >= limit:
                break
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise HarnessError(f"corpus file '{path}' line {n} is not UTF-8 text", "corpus") from None
            if not line.strip():
                continue
            try:
                records.append(_normalise_record(json.loads(line)))
            except json.JSONDecodeError:
                raise HarnessError(f"corpus file '{path}' line {n} is not valid JSON", "corpus") from None
    return validate_corpus(records)


def corpus_hash(rows: Sequence[CorpusRow]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.id, r.prompt, r.reference, r.skill]).encode() + b"\n")
    return h.hexdigest()[:16]


def model_fingerprint(handle: ModelHandle, cache_dir: Path) -> dict[str, Any]:
    """What identifies a model's outputs: hashes of its local files (memoised by size, mtime), else its id."""
    found: dict[str, Any] = {
        "pretrained": handle.model.pretrained,
        "gguf": handle.model.gguf_file,
        "chat_template": handle.chat_template,
    }
    files = identity_files(handle.model, "signals")
    if files is None:
        found["commit"] = hub_commit(handle.model.pretrained)  # a hub id: the commit it resolves to
        return found
    if handle.model.gguf_file:
        found["conversion"] = conversion_tag()  # the GGUF is dequantised by transformers at every load
    folder = Path(handle.model.pretrained)
    digests = file_digests(files, Path(cache_dir))
    hashes = {str(p.relative_to(folder)): d for p, d in zip(files, digests, strict=True)}
    found["pretrained"] = None  # the content, not where it lies, decides the signals
    found["files"] = hashes
    return found


def tokenizer_fingerprint(tokenizer: Any, template: str | None) -> str:
    """What decides how a model tokenizes a rendered example: tokenizer, chat template, end-of-turn token."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else vocab_fingerprint(tokenizer)
    return stable_hash([body, template or getattr(tokenizer, "chat_template", None), tokenizer.eos_token])

