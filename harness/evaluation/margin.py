"""The log-probability margin of a multiple-choice answer: the correct choice's log-likelihood minus the best wrong
choice's, per document, from lm-eval's per-sample log-likelihoods.

The 0/1 accuracy only says on which side of zero the margin lies. The margin keeps how far, so a paired test on it
detects smaller differences between two models on the same documents (Madaan et al. 2024, arXiv 2406.10229). It
is computed the way the recorded metric decides: `acc_norm` divides each log-likelihood by its choice's length in
characters (as lm-eval does), `acc` uses them raw. Positive: the document is answered correctly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MARGIN_FIELD = "margin"  # the per-sample files' key, beside the task's metric


def choice_margin(lls: Sequence[float], gold: int | Sequence[int], lengths: Sequence[float] | None = None) -> float | None:
    """Best correct choice minus best wrong choice (log-likelihoods, divided by `lengths` when given); None when
    there is no wrong choice or the gold index is out of range."""
    x = np.asarray(lls, dtype=float)
    if lengths is not None:
        x = x / np.maximum(np.asarray(lengths, dtype=float), 1.0)
    golds = [gold] if isinstance(gold, (int, np.integer)) else list(gold)
    if not golds or any(not 0 <= g < x.size for g in golds) or len(set(golds)) >= x.size:
        return None
    wrong = np.delete(x, golds)
    return float(x[golds].max() - wrong.max())


def sample_margin(task: Any, sample: dict[str, Any], metric: str) -> float | None:
    """The margin of one lm-eval sample of a `multiple_choice` task (None for other output types, for tasks whose
    gold is not a choice, and for multiple-input tasks such as winogrande, whose choices are contexts)."""
    if getattr(task, "OUTPUT_TYPE", None) != "multiple_choice" or getattr(task, "multiple_input", False):
        return None
    doc = sample["doc"]
    choices = list(task.doc_to_choice(doc))
    lls = [float(r[0]) for r in sample["filtered_resps"]][: len(choices)]  # mutual-info runs append unconditional ones
    if len(lls) != len(choices):
        return None
    gold: Any = task.doc_to_target(doc)
    if isinstance(gold, str):
        if gold not in choices:
            return None
        gold = choices.index(gold)
    lengths = [float(len(c)) for c in choices] if metric == "acc_norm" else None
    return choice_margin(lls, gold, lengths)
