"""Clustered standard errors agree with statsmodels' cluster-robust variance; answer margins with a direct count."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm

from harness.analysis.clusters import clustered_se
from harness.evaluation.margin import choice_margin


@pytest.mark.parametrize("binary", [True, False])
def test_clustered_se_is_statsmodels_cluster_robust_se(binary: bool) -> None:
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 12, size=300)
    effect = rng.normal(0, 0.8, size=12)[groups]  # documents of one subject share a difficulty
    values = (rng.random(300) < 1 / (1 + np.exp(-effect))).astype(float) if binary else effect + rng.normal(0, 1, 300)
    fit = sm.OLS(values, np.ones((300, 1))).fit(cov_type="cluster", cov_kwds={"groups": groups})
    found = clustered_se(values, groups)
    assert found.mean == pytest.approx(fit.params[0])
    assert found.se == pytest.approx(fit.bse[0], rel=1e-10)
    assert found.clusters == 12 and found.se > found.se_iid  # shared difficulty: iid errors understate the noise


def test_one_document_per_cluster_is_the_iid_se_up_to_its_correction() -> None:
    x = np.arange(10.0)
    found = clustered_se(x, range(10))
    assert found.se == pytest.approx(found.se_iid)  # G/(G−1)·Σ r²/n² = s²/n when every cluster is one document


def test_choice_margin_is_gold_minus_best_wrong() -> None:
    assert choice_margin([-3.0, -1.0, -2.0, -5.0], 2) == pytest.approx(-1.0)  # wrong: choice 1 beats gold 2
    assert choice_margin([-3.0, -1.0, -2.0], 1) == pytest.approx(1.0)
    assert choice_margin([-4.0, -6.0], 0, lengths=[4.0, 2.0]) == pytest.approx(2.0)  # acc_norm: per character
    assert choice_margin([-1.0, -2.0, -3.0], [0, 2]) == pytest.approx(1.0)  # several golds: the best of them
    assert choice_margin([-1.0], 0) is None and choice_margin([-1.0, -2.0], 5) is None
