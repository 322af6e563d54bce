"""Final fit: preprocessing fit on train only, the estimator early-stopped on the validation split.

The preprocessor is fit once and the estimator is fit on its output, so the validation split used
for early stopping is transformed with train-only statistics; both are then joined into one
`Pipeline` that takes raw columns. A multiclass estimator is wrapped in `models.ClassLabels` first,
so the pipeline predicts the data's own labels and its probability columns follow the recorded
class order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from reproml import metrics
from reproml.config import Params
from reproml.decisions import DecidedRecord
from reproml.features import FeatureSpec, build_preprocessor
from reproml.models import ClassLabels, class_order, make_estimator


class HistoryRecord(TypedDict):
    """models/history.json, written by `train`: the curve metric, its per-round values on train and
    valid, the early-stopped round, and what `decisions.decide` did (absent in older files)."""

    metric: str
    best_iteration: int | None
    curves: dict[str, list[float]]
    decision: NotRequired[DecidedRecord]


@dataclass
class TrainedModel:
    pipeline: Pipeline
    spec: FeatureSpec
    history_metric: str
    history: dict[str, list[float]] = field(default_factory=dict)
    best_iteration: int | None = None
    fit_seconds: float = 0.0


def _forest_curve(
    forest: Any, sets: dict[str, tuple[np.ndarray, np.ndarray]], task: str
) -> dict[str, list[float]]:
    """A random forest's analogue of boosting rounds: the curve metric of its first k trees.

    Multiclass `y` holds the codes the forest was fit on, so the averaged probabilities' columns are
    those codes' classes."""
    metric = metrics.METRICS[metrics.CURVE[task]]
    curves: dict[str, list[float]] = {}
    for name, (X, y) in sets.items():
        total: np.ndarray | None = None
        scores = []
        for k, tree in enumerate(forest.estimators_, start=1):
            if task == "classification":
                pred = tree.predict_proba(X)[:, 1]
            elif task == "multiclass":
                pred = tree.predict_proba(X)
            else:
                pred = tree.predict(X)
            total = pred if total is None else total + pred
            scores.append(metrics.score(metric, y, total / k))
        curves[name] = [float(s) for s in scores]
    return curves


def fit_model(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    spec: FeatureSpec,
    params: Params,
    classes: Sequence[Any] | None = None,
) -> TrainedModel:
    """Fit preprocessing and the estimator; multiclass `classes` is the column order of the model's
    probabilities (data/schema.json's `classes`)."""
    task = params.data.task
    model = params.train.model
    target = params.data.target
    started = time.perf_counter()
    prep = build_preprocessor(spec, model, params.features.max_categories)
    X_train = prep.fit_transform(train[spec.input_columns])
    X_valid = prep.transform(valid[spec.input_columns])
    y_train = train[target].to_numpy()
    y_valid = valid[target].to_numpy()
    estimator = make_estimator(params.train, task, params.seed, spec.categorical_mask(model))
    if task == "multiclass":
        estimator = ClassLabels(estimator, class_order(y_train, classes))
    history: dict[str, list[float]] = {}
    best: int | None = None
    metric = metrics.CURVE[task]
    if model == "xgboost":
        estimator.fit(X_train, y_train, eval_set=[(X_train, y_train), (X_valid, y_valid)], verbose=False)
        fitted = _inner(estimator)
        rounds = fitted.evals_result()
        key = metrics.METRICS[metric].xgboost[task]
        history = {"train": rounds["validation_0"][key], "valid": rounds["validation_1"][key]}
        best = int(fitted.best_iteration)
    elif model == "hist_gradient_boosting":
        estimator.fit(X_train, y_train, X_val=X_valid, y_val=y_valid)
        fitted = _inner(estimator)
        metric = "loss"
        # Scores are negated losses with the initial (round 0) score first; keep one per round.
        history = {
            "train": [float(-s) for s in fitted.train_score_[1:]],
            "valid": [float(-s) for s in fitted.validation_score_[1:]],
        }
        # 0-based best round, as XGBoost reports it (HGB keeps its extra rounds; XGBoost predicts
        # with trees up to its best round).
        best = int(np.argmin(history["valid"]))
    else:
        estimator.fit(X_train, y_train)
        if model == "random_forest":
            coded = estimator.encode if isinstance(estimator, ClassLabels) else np.asarray
            history = _forest_curve(
                _inner(estimator),
                {"train": (X_train, coded(y_train)), "valid": (X_valid, coded(y_valid))},
                task,
            )
    pipeline = Pipeline([("preprocess", prep), ("model", estimator)])
    return TrainedModel(
        pipeline=pipeline,
        spec=spec,
        history_metric=metric,
        history={k: [float(v) for v in vals] for k, vals in history.items()},
        best_iteration=best,
        fit_seconds=time.perf_counter() - started,
    )


def _inner(estimator: Any) -> Any:
    """The fitted estimator itself, inside a multiclass `ClassLabels` or not."""
    return estimator.estimator_ if isinstance(estimator, ClassLabels) else estimator


def refit_rounds(best_iteration: int | None) -> int | None:
    """The boosting rounds a refit trains: the early-stopped fit's best round (0-based) plus one,
    the trees its predictions used; None for a model without rounds."""
    return None if best_iteration is None else int(best_iteration) + 1


def refit_model(
    frame: pd.DataFrame,
    spec: FeatureSpec,
    params: Params,
    rounds: int | None,
    classes: Sequence[Any] | None = None,
) -> TrainedModel:
    """The same model refit on `frame` (every labelled row of the window, validation and test
    included) with nothing held out: the preprocessing is fit on all of it, boosting runs exactly
    `rounds` rounds (the early-stopped fit's count, `refit_rounds`) with no early stopping, and
    other models fit as they always do. The hyperparameters are `params.train`'s."""
    task, model, target = params.data.task, params.train.model, params.data.target
    if frame.empty:
        raise ValueError("refit_model: no rows to refit on")
    started = time.perf_counter()
    prep = build_preprocessor(spec, model, params.features.max_categories)
    X = prep.fit_transform(frame[spec.input_columns])
    y = frame[target].to_numpy()
    estimator = make_estimator(params.train, task, params.seed, spec.categorical_mask(model))
    if model == "xgboost":
        if rounds is None:
            raise ValueError("refit_model: an XGBoost refit needs the early-stopped fit's round count")
        estimator.set_params(n_estimators=rounds, early_stopping_rounds=None)
    elif model == "hist_gradient_boosting":
        if rounds is None:
            raise ValueError("refit_model: a boosting refit needs the early-stopped fit's round count")
        estimator.set_params(max_iter=rounds, early_stopping=False)
    if task == "multiclass":
        estimator = ClassLabels(estimator, class_order(y, classes))
    if model == "xgboost":
        estimator.fit(X, y, verbose=False)
    else:
        estimator.fit(X, y)
    return TrainedModel(
        pipeline=Pipeline([("preprocess", prep), ("model", estimator)]),
        spec=spec,
        history_metric=metrics.CURVE[task],
        best_iteration=None if rounds is None else rounds - 1,
        fit_seconds=time.perf_counter() - started,
    )
