"""Model passes: a candidate teacher-forced on its own tokens, and its teacher moved onto the target's tokens.

Aligned teacher of target response token i (predicted from target position i-1): the source's distribution
predicting the source token with the identical character span (logits at that token's previous position, the
last prompt position for the first response token), mapped to target ids with duplicates merged; otherwise a
one-hot on token i itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.signals.align import align
from harness.signals.encoding import Encoded


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

