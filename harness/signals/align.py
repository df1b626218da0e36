"""Cross-tokenizer alignment: which source token predicts the same text as each target token, and which target
vocabulary id stands for each source vocabulary id.

Positions. Both tokenizers report character offsets on the same text, so tokens with the same (start, end)
span are the same piece of text: those anchors align in linear time. Only the stretches between anchors, where
the two tokenizers cut the text differently, go through FuseLLM's dynamic program (DTW with an edit-distance
cost on token strings), each on its own small window. `align_naive` keeps FuseLLM's whole-sequence DP as the
reference the fast path is tested and benchmarked against.

Vocabulary. Every ordinary token is reduced to the bytes it stands for (byte-level BPE alphabet such as
'Ġ'/'Ċ', SentencePiece '▁' and '<0xNN>' byte fallback), then matched exactly, else to the ordinary target token
at minimum edit distance. Special tokens go by meaning (`SpecialTokens`): end of sequence and the chat
format's end of turn land on the target's end of turn, whatever other roles they share; padding neither gives
nor receives mass. The map is computed once per tokenizer pair and cached on disk keyed by both vocabulary
fingerprints and end-of-turn ids.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from harness.store import read_sealed, stable_hash, write_sealed

# 2: sealed with a .sha256; 3: special tokens by meaning (end of turn), none onto padding; 4: among target tokens
# of the same bytes the one the target's tokenizer writes (an ordinary piece, never its byte fallback)
VOCAB_MAP_VERSION = 4
_SPAN_BASE = np.int64(1) << 32  # span (start, end) -> one int64 key
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass(frozen=True)
class Tokenization:
    """Tokens of one text as character spans [start, end) into `text` (int64 array [n, 2]).

    `lead`: text in front of `text` that the first token covers too (a chat template's space before the answer,
    inside the answer's first token): that token stands for `lead` + its span, and pairs by span only with a
    token of the same lead."""

    text: str
    spans: np.ndarray
    lead: str = ""

    def __len__(self) -> int:
        return len(self.spans)

    def piece(self, i: int) -> str:
        start, end = self.spans[i]
        return (self.lead if i == 0 else "") + self.text[start:end]

    def pieces(self, lo: int = 0, hi: int | None = None) -> list[str]:
        out = [self.text[s:e] for s, e in self.spans[lo:hi].tolist()]
        if out and lo == 0 and self.lead:
            out[0] = self.lead + out[0]
        return out


@dataclass(frozen=True)
class Alignment:
    """A monotone path of (target index, source index) pairs and, per target token, the source token with the
    identical character span (-1 where none): only those predict exactly the same next text."""

    path_t: np.ndarray
    path_s: np.ndarray
    same_span: np.ndarray

    def path(self) -> list[tuple[int, int]]:
        return list(zip(self.path_t.tolist(), self.path_s.tolist(), strict=True))

    def groups(self) -> list[list[int]]:
        """Source indices aligned to each target token (one-to-many and many-to-one included)."""
        out: list[list[int]] = [[] for _ in range(len(self.same_span))]
        for i, j in zip(self.path_t.tolist(), self.path_s.tolist(), strict=True):
            out[i].append(j)
        return out


def tile_offsets(offsets: np.ndarray) -> np.ndarray:
    """Give every character no token covers to the next token, so spans tile the text as the tokens do.

    Byte-level tokenizers with `trim_offsets` (RoBERTa's, for one) report 'Ġworld' as 'world' and a lone
    'Ġ' as empty; untrimmed tokenizers and SentencePiece report ' world'. Tiled, both say ' world'."""
    out = offsets.copy()
    if len(out):
        covered = np.concatenate([[0], np.maximum.accumulate(out[:-1, 1])])
        out[:, 0] = np.minimum(out[:, 0], covered)
    return out


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance (pure Python, for the short token strings of the DP)."""
    if a == b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def dtw(
    target: Sequence[str], source: Sequence[str], same_span: set[tuple[int, int]] | None = None
) -> list[tuple[int, int]]:
    """FuseLLM's DTW over token strings: the min-cost monotone path from (0, 0) to (n-1, m-1), cost per cell
    the edit distance of the two strings, backtracking diagonal > up > left as FuseLLM's `np.argmin` does.

    Among paths of equal cost, one through more `same_span` pairs (tokens with identical character spans)
    wins: each cell costs `edit distance * W - [same span]` with W above any count of such pairs, which orders
    paths by (cost, -pairs). FuseLLM breaks these ties arbitrarily, e.g. on repeated tokens."""
    n, m = len(target), len(source)
    if n == 0 or m == 0:
        return []
    prefer = same_span or set()
    scale = n + m + 2
    inf = float("inf")
    cost: list[list[float]] = [
        [inf] * (m + 1) for _ in range(n + 1)
    ]  # cost[i+1][j+1]: best path ending at (i, j)
    cost[0][0] = 0
    for i in range(n):
        above, row, t = cost[i], cost[i + 1], target[i]
        for j in range(m):
            cell = edit_distance(t, source[j]) * scale - ((i, j) in prefer)
            row[j + 1] = cell + min(above[j + 1], row[j], above[j])
    i, j = n - 1, m - 1
    path = []
    while i > 0 or j > 0:
        path.append((i, j))
        diag = cost[i][j] if i > 0 and j > 0 else inf
        up = cost[i][j + 1] if i > 0 else inf
        left = cost[i + 1][j] if j > 0 else inf
        if diag <= up and diag <= left:
            i, j = i - 1, j - 1
        elif up <= left:
            i -= 1
        else:
            j -= 1
    path.append((0, 0))
    path.reverse()
    return path


def _unique_span_keys(spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys of the non-empty spans no other token shares (byte tokens of one character share its span)."""
    keys = spans[:, 0].astype(np.int64) * _SPAN_BASE + spans[:, 1].astype(np.int64)
    ok = spans[:, 1] > spans[:, 0]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    ok &= counts[inverse] == 1
    idx = np.flatnonzero(ok)
    return keys[idx], idx


def same_span_pairs(target: Tokenization, source: Tokenization) -> tuple[np.ndarray, np.ndarray]:
    """Anchors: (i, j) with identical unique spans, strictly increasing in both (linear after one sort)."""
    kt, it = _unique_span_keys(target.spans)
    ks, js = _unique_span_keys(source.spans)
    _, a, b = np.intersect1d(kt, ks, assume_unique=True, return_indices=True)
    ti, sj = it[a], js[b]
    if target.lead != source.lead:  # a first token covering template text is not the same piece as one without
        keep = (ti != 0) & (sj != 0)
        ti, sj = ti[keep], sj[keep]
    order = np.argsort(ti, kind="stable")
    ti, sj = ti[order], sj[order]
    if len(sj) > 1:  # offsets are monotone in practice; drop any anchor that would make the path go back
        keep = np.concatenate([[True], sj[1:] > np.maximum.accumulate(sj)[:-1]])
        ti, sj = ti[keep], sj[keep]
    return ti, sj


def _same_span_of(n: int, ti: np.ndarray, sj: np.ndarray) -> np.ndarray:
    same = np.full(n, -1, dtype=np.int64)
    same[ti] = sj
    return same


def align(target: Tokenization, source: Tokenization) -> Alignment:
    """Anchors from identical offsets, FuseLLM's DTW only on the windows between consecutive anchors.

    The path of each window runs from one anchor to the next, so where the whole-sequence DTW passes through
    the anchors (clean text: identical spans cost 0) both give the same path.
    """
    if target.text != source.text:
        raise ValueError("alignment needs two tokenizations of the same text")
    n, m = len(target), len(source)
    if n == 0 or m == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Alignment(empty, empty, np.full(n, -1, dtype=np.int64))
    ti, sj = same_span_pairs(target, source)
    # DTW forces (0, 0) and (n-1, m-1) onto the path: they bound the first and last windows
    pi = np.concatenate([[0], ti, [n - 1]]).astype(np.int64)
    pj = np.concatenate([[0], sj, [m - 1]]).astype(np.int64)
    keep = np.concatenate([[True], (np.diff(pi) != 0) | (np.diff(pj) != 0)])
    pi, pj = pi[keep], pj[keep]
    di, dj = np.diff(pi), np.diff(pj)
    gaps = np.flatnonzero((di != 1) | (dj != 1))
    if len(gaps) == 0:
        return Alignment(pi, pj, _same_span_of(n, ti, sj))
    parts_t: list[np.ndarray] = []
    parts_s: list[np.ndarray] = []
    done = 0  # points [0, done) of (pi, pj) are emitted
    for g in gaps.tolist():
        parts_t.append(pi[done : g + 1])
        parts_s.append(pj[done : g + 1])
        a, b, c, d = int(pi[g]), int(pi[g + 1]), int(pj[g]), int(pj[g + 1])
        window = dtw(target.pieces(a, b + 1), source.pieces(c, d + 1))[
            1:-1
        ]  # interior: the anchors are emitted
        if window:
            w = np.asarray(window, dtype=np.int64)
            parts_t.append(w[:, 0] + a)
            parts_s.append(w[:, 1] + c)
        done = g + 1
    parts_t.append(pi[done:])
    parts_s.append(pj[done:])
    return Alignment(np.concatenate(parts_t), np.concatenate(parts_s), _same_span_of(n, ti, sj))


def align_naive(target: Tokenization, source: Tokenization) -> Alignment:
    """Reference: FuseLLM's pure-Python DTW over the whole sequences, O(n*m) edit distances."""
    ti, sj = same_span_pairs(target, source)
    path = dtw(target.pieces(), source.pieces(), set(zip(ti.tolist(), sj.tolist(), strict=True)))
    arr = np.asarray(path, dtype=np.int64).reshape(-1, 2)
    on_path = {(int(i), int(j)) for i, j in path}
    keep = np.array([(int(i), int(j)) in on_path for i, j in zip(ti, sj, strict=True)], dtype=bool)
    return Alignment(arr[:, 0], arr[:, 1], _same_span_of(len(target), ti[keep], sj[keep]))


# ------------------------------------------------------------------------------------------------ vocabulary


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


def _types_in(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            found.add(node["type"])
        if node.get("type") == "Replace" and "▁" in json.dumps(node.get("pattern", ""), ensure_ascii=False):
            found.add("Metaspace")
        for v in node.values():
            found |= _types_in(v)
    elif isinstance(node, list):
        for v in node:
            found |= _types_in(v)
    return found


def _marker_style(tokenizer: Any) -> str:
    """'bytelevel' (GPT-2 byte alphabet), 'metaspace' (SentencePiece '▁'), or 'plain'."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        vocab = tokenizer.get_vocab()
        return "metaspace" if any(t.startswith("▁") for t in vocab) else "plain"
    spec = json.loads(backend.to_str())
    types = _types_in(spec.get("decoder")) | _types_in(spec.get("pre_tokenizer"))
    if "ByteLevel" in types:
        return "bytelevel"
    if "Metaspace" in types:
        return "metaspace"
    return "plain"


def _added_ids(tokenizer: Any) -> set[int]:
    return {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}


def byte_fallback_mask(tokenizer: Any) -> np.ndarray:
    """Per id, whether it is a SentencePiece byte-fallback token `<0xNN>` (Gemma, Llama-2 and Vicuna keep 256
    of them at low ids): the tokenizer writes one only for bytes no ordinary piece covers."""
    strings = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    added = _added_ids(tokenizer)
    return np.asarray(
        [i not in added and bool(_BYTE_TOKEN.fullmatch(s or "")) for i, s in enumerate(strings)], dtype=bool
    )


def token_bytes(tokenizer: Any) -> list[bytes]:
    """The bytes each token id stands for, whatever marker convention the tokenizer uses."""
    style = _marker_style(tokenizer)
    n = len(tokenizer)
    strings = tokenizer.convert_ids_to_tokens(list(range(n)))
    added = _added_ids(tokenizer)
    decoder = _byte_decoder() if style == "bytelevel" else {}
    out: list[bytes] = []
    for i, s in enumerate(strings):
        s = s or ""
        if _BYTE_TOKEN.fullmatch(s):  # SentencePiece byte fallback
            out.append(bytes([int(s[3:5], 16)]))
        elif i in added:
            out.append(s.encode("utf-8"))
        elif style == "bytelevel" and all(c in decoder for c in s):
            out.append(bytes(decoder[c] for c in s))
        elif style == "metaspace":
            out.append(s.replace("▁", " ").encode("utf-8"))
        else:
            out.append(s.replace("Ġ", " ").replace("Ċ", "\n").replace("▁", " ").encode("utf-8"))
    return out


_ROLES = ("eos_token_id", "bos_token_id", "unk_token_id", "pad_token_id")


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens of one tokenizer in one chat format, by what they mean in a teacher's distribution.

    `stop` holds what ends an answer: EOS and the format's end-of-turn token; `end` is where an answer's end
    lands in this format (the end of turn if the format has one, else EOS). A token with several roles is a
    stop token first: SmolLM2's `<|im_end|>` is EOS and padding, GPT-2's `<|endoftext|>` is EOS, BOS and
    padding, and each means "stop"."""

    end: int | None
    stop: frozenset[int]
    bos: int | None
    unk: int | None
    pad: int | None
    special: frozenset[int]  # every special id: the roles and the added tokens flagged special

    def usable(self, i: int | None) -> int:
        """`i` as a destination for a role other than stopping: never a stop or padding id (-1 then)."""
        return -1 if i is None or i in self.stop or i == self.pad else i


def special_tokens(tokenizer: Any, end_of_turn: int | None = None) -> SpecialTokens:
    """The roles of `tokenizer`'s special tokens; `end_of_turn` is the chat format's (harness.chat.end_of_turn_id)."""

    def role(name: str) -> int | None:
        value = getattr(tokenizer, name, None)
        return int(value) if isinstance(value, int) else None

    eos, bos, unk, pad = (role(r) for r in _ROLES)
    stop = frozenset(i for i in (eos, end_of_turn) if i is not None)
    special = {i for i in (eos, bos, unk, pad, end_of_turn) if i is not None}
    for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(token, "special", False):
            special.add(int(i))
    end = end_of_turn if end_of_turn is not None else eos
    return SpecialTokens(end, stop, bos, unk, pad, frozenset(special))


def vocab_fingerprint(tokenizer: Any) -> str:
    """Hash of a tokenizer's vocabulary, special-token roles, added tokens' special flags and marker convention:
    everything `build_vocab_map` reads of it."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    roles = {r: getattr(tokenizer, r, None) for r in _ROLES}
    added = sorted(
        (int(i), str(t.content), bool(getattr(t, "special", False)))
        for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()
    )
    return stable_hash(
        {"vocab": vocab, "roles": roles, "added": added, "style": _marker_style(tokenizer), "n": len(tokenizer)}
    )


def nearest_by_edit_distance(
    queries: Sequence[bytes], candidates: Sequence[bytes], block: int = 1 << 22,
    avoid: Sequence[bool] | np.ndarray | None = None,
) -> np.ndarray:
    """Index of the candidate nearest to each query by edit distance (ties: a candidate not in `avoid` first,
    then closer length, then the shorter candidate, then lower index); -1 for empty queries.

    `avoid` marks candidates to take only when nothing else is as near (a SentencePiece target's byte-fallback
    tokens: its tokenizer never writes `<0x2C>` where it has `,`).

    Distances come from rapidfuzz's Levenshtein (bit-parallel C++), `block` of them at a time: Gemma's 210k
    tokens without an exact SmolLM2 counterpart against its 49k take about a minute on one core, where a
    vectorised numpy DP took hours."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    result = np.full(len(queries), -1, dtype=np.int64)
    keep = [i for i, c in enumerate(candidates) if c]
    todo = [i for i, q in enumerate(queries) if q]
    if not keep or not todo:
        return result
    pool = [candidates[i] for i in keep]
    index = np.asarray(keep, dtype=np.int64)
    lengths = np.asarray([len(c) for c in pool], dtype=np.int64)
    avoided = np.zeros(len(pool), dtype=np.int64) if avoid is None else np.asarray(avoid, dtype=np.int64)[index]
    scale = 2 * (int(lengths.max()) + max(len(queries[i]) for i in todo) + 1)
    step = max(1, block // len(pool))
    for lo in range(0, len(todo), step):
        rows = todo[lo : lo + step]
        dist = cdist([queries[i] for i in rows], pool, scorer=Levenshtein.distance, dtype=np.int32, workers=1)
        q_len = np.asarray([len(queries[i]) for i in rows], dtype=np.int64)[:, None]
        gap = lengths[None, :] - q_len
        near = dist.astype(np.int64) * 2 + avoided[None, :]
        key = (near * scale + np.abs(gap)) * 2 + (gap > 0)  # argmin keeps the lowest index
        result[rows] = index[key.argmin(axis=1)]
    return result


def _special_map(source: SpecialTokens, target: SpecialTokens, src_text: list[bytes], tgt_text: list[bytes]) -> dict[int, int]:
    """Target id (-1: none) for each special source id: a stop lands on the target's end of turn; padding nowhere;
    BOS and UNK on the target's own unless that is a stop or padding id; any other special token on the target's
    special token of the same text, if it has one."""
    by_text = {tgt_text[i]: i for i in sorted(target.special, reverse=True) if i < len(tgt_text)}
    out: dict[int, int] = {}
    for i in source.special:
        if i in source.stop:
            out[i] = target.end if target.end is not None else -1
        elif i == source.pad:
            out[i] = -1
        elif i == source.bos:
            out[i] = target.usable(target.bos)
        elif i == source.unk:
            out[i] = target.usable(target.unk)
        else:
            found = by_text.get(src_text[i], -1) if i < len(src_text) else -1
            out[i] = target.usable(found)
    return out


UNRESOLVED = -2  # an ordinary source token whose nearest target token is looked up when first needed


def build_vocab_map(
    source_tok: Any,
    target_tok: Any,
    source_size: int | None = None,
    source_end_of_turn: int | None = None,
    target_end_of_turn: int | None = None,
    nearest: bool = True,
) -> np.ndarray:
    """Target id for every source id (int64 [max(len(source_tok), source_size)], -1 where a source id has no
    counterpart: the padded rows of a model's embedding, padding, special tokens the target lacks).

    `*_end_of_turn`: the id that ends an assistant turn in each model's chat format, when it is not EOS.
    `nearest=False` leaves the tokens without an exact counterpart UNRESOLVED, for `resolve_nearest` to find
    when they occur (Gemma has 210k of them against SmolLM2, of which a teacher's top-k uses a few thousand)."""
    size = max(len(source_tok), source_size or 0)
    source = special_tokens(source_tok, source_end_of_turn)
    target = special_tokens(target_tok, target_end_of_turn)
    if vocab_fingerprint(source_tok) == vocab_fingerprint(target_tok):
        out = np.arange(size, dtype=np.int64)
        out[len(source_tok) :] = -1
        for i in source.stop:  # one tokenizer in two formats: an answer still ends where the target's ends
            out[i] = target.end if target.end is not None else -1
        return out
    src = token_bytes(source_tok)
    tgt = token_bytes(target_tok)
    fallback = byte_fallback_mask(target_tok)
    exact = exact_targets(target_tok, tgt, target.special, fallback)
    out = np.full(size, -1, dtype=np.int64)
    missing = []
    for i, b in enumerate(src):
        if i in source.special:
            continue
        if b in exact:
            out[i] = exact[b]
        else:
            missing.append(i)
    out[missing] = UNRESOLVED
    for i, t in _special_map(source, target, src, tgt).items():
        if i < size:
            out[i] = t
    if nearest:
        resolve_nearest(out, np.asarray(missing, dtype=np.int64), src, tgt, target.special, fallback)
    return out


def exact_targets(
    tokenizer: Any, target_bytes: Sequence[bytes], special: frozenset[int], fallback: np.ndarray
) -> dict[bytes, int]:
    """The target id standing for each byte string among its ordinary tokens.

    Where several stand for the same bytes (a SentencePiece vocabulary has `,` and its byte fallback `<0x2C>`),
    the one the target's tokenizer itself writes for that text wins; if it writes none of them alone, an
    ordinary token before a byte-fallback one, then the lowest id. The lowest id alone would send a teacher's
    mass for `,` to `<0x2C>`, which Gemma never produces."""
    groups: dict[bytes, list[int]] = {}
    for i, b in enumerate(target_bytes):
        if i not in special:
            groups.setdefault(b, []).append(i)
    out: dict[bytes, int] = {}
    for b, ids in groups.items():
        out[b] = ids[0] if len(ids) == 1 else _written_by(tokenizer, b, ids, fallback)
    return out


def _written_by(tokenizer: Any, text: bytes, ids: list[int], fallback: np.ndarray) -> int:
    try:
        written = list(tokenizer(text.decode("utf-8"), add_special_tokens=False)["input_ids"])
    except (UnicodeDecodeError, TypeError, ValueError):
        written = []
    if len(written) == 1 and written[0] in ids:
        return int(written[0])
    return min(ids, key=lambda i: (bool(fallback[i]) if i < len(fallback) else False, i))


def resolve_nearest(
    mapping: np.ndarray, ids: np.ndarray, source_bytes: Sequence[bytes], target_bytes: Sequence[bytes],
    target_special: frozenset[int], target_fallback: np.ndarray | None = None,
) -> int:
    """Fill the UNRESOLVED entries among `ids` in place with the ordinary target token at minimum edit distance,
    a byte-fallback token only where no other is as near (the same answer whenever it is looked up); returns how
    many were filled."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    ids = ids[(ids >= 0) & (ids < len(mapping))]
    todo = ids[mapping[ids] == UNRESOLVED]
    if len(todo) == 0:
        return 0
    ordinary = np.asarray([i for i in range(len(target_bytes)) if i not in target_special], dtype=np.int64)
    avoid = None if target_fallback is None else np.asarray(target_fallback, dtype=bool)[ordinary]
    found = nearest_by_edit_distance(
        [source_bytes[i] for i in todo.tolist()], [target_bytes[i] for i in ordinary.tolist()], avoid=avoid
    )
    mapping[todo] = np.where(found >= 0, ordinary[np.maximum(found, 0)], -1)
    return len(todo)


def vocab_map_path(
    source_tok: Any,
    target_tok: Any,
    cache_dir: Path,
    source_size: int | None = None,
    source_end_of_turn: int | None = None,
    target_end_of_turn: int | None = None,
    nearest: bool = True,
) -> Path:
    """Where a vocabulary map is cached: `<cache_dir>/vocab_maps/`, keyed by both vocabulary fingerprints, the
    end-of-turn ids and whether nearest matches are resolved up front."""
    size = max(len(source_tok), source_size or 0)
    parts: list[Any] = [VOCAB_MAP_VERSION, vocab_fingerprint(source_tok), vocab_fingerprint(target_tok), size]
    parts += [source_end_of_turn, target_end_of_turn] + ([] if nearest else ["lazy"])
    return Path(cache_dir) / "vocab_maps" / f"{stable_hash(parts)}.npy"


def save_vocab_map(path: Path, mapping: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, mapping.astype(np.int32))
    write_sealed(path, buf.getvalue())


def vocab_map(
    source_tok: Any,
    target_tok: Any,
    cache_dir: Path | None = None,
    source_size: int | None = None,
    source_end_of_turn: int | None = None,
    target_end_of_turn: int | None = None,
    nearest: bool = True,
) -> np.ndarray:
    """`build_vocab_map`, cached on disk (`vocab_map_path`)."""
    ends = (source_end_of_turn, target_end_of_turn)
    if cache_dir is None:
        return build_vocab_map(source_tok, target_tok, source_size, *ends, nearest=nearest)
    size = max(len(source_tok), source_size or 0)
    path = vocab_map_path(source_tok, target_tok, cache_dir, source_size, *ends, nearest=nearest)
    data = read_sealed(path, "vocabulary map")  # checksum-verified: a flipped id would misalign silently
    if data is not None:
        try:
            found = np.load(io.BytesIO(data))
            if found.shape == (size,):
                return found.astype(np.int64)
        except (OSError, ValueError):
            pass  # unreadable: rebuild below
    built = build_vocab_map(source_tok, target_tok, source_size, *ends, nearest=nearest)
    save_vocab_map(path, built)
    return built
