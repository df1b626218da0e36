"""Signal extraction: the per-example teachers a fusion method learns from, sharded and cached.

Training mode: every candidate is teacher-forced on (prompt, reference) rendered with its own chat template;
per example we keep its length-normalised CE on the response (in its own tokens) and its top-k next-token
distributions, aligned to the target's tokenization of the same example (target's template) and vocabulary.

Inference mode: every candidate generates a response and is teacher-forced on (prompt, its own response),
aligned the same way (one cached store per candidate, reusable across judges); the judge then picks a winner
per example and the selection store keeps the winner's name, every candidate's score, the response and the
winner's teacher.

Aligned teacher of target response token i (predicted from target position i-1): the source's distribution
predicting the source token with the identical character span (logits at that token's previous position, the
last prompt position for the first response token), mapped to target ids with duplicates merged; otherwise a
one-hot on token i itself. Models are loaded one at a time; each store resumes at its first missing shard; a
process of `accelerate launch` extracts the shards with index % world_size == rank.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from harness.align import Tokenization, align, tile_offsets, vocab_fingerprint, vocab_map
from harness.chat import render_example
from harness.config import JudgeSpec, ModelSpec, SignalSpec
from harness.errors import HarnessError
from harness.models import ResolvedModel, load_model, load_tokenizer
from harness.signal_store import ExampleSignal, SignalSet, SignalStore, StoreMeta, example_from_table
from harness.store import file_digests, stable_hash
from methods.base import Signal

log = logging.getLogger(__name__)

SIGNALS_VERSION = 1  # bump when what a store holds for the same inputs changes
EOS_SENTINEL = "\x00"  # the end-of-turn token of every tokenizer stands on this one character

GenerateFn = Callable[..., list[str]]
ShardCallback = Callable[[str, int], None]


class _JudgeLike(Protocol):
    def pick(
        self, prompt: str, reference: str | None, candidates: dict[str, str], meta: dict[str, Any]
    ) -> Any: ...


# ---------------------------------------------------------------------------------------------------- inputs


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
    folder = Path(handle.model.pretrained)
    if not folder.is_dir():
        return found
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.parts[len(folder.parts) :])
    )
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


# ------------------------------------------------------------------------------------------------- tokenizing


@dataclass(frozen=True)
class Encoded:
    """One example in one model's tokenization, cut to max_length.

    `ids[resp_start:]` are the response tokens; `response` holds their spans relative to the response text
    with the end-of-turn token standing on one sentinel character, so the tokenizations of two models compare.
    """

    ids: np.ndarray
    resp_start: int
    response: Tokenization

    @property
    def n_response(self) -> int:
        return len(self.ids) - self.resp_start


def _window(n_total: int, resp_start: int, max_length: int) -> tuple[int, int]:
    """[lo, hi) of at most max_length tokens: the whole response if it fits; the prompt keeps half or more."""
    if n_total <= max_length:
        return 0, n_total
    prompt_budget = max(max_length - (n_total - resp_start), max_length // 2)
    lo = max(0, resp_start - prompt_budget)
    return lo, min(n_total, lo + max_length)


def encode_example(
    tokenizer: Any, prompt: str, response: str, template: str | None, max_length: int, name: str
) -> Encoded:
    """Render (prompt, response) with the model's chat template, tokenize with offsets, cut to max_length."""
    text, start, end = render_example(tokenizer, prompt, response, template, name)
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = tile_offsets(np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2))
    in_response = np.flatnonzero(offsets[:, 1] > start)
    resp_start = int(in_response[0]) if len(in_response) else len(ids)
    lo, hi = _window(len(ids), resp_start, max_length)
    body_end = start + len(response)
    spans = offsets[resp_start:hi]
    rel = np.empty_like(spans)
    rel[:, 0] = np.where(
        spans[:, 0] < body_end, np.clip(spans[:, 0] - start, 0, len(response)), len(response)
    )
    rel[:, 1] = np.where(spans[:, 1] <= body_end, spans[:, 1] - start, len(response) + 1)
    if end == body_end:  # no end-of-turn text: nothing may stand on the sentinel
        rel = np.minimum(rel, len(response))
    return Encoded(ids[lo:hi], resp_start - lo, Tokenization(response + EOS_SENTINEL, rel))


# ---------------------------------------------------------------------------------------------- model passes


@dataclass
class TeacherPass:
    """One model's view of its own response tokens: CE and the top-k distribution predicting each of them."""

    ce: float
    top_ids: np.ndarray  # [n_response, k] the model's own vocabulary ids
    top_logp: np.ndarray  # [n_response, k]
    predicted: np.ndarray  # [n_response] bool: False where no position precedes the token


def teacher_forced(
    model: Any, examples: Sequence[Encoded], k: int, batch_size: int, pad_id: int = 0
) -> list[TeacherPass]:
    """Batched teacher-forced passes (right padding, sorted by length); log-softmax in float32."""
    import torch

    device = next(model.parameters()).device
    out: list[TeacherPass | None] = [None] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    with torch.inference_mode():
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            width = max(1, max(len(examples[i].ids) for i in idx))
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for b, i in enumerate(idx):
                n = len(examples[i].ids)
                ids[b, :n] = torch.from_numpy(examples[i].ids)
                mask[b, :n] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            for b, i in enumerate(idx):
                out[i] = _rows(logits[b], ids[b].to(device), examples[i], k)
    return [p for p in out if p is not None]


def _rows(logits: Any, ids: Any, ex: Encoded, k: int) -> TeacherPass:
    n, r = len(ex.ids), ex.resp_start
    first = max(r, 1)  # a token at position 0 has nothing before it to predict it
    logp = logits[first - 1 : n - 1].float().log_softmax(-1)
    kk = min(k, logp.shape[-1])
    vals, top = logp.topk(kk, dim=-1)
    own = logp.gather(-1, ids[first:n, None])[:, 0]
    n_resp, skipped = n - r, first - r
    top_ids = np.zeros((n_resp, k), dtype=np.int64)
    top_logp = np.full((n_resp, k), -np.inf, dtype=np.float32)
    top_ids[skipped:, :kk] = top.cpu().numpy()
    top_logp[skipped:, :kk] = vals.cpu().numpy()
    predicted = np.ones(n_resp, dtype=bool)
    predicted[:skipped] = False
    ce = float(-own.mean()) if len(own) else math.inf  # nothing predicted: never the MinCE choice
    return TeacherPass(ce, top_ids, top_logp, predicted)


def merge_topk(
    rows: np.ndarray, ids: np.ndarray, logp: np.ndarray, n_rows: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Entries (row, target id, logp) -> [n_rows, k] top-k per row, probabilities of repeated ids summed.

    Entries with id < 0 (no target token) or logp = -inf are dropped; rows are sorted by descending logp and
    padded with id 0, logp -inf."""
    keep = (ids >= 0) & np.isfinite(logp)
    rows, ids, logp = rows[keep], ids[keep], logp[keep].astype(np.float64)
    out_ids = np.zeros((n_rows, k), dtype=np.int64)
    out_logp = np.full((n_rows, k), -np.inf, dtype=np.float32)
    if len(ids) == 0:
        return out_ids, out_logp
    base = int(ids.max()) + 1
    keys, inverse = np.unique(rows.astype(np.int64) * base + ids, return_inverse=True)
    prob = np.bincount(inverse.reshape(-1), weights=np.exp(logp))
    urow, uid = keys // base, keys % base
    with np.errstate(divide="ignore"):
        ulogp = np.log(prob)
    order = np.lexsort((-ulogp, urow))
    urow, uid, ulogp = urow[order], uid[order], ulogp[order]
    rank = np.arange(len(urow)) - np.searchsorted(urow, urow, side="left")
    sel = rank < k
    out_ids[urow[sel], rank[sel]] = uid[sel]
    out_logp[urow[sel], rank[sel]] = ulogp[sel]
    return out_ids, out_logp


def aligned_teacher(
    target: Encoded, source: Encoded, teacher: TeacherPass, vmap: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """The source's teacher for each target response token: [n, k] ids, [n, k] logp, and the aligned count."""
    n = target.n_response
    if np.array_equal(target.ids, source.ids) and target.resp_start == source.resp_start:
        j = np.arange(n)  # the same tokenization (the target as its own candidate)
    else:
        j = align(target.response, source.response).same_span
    usable = j >= 0
    usable[usable] = teacher.predicted[j[usable]]
    rows = np.flatnonzero(usable)
    src = j[rows]
    ids, logp = merge_topk(
        np.repeat(rows, k), vmap[teacher.top_ids[src]].reshape(-1), teacher.top_logp[src].reshape(-1), n, k
    )
    fallback = ~np.isfinite(logp[:, 0])  # unaligned, or every entry mapped nowhere
    ids[fallback] = 0
    logp[fallback] = -np.inf
    ids[fallback, 0] = target.ids[target.resp_start :][fallback]  # one-hot on the NEXT token: token i itself
    logp[fallback, 0] = 0.0
    return ids, logp, int(np.count_nonzero(usable & ~fallback))


# ------------------------------------------------------------------------------------------------- extraction


@dataclass
class _Context:
    rows: list[CorpusRow]
    target: ModelHandle
    target_tok: Any
    spec: SignalSpec
    cache_dir: Path
    rank: int
    world_size: int
    progress: bool
    on_shard: ShardCallback | None
    device: str = "cpu"

    def shard_rows(self, meta: StoreMeta, index: int) -> list[CorpusRow]:
        return self.rows[index * meta.shard_size : index * meta.shard_size + meta.shard_rows(index)]


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int, Any]:
    if rank is not None or world_size is not None:
        world = world_size or 1
        if not 0 <= (rank or 0) < world:
            raise HarnessError(f"rank {rank} is outside world size {world}", "signals")
        return rank or 0, world, None
    try:
        from harness.distributed import state as process_state

        state = process_state()
        return state.process_index, state.num_processes, state
    except Exception:  # accelerate missing or not configurable here: one process
        return 0, 1, None


def _device(state: Any) -> str:
    if state is not None:
        return str(state.device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(device: str) -> str:
    return "bfloat16" if device.startswith("cuda") else "float32"


def _load(handle: ModelHandle, device: str) -> tuple[Any, Any]:
    tok = load_tokenizer(handle.model, handle.trust_remote_code)
    model = load_model(handle.model, _dtype(device), device, trust_remote_code=handle.trust_remote_code)
    return model, tok


def _free_memory() -> None:
    """After a model is dropped: the next one (one at a time) finds its memory free."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _progress(items: list[int], desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not enabled, unit="shard")


def _source_vocab(model: Any, tok: Any) -> int:
    emb = model.get_output_embeddings()
    return int(emb.weight.shape[0]) if emb is not None else len(tok)


def _signal_rows(
    ctx: _Context,
    rows: list[CorpusRow],
    responses: list[str],
    model: Any,
    tok: Any,
    cand: ModelHandle,
    vmap: np.ndarray,
) -> list[ExampleSignal]:
    """Teacher-force `cand` on (prompt, response) and align each example to the target's tokenization."""
    spec = ctx.spec
    src = [
        encode_example(tok, r.prompt, resp, cand.chat_template, spec.max_length, cand.name)
        for r, resp in zip(rows, responses, strict=True)
    ]
    tgt = [
        encode_example(
            ctx.target_tok, r.prompt, resp, ctx.target.chat_template, spec.max_length, ctx.target.name
        )
        for r, resp in zip(rows, responses, strict=True)
    ]
    passes = teacher_forced(model, src, spec.top_k, spec.batch_size, pad_id=tok.pad_token_id or 0)
    out = []
    for r, s, t, p in zip(rows, src, tgt, passes, strict=True):
        ids, logp, n_aligned = aligned_teacher(t, s, p, vmap, spec.top_k)
        out.append(ExampleSignal(r.id, r.skill, p.ce, t.ids, t.resp_start, ids, logp, n_aligned))
    return out


def _candidate_store(
    ctx: _Context, kind: str, cand: ModelHandle, inputs: dict[str, Any], responder: _Responder | None
) -> Path:
    """Fill this rank's missing shards of one candidate's store: teacher-forced on the reference (training),
    or on its own responses from `responder` (inference)."""
    meta = StoreMeta(
        stable_hash(inputs),
        kind,
        len(ctx.rows),
        ctx.spec.shard_size,
        ctx.spec.top_k,
        len(ctx.target_tok),
        inputs,
    )
    store = SignalStore.create(ctx.cache_dir / "signals", meta)
    missing = store.missing_shards(ctx.rank, ctx.world_size)
    log.info("signals: %s %s: %d of %d shards to extract", kind, cand.name, len(missing), meta.n_shards)
    if not missing:
        return store.path
    # vLLM loads the weights itself and starts an engine per call: all missing shards at once, before HF loads
    early = (
        responder.all_at_once(cand, [r for i in missing for r in ctx.shard_rows(meta, i)])
        if responder
        else None
    )
    model, tok = _load(cand, ctx.device)
    try:
        vmap = vocab_map(tok, ctx.target_tok, ctx.cache_dir, source_size=_source_vocab(model, tok))
        for index in _progress(missing, f"{kind} {cand.name}", ctx.progress):
            rows = ctx.shard_rows(meta, index)
            if responder is None:
                responses = [r.reference for r in rows]
            else:
                responses = (
                    [early[r.id] for r in rows]
                    if early is not None
                    else responder.per_shard(model, tok, cand, rows)
                )
            signals = _signal_rows(ctx, rows, responses, model, tok, cand, vmap)
            extras = {"response": pa.array(responses, pa.string())} if responder else None
            store.write_shard(index, signals, extras)
            if ctx.on_shard:
                ctx.on_shard(f"{kind}:{cand.name}", index)
    finally:
        del model
        _free_memory()
    return store.path


@dataclass
class _Responder:
    """How candidates answer in inference mode: harness.generate (HF in memory, or vLLM from the model's path)
    or a stand-in `generate_fn` with the same signature."""

    spec: SignalSpec
    seed: int
    generate_fn: GenerateFn | None

    def _fn(self) -> GenerateFn:
        if self.generate_fn is not None:
            return self.generate_fn
        from harness.generate import generate

        return generate

    def _settings(self) -> dict[str, Any]:
        """The generation settings: passed to the generator and part of the cache identity."""
        s = self.spec
        return {
            "max_new_tokens": s.max_new_tokens,
            "do_sample": s.do_sample,
            "temperature": s.gen_temperature,
            "stop": list(s.stop),
            "batch_size": s.batch_size,
            "seed": self.seed,
        }

    def _kwargs(self, cand: ModelHandle, backend: str) -> dict[str, Any]:
        kwargs = {**self._settings(), "chat_template": cand.chat_template, "progress": False}
        if self.generate_fn is None:
            from harness.generate import VLLMOptions

            kwargs["backend"] = backend
            if backend == "vllm":
                kwargs["vllm_options"] = VLLMOptions(**self.spec.vllm.model_dump())
        return kwargs

    def backend(self, cand: ModelHandle) -> str:
        if self.generate_fn is not None:
            return "custom"
        from harness.generate import select_backend

        return select_backend(self.spec.backend, model_is_path=cand.model.local)

    def identity(self, cand: ModelHandle) -> dict[str, Any]:
        fn = self._fn()
        return {
            **self._settings(),
            "backend": self.backend(cand),
            "generator": f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}",
        }

    def all_at_once(self, cand: ModelHandle, rows: list[CorpusRow]) -> dict[str, str] | None:
        if self.backend(cand) != "vllm":
            return None
        m = cand.model
        path = f"gguf:{m.pretrained}#{m.gguf_file}" if m.gguf_file else m.pretrained
        tok = load_tokenizer(m, cand.trust_remote_code)
        out = self._fn()(path, tok, [r.prompt for r in rows], **self._kwargs(cand, "vllm"))
        return {r.id: text for r, text in zip(rows, out, strict=True)}

    def per_shard(self, model: Any, tok: Any, cand: ModelHandle, rows: list[CorpusRow]) -> list[str]:
        out = list(self._fn()(model, tok, [r.prompt for r in rows], **self._kwargs(cand, "hf")))
        if len(out) != len(rows):
            raise ValueError(f"generation returned {len(out)} responses for {len(rows)} prompts")
        return out


def _select(ctx: _Context, candidates: dict[str, Path], judge: Any, inputs: dict[str, Any]) -> Path:
    """Judge every example of this rank's missing selection shards and keep the winner's signals."""
    names = tuple(candidates)
    meta = StoreMeta(
        stable_hash(inputs),
        "inference",
        len(ctx.rows),
        ctx.spec.shard_size,
        ctx.spec.top_k,
        len(ctx.target_tok),
        inputs,
        candidates=names,
    )
    store = SignalStore.create(ctx.cache_dir / "signals", meta)
    missing = store.missing_shards(ctx.rank, ctx.world_size)
    log.info("signals: inference selection: %d of %d shards to judge", len(missing), meta.n_shards)
    if not missing:
        return store.path
    judge = judge()
    stores = {n: SignalStore.open(p) for n, p in candidates.items()}
    for index in _progress(missing, "judging", ctx.progress):
        rows = ctx.shard_rows(meta, index)
        tables = {n: s.read_shard(index) for n, s in stores.items()}
        responses = {n: t.column("response").to_pylist() for n, t in tables.items()}
        batch = [
            (
                row.prompt,
                row.reference,
                {n: responses[n][i] for n in names},
                {"id": row.id, "skill": row.skill},
            )
            for i, row in enumerate(rows)
        ]
        results = judge.pick_batch(batch) if hasattr(judge, "pick_batch") else [judge.pick(*b) for b in batch]
        chosen: list[ExampleSignal] = []
        for i, res in enumerate(results):
            if res.winner not in candidates:
                raise ValueError(f"judge picked '{res.winner}', not a candidate ({', '.join(names)})")
            chosen.append(example_from_table(tables[res.winner], i, ctx.spec.top_k))
        winners = [r.winner for r in results]
        extras = {
            "winner": pa.array(winners, pa.string()),
            "scores": pa.array(
                [[float(r.scores.get(n, math.nan)) for n in names] for r in results], pa.list_(pa.float32())
            ),
            "response": pa.array([responses[w][i] for i, w in enumerate(winners)], pa.string()),
        }
        store.write_shard(index, chosen, extras)
        if ctx.on_shard:
            ctx.on_shard("inference:selection", index)
    return store.path


def extract_signals(
    mode: Signal,
    target: ModelHandle,
    candidates: Sequence[ModelHandle],
    corpus: Sequence[CorpusRow | Mapping[str, Any]],
    spec: SignalSpec,
    judge_spec: JudgeSpec | None,
    cache_dir: Path,
    progress: bool = True,
    *,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    generate_fn: GenerateFn | None = None,
    judge: _JudgeLike | None = None,
    on_shard: ShardCallback | None = None,
) -> SignalSet:
    """Extract (or find in the cache) the signals of `mode` for `target` from `candidates`.

    `candidates` are the sources, plus the target itself when the method makes it a candidate (list it first:
    judges break ties by candidate order). Rank and world size default to accelerate's PartialState (one
    process without `accelerate launch`); with several processes each extracts its shards, then they wait for
    each other. Inference mode only: `generate_fn` (default harness.generate.generate) answers the prompts,
    `judge` (default built from `judge_spec`) picks the winners. `on_shard(store, index)` is called after each
    shard is written.
    """
    rows = validate_corpus(corpus)
    if not candidates:
        raise HarnessError("signal extraction needs at least one candidate model", "signals")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise HarnessError(f"candidate names must be unique, got {', '.join(names)}", "signals")
    mode = Signal(mode)
    cache_dir = Path(cache_dir)
    rank_, world, state = _rank_world(rank, world_size)
    target_tok = load_tokenizer(target.model, target.trust_remote_code)
    ctx = _Context(
        rows, target, target_tok, spec, cache_dir, rank_, world, progress, on_shard, _device(state)
    )
    common = {
        "version": SIGNALS_VERSION,
        "target_tokens": tokenizer_fingerprint(target_tok, target.chat_template),
        "corpus": corpus_hash(rows),
        "top_k": spec.top_k,
        "max_length": spec.max_length,
        "precision": _dtype(ctx.device),  # bf16 on a GPU gives other numbers than fp32 on a CPU
    }
    stores: dict[str, Path] = {}
    if mode is Signal.TRAINING:
        for cand in candidates:
            inputs = {**common, "kind": "training", "source": model_fingerprint(cand, cache_dir)}
            stores[cand.name] = _candidate_store(ctx, "training", cand, inputs, None)
        result = SignalSet(mode, target.name, stores)
    else:
        responder = _Responder(spec, seed, generate_fn)
        for cand in candidates:
            inputs = {
                **common,
                "kind": "generation",
                "source": model_fingerprint(cand, cache_dir),
                "generation": responder.identity(cand),
            }
            stores[cand.name] = _candidate_store(ctx, "generation", cand, inputs, responder)

        def make_judge() -> Any:
            if judge is not None:
                return judge
            from harness.judges import build_judge

            return build_judge(judge_spec or JudgeSpec(), list(names), device=ctx.device)

        judge_id = {
            "spec": (judge_spec or JudgeSpec()).model_dump(mode="json"),
            "custom": None if judge is None else f"{type(judge).__module__}.{type(judge).__qualname__}",
        }
        sel_inputs = {
            "version": SIGNALS_VERSION,
            "kind": "inference",
            "judge": judge_id,
            "candidates": {n: p.name for n, p in stores.items()},
        }
        result = SignalSet(mode, target.name, stores, _select(ctx, stores, make_judge, sel_inputs))
    if state is not None and world > 1:
        state.wait_for_everyone()
    return result.save(cache_dir / "signals")


# ------------------------------------------------------------------------------------------------ analysis


def selection_stats(
    signal_sets: Mapping[Signal, SignalSet] | Sequence[SignalSet], corpus: Sequence[CorpusRow] | None = None
) -> dict[str, Any]:
    """Which candidate would teach each example: per candidate the fraction of examples it wins by MinCE in
    training mode and by judge vote in inference mode, overall and per corpus skill.

    Returns {"training": {cand: frac}, "inference": {cand: frac}, "by_skill": {skill: {"training": {...},
    "inference": {...}, "n": count}}}; a mode absent from `signal_sets` gives an empty dict. Skills come from
    `corpus` when given, else from the stores."""
    sets = list(signal_sets.values()) if isinstance(signal_sets, Mapping) else list(signal_sets)
    skill_of = {r.id: r.skill for r in corpus} if corpus is not None else None
    out: dict[str, Any] = {"training": {}, "inference": {}, "by_skill": {}}
    for sset in sets:
        if sset.mode is Signal.TRAINING:
            names = list(sset.candidates)
            stores = sset.stores()
            first = stores[names[0]]
            ces = np.array([stores[n].column("ce") for n in names], dtype=np.float64)
            winners = [names[i] for i in np.where(np.isnan(ces), np.inf, ces).argmin(axis=0)]
        else:
            selection = sset.selection_store()
            if selection is None:
                continue
            first = selection
            names = list(first.meta.candidates)
            winners = first.column("winner")
        ids, skills = first.column("id"), first.column("skill")
        if skill_of is not None:
            skills = [skill_of.get(i) for i in ids]
        key = sset.mode.value
        out[key] = _fractions(winners, names)
        for skill in sorted({s for s in skills if s is not None}):
            mine = [w for w, s in zip(winners, skills, strict=True) if s == skill]
            entry = out["by_skill"].setdefault(skill, {"training": {}, "inference": {}, "n": len(mine)})
            entry[key] = _fractions(mine, names)
    return out


def _fractions(winners: Sequence[str], names: Sequence[str]) -> dict[str, float]:
    total = len(winners)
    return {n: (sum(w == n for w in winners) / total if total else 0.0) for n in names}
