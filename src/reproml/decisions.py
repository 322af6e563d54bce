"""From a fitted model's scores to the decisions it serves: calibration and the binary threshold.

`decide` takes the pipeline `train.fit_model` returns (preprocessing + estimator) and, on the
validation split, optionally calibrates its probabilities (`train.calibration`: sklearn's
`CalibratedClassifierCV` over the frozen, already fitted estimator) and, for binary
classification, chooses the threshold (`evaluate.threshold`, `reproml.thresholds`) on the
calibrated probabilities. The threshold lives in the model: its last step becomes sklearn's
`FixedThresholdClassifier` over the frozen estimator, so `predict` (and the registered model's
pyfunc `predict`) returns labels cut there, while `predict_proba` still returns the probabilities.
The pipeline keeps its two steps (`preprocess`, `model`) and takes raw columns as before.

Multiclass has no threshold: `predict` is the most probable class (after calibration, if any).
The validation split is used three times for a calibrated binary model: early stopping, the
calibration map, and the threshold; numbers measured on it are optimistic, the test split's are not.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from reproml import thresholds
from reproml.errors import ReproError
from reproml.metrics import METRICS, THRESHOLD, score


class DecidedRecord(TypedDict):
    """`Decision.to_dict`: what `decide` did, as models/history.json keeps it (`decision`)."""

    calibration: str
    threshold: thresholds.ThresholdRecord | None
    brier_valid: dict[str, float]  # before / after calibration


@dataclass(frozen=True)
class Decision:
    """What `decide` did: the calibration method, the threshold choice (binary only) and the Brier
    score on the validation split before and after calibration."""

    calibration: str
    threshold: thresholds.ThresholdChoice | None
    brier_valid: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> DecidedRecord:
        return {
            "calibration": self.calibration,
            "threshold": None if self.threshold is None else self.threshold.to_dict(),
            "brier_valid": dict(self.brier_valid),
        }


def decide(
    pipeline: Pipeline,
    valid: pd.DataFrame,
    input_columns: list[str],
    target: str,
    task: str,
    calibration: str = "none",
    rule: str | float = "f1",
    cost_fp: float = 1.0,
    cost_fn: float = 1.0,
) -> tuple[Pipeline, Decision]:
    """The served model and what was decided; regression models come back unchanged."""
    from reproml.scoring import predict_scores

    if task == "regression":
        return pipeline, Decision("none", None)
    X, y = valid[input_columns], valid[target].to_numpy()
    labels = list(pipeline.classes_) if task == "multiclass" else None
    brier = {"before": score(METRICS["brier"], y, predict_scores(pipeline, X, task), labels=labels)}
    if calibration != "none":
        pipeline = _calibrated(pipeline, X, y, calibration, task)
        brier["after"] = score(METRICS["brier"], y, predict_scores(pipeline, X, task), labels=labels)
    if task != "classification":
        return pipeline, Decision(calibration, None, brier)
    choice = thresholds.choose(y, predict_scores(pipeline, X, task), rule, cost_fp, cost_fn)
    return with_threshold(pipeline, choice.threshold, X, y), Decision(calibration, choice, brier)


def _calibrated(pipeline: Pipeline, X: pd.DataFrame, y: np.ndarray, method: str, task: str) -> Pipeline:
    """The pipeline with its estimator's probabilities mapped by a calibrator fit on (`X`, `y`)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    from reproml.models import ClassLabels

    prep, estimator = pipeline.steps[0][1], pipeline.steps[-1][1]
    Xt = prep.transform(X)
    if isinstance(estimator, ClassLabels):  # calibrate the codes the inner estimator predicts
        codes = estimator.encode(y)
        absent = [c for k, c in enumerate(estimator.classes_) if k not in set(codes.tolist())]
        if absent:
            raise ReproError(
                f"train.calibration={method!r} needs every class in the validation split; classes "
                f"{[str(c) for c in absent]} have no rows there: set train.calibration: none"
            )
        labelled = copy.copy(estimator)
        labelled.estimator_ = CalibratedClassifierCV(FrozenEstimator(estimator.estimator_), method=method)
        labelled.estimator_.fit(Xt, codes)
        return Pipeline([pipeline.steps[0], (pipeline.steps[-1][0], labelled)])
    if len(np.unique(y)) < 2:
        raise ReproError(
            f"train.calibration={method!r} needs both classes in the validation split; "
            "set train.calibration: none"
        )
    calibrated = CalibratedClassifierCV(FrozenEstimator(estimator), method=method).fit(Xt, y)
    return Pipeline([pipeline.steps[0], (pipeline.steps[-1][0], calibrated)])


def with_threshold(pipeline: Pipeline, threshold: float, X: pd.DataFrame, y: np.ndarray) -> Pipeline:
    """The pipeline whose `predict` cuts P(positive) at `threshold` (sklearn's FixedThresholdClassifier
    over the frozen estimator; `X`, `y` only satisfy its `fit`, nothing is refit)."""
    from sklearn.frozen import FrozenEstimator
    from sklearn.model_selection import FixedThresholdClassifier

    prep, estimator = pipeline.steps[0][1], pipeline.steps[-1][1]
    cut = FixedThresholdClassifier(
        FrozenEstimator(estimator), threshold=threshold, response_method="predict_proba"
    )
    cut.fit(prep.transform(X), y)
    return Pipeline([pipeline.steps[0], (pipeline.steps[-1][0], cut)])


def threshold_of(model: Any) -> float:
    """The cut a binary model's `predict` applies: its FixedThresholdClassifier's, else 0.5 (a model
    from before thresholds were chosen predicts with XGBoost's / sklearn's own 0.5)."""
    from sklearn.model_selection import FixedThresholdClassifier

    final = model.steps[-1][1] if isinstance(model, Pipeline) else model
    if isinstance(final, FixedThresholdClassifier) and isinstance(final.threshold, int | float):
        return float(final.threshold)
    return THRESHOLD


def uncalibrated(model: Any) -> Any:
    """The same pipeline without its calibration map (and threshold): the raw estimator's
    probabilities, for the before/after comparison. A model without calibration is returned as is
    (less its threshold step, which does not change probabilities)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import FixedThresholdClassifier

    from reproml.models import ClassLabels

    if not isinstance(model, Pipeline):
        return model
    final = model.steps[-1][1]
    if isinstance(final, FixedThresholdClassifier):
        final = final.estimator_.estimator  # FrozenEstimator -> what it froze
    if isinstance(final, CalibratedClassifierCV):
        final = final.estimator.estimator
    elif isinstance(final, ClassLabels) and isinstance(
        getattr(final, "estimator_", None), CalibratedClassifierCV
    ):
        final = copy.copy(final)
        final.estimator_ = final.estimator_.estimator.estimator
    return Pipeline([model.steps[0], (model.steps[-1][0], final)])
