"""Estimator factory: the model named by `train.model`, configured from its params section.

Multiclass estimators are fit on class codes 0..K-1 (XGBoost accepts nothing else) inside
`ClassLabels`, which holds the data's class order, so the logged model takes raw columns and answers
in the data's own labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone

from reproml.config import TrainParams, XGBoostParams
from reproml.metrics import xgboost_eval_metrics

CLASSIFICATION_TASKS = frozenset({"classification", "multiclass"})


def class_order(y: Any, classes: Sequence[Any] | None) -> list[Any]:
    """The recorded class order, or (for a caller without a schema) the sorted training labels."""
    if classes is not None:
        return list(classes)
    import pandas as pd

    return sorted(pd.unique(pd.Series(y).dropna()).tolist())


class ClassLabels(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A classifier that speaks the data's labels while the estimator inside sees codes 0..K-1.

    `classes` is the recorded class order (data/schema.json); `classes_` is that order after `fit`,
    and `predict_proba`'s columns follow it, whatever the labels' type. Labels inside the fit
    params that carry them (XGBoost's `eval_set`, HistGradientBoosting's `y_val`) are coded too.
    Every class must occur in the training labels: a model that never saw a class could only give
    it probability zero, so that is refused with the missing classes named.
    """

    def __init__(self, estimator: Any = None, classes: Sequence[Any] = ()) -> None:
        self.estimator = estimator
        self.classes = classes

    def encode(self, y: Any) -> np.ndarray:
        """Labels as codes (positions in `classes`); a label not in `classes` raises ValueError."""
        from reproml.metrics import encode

        return encode(np.asarray(y), list(self.classes))

    def training_codes(self, y: Any) -> np.ndarray:
        """Training labels as codes, refusing a class with no rows (see the class docstring)."""
        codes = self.encode(y)
        missing = [self.classes[k] for k in sorted(set(range(len(self.classes))) - set(codes.tolist()))]
        if missing:
            raise ValueError(
                f"classes {missing} have no training rows; every class in {list(self.classes)} needs some"
            )
        return codes

    @classmethod
    def around(cls, fitted: Any, classes: Sequence[Any]) -> ClassLabels:
        """A fitted ClassLabels over `fitted`, an estimator already fit on the codes of `classes`
        elsewhere (`fitting_dask` boosts on a Dask cluster and brings the booster back)."""
        wrapped = cls(fitted, classes)
        wrapped.classes_ = np.asarray(list(classes))
        wrapped.estimator_ = fitted
        return wrapped

    def fit(self, X: Any, y: Any, **fit_params: Any) -> ClassLabels:
        codes = self.training_codes(y)
        if "eval_set" in fit_params:
            fit_params["eval_set"] = [
                (X_eval, self.encode(y_eval)) for X_eval, y_eval in fit_params["eval_set"]
            ]
        if fit_params.get("y_val") is not None:
            fit_params["y_val"] = self.encode(fit_params["y_val"])
        self.classes_ = np.asarray(list(self.classes))
        self.estimator_ = clone(self.estimator).fit(X, codes, **fit_params)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.asarray(self.estimator_.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self.classes_[np.argmax(self.predict_proba(X), axis=1)])


def make_estimator(train: TrainParams, task: str, seed: int, categorical_mask: list[bool]) -> Any:
    """A fresh, unfitted estimator. Heavy imports stay inside so `reproml --help` stays fast."""
    classification = task in CLASSIFICATION_TASKS
    if train.model == "xgboost":
        import xgboost as xgb

        p = train.xgboost
        cls = xgb.XGBClassifier if classification else xgb.XGBRegressor
        return cls(
            **xgboost_params(p, task),
            n_estimators=p.n_estimators,
            early_stopping_rounds=p.early_stopping_rounds,
            # early stopping watches the last: the task's learning-curve metric
            eval_metric=xgboost_eval_metrics(task),
            enable_categorical=any(categorical_mask),
            feature_types=["c" if is_cat else "q" for is_cat in categorical_mask] or None,
            n_jobs=train.n_jobs,
            random_state=seed,
        )
    if train.model == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        h = train.hist_gradient_boosting
        hcls = HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor
        return hcls(
            learning_rate=h.learning_rate,
            max_iter=h.max_iter,
            max_leaf_nodes=h.max_leaf_nodes,
            min_samples_leaf=h.min_samples_leaf,
            l2_regularization=h.l2_regularization,
            early_stopping=True,
            n_iter_no_change=h.early_stopping_rounds,
            categorical_features=categorical_mask or None,
            random_state=seed,
        )
    if train.model == "random_forest":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        r = train.random_forest
        rcls = RandomForestClassifier if classification else RandomForestRegressor
        return rcls(
            n_estimators=r.n_estimators,
            max_depth=r.max_depth,
            min_samples_leaf=r.min_samples_leaf,
            max_features=r.max_features,
            n_jobs=train.n_jobs,
            random_state=seed,
        )
    if train.model == "logistic":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=train.linear.C, max_iter=train.linear.max_iter, random_state=seed)
    if train.model == "linear":
        from sklearn.linear_model import Ridge

        return Ridge(alpha=1.0 / train.linear.C, random_state=seed)
    raise ValueError(f"unknown train.model {train.model!r}")  # unreachable: config validates it


def xgboost_objective(task: str) -> str:
    """XGBoost's learning objective for the task (softprob: one probability column per class)."""
    return {"classification": "binary:logistic", "multiclass": "multi:softprob"}.get(task, "reg:squarederror")


def xgboost_params(p: XGBoostParams, task: str) -> dict[str, Any]:
    """`train.xgboost` as XGBoost booster parameters, the one mapping both the final fit (the
    sklearn wrapper, which passes them through) and the tuning trials (`xgboost.train`) use. Round
    counts, threads, seeds and evaluation metrics differ between the two and are added by each."""
    return {
        "objective": xgboost_objective(task),
        "tree_method": "hist",
        "learning_rate": p.learning_rate,
        "max_depth": p.max_depth,
        "min_child_weight": p.min_child_weight,
        "subsample": p.subsample,
        "colsample_bytree": p.colsample_bytree,
        "reg_lambda": p.reg_lambda,
        "max_bin": p.max_bin,
    }
