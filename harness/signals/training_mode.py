"""Training mode (FuseLLM): every candidate teacher-forced on (prompt, reference) in its own chat format.

Per example a candidate's store keeps its length-normalised CE on the response (in its own tokens) and its
top-k next-token distributions, aligned to the target's tokenization of the same example and vocabulary.
MinCE picks the teacher per example later, in the method's `combine` (methods/fusellm.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.signals.candidate_store import Context, fill_candidate_store
from harness.signals.inputs import ModelHandle, model_fingerprint


def training_stores(ctx: Context, candidates: Sequence[ModelHandle], common: dict[str, Any]) -> dict[str, Path]:
    """One store per candidate, keyed by the shared inputs `common` and the candidate's own fingerprint."""
    stores: dict[str, Path] = {}
    for cand in candidates:
        inputs = {**common, "kind": "training", "source": model_fingerprint(cand, ctx.cache_dir)}
        stores[cand.name] = fill_candidate_store(ctx, "training", cand, inputs, None)
    return stores
