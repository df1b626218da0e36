"""Filling one candidate's signal store, shared by both modes: load the model once, teacher-force it shard by
shard on the reference (training mode) or on its own responses (inference mode), align each example to the
target's tokens, and write the shard.

Models are loaded one at a time; each store resumes at its first missing shard; a process of
`accelerate launch` extracts the shards with index % world_size == rank.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from harness.chat import end_of_turn_id
from harness.config import SignalSpec
from harness.errors import HarnessError
from harness.models import load_model, load_tokenizer
from harness.signals.align import (
    UNRESOLVED,
    byte_fallback_mask,
    resolve_nearest,
    save_vocab_map,
    special_tokens,
    token_bytes,
    vocab_map,
    vocab_map_path,
)
from harness.signals.alignment import get_alignment
from harness.signals.comparable_ce import covered
from harness.signals.encoding import encode_example
from harness.signals.inputs import CorpusRow, ModelHandle
from harness.signals.store import ExampleSignal, SignalStore, StoreMeta
from harness.signals.teacher import AUDIT_COLUMNS, AuditVocab, aligned_teacher_with_audit, teacher_forced
from harness.store import stable_hash

log = logging.getLogger("harness.signals")

ShardCallback = Callable[[str, int], None]


class Responder(Protocol):
    """Where a candidate's responses come from in inference mode (harness/signals/inference_mode.py)."""

    def all_at_once(self, cand: ModelHandle, rows: list[CorpusRow]) -> dict[str, str] | None: ...

    def per_shard(self, model: Any, tok: Any, cand: ModelHandle, rows: list[CorpusRow]) -> list[str]: ...


def finished(response: str) -> bool:
    """Whether a generated response ended by itself (harness.signals.generate's `Generated.finished`); a plain
    string from a stand-in generator counts as finished."""
    return bool(getattr(response, "finished", True))


@dataclass
class Context:
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


def rank_world(rank: int | None, world_size: int | None) -> tuple[int, int, Any]:
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


def device_of(state: Any) -> str:
    if state is not None:
        return str(state.device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def precision_of(device: str) -> str:
    return "bfloat16" if device.startswith("cuda") else "float32"


def _load(handle: ModelHandle, device: str) -> tuple[Any, Any]:
    tok = load_tokenizer(handle.model, handle.trust_remote_code)
    model = load_model(handle.model, precision_of(device), device, trust_remote_code=handle.trust_remote_code)
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


def progress_bar(items: list[int], desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not enabled, unit="shard")


def source_vocab_size(model: Any, tok: Any) -> int:
    emb = model.get_output_embeddings()
    return int(emb.weight.shape[0]) if emb is not None else len(tok)


@dataclass
class PairVocab:
    """One source -> target pair's vocabulary map and what the signal audit reads of both vocabularies.

    Tokens without an exact counterpart get their nearest target token when a teacher first ranks them in its
    top-k (`resolve`), and the map on disk keeps them: the same answer as resolving all up front, which for
    Gemma's 262k tokens against SmolLM2 would take minutes."""

    vmap: np.ndarray
    audit: AuditVocab
    target_special: frozenset[int]
    path: Path | None = None
    source_special: frozenset[int] = frozenset()

    def resolve(self, source_ids: np.ndarray) -> None:
        found = resolve_nearest(
            self.vmap, source_ids, self.audit.source_text, self.audit.target_text, self.target_special,
            self.audit.target_fallback,
        )
        if found:
            if self.path is not None:
                save_vocab_map(self.path, self.vmap)

    def exact_map(self) -> np.ndarray:
        """The map without its minimum-edit-distance entries (FuseLLM "hard"): an ordinary source id keeps its
        target id only where a target token stands for the same bytes; special tokens keep theirs (by meaning)."""
        ordinary = {b for i, b in enumerate(self.audit.target_text) if i not in self.target_special}
        exact = np.zeros(len(self.vmap), dtype=bool)
        n = min(len(self.vmap), len(self.audit.source_text))
        exact[:n] = [b in ordinary for b in self.audit.source_text[:n]]
        exact[[i for i in self.source_special if i < len(exact)]] = True
        return np.where(exact & (self.vmap != UNRESOLVED), self.vmap, -1)


def pair_vocab(ctx: Context, cand: ModelHandle, tok: Any, source_size: int) -> PairVocab:
    """The source's ids on the target's vocabulary (cached on disk), each side's end of turn given by its format."""
    return pair_vocab_of(ctx.target, ctx.target_tok, cand, tok, source_size, ctx.cache_dir)


def pair_vocab_of(
    target_handle: ModelHandle, target_tok: Any, cand: ModelHandle, tok: Any, source_size: int, cache_dir: Path
) -> PairVocab:
    """`pair_vocab` for any two loaded tokenizers (also `harness align compare`)."""
    source_eot = end_of_turn_id(tok, cand.chat_template, cand.name)
    target_eot = end_of_turn_id(target_tok, target_handle.chat_template, target_handle.name)
    ends = (source_eot, target_eot)
    vmap = vocab_map(tok, target_tok, cache_dir, source_size, *ends, nearest=False)
    path = vocab_map_path(tok, target_tok, cache_dir, source_size, *ends, nearest=False)
    target = special_tokens(target_tok, target_eot)
    source = special_tokens(tok, source_eot)
    audit = AuditVocab(
        token_bytes(tok), token_bytes(target_tok), source.stop, target.stop, byte_fallback_mask(target_tok)
    )
    return PairVocab(vmap, audit, target.special, path, source.special)


def signal_rows(
    ctx: Context,
    rows: list[CorpusRow],
    responses: list[str],
    model: Any,
    tok: Any,
    cand: ModelHandle,
    vocab: PairVocab,
    ended: list[bool] | None = None,
) -> tuple[list[ExampleSignal], dict[str, pa.Array]]:
    """Teacher-force `cand` on (prompt, response) and align each example to the target's tokenization; also the
    audit columns of the shard (harness/signals/teacher.py `aligned_teacher_with_audit`), each response token's
    own log-probability and answer character (`token_logp`, `token_end`: MinCE over the same text,
    harness/signals/comparable_ce.py) and `answer_cut` (this model's window ends before the answer does).
    `ended[i]` False: response i was cut off by generation and is encoded without an end of turn."""
    spec = ctx.spec
    ends = ended if ended is not None else [True] * len(rows)
    src = [
        encode_example(tok, r.prompt, resp, cand.chat_template, spec.max_length, cand.name, e)
        for r, resp, e in zip(rows, responses, ends, strict=True)
    ]
    tgt = [
        encode_example(
            ctx.target_tok, r.prompt, resp, ctx.target.chat_template, spec.max_length, ctx.target.name, e
        )
        for r, resp, e in zip(rows, responses, ends, strict=True)
    ]
    passes = teacher_forced(model, src, spec.top_k, spec.batch_size, pad_id=tok.pad_token_id or 0)
    strategy = get_alignment(spec.alignment)
    seen = [p.top_ids.reshape(-1) for p in passes] + ([e.ids for e in src] if strategy.uses_token_ids else [])
    vocab.resolve(np.concatenate(seen or [np.zeros(0, dtype=np.int64)]))
    top_map = vocab.exact_map() if strategy.vocab == "exact" else None
    out = []
    audits: dict[str, list[float]] = {name: [] for name in AUDIT_COLUMNS}
    for r, s, t, p in zip(rows, src, tgt, passes, strict=True):
        ids, logp, n_aligned, audit = aligned_teacher_with_audit(
            t, s, p, vocab.vmap, spec.top_k, vocab.audit, strategy, top_map
        )
        out.append(ExampleSignal(r.id, r.skill, p.ce, t.ids, t.resp_start, ids, logp, n_aligned))
        for name in AUDIT_COLUMNS:
            audits[name].append(audit[name])
    columns = {name: pa.array(np.asarray(v, dtype=np.float32)) for name, v in audits.items()}
    own = [p.own_logp if p.own_logp is not None else np.full(len(p.predicted), np.nan) for p in passes]
    columns["token_logp"] = pa.array([o.tolist() for o in own], pa.list_(pa.float32()))
    token_end = [s.response.spans[:, 1].tolist() for s in src]
    columns["token_end"] = pa.array(token_end, pa.list_(pa.int32()))
    columns["answer_cut"] = pa.array(
        [covered(e) < len(s.response.text) for e, s in zip(token_end, src, strict=True)], pa.bool_()
    )
    return out, columns


def fill_candidate_store(
    ctx: Context, kind: str, cand: ModelHandle, inputs: dict[str, Any], responder: Responder | None
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
        vocab = pair_vocab(ctx, cand, tok, source_vocab_size(model, tok))
        for index in progress_bar(missing, f"{kind} {cand.name}", ctx.progress):
            rows = ctx.shard_rows(meta, index)
            if responder is None:
                responses = [r.reference for r in rows]
            else:
                responses = (
                    [early[r.id] for r in rows]
                    if early is not None
                    else responder.per_shard(model, tok, cand, rows)
                )
            ended = [finished(r) for r in responses]
            signals, extras = signal_rows(ctx, rows, responses, model, tok, cand, vocab, ended)
            if responder:
                extras["response"] = pa.array([str(r) for r in responses], pa.string())
                extras["finished"] = pa.array(ended, pa.bool_())
            store.write_shard(index, signals, extras)
            if ctx.on_shard:
                ctx.on_shard(f"{kind}:{cand.name}", index)
    finally:
        del model
        _free_memory()
    return store.path

