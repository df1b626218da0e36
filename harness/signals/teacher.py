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

# Positions per LM-head chunk: about 2**24 logits (64 MB in float32) at a time, whatever the vocabulary
# (64 positions for Gemma-3's 262,144 tokens, the whole batch for the sandbox's small vocabularies).
CHUNK_LOGITS = 2**24


@dataclass
class TeacherPass:
    """One model's view of its own response tokens: CE and the top-k distribution predicting each of them.

    `own_logp` and `log_norm` ([n_response], NaN where nothing predicts the token) are the own token's
    log-probability and the log-normaliser (logsumexp of the logits) at each position."""

    ce: float
    top_ids: np.ndarray  # [n_response, k] the model's own vocabulary ids
    top_logp: np.ndarray  # [n_response, k]
    predicted: np.ndarray  # [n_response] bool: False where no position precedes the token
    own_logp: np.ndarray | None = None  # [n_response] float32: log-probability of each token itself (NaN: not predicted)
    log_norm: np.ndarray | None = None  # [n_response] float32: logsumexp of the logits (NaN: not predicted)


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

    Never holds a whole vocabulary for every position: the model runs once without its LM head, then the head
    runs on the predicting positions only, `CHUNK_LOGITS // vocab` of them at a time, and each chunk keeps its
    top-k, own-token log-probability and log-normaliser. Padding is told apart by the attention mask, never by
    its id: SmolLM2 pads with its EOS."""
    import torch

    device = next(model.parameters()).device
    head = LogitHead.of(model)
    out: list[TeacherPass | None] = [None] * len(examples)
    with torch.inference_mode():
        for idx, ids, mask in padded_batches(examples, batch_size, pad_id):
            ids, mask = ids.to(device), mask.to(device)
            hidden = head.hidden(ids, mask)
            spans = [_span(examples[i]) for i in idx]
            rows = torch.cat([torch.arange(lo - 1, hi - 1, device=device) + b * ids.shape[1] for b, (lo, hi) in enumerate(spans)])
            own_ids = torch.cat([ids[b, lo:hi] for b, (lo, hi) in enumerate(spans)])
            if head.split and ids.numel() * head.vocab <= CHUNK_LOGITS:
                # the whole batch's logits fit in one chunk: one head call over every position, exactly as the
                # model's forward makes them (a GEMM's rounding can depend on its row count)
                hidden = head.logits(hidden)
                top_logp, top_ids, own, norm = head.topk(hidden.reshape(-1, hidden.shape[-1])[rows], own_ids, k, logits=True)
            else:
                top_logp, top_ids, own, norm = head.topk(hidden.reshape(-1, hidden.shape[-1])[rows], own_ids, k)
            at = 0
            for i, (lo, hi) in zip(idx, spans, strict=True):
                m = hi - lo
                out[i] = _pass(examples[i], k, top_ids[at : at + m], top_logp[at : at + m], own[at : at + m], norm[at : at + m])
                at += m
    return [p for p in out if p is not None]


def _span(ex: Encoded) -> tuple[int, int]:
    """[first, n): the response tokens that a position predicts (a token at position 0 has nothing before it)."""
    return max(ex.resp_start, 1), len(ex.ids)


class LogitHead:
    """A causal LM split into its body (final hidden states) and its LM head, applied to chosen rows only.

    The split is the model's own: `base_model` gives the normalised last hidden states, `get_output_embeddings`
    the head, and Gemma's final logit soft-capping is applied as its forward does. A model whose forward does
    more to its logits (checked once per model on four tokens) runs whole instead, its logits sliced."""

    _checked: Any = None  # weakref.WeakKeyDictionary[model, bool], made on first use

    def __init__(self, model: Any, split: bool) -> None:
        self.model = model
        self.split = split
        self.cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)

    @classmethod
    def of(cls, model: Any) -> LogitHead:
        import weakref

        if cls._checked is None:
            cls._checked = weakref.WeakKeyDictionary()
        if model not in cls._checked:
            cls._checked[model] = cls(model, True)._splits_like_forward()
        return cls(model, cls._checked[model])

    def _splits_like_forward(self) -> bool:
        import torch

        head = self.model.get_output_embeddings()
        if head is None or self.model.base_model is self.model:
            return False
        device = next(self.model.parameters()).device
        ids = torch.tensor([[1, 2, 3, 4]], device=device) % head.weight.shape[0]
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            whole = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            split = self.logits(self.hidden(ids, mask)[0]).float()
        tol = 1e-4 if head.weight.dtype == torch.float32 else 2e-2  # bf16 / fp16 heads round at 2^-8
        return whole[0].shape == split.shape and bool(torch.allclose(whole[0], split, rtol=tol, atol=tol))

    def hidden(self, ids: Any, mask: Any) -> Any:
        """[B, T, H] final hidden states (or, for a model run whole, its [B, T, V] logits)."""
        if not self.split:
            return self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return self.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state

    def logits(self, hidden: Any) -> Any:
        import torch

        logits = self.model.get_output_embeddings()(hidden)
        if self.cap:
            logits = torch.tanh(logits / self.cap) * self.cap
        return logits

    @property
    def vocab(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def topk(self, hidden: Any, own_ids: Any, k: int, logits: bool = False) -> tuple[Any, Any, Any, Any]:
        """For rows of hidden states (or of logits, `logits=True`): top-k log-probabilities and ids, own-token
        log-probability, log-normaliser.

        Each chunk's logits are freed before the next: x - logsumexp(x), never a log-softmax over the vocabulary."""
        import torch

        logits = logits or not self.split
        n = hidden.shape[0]
        vocab = hidden.shape[-1] if logits else self.vocab
        kk = min(k, vocab)
        step = max(1, CHUNK_LOGITS // max(vocab, 1))
        top_logp = torch.empty((n, kk), dtype=torch.float32, device=hidden.device)
        top_ids = torch.empty((n, kk), dtype=torch.long, device=hidden.device)
        own = torch.empty(n, dtype=torch.float32, device=hidden.device)
        norm = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for lo in range(0, n, step):
            rows = (hidden[lo : lo + step] if logits else self.logits(hidden[lo : lo + step])).float()
            z = rows.logsumexp(-1)
            vals, ids = rows.topk(kk, dim=-1)
            top_logp[lo : lo + step] = vals - z[:, None]
            top_ids[lo : lo + step] = ids
            own[lo : lo + step] = rows.gather(-1, own_ids[lo : lo + step, None])[:, 0] - z
            norm[lo : lo + step] = z
            del rows
        return top_logp, top_ids, own, norm


def _pass(ex: Encoded, k: int, top: Any, vals: Any, own: Any, norm: Any) -> TeacherPass:
    first, n = _span(ex)
    n_resp, skipped = n - ex.resp_start, first - ex.resp_start
    kk = top.shape[1]
    top_ids = np.zeros((n_resp, k), dtype=np.int64)
    top_logp = np.full((n_resp, k), -np.inf, dtype=np.float32)
    top_ids[skipped:, :kk] = top.cpu().numpy()
    top_logp[skipped:, :kk] = vals.cpu().numpy()
    predicted = np.ones(n_resp, dtype=bool)
    predicted[:skipped] = False
    own_logp = np.full(n_resp, np.nan, dtype=np.float32)
    log_norm = np.full(n_resp, np.nan, dtype=np.float32)
    own_logp[skipped:] = own.cpu().numpy()
    log_norm[skipped:] = norm.cpu().numpy()
    ce = float(-own.mean()) if len(own) else math.inf  # nothing predicted: never the MinCE choice
    return TeacherPass(ce, top_ids, top_logp, predicted, own_logp, log_norm)


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
