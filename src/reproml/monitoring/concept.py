"""Concept drift, seen where it hurts: the champion's quality on a labelled batch against its quality
on its own test split.

The metric is the promotion gate's (`reproml.gate.metric_spec` / `score`), so "quality" means
the same number in both places. The two sets of rows are different rows, so the interval is an
unpaired percentile bootstrap: each resample redraws the test rows and the batch rows
independently (as per-row counts used as weights, the gate's fast path) and takes the drop.
`drop` is oriented so that positive always means the champion got worse, for ROC-AUC and RMSE
alike.

Evidently's classification or regression preset renders the same comparison for people
(`report`); its headline values are kept in the record beside ours as a cross-check.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from reproml.gate import MetricSpec, score, weighted_scorer

PREDICTION = "prediction"


@dataclass(frozen=True)
class QualityChange:
    metric: str
    higher_is_better: bool
    reference_value: float  # on the champion's test split
    batch_value: float
    drop: float  # positive = worse on the batch
    interval: tuple[float, float]  # of the drop
    batch_interval: tuple[float, float]  # of the batch's own metric (the same resamples)
    confidence: float
    samples: int
    reference_rows: int
    batch_rows: int
    evidently: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _drop(spec: MetricSpec, reference: float, batch: float) -> float:
    return reference - batch if spec.higher_is_better else batch - reference


def quality_change(
    spec: MetricSpec,
    y_reference: np.ndarray,
    s_reference: np.ndarray,
    y_batch: np.ndarray,
    s_batch: np.ndarray,
    samples: int,
    confidence: float,
    seed: int,
) -> QualityChange:
    """The drop from test split to batch, with its percentile bootstrap interval (NaN if undefined,
    e.g. a batch holding one class only: ROC-AUC has nothing to rank)."""
    reference_value = score(spec, y_reference, s_reference)
    batch_value = score(spec, y_batch, s_batch)
    drop = _drop(spec, reference_value, batch_value)
    low = high = batch_low = batch_high = math.nan
    if math.isfinite(drop):
        at_reference = weighted_scorer(spec, np.asarray(y_reference), np.asarray(s_reference, dtype=float))
        at_batch = weighted_scorer(spec, np.asarray(y_batch), np.asarray(s_batch, dtype=float))
        rng = np.random.default_rng(seed)
        n_ref, n_batch = len(y_reference), len(y_batch)
        drops = np.empty(samples, dtype=np.float64)
        values = np.empty(samples, dtype=np.float64)
        for i in range(samples):
            ref_counts = np.bincount(rng.integers(0, n_ref, size=n_ref), minlength=n_ref).astype(float)
            batch_counts = np.bincount(rng.integers(0, n_batch, size=n_batch), minlength=n_batch).astype(
                float
            )
            values[i] = at_batch(batch_counts)
            drops[i] = _drop(spec, at_reference(ref_counts), values[i])
        tail = (1.0 - confidence) / 2.0
        drops, values = drops[np.isfinite(drops)], values[np.isfinite(values)]
        if drops.size:
            low, high = (float(q) for q in np.quantile(drops, [tail, 1.0 - tail]))
        if values.size:
            batch_low, batch_high = (float(q) for q in np.quantile(values, [tail, 1.0 - tail]))
    return QualityChange(
        metric=spec.name,
        higher_is_better=spec.higher_is_better,
        reference_value=reference_value,
        batch_value=batch_value,
        drop=drop,
        interval=(low, high),
        batch_interval=(batch_low, batch_high),
        confidence=confidence,
        samples=samples,
        reference_rows=len(y_reference),
        batch_rows=len(y_batch),
    )


def report(
    task: str,
    target: str,
    reference: pd.DataFrame,
    batch: pd.DataFrame,
    *,
    when: datetime | None = None,
    name: str | None = None,
) -> tuple[Any, dict[str, float]]:
    """Evidently's classification/regression preset, batch (current) against the test split
    (reference); frames hold `target` and `prediction`. Returns the snapshot and its scalar values."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Regression, Report
    from evidently.presets import ClassificationPreset, RegressionPreset

    if task == "classification":
        definition = DataDefinition(
            numerical_columns=[PREDICTION],
            categorical_columns=[target],
            classification=[BinaryClassification(target=target, prediction_probas=PREDICTION, pos_label=1)],
        )
        preset: Any = ClassificationPreset()
    else:
        definition = DataDefinition(
            numerical_columns=[target, PREDICTION],
            regression=[Regression(target=target, prediction=PREDICTION)],
        )
        preset = RegressionPreset()
    columns = [target, PREDICTION]
    if task == "classification":  # Evidently wants the labels as the positive label's type (int)
        reference = reference.assign(**{target: reference[target].astype(int)})
        batch = batch.assign(**{target: batch[target].astype(int)})
    snapshot = Report([preset], include_tests=False).run(
        Dataset.from_pandas(batch[columns], data_definition=definition),
        Dataset.from_pandas(reference[columns], data_definition=definition),
        timestamp=when,
        name=name,
    )
    values: dict[str, float] = {}
    for metric in snapshot.dict()["metrics"]:
        value = metric.get("value")
        name = str(metric.get("config", {}).get("type", "")).rsplit(":", 1)[-1]
        if isinstance(value, int | float) and name:
            values[name] = float(value)
    return snapshot, values
