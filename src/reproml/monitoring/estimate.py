"""Estimated performance without labels: NannyML's CBPE (classification) and DLE (regression).

In production labels come late. What the champion's scores alone say about its quality:

- CBPE (confidence-based performance estimation) calibrates the champion's scores on a labelled
  reference, then reads the expected confusion matrix (and so ROC-AUC, F1, ...) of a batch off its
  calibrated scores. It sees the scores only: it follows a batch whose inputs got harder (covariate
  shift: scores pile up near the cut), and it is blind to a change of P(label | inputs) (concept
  drift). A batch whose labels were shuffled has the same scores, so the same estimate: that is
  the method's known limit (README, "Label-free monitoring").
- DLE (direct loss estimation) fits a model of the champion's absolute error on the reference's
  inputs and prediction, and averages its prediction over the batch (MAE, RMSE, MSE).

The estimator is fitted at monitor time on the reference (a few seconds), never pickled into the
model folder: a pickled estimator is a file that runs code when loaded. This is the only module
importing `nannyml`; its import is slow (~7 s), so it happens inside `estimate`, only when a batch
is estimated.

When the labels arrive, `judge` says which shift it was: realised quality below the estimate's band
is concept drift (the model is wrong in a new way); realised and estimate falling together is
covariate shift (harder inputs: a retrain helps only if a challenger trained on recent data beats
the champion, which the promotion gate decides).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from reproml.metrics import THRESHOLD
from reproml.monitoring.records import EstimateRecord, EstimateReference

CBPE, DLE = "cbpe", "dle"
CONCEPT_DRIFT, COVARIATE_SHIFT, NO_SHIFT = "concept_drift", "covariate_shift", "none"

# reproml's metric name -> NannyML's, per method; a metric missing here is estimated as the task's
# default (roc_auc / rmse) and the record names the metric it estimated
_CBPE_BINARY = {
    "roc_auc": "roc_auc",
    "pr_auc": "average_precision",
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "f1": "f1",
}
_CBPE_MULTICLASS = {
    "roc_auc_ovr": "roc_auc",
    "accuracy": "accuracy",
    "precision_macro": "precision",
    "recall_macro": "recall",
    "f1_macro": "f1",
}
_DLE = {"mae": "mae", "mse": "mse", "rmse": "rmse"}
_DEFAULT = {"classification": "roc_auc", "multiclass": "roc_auc_ovr", "regression": "rmse"}
# NannyML's columns, named so that no input column of DLE can collide with them
_PROBA, _PRED, _TRUE = "_reproml_proba", "_reproml_pred", "_reproml_true"


class EstimateError(ValueError):
    """The reference cannot fit an estimator (too few rows, one class only, no scores)."""


@dataclass(frozen=True)
class Estimate:
    """One batch's estimated metric, its band, and what it was estimated from.

    `reference` names the labelled rows the estimator was fitted on (`source`, `rows`, and the file's
    `md5` or batch id where there is one); `reference_value` is the metric realised on them.
    `baseline` is the level a drop is measured from, `baseline_source` where it was realised: the
    champion's test split, as for the realised quality check, so a slow decline adds up instead of
    being measured month against month (by default the reference itself). `realised` and `error`
    (realised - value) are filled in when the batch's labels arrive; `shift` then says which one
    it was.
    """

    metric: str
    value: float
    lower: float
    upper: float
    method: str
    reference: EstimateReference
    reference_value: float
    sampling_error: float
    higher_is_better: bool = True
    baseline: float | None = None
    baseline_source: str | None = None
    realised: float | None = None
    error: float | None = None
    shift: str = NO_SHIFT
    notes: list[str] = field(default_factory=list)

    @property
    def level(self) -> float:
        """The baseline a drop is measured from (the reference's realised value if none was set)."""
        return self.reference_value if self.baseline is None else self.baseline

    @property
    def drop(self) -> float:
        """How much worse the estimate is than the baseline (positive: worse)."""
        return _worse_by(self.level, self.value, self.higher_is_better)

    @property
    def band_drop(self) -> float:
        """The drop of the band's better edge: above 0, even the optimistic end is worse."""
        edge = self.upper if self.higher_is_better else self.lower
        return _worse_by(self.level, edge, self.higher_is_better)

    def to_dict(self) -> EstimateRecord:
        return {
            "metric": self.metric,
            "value": self.value,
            "lower": self.lower,
            "upper": self.upper,
            "method": self.method,
            "reference": self.reference.copy(),
            "reference_value": self.reference_value,
            "sampling_error": self.sampling_error,
            "higher_is_better": self.higher_is_better,
            "baseline": self.baseline,
            "baseline_source": self.baseline_source,
            "realised": self.realised,
            "error": self.error,
            "shift": self.shift,
            "notes": list(self.notes),
            "drop": self.drop,
        }


def _worse_by(reference: float, value: float, higher_is_better: bool) -> float:
    return reference - value if higher_is_better else value - reference


def method_for(task: str) -> str:
    return DLE if task == "regression" else CBPE


def estimated_metric(task: str, metric: str | None) -> tuple[str, str]:
    """(reproml's metric name, NannyML's) for `monitor.metric`; an unsupported one falls back to the
    task's default (log loss, Brier and R2 have no label-free estimate in NannyML)."""
    table = {"classification": _CBPE_BINARY, "multiclass": _CBPE_MULTICLASS, "regression": _DLE}[task]
    name = metric if metric in table else _DEFAULT[task]
    return name, table[name]


def _nannyml() -> Any:
    """NannyML, imported quietly and without its usage telemetry."""
    os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import nannyml

    logging.getLogger("nannyml").setLevel(logging.ERROR)
    return nannyml


def _score_columns(scores: np.ndarray, task: str, classes: list[Any] | None) -> pd.DataFrame:
    """The scores as NannyML columns: one probability column (binary) or one per class, and the prediction."""
    if task == "multiclass":
        if classes is None or scores.ndim != 2 or scores.shape[1] != len(classes):
            raise EstimateError(f"multiclass scores need one column per class {classes}")
        out = pd.DataFrame({f"{_PROBA}_{i}": scores[:, i] for i in range(len(classes))})
        out[_PRED] = np.asarray(classes, dtype=object)[scores.argmax(axis=1)]
        return out
    return pd.DataFrame({_PROBA: scores, _PRED: scores})


def _dle_inputs(frame: pd.DataFrame) -> pd.DataFrame:
    """The inputs DLE's LightGBM model can read: a timestamp becomes its hour and weekday (the
    absolute time would put every batch beyond the reference's range), the rest as they are."""
    out = frame.copy()
    for column in list(out.columns):
        if pd.api.types.is_datetime64_any_dtype(out[column]):
            when = out.pop(column)
            out[f"{column}_hour"] = when.dt.hour.astype("float64")
            out[f"{column}_dayofweek"] = when.dt.dayofweek.astype("float64")
    return out


def estimate(
    task: str,
    metric: str | None,
    reference_y: np.ndarray,
    reference_scores: np.ndarray,
    batch_scores: np.ndarray,
    reference: EstimateReference,
    *,
    classes: list[Any] | None = None,
    threshold: float | None = None,
    reference_features: pd.DataFrame | None = None,
    batch_features: pd.DataFrame | None = None,
) -> Estimate:
    """The champion's `metric` on a batch estimated from its scores (and, for DLE, its inputs),
    with NannyML's band (3 sampling errors), fitted on the labelled `reference` rows.

    Binary scores are P(positive); `threshold` is the champion's cut for label metrics. A reference
    whose labels hold one class only cannot calibrate: EstimateError.
    """
    from reproml.metrics import metric_spec, score

    name, nml_name = estimated_metric(task, metric)
    reference_y = np.asarray(reference_y)
    keep = pd.notna(reference_y)
    reference_y, reference_scores = reference_y[keep], np.asarray(reference_scores)[keep]
    if len(reference_y) < 2 or len(batch_scores) < 2:
        raise EstimateError(f"estimate needs labelled reference rows and batch rows ({reference})")
    method = method_for(task)
    if method == CBPE and len(pd.unique(reference_y)) < 2:
        raise EstimateError(f"the estimate's reference {reference} holds one class only")
    cut = THRESHOLD if threshold is None else threshold
    labels = classes if task == "multiclass" else None
    spec = metric_spec(name, task, "monitor.metric")
    ref_value = score(spec, reference_y, reference_scores, labels=labels, threshold=cut)
    nml = _nannyml()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == CBPE:
            ref = _score_columns(reference_scores, task, classes)
            cur = _score_columns(np.asarray(batch_scores), task, classes)
            if task == "classification":
                ref[_PRED] = (ref[_PROBA] >= cut).astype(int)
                cur[_PRED] = (cur[_PROBA] >= cut).astype(int)
                proba: Any = _PROBA
                problem = "classification_binary"
            else:
                proba = {c: f"{_PROBA}_{i}" for i, c in enumerate(classes or [])}
                problem = "classification_multiclass"
            ref[_TRUE] = reference_y
            estimator = nml.CBPE(
                metrics=[nml_name],
                y_pred_proba=proba,
                y_pred=_PRED,
                y_true=_TRUE,
                problem_type=problem,
                chunk_number=1,
            )
        else:
            if reference_features is None or batch_features is None:
                raise EstimateError("DLE needs the reference's and the batch's input columns")
            ref = _dle_inputs(reference_features.reset_index(drop=True).loc[keep].reset_index(drop=True))
            cur = _dle_inputs(batch_features.reset_index(drop=True))
            features = [str(c) for c in ref.columns]
            ref[_PRED], cur[_PRED] = reference_scores, np.asarray(batch_scores)
            ref[_TRUE] = reference_y
            estimator = nml.DLE(
                feature_column_names=features, y_pred=_PRED, y_true=_TRUE, metrics=[nml_name], chunk_number=1
            )
        estimator.fit(ref)
        result = estimator.estimate(cur).filter(period="analysis").to_df()
    row = result.iloc[0][nml_name]
    return Estimate(
        metric=name,
        value=float(row["value"]),
        lower=float(row["lower_confidence_boundary"]),
        upper=float(row["upper_confidence_boundary"]),
        method=method,
        reference=reference,
        reference_value=float(ref_value),
        sampling_error=float(row["sampling_error"]),
        higher_is_better=spec.higher_is_better,
        notes=[]
        if name == metric or metric is None
        else [f"monitor.metric {metric!r} has no label-free estimate; estimated {name}"],
    )


def judge(estimate: Estimate, realised: float | None, margin: float) -> Estimate:
    """The estimate with the shift it shows: with `realised` (labels arrived), realised quality worse
    than the band's worse edge is concept drift; else an estimated (or realised) drop beyond
    `margin` is covariate shift. Without labels, only covariate shift can be seen."""
    if realised is None or not math.isfinite(realised):
        shift = COVARIATE_SHIFT if estimate.drop > margin else NO_SHIFT
        return _replace(estimate, shift=shift)
    worse_edge = estimate.lower if estimate.higher_is_better else estimate.upper
    realised_drop = _worse_by(estimate.level, realised, estimate.higher_is_better)
    if _worse_by(worse_edge, realised, estimate.higher_is_better) > 0:
        shift = CONCEPT_DRIFT
    elif estimate.drop > margin and realised_drop > margin:
        shift = COVARIATE_SHIFT
    else:
        shift = NO_SHIFT
    return _replace(estimate, realised=float(realised), error=float(realised - estimate.value), shift=shift)


def with_baseline(estimate: Estimate, value: float, source: str) -> Estimate:
    """The estimate with its drop measured from `value`, realised on `source`."""
    return _replace(estimate, baseline=float(value), baseline_source=source)


def _replace(estimate: Estimate, **changes: Any) -> Estimate:
    return Estimate(**{**asdict(estimate), **changes})


def from_dict(data: Mapping[str, Any]) -> Estimate:
    """An estimate read back from a record (the keys `to_dict` wrote, less the derived `drop`)."""
    known = set(Estimate.__dataclass_fields__)
    return Estimate(**{k: v for k, v in data.items() if k in known})


def describe(estimate: Estimate) -> str:
    """One line for the decision's reasons: the estimated value, its band and the reference."""
    where = estimate.reference.get("source", "the reference")
    level = estimate.baseline_source or where
    return (
        f"estimated {estimate.metric} {estimate.value:.4f} (band [{estimate.lower:.4f}, "
        f"{estimate.upper:.4f}], {estimate.method.upper()}, fitted on {where}) vs {estimate.level:.4f} "
        f"realised on {level}: estimated drop {estimate.drop:.4f}"
    )
