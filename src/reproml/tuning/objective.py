"""The objective: fit one trial's model on the training split, score it on the validation split.

The test split never comes here. Preprocessing is fit once per worker on the training split (it
does not depend on the searched parameters), and for XGBoost the quantised training matrix is
built once too, so a trial pays only for boosting. XGBoost trials report the validation metric
every `report_every` rounds so the pruner can stop a hopeless trial early: read from XGBoost's own
evaluation log when XGBoost computes the same metric (`reproml.metrics` names its twin), computed
from the booster's predictions otherwise (e.g. macro one-vs-rest ROC-AUC, the multiclass default).

Multiclass trials train on class codes 0..K-1 in the recorded class order (`multi:softprob` with
`num_class` K for XGBoost) and are scored on the validation rows' probability matrix.

With `tune.cv_folds` N > 1 a trial is also scored on N - 1 expanding-window folds inside the
training split (`time_folds`): one validation month picks models that happen to suit that month
(deep trees that peak early on it), and the mean over several later stretches of time is a steadier
guide to the month after. The validation split is scored first, with the pruner watching it; only
a trial that survives it pays for the other folds. Preprocessing stays fit on the whole training
split (its statistics reach the earlier folds' validation rows: category frequencies and, for
linear models, medians and scales; nothing of the target).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    # extra folds inside the training rows: (fit rows, validation rows) as positions in X_train
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def time_folds(when: pd.Series, n_folds: int, fold_rows: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n_folds` expanding-window folds over rows timed by `when`, newest first: fold k validates on
    the k-th newest stretch of about `fold_rows` rows and fits on every row before it. Cuts fall
    between distinct times, so rows of one timestamp stay on one side. Raises ValueError when the
    rows cannot hold the folds with a fitting part at least as large as one stretch."""
    if n_folds <= 0:
        return []
    times = pd.to_datetime(when).to_numpy()
    if pd.isna(times).any():
        raise ValueError("rows without a time cannot be placed in a time fold")
    order = np.sort(times)
    total = len(order)
    if fold_rows <= 0 or total - n_folds * fold_rows < fold_rows:
        raise ValueError(
            f"{total} training rows cannot hold {n_folds} earlier validation folds of {fold_rows} rows "
            "each plus a fitting part as large"
        )
    folds = []
    end = order[-1] + np.timedelta64(1, "ns")
    for k in range(1, n_folds + 1):
        cut = order[total - k * fold_rows]  # rows at or after this time validate
        valid = np.flatnonzero((times >= cut) & (times < end))
        fit = np.flatnonzero(times < cut)
        if len(fit) == 0 or len(valid) == 0:
            raise ValueError(f"time fold {k} is empty: the training rows share too few timestamps")
        folds.append((fit, valid))
        end = cut
    return folds


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
    folds: list[tuple[np.ndarray, np.ndarray]] = []
    time_column = spec.time_column
    # undated data (a random split) has no windows in time: the valid split only
    extra = params.tune.cv_folds - 1 if time_column is not None and time_column in train.columns else 0
    if extra:
        from reproml.errors import ConfigError

        assert time_column is not None
        try:
            # each fold as many rows as the validation split, fewer when the training split is short
            folds = time_folds(train[time_column], extra, min(len(valid), len(train) // (extra + 1)))
        except ValueError as exc:
            raise ConfigError(f"tune.cv_folds: {params.tune.cv_folds}: {exc}") from None
    return TuneData(
        X_train=prep.fit_transform(train[spec.input_columns]),
        y_train=y_train,
        X_valid=prep.transform(valid[spec.input_columns]),
        y_valid=y_valid,
        categorical_mask=spec.categorical_mask(model),
        n_classes=n_classes,
        folds=folds,
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
        self._fold_matrices: list[tuple[Any, Any]] = []

    def __call__(self, trial: optuna.Trial) -> float:
        values = SPACES[self.model](trial)
        tuned = with_model_params(self.params, values, f"trial {trial.number}")
        if self.model == "xgboost":
            value = self._xgboost(trial, tuned)
        else:
            value, best = self._fit_and_score(
                tuned, self.data.X_train, self.data.y_train, self.data.X_valid, self.data.y_valid
            )
            if best is not None:
                trial.set_user_attr("best_iteration", best)
        if not self.data.folds:
            return value
        # Only a trial the pruner let finish on the validation split is scored on the other folds.
        scores = [value, *self._fold_scores(tuned)]
        trial.set_user_attr("fold_values", [float(v) for v in scores])
        trial.set_user_attr("valid_value", float(value))
        finite = [v for v in scores if math.isfinite(v)]
        return float(np.mean(finite)) if finite else value

    def _fit_and_score(
        self, tuned: Params, X_fit: Any, y_fit: np.ndarray, X_check: Any, y_check: np.ndarray
    ) -> tuple[float, int | None]:
        """A scikit-learn-style model fit on one pair, scored on its validation rows; the best
        iteration where the model early-stops (HistGradientBoosting)."""
        estimator = make_estimator(tuned.train, tuned.data.task, tuned.seed, self.data.categorical_mask)
        if self.model == "hist_gradient_boosting":
            estimator.fit(X_fit, y_fit, X_val=X_check, y_val=y_check)
            best: int | None = int(estimator.n_iter_)
        else:
            estimator.fit(X_fit, y_fit)
            best = None
        return score(self.metric, y_check, predict_scores(estimator, X_check, self.task)), best

    def _fold_scores(self, tuned: Params) -> list[float]:
        """The trial's metric on each expanding-window fold inside the training split."""
        X, y = self.data.X_train, self.data.y_train
        if self.model != "xgboost":
            return [
                self._fit_and_score(tuned, X[fit], y[fit], X[check], y[check])[0]
                for fit, check in self.data.folds
            ]
        import xgboost as xgb

        threads = tuned.train.n_jobs
        if not self._fold_matrices:
            p = self.params.train.xgboost
            types = ["c" if c else "q" for c in self.data.categorical_mask] or None
            categorical = any(self.data.categorical_mask)
            for fit, check in self.data.folds:
                dfit = xgb.QuantileDMatrix(
                    X[fit], y[fit], feature_types=types, enable_categorical=categorical, max_bin=p.max_bin,
                    nthread=threads,
                )  # fmt: skip
                dcheck = xgb.QuantileDMatrix(
                    X[check], y[check], feature_types=types, enable_categorical=categorical, ref=dfit,
                    nthread=threads,
                )  # fmt: skip
                self._fold_matrices.append((dfit, dcheck))
        values = []
        for (dfit, dcheck), (_, check) in zip(self._fold_matrices, self.data.folds, strict=True):
            booster = self._boost(tuned, dfit, dcheck, callbacks=[])
            best = int(booster.best_iteration)
            values.append(
                score(self.metric, y[check], booster.predict(dcheck, iteration_range=(0, best + 1)))
            )
        return values

    def _boost(self, tuned: Params, dtrain: Any, dvalid: Any, callbacks: list[Any]) -> Any:
        """`xgboost.train` with the trial's values, early-stopped on `dvalid`."""
        import xgboost as xgb

        p = tuned.train.xgboost
        twin = xgboost_metric(self.metric.name, self.task)
        # without a twin, boosting early-stops on the task's loss and the pruner gets the metric
        eval_metric = twin or xgboost_metric(LOSS[self.task], self.task)
        classes = {"num_class": self.data.n_classes} if self.task == "multiclass" else {}
        return xgb.train(
            {
                **xgboost_params(p, self.task),
                **classes,
                "eval_metric": eval_metric,
                "nthread": tuned.train.n_jobs,
                "seed": tuned.seed,
            },
            dtrain,
            num_boost_round=p.n_estimators,
            evals=[(dvalid, "valid")],
            early_stopping_rounds=p.early_stopping_rounds,
            callbacks=callbacks,
            verbose_eval=False,
        )

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
        threads = tuned.train.n_jobs
        dtrain, dvalid = self._matrices(threads)
        twin = xgboost_metric(self.metric.name, self.task)
        maximize = self.metric.higher_is_better
        measure = self._logged(twin, maximize) if twin else self._computed(dvalid)
        report = _ReportAndPrune(
            trial, self.metric.name, self.metric.higher_is_better, self.report_every, measure
        )
        booster = self._boost(tuned, dtrain, dvalid, callbacks=[report.callback])
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
