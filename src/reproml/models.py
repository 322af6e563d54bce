"""Estimator factory: the model named by `train.model`, configured from its params section."""

from __future__ import annotations

from typing import Any

from reproml.config import TrainParams


def make_estimator(train: TrainParams, task: str, seed: int, categorical_mask: list[bool]) -> Any:
    """A fresh, unfitted estimator. Heavy imports stay inside so `reproml --help` stays fast."""
    classification = task == "classification"
    if train.model == "xgboost":
        import xgboost as xgb

        p = train.xgboost
        cls = xgb.XGBClassifier if classification else xgb.XGBRegressor
        return cls(
            tree_method="hist",
            n_estimators=p.n_estimators,
            learning_rate=p.learning_rate,
            max_depth=p.max_depth,
            min_child_weight=p.min_child_weight,
            subsample=p.subsample,
            colsample_bytree=p.colsample_bytree,
            reg_lambda=p.reg_lambda,
            max_bin=p.max_bin,
            early_stopping_rounds=p.early_stopping_rounds,
            eval_metric=["logloss", "auc"] if classification else ["rmse"],
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
