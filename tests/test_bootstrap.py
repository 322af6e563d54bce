"""Bootstrap intervals: deterministic for a seed, oriented for both metric directions, the fast
ROC-AUC path equal to sklearn, and the unpaired interval monitoring uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from reproml.bootstrap import paired_bootstrap, presorted_auc, unpaired_bootstrap
from reproml.metrics import MetricSpec
from tests.test_gate import classification, regression

AUC = MetricSpec("roc_auc", higher_is_better=True)
RMSE = MetricSpec("rmse", higher_is_better=False)


def test_paired_bootstrap_deterministic_and_covers_improvement() -> None:
    y, good, poor = classification(500)
    first = paired_bootstrap(AUC, y, good, poor, samples=300, confidence=0.9, seed=3)
    again = paired_bootstrap(AUC, y, good, poor, samples=300, confidence=0.9, seed=3)
    other = paired_bootstrap(AUC, y, good, poor, samples=300, confidence=0.9, seed=4)
    assert first == again
    assert first[1:] != other[1:]
    improvement, low, high = first
    assert improvement == pytest.approx(skm.roc_auc_score(y, good) - skm.roc_auc_score(y, poor))
    assert low < improvement < high


def test_paired_bootstrap_orients_lower_is_better() -> None:
    y, good, poor = regression(400)
    improvement, low, high = paired_bootstrap(RMSE, y, good, poor, samples=200, confidence=0.95, seed=0)
    expected = skm.root_mean_squared_error(y, poor) - skm.root_mean_squared_error(y, good)
    assert improvement == pytest.approx(expected) and improvement > 0
    assert 0 < low < improvement < high
    reverse = paired_bootstrap(RMSE, y, poor, good, samples=200, confidence=0.95, seed=0)
    assert reverse[0] == pytest.approx(-improvement)
    assert reverse[1] < reverse[2] < 0


def test_presorted_auc_matches_sklearn_with_weights() -> None:
    rng = np.random.default_rng(11)
    for trial in range(20):
        rows = int(rng.integers(5, 400))
        y = rng.integers(0, 2, size=rows)
        y[:2] = [0, 1]
        scores = rng.uniform(size=rows)
        if trial % 2:
            scores = np.round(scores, 1)  # many ties
        weight = rng.integers(0, 4, size=rows).astype(float)
        weight[:2] = 1.0
        expected = skm.roc_auc_score(y, scores, sample_weight=weight)
        assert presorted_auc(y, scores)(weight) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(presorted_auc(np.array([0, 1]), np.array([0.2, 0.4]))(np.array([1.0, 0.0])))


def test_unpaired_bootstrap_orients_the_drop_and_is_deterministic() -> None:
    y, good, poor = classification(400)
    first = unpaired_bootstrap(AUC, y, good, y, poor, samples=200, confidence=0.9, seed=1)
    assert first == unpaired_bootstrap(AUC, y, good, y, poor, samples=200, confidence=0.9, seed=1)
    (low, high), (batch_low, batch_high) = first
    drop = skm.roc_auc_score(y, good) - skm.roc_auc_score(y, poor)
    assert 0 < low < drop < high  # worse on the batch: a positive drop
    assert batch_low < skm.roc_auc_score(y, poor) < batch_high
    y, good, poor = regression(300)
    (low, high), _ = unpaired_bootstrap(RMSE, y, good, y, poor, samples=200, confidence=0.9, seed=1)
    assert 0 < low < high  # a larger RMSE on the batch is a drop too
    y, good, _ = classification(100)
    one_class = np.zeros(50, dtype=int)  # the batch holds one class: its ROC-AUC is undefined
    (low, high), (batch_low, _) = unpaired_bootstrap(
        AUC, y, good, one_class, good[:50], samples=20, confidence=0.9, seed=0
    )
    assert math.isnan(low) and math.isnan(high) and math.isnan(batch_low)
