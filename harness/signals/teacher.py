"""Model passes: a candidate teacher-forced on its own tokens, and its teacher moved onto the target's tokens.

Aligned teacher of target response token i (predicted from target position i-1): the source's distribution
predicting the source token the alignment strategy pairs with it (harness/signals/alignment.py; by default the
one with the identical character span), read at that token's previous position (the last prompt position for
the first response token), mapped to target ids with duplicates merged; otherwise a one-hot on token i itself
(the strategy's `fallback` "current" reproduces FuseLLM's one-hot on token i-1).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.signals.alignment import DEFAULT, AlignmentStrategy, get_alignment
from harness.signals.encoding import Encoded


@dataclass
class TeacherPass:
    """One model's view of its own response tokens: CE and the top-k distribution predicting each of them."""

    ce: float
    top_ids: np.ndarray  # [n_response, k] the model's own vocabulary ids
    top_logp: np.ndarray  # [n_response, k]
    predicted: np.ndarray  # [n_response] bool: False where no position precedes the token
    own_logp: np.ndarray | None = None  # [n_response] float32: log-probability of each token itself (NaN: not predicted)


def padded_batches(examples: Sequence[Encoded], batch_size: int, pad_id: int = 0) -> Iterator[tuple[list[int], Any, Any]]:
    """(example indices, input ids, attention mask) per batch: sorted by length, right-padded."""
    import torch

    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        width = max(1, max(len(examples[i].ids) for i in idx))
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for b, i in enumerate(idx):
            n = len(examples[i].ids)
            ids[b, :n] = torch.from_numpy(examples[i].ids)
            mask[b, :n] = 1
        yield idx, ids, mask


def teacher_forced(
    model: Any, examples: Sequence[Encoded], k: int, batch_size: int, pad_id: int = 0
) -> list[TeacherPass]:
    """Batched teacher-forced passes (right padding, sorted by length); log-probabilities in float32.

    Padding is told apart by the attention mask, never by its id: SmolLM2 pads with its EOS."""
    import torch

    device = next(model.parameters()).device
    out: list[TeacherPass | None] = [None] * len(examples)
    with torch.inference_mode():
        for idx, ids, mask in padded_batches(examples, batch_size, pad_id):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            for b, i in enumerate(idx):
                out[i] = _rows(logits[b], ids[b].to(device), examples[i], k)
    return [p for p in out if p is not None]


def _rows(logits: Any, ids: Any, ex: Encoded, k: int) -> TeacherPass:
    n, r = len(ex.ids), ex.resp_start
    first = max(r, 1)  # a token at position 0 has nothing before it to predict it
    rows = logits[first - 1 : n - 1].float()
    # log-probabilities of the k best and of the own token only: x - logsumexp(x), without materialising a
    # log-softmax over the whole vocabulary (262k entries per position for Gemma)
    norm = rows.logsumexp(-1, keepdim=True)
    kk = min(k, rows.shape[-1])
    vals, top = rows.topk(kk, dim=-1)
    vals = vals - norm
    own = rows.gather(-1, ids[first:n, None])[:, 0] - norm[:, 0]
    n_resp, skipped = n - r, first - r
    top_ids = np.zeros((n_resp, k), dtype=np.int64)
    top_logp = np.full((n_resp, k), -np.inf, dtype=np.float32)
    top_ids[skipped:, :kk] = top.cpu().numpy()
    top_logp[skipped:, :kk] = vals.cpu().numpy()
    predicted = np.ones(n_resp, dtype=bool)
    predicted[:skipped] = False
    own_logp = np.full(n_resp, np.nan, dtype=np.float32)
    own_logp[skipped:] = own.cpu().numpy()
    ce = float(-own.mean()) if len(own) else math.inf  # nothing predicted: never the MinCE choice
    return TeacherPass(ce, top_ids, top_logp, predicted, own_logp)


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


def _anchored(
    target: Encoded, source: Encoded, teacher: TeacherPass, strategy: AlignmentStrategy, vmap: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(target response rows, source response rows) the strategy pairs, the source row predicted."""
    n = target.n_response
    if np.array_equal(target.ids, source.ids) and target.resp_start == source.resp_start:
        j = np.arange(n)  # the same tokenization (the target as its own candidate)
    else:
        j = strategy.match(
            target.response, source.response, target.ids[target.resp_start :], source.ids[source.resp_start :], vmap
        )
    usable = j >= 0
    usable[usable] = teacher.predicted[j[usable]]
    rows = np.flatnonzero(usable)
    return rows, j[rows]


def aligned_teacher(
    target: Encoded, source: Encoded, teacher: TeacherPass, vmap: np.ndarray, k: int,
    strategy: AlignmentStrategy | None = None, top_map: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The source's teacher for each target response token: [n, k] ids, [n, k] logp, and the aligned count.

    `vmap` is the mined source -> target map (pairing of `dtw-mined`); `top_map` the one the teacher's ids go
    through (default `vmap`; the exact-only map for strategies with `vocab == "exact"`)."""
    ids, logp, _, n_aligned = _aligned(target, source, teacher, vmap, k, strategy, top_map)
    return ids, logp, n_aligned


def _aligned(
    target: Encoded, source: Encoded, teacher: TeacherPass, vmap: np.ndarray, k: int,
    strategy: AlignmentStrategy | None, top_map: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray], int]:
    strategy = strategy or get_alignment(DEFAULT)
    top_map = vmap if top_map is None else top_map
    n = target.n_response
    rows, src = _anchored(target, source, teacher, strategy, vmap)
    ids, logp = merge_topk(
        np.repeat(rows, k), top_map[teacher.top_ids[src]].reshape(-1), teacher.top_logp[src].reshape(-1), n, k
    )
    fallback = ~np.isfinite(logp[:, 0])  # unaligned, or every entry mapped nowhere
    ids[fallback] = 0
    logp[fallback] = -np.inf
    first = target.resp_start
    if strategy.fallback == "current" and first > 0:  # FuseLLM: the token at the predicting position, i - 1
        first -= 1
    ids[fallback, 0] = target.ids[first : first + n][fallback]  # "next": token i itself
    logp[fallback, 0] = 0.0
    kept = ~fallback[rows]
    return ids, logp, (rows[kept], src[kept]), int(np.count_nonzero(kept))


@dataclass(frozen=True)
class AuditVocab:
    """What the signal audit needs of a source -> target pair: each side's token texts and stop ids."""

    source_text: Sequence[bytes]
    target_text: Sequence[bytes]
    source_stop: frozenset[int]
    target_stop: frozenset[int]
    target_fallback: np.ndarray | None = None  # per target id: a byte-fallback token `<0xNN>`


AUDIT_COLUMNS = (
    "audit_top1_same", "audit_mass", "audit_lost_mass", "audit_stop_mass", "audit_stop_to_stop", "audit_byte_mass",
)


def aligned_teacher_with_audit(
    target: Encoded, source: Encoded, teacher: TeacherPass, vmap: np.ndarray, k: int, vocab: AuditVocab,
    strategy: AlignmentStrategy | None = None, top_map: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int, dict[str, float]]:
    """`aligned_teacher` plus the example's audit counts, over the target tokens whose teacher came from the
    source (anchored rows, `n_aligned` of them):

    audit_top1_same: how many have a top-1 that reads as the source's own top-1 (its
    text, or both stop tokens); audit_mass: the source's top-k probability mass there; audit_lost_mass: the
    part of it on ids that map nowhere; audit_stop_mass: the part on the source's stop ids (EOS, end of turn);
    audit_stop_to_stop: the part of that which lands on the target's stop ids; audit_byte_mass: the part of the
    mass that lands on the target's byte-fallback ids (`<0x2C>` for `,`: ids its tokenizer writes only for bytes
    no ordinary piece covers, so on ordinary text this stays near 0)."""
    ids, logp, (rows, src), n_aligned = _aligned(target, source, teacher, vmap, k, strategy, top_map)
    top_src = teacher.top_ids[src]
    prob = np.exp(teacher.top_logp[src].astype(np.float64))
    mapped = (vmap if top_map is None else top_map)[top_src]
    is_stop = np.isin(top_src, list(vocab.source_stop))
    lands_stop = np.isin(mapped, list(vocab.target_stop))
    fallback = vocab.target_fallback
    lands_byte = (
        np.zeros(mapped.shape, dtype=bool) if fallback is None
        else (mapped >= 0) & fallback[np.clip(mapped, 0, len(fallback) - 1)]
    )
    same = 0
    for s1, t1 in zip(top_src[:, 0].tolist(), ids[rows, 0].tolist(), strict=True):
        if s1 in vocab.source_stop or t1 in vocab.target_stop:
            same += s1 in vocab.source_stop and t1 in vocab.target_stop
        else:
            same += vocab.source_text[s1] == vocab.target_text[t1] if s1 < len(vocab.source_text) else 0
    audit = {
        "audit_top1_same": float(same),
        "audit_mass": float(prob.sum()),
        "audit_lost_mass": float(prob[mapped < 0].sum()),
        "audit_stop_mass": float(prob[is_stop].sum()),
        "audit_stop_to_stop": float(prob[is_stop & lands_stop].sum()),
        "audit_byte_mass": float(prob[lands_byte].sum()),
    }
    return ids, logp, n_aligned, audit
