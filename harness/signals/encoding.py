"""Tokenizing one example in one model's own format, with the response's character spans.

Each model renders (prompt, response) with its own chat template; the response span is known in characters,
so two models' tokenizations of the same response can be compared span by span (harness/signals/align.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.chat import render_example, tokenize_chat
from harness.signals.align import Tokenization, tile_offsets

EOS_SENTINEL = "\x00"  # the end-of-turn token of every format stands on this one character


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
    tokenizer: Any, prompt: str, response: str, template: str | None, max_length: int, name: str,
    ended: bool = True,
) -> Encoded:
    """Render (prompt, response) with the model's chat template, tokenize with offsets, cut to max_length.

    Response tokens: from the first token that reaches into the response's content to the end of turn. Their
    spans are in one coordinate system for every format, the characters of `response` itself: a token covers the
    answer characters it stands for, so where a template trims the answer (Gemma's `| trim` of a leading space)
    the first token starts after the trimmed characters. Template text a token covers in front of the answer
    (the space of `ASSISTANT: ` inside Vicuna's `▁Hello`) is not answer text: it is kept as the tokenization's
    `lead`, and such a token pairs only with one covering the same template text (harness/signals/align.py).
    The content's last token absorbs what the template trimmed behind it, the end-of-turn token stands on the
    sentinel, and anything between content and end of turn (Llama-2's space before `</s>`) gets an empty span
    (it has no counterpart in another format, so it never anchors an alignment).

    `ended=False`: the response was cut off (generation reached max_new_tokens), so it is encoded without the
    template's end of turn (and without the sentinel): the model is never taught to stop where it was cut."""
    rendered = render_example(tokenizer, prompt, response, template, name)
    text = rendered.text if ended else rendered.text[: rendered.content_end]
    enc = tokenize_chat(tokenizer, text, offsets=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = tile_offsets(np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2))
    start, end, n = rendered.content_start, rendered.content_end, len(response)
    in_response = np.flatnonzero(offsets[:, 1] > start)
    resp_start = int(in_response[0]) if len(in_response) else len(ids)
    lo, hi = _window(len(ids), resp_start, max_length)
    spans = offsets[resp_start:hi]
    shift = rendered.lead - start  # rendered position -> position in `response`
    rel = np.clip(spans + shift, rendered.lead, n)
    rel[:, 1] = np.where(spans[:, 1] >= end, n, rel[:, 1])
    after = spans[:, 0] >= end  # the turn's end: fillers, then the end-of-turn token
    rel[after] = n
    if ended and rendered.end_of_turn is not None:
        rel[after & (spans[:, 0] >= rendered.turn_end_start), 1] = n + 1
    lead = text[int(spans[0, 0]) : start] if len(spans) and spans[0, 0] < start else ""
    answer = response + EOS_SENTINEL if ended else response
    return Encoded(ids[lo:hi], resp_start - lo, Tokenization(answer, rel, lead))
