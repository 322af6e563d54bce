"""Every metric the platform reports, tunes on, gates on or monitors: one table, sklearn underneath.

A row says what a metric is called, which tasks it belongs to, which way is better, what it reads
from the scores, the sklearn function that computes it, and the XGBoost evaluation metric that
computes the same number while boosting (for early stopping and pruning). `evaluate` reports the
rows of a task, `tune` optimises one, the promotion gate and monitoring compare two models on one;
they all call `score`, so a metric means the same thing everywhere.

Scores, per task:
- `classification` (binary): a 1-D array of P(positive), the positive class coded 1 (ingest codes
  the target 0/1); label metrics cut it at `threshold` (0.5, which counts as positive).
- `multiclass`: a 2-D array, one row per example and one probability column per class, columns in
  the order of `labels` (the class order recorded in data/schema.json and on the model as
  `classes_`); label metrics take the most probable class.
- `regression`: a 1-D array of predictions.

A metric that is undefined on its input (no rows, NaN or infinite scores, a ranking metric that
needs every class present, R2 of one row) is NaN, never an exception: the gate and monitoring turn
NaN into a clear verdict. Inputs that cannot belong together (lengths, a label the model does not
know) still raise, because that is a caller's bug or a schema mismatch, not an undefined metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from reproml.errors import ConfigError

TASKS = ("classification", "multiclass", "regression")
Needs = Literal["probabilities", "labels", "values"]
MetricFunction = Callable[[np.ndarray, np.ndarray, np.ndarray | None, float], float]

THRESHOLD = 0.5  # the cut from P(positive) to a binary label
_EPS = 1e-15  # log loss clips probabilities here, so a certain wrong answer costs ~34.5, not infinity


class UnknownMetricError(ConfigError, ValueError):
    """A metric name the task does not have: a ConfigError (the CLI prints it plainly) that is also a
    ValueError (what a caller passing a bad name programmatically expects)."""


@dataclass(frozen=True)
class Metric:
    """One row of the table.

    `needs`: `probabilities` (the scores as probabilities), `labels` (the predicted class only, cut
    at the threshold or the most probable class) or `values` (regression predictions).
    `every_class`: undefined unless every class occurs in `y` (ranking metrics).
    `xgboost`: per task, the XGBoost `eval_metric` whose value IS this metric (same number, same
    direction), so boosting can early-stop and report to the pruner on it.
    `floor`: the value a first model must reach when `promote.floor` is null; None means "beat a
    constant prediction on the same rows" (the gate computes that floor in the data's own units).
    `sklearn_scorer`: sklearn's scorer string for the same number (oriented higher-is-better), where
    one exists, for sklearn's own tools (permutation importance).
    """

    name: str
    tasks: frozenset[str]
    higher_is_better: bool
    needs: Needs
    function: MetricFunction
    every_class: bool = False
    xgboost: Mapping[str, str] = field(default_factory=dict)
    floor: float | None = None
    sklearn_scorer: str | None = None


@dataclass(frozen=True)
class MetricSpec:
    """A metric chosen for a purpose (`tune.metric`, `promote.metric`, `monitor.metric`): its name
    and direction, resolved against the table by `metric_spec`."""

    name: str
    higher_is_better: bool

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        """Optuna's name for the metric's direction."""
        return "maximize" if self.higher_is_better else "minimize"


def predicted_labels(scores: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Binary: 1 where P(positive) >= threshold; multiclass: the column (class code) most probable."""
    if scores.ndim == 2:
        return np.asarray(np.argmax(scores, axis=1))
    return (scores >= threshold).astype(int)


def _codes(scores: np.ndarray) -> list[int]:
    """Every class code of a score matrix's columns, so sklearn knows absent classes exist."""
    return list(range(scores.shape[1]))


def _accuracy(y: np.ndarray, s: np.ndarray, w: np.ndarray | None, t: float) -> float:
    return float(skm.accuracy_score(y, predicted_labels(s, t), sample_weight=w))


def _binary(fn: Callable[..., Any]) -> MetricFunction:
    """A binary label metric of sklearn (precision, recall, F1), 0 where it divides by zero."""

    def metric(y: np.ndarray, s: np.ndarray, w: np.ndarray | None, t: float) -> float:
        return float(fn(y, predicted_labels(s, t), sample_weight=w, zero_division=0))

    return metric


def _averaged(fn: Callable[..., Any], average: str) -> MetricFunction:
    """A multiclass label metric averaged over every class (`macro`: each class counts the same;
    `weighted`: by its number of rows), 0 for a class never predicted."""

    def metric(y: np.ndarray, s: np.ndarray, w: np.ndarray | None, t: float) -> float:
        labels = predicted_labels(s, t)
        return float(fn(y, labels, labels=_codes(s), average=average, sample_weight=w, zero_division=0))

    return metric


def _log_loss(y: np.ndarray, s: np.ndarray, w: np.ndarray | None, t: float) -> float:
    if s.ndim == 2:
        proba = np.clip(s, _EPS, 1.0)
        return float(
            skm.log_loss(y, proba / proba.sum(axis=1, keepdims=True), sample_weight=w, labels=_codes(s))
        )
    return float(skm.log_loss(y, np.clip(s, _EPS, 1 - _EPS), sample_weight=w, labels=[0, 1]))


def _brier(y: np.ndarray, s: np.ndarray, w: np.ndarray | None, t: float) -> float:
    """Mean squared distance between the probabilities and the one-hot labels (binary: of P(positive)
    to 0/1); lower is better, and what calibration should lower."""
    if s.ndim == 2:
        proba = s / s.sum(axis=1, keepdims=True)
        return float(skm.brier_score_loss(y, proba, sample_weight=w, labels=_codes(s)))
    return float(skm.brier_score_loss(y, np.clip(s, 0.0, 1.0), sample_weight=w, pos_label=1))


def _roc_auc(y: np.ndarray, s: np.ndarray, w: np.ndarray | None, t: float) -> float:
    return float(skm.roc_auc_score(y, s, sample_weight=w))


def _pr_auc(y: np.ndarray, s: np.ndarray, w: np.ndarray | None, t: float) -> float:
    return float(skm.average_precision_score(y, s, sample_weight=w))


def _roc_auc_ovr(y: np.ndarray, s: np.ndarray, w: np.ndarray | None, t: float) -> float:
    """Macro one-vs-rest ROC-AUC: each class's AUC against all others, averaged with equal weight,
    so a rare class counts as much as a common one."""
    proba = s / s.sum(axis=1, keepdims=True)
    return float(
        skm.roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=_codes(s), sample_weight=w)
    )


def _mae(y: np.ndarray, s: np.ndarray, w: np.ndarray | None, t: float) -> float:
    return float(skm.mean_absolute_error(y, s, sample_weight=w))


def _mse(y: np.ndarray, s: np.ndarray, w: np.ndarray | None, t: float) -> float:
    return float(skm.mean_squared_error(y, s, sample_weight=w))


def _rmse(y: np.ndarray, s: np.ndarray, w: np.ndarray | None, t: float) -> float:
    return float(skm.root_mean_squared_error(y, s, sample_weight=w))


def _r2(y: np.ndarray, s: np.ndarray, w: np.ndarray | None, t: float) -> float:
    if len(y) < 2:
        return math.nan
    return float(skm.r2_score(y, s, sample_weight=w, force_finite=False))


# `promote.floor: null` for the ranking metrics: the floor the bundled flights were always held to.
AUC_FLOOR = 0.70

_BINARY = frozenset({"classification"})
_MULTICLASS = frozenset({"multiclass"})
_CLASSES = _BINARY | _MULTICLASS
_REGRESSION = frozenset({"regression"})

# Table order is report order (metrics.json, the MLflow run, error messages).
TABLE: tuple[Metric, ...] = (
    Metric("accuracy", _CLASSES, True, "labels", _accuracy),
    Metric("precision", _BINARY, True, "labels", _binary(skm.precision_score)),
    Metric("recall", _BINARY, True, "labels", _binary(skm.recall_score)),
    Metric("f1", _BINARY, True, "labels", _binary(skm.f1_score)),
    Metric("precision_macro", _MULTICLASS, True, "labels", _averaged(skm.precision_score, "macro")),
    Metric("recall_macro", _MULTICLASS, True, "labels", _averaged(skm.recall_score, "macro")),
    Metric("f1_macro", _MULTICLASS, True, "labels", _averaged(skm.f1_score, "macro")),
    Metric("f1_weighted", _MULTICLASS, True, "labels", _averaged(skm.f1_score, "weighted")),
    Metric(
        "roc_auc",
        _BINARY,
        True,
        "probabilities",
        _roc_auc,
        True,
        {"classification": "auc"},
        floor=AUC_FLOOR,
        sklearn_scorer="roc_auc",
    ),
    Metric("roc_auc_ovr", _MULTICLASS, True, "probabilities", _roc_auc_ovr, True, floor=AUC_FLOOR),
    Metric("pr_auc", _BINARY, True, "probabilities", _pr_auc, True, {"classification": "aucpr"}),
    Metric(
        "log_loss",
        _CLASSES,
        False,
        "probabilities",
        _log_loss,
        xgboost={"classification": "logloss", "multiclass": "mlogloss"},
    ),
    Metric("brier", _CLASSES, False, "probabilities", _brier),
    Metric("mae", _REGRESSION, False, "values", _mae, xgboost={"regression": "mae"}),
    Metric("mse", _REGRESSION, False, "values", _mse),
    Metric(
        "rmse",
        _REGRESSION,
        False,
        "values",
        _rmse,
        xgboost={"regression": "rmse"},
        sklearn_scorer="neg_root_mean_squared_error",
    ),
    Metric("r2", _REGRESSION, True, "values", _r2),
)
METRICS: dict[str, Metric] = {m.name: m for m in TABLE}

# The metric a task is judged on when params name none (tune, promote, monitor, the overfit check).
# Multiclass uses macro one-vs-rest ROC-AUC so `promote.floor` and the margins keep their AUC scale.
PRIMARY: dict[str, str] = {"classification": "roc_auc", "multiclass": "roc_auc_ovr", "regression": "rmse"}
# The metric of the learning curve and of XGBoost's early stopping in the final fit.
CURVE: dict[str, str] = {"classification": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}
# The task's loss: what XGBoost early-stops on when the tuned metric has no XGBoost twin.
LOSS: dict[str, str] = {"classification": "log_loss", "multiclass": "log_loss", "regression": "rmse"}
# The columns `reproml runs` shows per task (test split; the primary metric first).
HEADLINE: dict[str, tuple[str, ...]] = {
    "classification": ("roc_auc", "pr_auc", "f1"),
    "multiclass": ("roc_auc_ovr", "log_loss", "f1_macro"),
    "regression": ("rmse", "mae", "r2"),
}


def for_task(task: str) -> list[Metric]:
    """The task's metrics, in report order."""
    _check_task(task)
    return [m for m in TABLE if task in m.tasks]


def metric_spec(name: str | None, task: str, key: str = "promote.metric") -> MetricSpec:
    """Resolve a configured metric name (`key` says which setting, for the error); None is the
    task's primary metric."""
    _check_task(task)
    name = PRIMARY[task] if name is None else name
    known = [m.name for m in for_task(task)]
    if name not in known:
        raise UnknownMetricError(
            f"unknown metric {name!r} for {task} ({key}): expected one of {', '.join(known)}"
        )
    return MetricSpec(name=name, higher_is_better=METRICS[name].higher_is_better)


def xgboost_metric(name: str, task: str) -> str | None:
    """The XGBoost eval_metric that computes exactly `name` for `task`, if there is one."""
    return METRICS[name].xgboost.get(task)


def xgboost_eval_metrics(task: str) -> list[str]:
    """The eval metrics of a final XGBoost fit: the task's loss, then its learning-curve metric
    (XGBoost early-stops on the last one), each once."""
    names = (METRICS[LOSS[task]].xgboost[task], METRICS[CURVE[task]].xgboost[task])
    return list(dict.fromkeys(names))


def oriented(spec: MetricSpec | Metric, new: float, old: float) -> float:
    """How much better `new` is than `old`: positive means better, whichever way the metric points."""
    return new - old if spec.higher_is_better else old - new


def encode(y: np.ndarray, labels: Sequence[Any]) -> np.ndarray:
    """Each label's position in `labels` (the score columns' class order); unknown labels raise."""
    order = pd.Index(list(labels))
    if not order.is_unique:
        raise ValueError(f"class labels must be distinct, got {list(labels)}")
    codes = order.get_indexer(pd.Index(np.asarray(y, dtype=object)))
    if (codes < 0).any():
        unknown = sorted({str(v) for v in np.asarray(y, dtype=object)[codes < 0]})[:5]
        raise ValueError(f"labels {unknown} are not among the model's classes {list(labels)}")
    return np.asarray(codes, dtype=np.int64)


def score(
    spec: MetricSpec | Metric,
    y: np.ndarray,
    scores: np.ndarray,
    sample_weight: np.ndarray | None = None,
    labels: Sequence[Any] | None = None,
    threshold: float = THRESHOLD,
) -> float:
    """The metric of `scores` against `y`, or NaN where it is undefined (module docstring).

    Multiclass `scores` are 2-D; `labels` names the class of each column, and `y` holds those
    labels. Without `labels`, `y` must already hold column positions (0..K-1).
    """
    metric = METRICS[spec.name]
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    check_same_length(y, scores, weight)
    if scores.ndim == 2:
        if pd.isna(y).any():
            return math.nan  # an unlabelled row, as a NaN label is for binary and regression
        y = as_codes(y, scores, labels)
    if len(y) == 0 or (weight is not None and not weight.sum() > 0):
        return math.nan
    if not (np.all(np.isfinite(scores)) and all_finite(y)):
        return math.nan
    if metric.every_class and not _every_class_present(y, scores, weight):
        return math.nan  # no ranking to judge (AP would be a meaningless 0 or 1)
    value = metric.function(y, scores, weight, threshold)
    return value if math.isfinite(value) else math.nan


def class_codes(y: np.ndarray, scores: np.ndarray, labels: Sequence[Any] | None) -> np.ndarray:
    """Multiclass labels as score-column positions, once, so resamples and slices skip the lookup;
    anything else (1-D scores, no labels, an unlabelled row) is returned as it is."""
    if labels is None or scores.ndim != 2 or pd.isna(y).any():
        return y
    return encode(y, labels)


def as_codes(y: np.ndarray, scores: np.ndarray, labels: Sequence[Any] | None) -> np.ndarray:
    """Multiclass `y` as column positions of `scores`: encoded by `labels`, or checked to be codes."""
    if labels is not None:
        if len(labels) != scores.shape[1]:
            raise ValueError(f"{scores.shape[1]} score columns but {len(labels)} class labels {list(labels)}")
        return encode(y, labels)
    codes = np.asarray(y)
    if len(codes) and not (
        np.issubdtype(codes.dtype, np.integer) and codes.min() >= 0 and codes.max() < scores.shape[1]
    ):
        raise ValueError(f"without class labels, y must hold column positions 0..{scores.shape[1] - 1}")
    return codes


def _every_class_present(y: np.ndarray, scores: np.ndarray, weight: np.ndarray | None) -> bool:
    seen = y if weight is None else y[weight > 0]
    if scores.ndim == 2:
        return bool(len(np.unique(seen)) == scores.shape[1])
    return bool((seen == 1).any() and (seen != 1).any())


def per_class(y: np.ndarray, scores: np.ndarray, labels: Sequence[Any]) -> pd.DataFrame:
    """Precision, recall, F1 and support of each class (most probable class predicted), one row per
    class in `labels` order: what macro averages hide."""
    codes = as_codes(np.asarray(y), np.asarray(scores), labels)
    predicted = predicted_labels(np.asarray(scores, dtype=np.float64))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        codes, predicted, labels=list(range(len(labels))), zero_division=0
    )
    return pd.DataFrame(
        {
            "class": [str(v) for v in labels],
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
        }
    )


def check_same_length(*arrays: np.ndarray | None) -> None:
    lengths = {len(a) for a in arrays if a is not None}
    if len(lengths) > 1:
        raise ValueError(f"arrays must have one value per row; got lengths {sorted(lengths)}")


def all_finite(values: np.ndarray) -> bool:
    """True unless a numeric array holds NaN/inf (labels of other dtypes cannot)."""
    return not np.issubdtype(values.dtype, np.number) or bool(np.all(np.isfinite(values)))


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: expected one of {sorted(TASKS)}")
