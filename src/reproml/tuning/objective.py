"""The objective: fit one trial's model on the training split, score it on the validation split.

The test split never comes here. Preprocessing is fit once per worker on the training split (it
does not depend on the searched parameters), and for XGBoost the quantised training matrix is
built once too, so a trial pays only for boosting. XGBoost trials report the validation metric
every `report_every` rounds so the pruner can stop a hopeless trial early: read from XGBoost's own
evaluation log when XGBoost computes the same metric (`reproml.metrics` names its twin), computed
from the booster's predictions otherwise (e.g. macro one-vs-rest ROC-AUC, the multiclass default).

Multiclass trials train on class codes 0..K-1 in the recorded class order (`multi:softprob` with
`num_class` K for XGBoost) and are scored on the validation rows' probability matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd

from reproml.config import Params, with_model_params
from reproml.features import FeatureSpec, build_preprocessor
from reproml.metrics import LOSS, MetricSpec, encode, score, xgboost_metric
from reproml.models import class_order, make_estimator, xgboost_params
from reproml.scoring import predict_scores
from reproml.tuning.space import SPACES


@dataclass
class TuneData:
    """Training and validation rows, preprocessed with statistics of the training rows only."""

    X_train: Any
    y_train: np.ndarray
    X_valid: Any
    y_valid: np.ndarray
    categorical_mask: list[bool]
    n_classes: int | None = None  # multiclass: y holds codes 0..n_classes-1


def prepare_data(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    spec: FeatureSpec,
    params: Params,
    classes: Sequence[Any] | None = None,
) -> TuneData:
    """Preprocessed rows; multiclass targets as codes of `classes` (the recorded class order, or the
    sorted training labels without one)."""
    model = params.train.model
    prep = build_preprocessor(spec, model, params.features.max_categories)
    target = params.data.target
    y_train, y_valid = train[target].to_numpy(), valid[target].to_numpy()
    n_classes = None
    if params.data.task == "multiclass":
        order = class_order(y_train, classes)
        y_train, y_valid, n_classes = encode(y_train, order), encode(y_valid, order), len(order)
    return TuneData(
        X_train=prep.fit_transform(train[spec.input_columns]),
        y_train=y_train,
        X_valid=prep.transform(valid[spec.input_columns]),
        y_valid=y_valid,
        categorical_mask=spec.categorical_mask(model),
        n_classes=n_classes,
    )


class _ReportAndPrune:
    """XGBoost callback: report the best validation score so far every `every` rounds; prune.

    The best-so-far is reported (not the round's score) because the trial's final value is the
    score at its best round, so intermediate and final values measure the same thing. `measure`
    gives the value at a report: XGBoost's own log of the same metric (every round counts towards
    the best), or the metric computed from the booster's current predictions (the reports count).
    """

    def __init__(
        self,
        trial: optuna.Trial,
        metric: str,
        maximize: bool,
        every: int,
        measure: Callable[[Any, Any], float],
    ) -> None:
        import xgboost as xgb

        pick = max if maximize else min
        seen: list[float] = []

        class Callback(xgb.callback.TrainingCallback):
            def after_iteration(inner, model: Any, epoch: int, evals_log: Any) -> bool:  # noqa: N805
                if (epoch + 1) % every:
                    return False
                value = measure(model, evals_log)
                if not math.isfinite(value):  # e.g. a class absent from the validation rows
                    return False
                seen.append(value)
                best = pick(seen)
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
        self.task = params.data.task
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
        return score(self.metric, self.data.y_valid, predict_scores(estimator, self.data.X_valid, self.task))

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
        twin = xgboost_metric(self.metric.name, self.task)
        # without a twin, boosting early-stops on the task's loss and the pruner gets the metric
        eval_metric = twin or xgboost_metric(LOSS[self.task], self.task)
        maximize = self.metric.higher_is_better
        measure = self._logged(twin, maximize) if twin else self._computed(dvalid)
        report = _ReportAndPrune(
            trial, self.metric.name, self.metric.higher_is_better, self.report_every, measure
        )
        classes = {"num_class": self.data.n_classes} if self.task == "multiclass" else {}
        booster = xgb.train(
            {
                **xgboost_params(p, self.task),
                **classes,
                "eval_metric": eval_metric,
                "nthread": threads,
                "seed": tuned.seed,
            },
            dtrain,
            num_boost_round=p.n_estimators,
            evals=[(dvalid, "valid")],
            early_stopping_rounds=p.early_stopping_rounds,
            callbacks=[report.callback],
            verbose_eval=False,
        )
        best = int(booster.best_iteration)
        trial.set_user_attr("best_iteration", best)
        scores = booster.predict(dvalid, iteration_range=(0, best + 1))
        return score(self.metric, self.data.y_valid, scores)

    @staticmethod
    def _logged(eval_metric: str, maximize: bool) -> Callable[[Any, Any], float]:
        """The best value so far in XGBoost's own log of the metric (every round counts)."""
        pick = max if maximize else min
        return lambda model, evals_log: float(pick(evals_log["valid"][eval_metric]))

    def _computed(self, dvalid: Any) -> Callable[[Any, Any], float]:
        """The metric of the booster's predictions so far (XGBoost's prediction cache keeps this
        incremental: only the new trees are evaluated)."""
        return lambda model, evals_log: score(self.metric, self.data.y_valid, model.predict(dvalid))
