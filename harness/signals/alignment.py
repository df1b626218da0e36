"""Alignment strategies: which target response tokens get a source's teacher, and through which vocabulary map.

A strategy answers two questions for one example, given both tokenizations of the same response:
- positions: for each target response token, the source response token whose distribution predicts it (or none);
- vocabulary: whether the teacher's top-k ids go through the minimum-edit-distance map (`mined`) or only through
  exact matches (`exact`: ids without an identical target token are dropped, their mass lost).
A target token without a source token gets the one-hot fallback on the token it is the teacher for (`next`: the
token itself, predicted from the position before it). FuseLLM's code puts that one-hot on the token at the
predicting position (`current`: the token before it), an off-by-one kept only as the `dtw-mined-fusellm`
reference strategy.

Built in:
- `span` (default): only tokens with identical character spans (the same text, predicted from the same text);
- `dtw-exact` (FuseLLM "hard"): target tokens with exactly one source token on the DTW path whose text is the
  same; exact vocabulary;
- `dtw-mined` (FuseLLM "soft"): as `dtw-exact`, or where the source token's id maps onto the target token's id
  through the minimum-edit-distance vocabulary map; mined vocabulary;
- `dtw-mined-fusellm`: `dtw-mined` with FuseLLM's fallback on the current token.
The DTW runs only inside the windows between identical-span anchors (`harness.signals.align.align`), never over
the whole sequence. Plugins register under the entry point group `harness.alignments`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import numpy as np

from harness.registry import Registry
from harness.signals.align import Tokenization, align, same_span_pairs

ENTRY_POINT_GROUP = "harness.alignments"
DEFAULT = "span"

Vocab = Literal["mined", "exact"]
Fallback = Literal["next", "current"]


class AlignmentStrategy(ABC):
    """One way to move a source's teacher onto the target's tokens. Subclasses set the class attributes and
    write `match`."""

    name: ClassVar[str]
    description: ClassVar[str]
    vocab: ClassVar[Vocab] = "mined"
    fallback: ClassVar[Fallback] = "next"
    uses_token_ids: ClassVar[bool] = False  # `match` reads the vocabulary map at the source's own token ids

    @abstractmethod
    def match(
        self, target: Tokenization, source: Tokenization, target_ids: np.ndarray, source_ids: np.ndarray,
        vmap: np.ndarray,
    ) -> np.ndarray:
        """Per target token, the index of the source token whose distribution is its teacher (-1: none).

        `target_ids` / `source_ids` are the tokens' vocabulary ids; `vmap` maps source ids to target ids (the
        mined map, resolved at `source_ids` when `uses_token_ids`)."""


ALIGNMENTS: Registry[type[AlignmentStrategy]] = Registry("alignment", ENTRY_POINT_GROUP, stage="signals")


def register_alignment(name: str):  # type: ignore[no-untyped-def]
    """Class decorator: `@register_alignment("span")` makes the strategy selectable as `signals.alignment`."""
    return ALIGNMENTS.register(name)


def available_alignments() -> dict[str, type[AlignmentStrategy]]:
    return ALIGNMENTS.available()


def get_alignment(name: str) -> AlignmentStrategy:
    return ALIGNMENTS.get(name)()


@register_alignment("span")
class SpanAlignment(AlignmentStrategy):
    description = "tokens with identical character spans only (linear time); mined vocabulary"

    def match(self, target, source, target_ids, source_ids, vmap):  # type: ignore[no-untyped-def]
        out = np.full(len(target), -1, dtype=np.int64)
        ti, sj = same_span_pairs(target, source)
        out[ti] = sj
        return out


def one_to_one(target: Tokenization, source: Tokenization) -> tuple[np.ndarray, np.ndarray]:
    """(target indices, source indices) of the DTW path's pairs where the target token has exactly one source
    token (FuseLLM's `len(blending_idx) == 1`); the DTW runs between identical-span anchors only."""
    path = align(target, source)
    single = np.bincount(path.path_t, minlength=len(target)) == 1
    keep = single[path.path_t]
    return path.path_t[keep], path.path_s[keep]


def _same_text(target: Tokenization, source: Tokenization, ti: np.ndarray, sj: np.ndarray) -> np.ndarray:
    """Whether each pair's two tokens stand for the same non-empty text (FuseLLM compares token strings with
    the word markers unified; the character pieces here are what those strings stand for)."""
    return np.asarray(
        [
            bool(a) and a == b
            for a, b in zip((target.piece(i) for i in ti.tolist()), (source.piece(j) for j in sj.tolist()), strict=True)
        ],
        dtype=bool,
    )


@register_alignment("dtw-exact")
class DtwExactAlignment(AlignmentStrategy):
    description = "FuseLLM hard: 1:1 DTW pairs whose token texts match; exact vocabulary"
    vocab = "exact"

    def match(self, target, source, target_ids, source_ids, vmap):  # type: ignore[no-untyped-def]
        out = np.full(len(target), -1, dtype=np.int64)
        if len(target) == 0 or len(source) == 0:
            return out
        ti, sj = one_to_one(target, source)
        ok = _same_text(target, source, ti, sj)
        out[ti[ok]] = sj[ok]
        return out


@register_alignment("dtw-mined")
class DtwMinedAlignment(AlignmentStrategy):
    description = "FuseLLM soft: 1:1 DTW pairs matching exactly or through the min-edit-distance map; mined vocabulary"
    uses_token_ids = True

    def match(self, target, source, target_ids, source_ids, vmap):  # type: ignore[no-untyped-def]
        out = np.full(len(target), -1, dtype=np.int64)
        if len(target) == 0 or len(source) == 0:
            return out
        ti, sj = one_to_one(target, source)
        mapped = vmap[np.asarray(source_ids, dtype=np.int64)[sj]]
        ok = _same_text(target, source, ti, sj) | (mapped == np.asarray(target_ids, dtype=np.int64)[ti])
        out[ti[ok]] = sj[ok]
        return out


@register_alignment("dtw-mined-fusellm")
class DtwMinedFuseLLMAlignment(DtwMinedAlignment):
    description = "dtw-mined with FuseLLM's reference fallback: the one-hot on the current token (off by one)"
    fallback = "current"
