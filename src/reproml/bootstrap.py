"""Bootstrap intervals of a metric, fast enough to run on every promotion and every monitored batch.

A resample is drawn as per-row counts used as sample weights: the same as materialising the
resampled rows, but cheaper, and it lets ROC-AUC skip sklearn's re-sort on every resample
(`weighted_scorer`). Two designs:

- `paired_bootstrap` (the promotion gate): both models scored on the SAME resampled rows, so the
  row-to-row noise they share cancels and a small real improvement is detectable;
- `unpaired_bootstrap` (monitoring's concept drift): two different sets of rows (the test split
  and a batch), each redrawn independently, for the drop between them.

Resamples on which the metric is undefined (one class drawn) are dropped; none left gives a NaN
interval, which the gate rejects and monitoring reports as undefined. Deterministic for a seed.
What a metric is, and which way is better, is `reproml.metrics`' table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from reproml.metrics import (
    Metric,
    MetricSpec,
    all_finite,
    as_codes,
    check_same_length,
    class_codes,
    oriented,
    score,
)


def weighted_scorer(
    spec: MetricSpec | Metric, y: np.ndarray, scores: np.ndarray, labels: Sequence[Any] | None = None
) -> Callable[[np.ndarray], float]:
    """`row weights -> metric`, for bootstrap resamples drawn as per-row counts.

    ROC-AUC gets a dedicated path: sklearn re-sorts the scores on every call (~12 ms at 27k rows,
    so ~12 s for 500 paired resamples), while the scores' order never changes between resamples.
    Grouping the rows by distinct score once makes each resample two `bincount`s and a `cumsum`;
    macro one-vs-rest ROC-AUC is that per class, averaged. tests check both against sklearn.
    """
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y)
    if scores.ndim == 2:
        check_same_length(y, scores)
        y = as_codes(y, scores, labels)
    finite = bool(np.all(np.isfinite(scores))) and all_finite(y)
    if spec.name == "roc_auc" and finite:
        return presorted_auc(y, scores)
    if spec.name == "roc_auc_ovr" and finite and len(y):
        return _presorted_ovr_auc(y, scores)
    return lambda weight: score(spec, y, scores, sample_weight=weight)


def presorted_auc(y: np.ndarray, scores: np.ndarray) -> Callable[[np.ndarray], float]:
    """Weighted ROC-AUC = P(score of a positive > score of a negative) + half the ties, weights as
    row multiplicities: exactly the trapezoidal area sklearn computes."""
    _, group = np.unique(scores, return_inverse=True)  # groups in ascending score order
    group = group.ravel()
    groups = int(group.max()) + 1 if group.size else 0
    positive = (np.asarray(y) == 1).astype(np.float64)

    def auc(weight: np.ndarray) -> float:
        pos = np.bincount(group, weights=weight * positive, minlength=groups)
        neg = np.bincount(group, weights=weight, minlength=groups) - pos
        total_pos, total_neg = float(pos.sum()), float(neg.sum())
        if total_pos <= 0.0 or total_neg <= 0.0:
            return math.nan
        negatives_below = np.cumsum(neg) - neg
        # np.sum of a product, not `@`: BLAS dot spins up threads that stall on a busy 2-core machine
        return float(np.sum(pos * (negatives_below + 0.5 * neg))) / (total_pos * total_neg)

    return auc


def _presorted_ovr_auc(codes: np.ndarray, scores: np.ndarray) -> Callable[[np.ndarray], float]:
    """Macro one-vs-rest ROC-AUC per resample: each class's presorted AUC of its own (row-normalised)
    probability column, averaged; NaN when a class is absent, as sklearn refuses it."""
    proba = scores / scores.sum(axis=1, keepdims=True)
    per_class = [presorted_auc((codes == k).astype(int), proba[:, k]) for k in range(scores.shape[1])]

    def auc(weight: np.ndarray) -> float:
        values = [one(weight) for one in per_class]
        return float(np.mean(values)) if all(math.isfinite(v) for v in values) else math.nan

    return auc


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval of the finite values; NaN when none is finite."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def _check(samples: int, confidence: float) -> None:
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


def _counts(rng: np.random.Generator, n: int) -> np.ndarray:
    """One resample of `n` rows with replacement, as each row's count."""
    return np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)


def paired_bootstrap(
    spec: MetricSpec,
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    samples: int,
    confidence: float,
    seed: int,
    labels: Sequence[Any] | None = None,
) -> tuple[float, float, float]:
    """(improvement, low, high): the oriented improvement on all rows and its percentile interval.

    Each resample draws rows with replacement once and scores BOTH models on those rows, so the
    interval is of the paired difference. Multiclass: `labels` names the class of each score
    column (see `reproml.metrics.score`).
    """
    _check(samples, confidence)
    y = np.asarray(y)
    challenger = np.asarray(challenger, dtype=np.float64)
    champion = np.asarray(champion, dtype=np.float64)
    check_same_length(y, challenger, champion)
    y = class_codes(y, challenger, labels)
    improvement = oriented(spec, score(spec, y, challenger), score(spec, y, champion))
    n = len(y)
    if n == 0 or not math.isfinite(improvement):
        return improvement, math.nan, math.nan
    challenger_at = weighted_scorer(spec, y, challenger)
    champion_at = weighted_scorer(spec, y, champion)
    rng = np.random.default_rng(seed)
    diffs = np.empty(samples, dtype=np.float64)
    for i in range(samples):
        counts = _counts(rng, n)
        diffs[i] = oriented(spec, challenger_at(counts), champion_at(counts))
    low, high = _interval(diffs, confidence)
    return improvement, low, high


def unpaired_bootstrap(
    spec: MetricSpec,
    y_reference: np.ndarray,
    s_reference: np.ndarray,
    y_batch: np.ndarray,
    s_batch: np.ndarray,
    samples: int,
    confidence: float,
    seed: int,
    labels: Sequence[Any] | None = None,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(interval of the drop, interval of the batch's own metric) from the same resamples.

    The drop is oriented so that positive means the batch is worse than the reference. Each
    resample redraws the reference rows and the batch rows independently (different rows, so
    nothing pairs them).
    """
    at_reference = weighted_scorer(
        spec, np.asarray(y_reference), np.asarray(s_reference, dtype=float), labels
    )
    at_batch = weighted_scorer(spec, np.asarray(y_batch), np.asarray(s_batch, dtype=float), labels)
    rng = np.random.default_rng(seed)
    n_ref, n_batch = len(y_reference), len(y_batch)
    drops = np.empty(samples, dtype=np.float64)
    values = np.empty(samples, dtype=np.float64)
    for i in range(samples):
        ref_counts = _counts(rng, n_ref)
        batch_counts = _counts(rng, n_batch)
        values[i] = at_batch(batch_counts)
        drops[i] = oriented(spec, at_reference(ref_counts), values[i])
    return _interval(drops, confidence), _interval(values, confidence)
