"""Concept drift, seen where it hurts: the champion's quality on a labelled batch against its quality
on its own test split.

The metric is the promotion gate's (`reproml.metrics.metric_spec` / `score`), so "quality" means
the same number in both places. The two sets of rows are different rows, so the interval is an
unpaired percentile bootstrap (`reproml.bootstrap.unpaired_bootstrap`): each resample redraws the
test rows and the batch rows independently and takes the drop.
`drop` is oriented so that positive always means the champion got worse, for ROC-AUC and RMSE
alike. Multiclass scores are the probability matrix in the champion's class order (`labels`), the
metric a macro one (default: one-vs-rest ROC-AUC, which needs every class among the batch's
labels; a batch without one is "undefined", with the absent classes named, never a guess over the
classes that happen to be there, which would not be the test split's number).

Beside the one judged metric, the record keeps every metric of the task on the batch
(`batch_metrics`) and, for multiclass, each class's precision, recall, F1 and support
(`per_class`): a macro number that holds steady can hide one class collapsing.

Evidently's classification or regression preset renders the same comparison for people
(`report`); its headline values (and per-class values, as `<Metric>.<class>`) are kept in the
record beside ours as a cross-check.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from reproml.bootstrap import unpaired_bootstrap
from reproml.metrics import METRICS, THRESHOLD, MetricSpec, for_task, oriented, per_class, score
from reproml.monitoring.records import QualityChangeRecord
from reproml.monitoring.scores import PREDICTION, proba_columns, scores_of


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
    batch_metrics: dict[str, float] = field(default_factory=dict)  # every metric of the task
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)  # multiclass, on the batch
    note: str | None = None  # why the metric is undefined, when it is

    def to_dict(self) -> QualityChangeRecord:
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "reference_value": self.reference_value,
            "batch_value": self.batch_value,
            "drop": self.drop,
            "interval": self.interval,
            "batch_interval": self.batch_interval,
            "confidence": self.confidence,
            "samples": self.samples,
            "reference_rows": self.reference_rows,
            "batch_rows": self.batch_rows,
            "evidently": dict(self.evidently),
            "batch_metrics": dict(self.batch_metrics),
            "per_class": {k: dict(v) for k, v in self.per_class.items()},
            "note": self.note,
        }


def quality_change(
    spec: MetricSpec,
    y_reference: np.ndarray,
    s_reference: np.ndarray,
    y_batch: np.ndarray,
    s_batch: np.ndarray,
    samples: int,
    confidence: float,
    seed: int,
    labels: list[Any] | None = None,
    task: str | None = None,
    threshold: float = THRESHOLD,
) -> QualityChange:
    """The drop from test split to batch, with its percentile bootstrap interval (NaN if undefined,
    e.g. a batch holding one class only: ROC-AUC has nothing to rank). Multiclass: `labels` is the
    class of each score column, the labels `y_*` hold. With `task`, every metric of the task on the
    batch is kept too, binary label metrics cut at `threshold` (the champion's)."""
    reference_value = score(spec, y_reference, s_reference, labels=labels)
    batch_value = score(spec, y_batch, s_batch, labels=labels)
    drop = oriented(spec, reference_value, batch_value)  # positive: worse on the batch
    (low, high), (batch_low, batch_high) = (math.nan, math.nan), (math.nan, math.nan)
    if math.isfinite(drop):
        (low, high), (batch_low, batch_high) = unpaired_bootstrap(
            spec, y_reference, s_reference, y_batch, s_batch, samples, confidence, seed, labels
        )
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
        batch_metrics={
            m.name: score(m, y_batch, s_batch, labels=labels, threshold=threshold) for m in for_task(task)
        }
        if task
        else {},
        per_class=_per_class(y_batch, s_batch, labels),
        note=_undefined(
            spec, {"test split": (reference_value, y_reference), "batch": (batch_value, y_batch)}, labels
        ),
    )


def check(
    spec: MetricSpec,
    target: str,
    test: pd.DataFrame,
    labelled: pd.DataFrame,
    *,
    classes: list[Any] | None,
    task: str,
    samples: int,
    confidence: float,
    seed: int,
    threshold: float,
    when: datetime | None,
    name: str,
) -> tuple[QualityChange, Any]:
    """The champion's quality on the `labelled` batch rows against its `test` split (both with
    their score columns): the change with its interval and Evidently's values beside it, and the
    Evidently snapshot for the HTML report. One routine for a batch judged with its labels and for
    labels that arrive later."""
    from dataclasses import replace

    change = quality_change(
        spec,
        test[target].to_numpy(),
        scores_of(test, classes),
        labelled[target].to_numpy(),
        scores_of(labelled, classes),
        samples,
        confidence,
        seed,
        labels=classes,
        task=task,
        threshold=threshold,
    )
    snapshot, values = report(task, target, test, labelled, classes=classes, when=when, name=name,
                              threshold=threshold)  # fmt: skip
    return replace(change, evidently=values), snapshot


def _per_class(y: np.ndarray, scores: np.ndarray, labels: list[Any] | None) -> dict[str, dict[str, float]]:
    """Each class's precision, recall, F1 and support on the batch (multiclass only)."""
    if labels is None or np.asarray(scores).ndim != 2 or len(y) == 0:
        return {}
    table = per_class(np.asarray(y), np.asarray(scores, dtype=float), labels)
    return {
        str(row["class"]): {k: float(row[k]) for k in ("precision", "recall", "f1", "support")}
        for _, row in table.iterrows()
    }


def _undefined(
    spec: MetricSpec, values: dict[str, tuple[float, np.ndarray]], labels: list[Any] | None
) -> str | None:
    """Why the metric is NaN where a metric that needs every class meets a set of rows missing one:
    the absent classes, named; None when both values are defined (or for another reason)."""
    if labels is None or not METRICS[spec.name].every_class:
        return None
    notes = []
    for where, (value, y) in values.items():
        if math.isfinite(value):
            continue
        seen = {str(v) for v in pd.unique(np.asarray(y, dtype=object))}
        absent = [c for c in labels if str(c) not in seen]
        if absent:
            notes.append(f"classes {absent} have no labelled rows in the {where}")
    return "; ".join(notes) + f": {spec.name} needs every class" if notes else None


def report(
    task: str,
    target: str,
    reference: pd.DataFrame,
    batch: pd.DataFrame,
    *,
    classes: list[Any] | None = None,
    when: datetime | None = None,
    name: str | None = None,
    threshold: float = THRESHOLD,
) -> tuple[Any, dict[str, float]]:
    """Evidently's classification/regression preset, batch (current) against the test split
    (reference); frames hold `target` and the score columns (`reproml.monitoring.scores`; for
    multiclass `classes` names them; binary labels are cut at `threshold`, the champion's). Returns
    the snapshot and its values: scalars by metric name, per-class values as `<Metric>.<class>`.

    Evidently calls sklearn's precision without `zero_division`: where nothing is predicted
    positive it reports 0, as our metrics do, and sklearn's UndefinedMetricWarning about it is
    silenced here rather than printed for every such batch."""
    import warnings

    from evidently import Dataset, Report
    from sklearn.exceptions import UndefinedMetricWarning

    definition, preset, frames = _evidently_input(task, target, reference, batch, classes, threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        snapshot = Report([preset], include_tests=False).run(
            Dataset.from_pandas(frames[1], data_definition=definition),
            Dataset.from_pandas(frames[0], data_definition=definition),
            timestamp=when,
            name=name,
        )
    values: dict[str, float] = {}
    for metric in snapshot.dict()["metrics"]:
        value = metric.get("value")
        kind = str(metric.get("config", {}).get("type", "")).rsplit(":", 1)[-1]
        if isinstance(value, int | float) and kind:
            values[kind] = float(value)
        elif isinstance(value, dict) and kind:  # ...ByLabel: {class: value}
            values |= {f"{kind}.{k}": float(v) for k, v in value.items() if isinstance(v, int | float)}
    return snapshot, values


def _evidently_input(
    task: str,
    target: str,
    reference: pd.DataFrame,
    batch: pd.DataFrame,
    classes: list[Any] | None,
    threshold: float = THRESHOLD,
) -> tuple[Any, Any, tuple[pd.DataFrame, pd.DataFrame]]:
    """Data definition, preset and the (reference, batch) frames Evidently reads, per task."""
    from evidently import BinaryClassification, DataDefinition, Regression
    from evidently.presets import ClassificationPreset, RegressionPreset

    columns = [target, PREDICTION]
    if task == "multiclass":
        return _multiclass_input(reference, batch, target, list(classes or []))
    if task == "classification":  # Evidently wants the labels as the positive label's type (int)
        definition = DataDefinition(
            numerical_columns=[PREDICTION],
            categorical_columns=[target],
            classification=[BinaryClassification(target=target, prediction_probas=PREDICTION, pos_label=1)],
        )
        as_int = {target: lambda f: f[target].astype(int)}
        return (
            definition,
            ClassificationPreset(probas_threshold=threshold),
            (reference.assign(**as_int)[columns], batch.assign(**as_int)[columns]),
        )
    definition = DataDefinition(
        numerical_columns=[target, PREDICTION],
        regression=[Regression(target=target, prediction=PREDICTION)],
    )
    return definition, RegressionPreset(), (reference[columns], batch[columns])


def _multiclass_input(
    reference: pd.DataFrame, batch: pd.DataFrame, target: str, classes: list[Any]
) -> tuple[Any, Any, tuple[pd.DataFrame, pd.DataFrame]]:
    """Labels, predicted class and one probability column per class, all named by the class as text
    (Evidently reads a probability column's name as its class). The probabilities go in only when
    both frames hold every class: Evidently's per-class ROC-AUC fails on a class without rows, and
    then the report shows the label metrics alone (our record names the absent classes)."""
    from evidently import DataDefinition, MulticlassClassification
    from evidently.presets import ClassificationPreset

    names = [str(c) for c in classes]
    label, predicted = "target", "prediction"
    while label in names:  # a class called "target" must not collide with the label column
        label = f"_{label}"
    while predicted in names or predicted == label:
        predicted = f"_{predicted}"

    def frame(part: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame({label: part[target].astype(str), predicted: part[PREDICTION].astype(str)})
        proba = part[proba_columns(classes)].to_numpy(dtype=float)
        proba = proba / proba.sum(axis=1, keepdims=True)  # float32 rows sum to one within 1e-7 only
        for k, text in enumerate(names):
            out[text] = proba[:, k]
        return out.reset_index(drop=True)

    every = all(set(names) <= set(part[target].astype(str)) for part in (reference, batch))
    definition = DataDefinition(
        numerical_columns=names if every else [],
        categorical_columns=[label, predicted],
        classification=[
            MulticlassClassification(
                target=label, prediction_labels=predicted, prediction_probas=names if every else None
            )
        ],
    )
    keep = [label, predicted, *(names if every else [])]
    return definition, ClassificationPreset(), (frame(reference)[keep], frame(batch)[keep])


def _metric_key(*parts: str) -> str:
    """An MLflow metric name from parts that may hold a class label as the user wrote it."""
    return ".".join(re.sub(r"[^\w\- ]+", "_", part) for part in parts)


def tracked_metrics(change: QualityChangeRecord | None) -> dict[str, float | None]:
    """A recorded quality change's detail as MLflow metric names: every metric of the task on the
    batch (`quality.<metric>`), each class's precision, recall and F1 (`quality.<stat>.<class>`)
    and Evidently's values (`evidently.<Metric>[.<class>]`)."""
    out: dict[str, float | None] = {}
    if change is None:
        return out
    for name, value in (change.get("batch_metrics") or {}).items():
        out[_metric_key("quality", name)] = value
    for label, stats in (change.get("per_class") or {}).items():
        for stat in ("precision", "recall", "f1"):
            out[_metric_key("quality", stat, str(label))] = stats.get(stat)
    for name, value in (change.get("evidently") or {}).items():
        out[_metric_key("evidently", *name.split(".", 1))] = value
    return out
