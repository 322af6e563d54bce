"""Final fit: preprocessing fit on train only, the estimator early-stopped on the validation split.

The preprocessor is fit once and the estimator is fit on its output, so the validation split used
for early stopping is transformed with train-only statistics; both are then joined into one
`Pipeline` that takes raw columns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from reproml.config import Params
from reproml.features import FeatureSpec, build_preprocessor
from reproml.models import make_estimator


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
    """A random forest's analogue of boosting rounds: the score of its first k trees."""
    from sklearn.metrics import roc_auc_score, root_mean_squared_error

    curves: dict[str, list[float]] = {}
    for name, (X, y) in sets.items():
        total = np.zeros(len(y))
        scores = []
        for k, tree in enumerate(forest.estimators_, start=1):
            pred = tree.predict_proba(X)[:, 1] if task == "classification" else tree.predict(X)
            total += pred
            mean = total / k
            scores.append(
                roc_auc_score(y, mean) if task == "classification" else root_mean_squared_error(y, mean)
            )
        curves[name] = [float(s) for s in scores]
    return curves


def fit_model(train: pd.DataFrame, valid: pd.DataFrame, spec: FeatureSpec, params: Params) -> TrainedModel:
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
    history: dict[str, list[float]] = {}
    best: int | None = None
    metric = "roc_auc" if task == "classification" else "rmse"
    if model == "xgboost":
        estimator.fit(X_train, y_train, eval_set=[(X_train, y_train), (X_valid, y_valid)], verbose=False)
        rounds = estimator.evals_result()
        key = "auc" if task == "classification" else "rmse"
        history = {"train": rounds["validation_0"][key], "valid": rounds["validation_1"][key]}
        best = int(estimator.best_iteration)
    elif model == "hist_gradient_boosting":
        estimator.fit(X_train, y_train, X_val=X_valid, y_val=y_valid)
        metric = "loss"
        # Scores are negated losses with the initial (round 0) score first; keep one per round.
        history = {
            "train": [float(-s) for s in estimator.train_score_[1:]],
            "valid": [float(-s) for s in estimator.validation_score_[1:]],
        }
        # 0-based best round, as XGBoost reports it (HGB keeps its extra rounds; XGBoost predicts
        # with trees up to its best round).
        best = int(np.argmin(history["valid"]))
    else:
        estimator.fit(X_train, y_train)
        if model == "random_forest":
            history = _forest_curve(
                estimator, {"train": (X_train, y_train), "valid": (X_valid, y_valid)}, task
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
