"""The objective: fit one trial's model on the training split, score it on the validation split.

The test split never comes here. Preprocessing is fit once per worker on the training split (it
does not depend on the searched parameters), and for XGBoost the quantised training matrix is
built once too, so a trial pays only for boosting. XGBoost trials report the validation metric
every `report_every` rounds so the pruner can stop a hopeless trial early.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd

from reproml.config import Params, with_model_params
from reproml.features import FeatureSpec, build_preprocessor
from reproml.gate import MetricSpec, score
from reproml.models import make_estimator
from reproml.tuning.space import SPACES

# The XGBoost evaluation metric that moves in the same direction as our metric, for early
# stopping and pruning. Metrics without one early-stop on the loss and are not pruned.
XGB_EVAL_METRIC = {"roc_auc": "auc", "pr_auc": "aucpr", "log_loss": "logloss", "rmse": "rmse", "mae": "mae"}


@dataclass
class TuneData:
    """Training and validation rows, preprocessed with statistics of the training rows only."""

    X_train: Any
    y_train: np.ndarray
    X_valid: Any
    y_valid: np.ndarray
    categorical_mask: list[bool]


def prepare_data(train: pd.DataFrame, valid: pd.DataFrame, spec: FeatureSpec, params: Params) -> TuneData:
    model = params.train.model
    prep = build_preprocessor(spec, model, params.features.max_categories)
    target = params.data.target
    return TuneData(
        X_train=prep.fit_transform(train[spec.input_columns]),
        y_train=train[target].to_numpy(),
        X_valid=prep.transform(valid[spec.input_columns]),
        y_valid=valid[target].to_numpy(),
        categorical_mask=spec.categorical_mask(model),
    )


class _ReportAndPrune:
    """XGBoost callback: report the best validation score so far every `every` rounds; prune.

    The best-so-far is reported (not the round's score) because the trial's final value is the
    score at its best round, so intermediate and final values measure the same thing.
    """

    def __init__(self, trial: optuna.Trial, metric: str, maximize: bool, every: int) -> None:
        import xgboost as xgb

        class Callback(xgb.callback.TrainingCallback):
            def after_iteration(inner, model: Any, epoch: int, evals_log: Any) -> bool:  # noqa: N805
                if (epoch + 1) % every:
                    return False
                history = evals_log["valid"][metric]
                best = max(history) if maximize else min(history)
                trial.report(float(best), step=epoch + 1)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at round {epoch + 1} with {metric} {best:.5f}")
                return False

        self.callback = Callback()


class Objective:
    """Callable on an `optuna.Trial`; returns the validation metric of the trial's model."""

    def __init__(self, data: TuneData, params: Params, metric: MetricSpec, threads: int, report_every: int):
        self.data = data
        self.metric = metric
        self.report_every = report_every
        self.model = params.train.model
        self.params = params.model_copy(update={"train": params.train.model_copy(update={"n_jobs": threads})})
        self.classification = params.data.task == "classification"
        self._dtrain: Any = None
        self._dvalid: Any = None

    def __call__(self, trial: optuna.Trial) -> float:
        values = SPACES[self.model](trial)
        tuned = with_model_params(self.params, values, f"trial {trial.number}")
        if self.model == "xgboost":
            return self._xgboost(trial, tuned)
        estimator = make_estimator(tuned.train, tuned.data.task, tuned.seed, self.data.categorical_mask)
        if self.model == "hist_gradient_boosting":
            estimator.fit(
                self.data.X_train, self.data.y_train, X_val=self.data.X_valid, y_val=self.data.y_valid
            )
            trial.set_user_attr("best_iteration", int(estimator.n_iter_))
        else:
            estimator.fit(self.data.X_train, self.data.y_train)
        if self.classification:
            scores = estimator.predict_proba(self.data.X_valid)[:, 1]
        else:
            scores = estimator.predict(self.data.X_valid)
        return score(self.metric, self.data.y_valid, scores)

    def _matrices(self, threads: int) -> tuple[Any, Any]:
        import xgboost as xgb

        if self._dtrain is None:
            p = self.params.train.xgboost
            types = ["c" if c else "q" for c in self.data.categorical_mask] or None
            categorical = any(self.data.categorical_mask)
            self._dtrain = xgb.QuantileDMatrix(
                self.data.X_train, self.data.y_train, feature_types=types, enable_categorical=categorical,
                max_bin=p.max_bin, nthread=threads,
            )  # fmt: skip
            self._dvalid = xgb.QuantileDMatrix(
                self.data.X_valid, self.data.y_valid, feature_types=types, enable_categorical=categorical,
                ref=self._dtrain, nthread=threads,
            )  # fmt: skip
        return self._dtrain, self._dvalid

    def _xgboost(self, trial: optuna.Trial, tuned: Params) -> float:
        import xgboost as xgb

        p = tuned.train.xgboost
        threads = tuned.train.n_jobs
        dtrain, dvalid = self._matrices(threads)
        eval_metric = XGB_EVAL_METRIC.get(self.metric.name)
        callbacks = []
        if eval_metric is not None:
            callbacks.append(
                _ReportAndPrune(trial, eval_metric, self.metric.higher_is_better, self.report_every).callback
            )
        else:
            eval_metric = "logloss" if self.classification else "rmse"
        booster = xgb.train(
            {
                "objective": "binary:logistic" if self.classification else "reg:squarederror",
                "tree_method": "hist",
                "learning_rate": p.learning_rate,
                "max_depth": p.max_depth,
                "min_child_weight": p.min_child_weight,
                "subsample": p.subsample,
                "colsample_bytree": p.colsample_bytree,
                "reg_lambda": p.reg_lambda,
                "max_bin": p.max_bin,
                "eval_metric": eval_metric,
                "nthread": threads,
                "seed": tuned.seed,
            },
            dtrain,
            num_boost_round=p.n_estimators,
            evals=[(dvalid, "valid")],
            early_stopping_rounds=p.early_stopping_rounds,
            callbacks=callbacks,
            verbose_eval=False,
        )
        best = int(booster.best_iteration)
        trial.set_user_attr("best_iteration", best)
        scores = booster.predict(dvalid, iteration_range=(0, best + 1))
        return score(self.metric, self.data.y_valid, scores)
