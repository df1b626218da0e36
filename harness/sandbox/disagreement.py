"""The disagreement dial (`sandbox.disagreement`): a source whose teacher-forced advantage is not a generation one.

ProFuser's motivation is that a source's cross-entropy on the reference (training mode, MinCE) and the quality
of its own generations (inference mode, a judge) can rank sources differently. The dial builds that gap into the
world with one mechanism, *fluent formula*:

- the mimic source (`MIMIC`, the reasoning specialist) is trained on references that end in a long, fixed
  closing formula (`FORMULA`, on its own line after the answer). It learns to predict the formula perfectly;
  its answers stay as good or as bad as they were.
- a share `disagreement` of the fusion corpus's references end in that same formula (each item by a seeded
  draw; a larger dial keeps every item a smaller one chose, so the dial is monotone item by item).

On a formulaic reference the mimic's mean per-token cross-entropy is dominated by the formula it predicts with
near certainty, so MinCE picks it, while its generation gets the key answer (the first line, the `####` number,
the refusal) wrong wherever it is not the specialist. The judges score only that key answer (the formula holds
no refusal phrase, no `####`, no blank line), so they still prefer the candidate that answers right. This is the
way long formulaic reference text (a chat model's politeness, a solution template) makes a fluent model look
strong by perplexity; the paper's Vicuna-vs-Llama-2-chat gap is of this kind.

At 0 nothing changes: the world's cache key, its weights and its corpus are today's, bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

from harness.sandbox.skills import Item

MIMIC = "neox-reasoning"
FORMULA = (
    "I hope this answer is clear and useful to you. Thank you for the question, and have a lovely day."
)


def with_formula(reference: str) -> str:
    """The reference with the closing formula on its own line (after the key answer, never before it)."""
    return f"{reference}\n{FORMULA}"


def draw(seed: int, item_id: str) -> float:
    """A uniform number in [0, 1) fixed by (world seed, item id): the item is formulaic when it is < the dial."""
    digest = hashlib.sha256(f"disagreement-{seed}-{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def formulaic_corpus(corpus: Sequence[Item], seed: int, disagreement: float) -> list[Item]:
    """The fusion corpus with the formula appended to each item whose draw falls below `disagreement`."""
    return [
        replace(it, reference=with_formula(it.reference)) if draw(seed, it.id) < disagreement else it
        for it in corpus
    ]


def mimic_pool(items: Sequence[Item]) -> list[Item]:
    """The mimic's training items: every reference ends in the formula."""
    return [replace(it, reference=with_formula(it.reference)) for it in items]


def key_part(disagreement: float) -> dict[str, object]:
    """What the dial adds to the world's cache key: nothing at 0 (today's world keeps its key)."""
    if not disagreement:
        return {}
    return {"disagreement": float(disagreement), "mimic": MIMIC, "formula": FORMULA}
