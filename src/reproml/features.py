"""Preprocessing as one sklearn ColumnTransformer, fit on the training split only.

The fitted transformer travels inside the model's Pipeline, so the logged model takes raw columns
(strings, timestamps, missing values) and nothing is recomputed by hand at serving time.
Tree models get ordinal codes for categories and keep missing values (they split on them);
linear models get imputation, scaling and one-hot columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

TREE_MODELS = frozenset({"xgboost", "random_forest", "hist_gradient_boosting"})


class DateParts(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Calendar parts of one timestamp column (local time), as floats; stateless."""

    def __init__(self, parts: Sequence[str] = ("dayofweek", "hour")) -> None:
        self.parts = parts

    def fit(self, X: pd.DataFrame, y: object = None) -> DateParts:
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        when = pd.to_datetime(X.iloc[:, 0])
        return np.column_stack([getattr(when.dt, part).to_numpy(dtype="float64") for part in self.parts])

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        base = str(self.feature_names_in_[0])
        return np.asarray([f"{base}_{part}" for part in self.parts], dtype=object)


@dataclass(frozen=True)
class FeatureSpec:
    """Which raw columns feed the model, and how."""

    numeric: list[str]
    categorical: list[str]
    time_column: str | None
    date_parts: list[str]

    @property
    def input_columns(self) -> list[str]:
        time = [self.time_column] if self.time_column and self.date_parts else []
        return [*self.numeric, *self.categorical, *time]

    def categorical_mask(self, model: str) -> list[bool]:
        """Per output column: is it an ordinal category code? Only tree models see codes."""
        if model not in TREE_MODELS:
            return []
        n_time = len(self.date_parts) if self.time_column else 0
        return [False] * len(self.numeric) + [True] * len(self.categorical) + [False] * n_time


def build_preprocessor(spec: FeatureSpec, model: str, max_categories: int) -> ColumnTransformer:
    if model in TREE_MODELS:
        numeric: object = "passthrough"
        categorical: object = OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=np.nan,
            encoded_missing_value=np.nan,
            max_categories=max_categories,
            dtype=np.float64,
        )
    else:
        numeric = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
        categorical = make_pipeline(
            SimpleImputer(strategy="constant", fill_value="(missing)"),
            OneHotEncoder(
                handle_unknown="infrequent_if_exist",
                max_categories=max_categories,
                sparse_output=False,
            ),
        )
    transformers: list[tuple[str, object, list[str]]] = []
    if spec.numeric:
        transformers.append(("numeric", numeric, spec.numeric))
    if spec.categorical:
        transformers.append(("categorical", categorical, spec.categorical))
    if spec.time_column and spec.date_parts:
        date: object = DateParts(tuple(spec.date_parts))
        if model not in TREE_MODELS:
            date = make_pipeline(date, StandardScaler())
        transformers.append(("date", date, [spec.time_column]))
    return ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
