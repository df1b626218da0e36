"""Clustered standard errors for tasks whose documents come in groups (MMLU subjects, BBH tasks, questions on one
passage): documents of one cluster are not independent, so the usual SE understates the noise.

Following Miller (2024, "Adding error bars to evals", arXiv 2411.00640), the SE of a mean (or of a mean paired
difference) over n documents in G clusters is the cluster-robust (sandwich) one,
    SE² = G / (G − 1) · Σ_c (Σ_{i∈c} (x_i − x̄))² / n²,
which is statsmodels' OLS `cov_type="cluster"` of an intercept-only model with its default small-sample
correction (tests/test_clusters.py checks the two agree). The 95% interval is x̄ ± 1.96·SE.
A task declares its cluster in the task catalog (`cluster`, a document field) or, for a user's lm-eval YAML,
as `metadata: {cluster: <field>}`; evaluation records it per document as `cluster` in the per-sample files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from harness.analysis.stats import doc_key
from harness.errors import HarnessError


@dataclass(frozen=True)
class ClusteredEstimate:
    """A mean with its cluster-robust SE and 95% interval, beside the SE that treats documents as independent."""

    mean: float
    se: float
    ci_low: float
    ci_high: float
    se_iid: float
    n: int
    clusters: int


def clustered_se(values: Sequence[float] | np.ndarray, clusters: Sequence[Any]) -> ClusteredEstimate:
    """The mean of `values` with its cluster-robust standard error (CR1: the G/(G − 1) correction)."""
    x = np.asarray(values, dtype=float)
    labels = np.asarray([str(c) for c in clusters])
    if x.size != labels.size or x.size == 0:
        raise HarnessError("clustered SE needs one cluster per value", "stats")
    _, idx = np.unique(labels, return_inverse=True)
    g = int(idx.max()) + 1
    resid = x - x.mean()
    sums = np.bincount(idx, weights=resid, minlength=g)
    n = x.size
    se = math.sqrt(g / (g - 1) * float(np.sum(sums**2)) / n**2) if g > 1 else math.nan
    se_iid = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    z = float(sps.norm.ppf(0.975))
    return ClusteredEstimate(float(x.mean()), se, float(x.mean()) - z * se, float(x.mean()) + z * se, se_iid, n, g)


def read_clusters(run_dir: Path, label: str, task: str) -> dict[Any, str] | None:
    """{document: cluster} of one per-sample file, keyed as harness.analysis.stats.load_samples keys documents;
    None when the file records no cluster."""
    path = Path(run_dir) / "eval" / label / f"{task}.jsonl"
    if not path.is_file():
        return None
    out: dict[Any, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "cluster" not in row:
            return None
        out[doc_key(row, out)] = str(row["cluster"])
    return out


def clustered_difference(a: Mapping[Any, float], b: Mapping[Any, float], clusters: Mapping[Any, str]) -> ClusteredEstimate:
    """The mean paired difference a − b over the documents both scored, with its cluster-robust SE."""
    keys = [k for k in a if k in b and k in clusters]
    if not keys:
        raise HarnessError("no document has a score on both sides and a cluster", "stats")
    return clustered_se([a[k] - b[k] for k in keys], [clusters[k] for k in keys])
