"""MinCE over the same text: each candidate's cross-entropy on one example, computed over the same answer
characters.

A candidate's teacher-forced window is cut at `signals.max_length` in its own tokens, so two models cover
different amounts of a long answer (a longer system prompt leaves less room), and only a model that sees the whole
answer is scored on its end of turn. Comparing those means compares CEs over different text. The stores keep each
response token's own log-probability and the answer character where the token ends (`token_logp`,
`token_end`); here every candidate's CE is the mean over its tokens that end at or before the shortest candidate's
coverage (a character boundary), so all of them read the same characters, up to the one token that straddles the
cut.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

TokenScores = tuple[Sequence[float], Sequence[int]]  # (own log-probability, answer character the token ends at)


def covered(ends: Sequence[int]) -> int:
    """Answer characters a candidate's window covers (the end of its last token)."""
    return int(max(ends)) if len(ends) else 0


def ce_up_to(logp: Sequence[float], ends: Sequence[int], cut: int) -> float:
    """Mean negative log-probability of the predicted tokens that end at or before character `cut` (inf: none)."""
    lp = np.asarray(logp, dtype=np.float64)
    keep = (np.asarray(ends, dtype=np.int64) <= cut) & np.isfinite(lp)
    return float(-lp[keep].mean()) if keep.any() else math.inf


def comparable_ces(candidates: Mapping[str, TokenScores]) -> tuple[dict[str, float], int]:
    """Each candidate's CE over the characters every candidate covers, and that cut."""
    cut = min((covered(ends) for _, ends in candidates.values()), default=0)
    return {name: ce_up_to(logp, ends, cut) for name, (logp, ends) in candidates.items()}, cut
