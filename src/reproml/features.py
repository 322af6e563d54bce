"""Preprocessing as one sklearn ColumnTransformer, fit on the training split only.

The fitted transformer travels inside the model's Pipeline, so the logged model takes raw columns
(strings, timestamps, missing values) and nothing is recomputed by hand at serving time.
Tree models get ordinal codes for categories and keep missing values (they split on them);
linear models get imputation, scaling and one-hot columns.

Category values, for every model: the `max_categories - 1` most frequent training values get their
own code (or column); the other training values share one "infrequent" code; a value never seen
in training is a *missing* value, exactly as None or NaN is. A value the model has never seen
carries nothing it learned, so it takes the path the model learned for "no value" - not the
path of the rare-but-known values, which it did learn. The drift check (monitoring/drift.py)
reads these same three groups off the fitted encoder (`category_levels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

TREE_MODELS = frozenset({"xgboost", "random_forest", "hist_gradient_boosting"})


HOUR_BUCKETS = (6, 12, 18)  # night (0-5), morning (6-11), afternoon (12-17), evening (18-23)
HOLIDAY_PARTS = frozenset({"days_to_holiday", "days_from_holiday"})


def _holiday_distances(when: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Per timestamp: whole days until the next US federal holiday (observed dates, pandas'
    `USFederalHolidayCalendar`; 0 on the holiday) and since the last one (0 on it); NaN for NaT.

    Holidays are listed from a year before the earliest date to a year after the latest, so every
    date has a holiday on both sides (they are at most ~2 months apart)."""
    from pandas.tseries.holiday import USFederalHolidayCalendar

    days = when.dt.normalize()
    to_next = np.full(len(days), np.nan)
    from_last = np.full(len(days), np.nan)
    known = days.notna().to_numpy()
    if not known.any():
        return to_next, from_last
    present = days[known]
    holidays = USFederalHolidayCalendar().holidays(
        present.min() - pd.Timedelta(days=366), present.max() + pd.Timedelta(days=366)
    )
    day_ns = present.to_numpy(dtype="datetime64[ns]")
    stamps = holidays.to_numpy(dtype="datetime64[ns]")
    after = np.searchsorted(stamps, day_ns, side="left")  # first holiday on or after the day
    before = np.searchsorted(stamps, day_ns, side="right") - 1  # last holiday on or before it
    one_day = np.timedelta64(1, "D")
    to_next[known] = (stamps[after] - day_ns) / one_day
    from_last[known] = (day_ns - stamps[before]) / one_day
    return to_next, from_last


class DateParts(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Calendar parts of one timestamp column (local time), as floats; stateless.

    Parts: `month`, `dayofweek` (Monday 0), `hour`, `dayofyear`, `dayofmonth`, `hour_bucket` (0
    night 0-5 h, 1 morning, 2 afternoon, 3 evening 18-23 h), `days_to_holiday` and
    `days_from_holiday` (whole days to the next / since the last US federal holiday, observed
    dates). Each is known from the timestamp alone, so it is known when a prediction is made.
    A missing timestamp gives NaN in every part."""

    def __init__(self, parts: Sequence[str] = ("dayofweek", "hour")) -> None:
        self.parts = parts

    def fit(self, X: pd.DataFrame, y: object = None) -> DateParts:
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        when = pd.to_datetime(X.iloc[:, 0])
        holidays = _holiday_distances(when) if HOLIDAY_PARTS & set(self.parts) else None
        columns = []
        for part in self.parts:
            if part == "dayofmonth":
                values = when.dt.day.to_numpy(dtype="float64")
            elif part == "hour_bucket":
                hours = when.dt.hour.to_numpy(dtype="float64")
                values = np.where(np.isnan(hours), np.nan, np.searchsorted(HOUR_BUCKETS, hours, side="right"))
            elif part in HOLIDAY_PARTS:
                assert holidays is not None
                values = holidays[0] if part == "days_to_holiday" else holidays[1]
            else:
                values = getattr(when.dt, part).to_numpy(dtype="float64")
            columns.append(np.asarray(values, dtype="float64"))
        return np.column_stack(columns)

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        base = str(self.feature_names_in_[0])
        return np.asarray([f"{base}_{part}" for part in self.parts], dtype=object)


MISSING_FILL = "(missing)"  # what linear models impute for a missing (or never seen) category


def _missing_as_nan(X: pd.DataFrame | np.ndarray) -> pd.DataFrame | np.ndarray:
    """Missing values in any form (None, pd.NA, NaN) as NaN, the one sklearn's encoders treat as
    missing: they take None for a category of its own, and pd.NA breaks the imputer."""
    if isinstance(X, pd.DataFrame):
        return X.astype(object).where(X.notna(), np.nan)
    values = np.asarray(X, dtype=object).copy()
    values[pd.isna(values)] = np.nan
    return values


class CategoryCodes(OrdinalEncoder):  # type: ignore[misc]
    """Ordinal codes for tree models: a value never seen in fit, and a missing value in any form,
    are NaN (XGBoost and HistGradientBoosting route them along the branch learned for missing)."""

    def fit(self, X: pd.DataFrame | np.ndarray, y: object = None) -> CategoryCodes:
        super().fit(_missing_as_nan(X), y)
        return self

    def transform(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        return np.asarray(super().transform(_missing_as_nan(X)))


class KnownCategories(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """For linear models, before imputation: a value never seen in fit becomes missing (NaN), so it
    is imputed like any missing value instead of landing in the one-hot "infrequent" column."""

    def fit(self, X: pd.DataFrame, y: object = None) -> KnownCategories:
        frame = pd.DataFrame(X)
        self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
        self.n_features_in_ = frame.shape[1]
        self.categories_ = [sorted({str(v) for v in frame[c].dropna()}) for c in frame.columns]
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        frame = pd.DataFrame(X).copy()
        frame.columns = list(self.feature_names_in_)
        for column, known in zip(frame.columns, self.categories_, strict=True):
            values = frame[column]
            seen = values.notna() & values.astype(str).isin(known)
            frame[column] = values.astype(object).where(seen, np.nan)
        return frame

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        return np.asarray(self.feature_names_in_, dtype=object)


@dataclass(frozen=True)
class CategoryLevels:
    """How a fitted model groups one category column's values (as strings)."""

    kept: frozenset[str]  # each has its own code / one-hot column
    pooled: frozenset[str]  # seen in training but rare: one shared "infrequent" code
    # any other value was never seen in training: missing to the model


def category_levels(model: object) -> dict[str, CategoryLevels] | None:
    """Per category column, the groups the fitted pipeline `model` ("preprocess" step: the
    ColumnTransformer of `build_preprocessor`) puts values in; None when it holds no such encoder.
    Missing values (and the linear models' fill value) are no level: they are missing."""
    steps: Any = getattr(model, "named_steps", None) or {}
    prep: Any = steps.get("preprocess")
    fitted: Any = getattr(prep, "named_transformers_", None) or {}
    encoder: Any = fitted.get("categorical")
    if encoder is not None and hasattr(encoder, "named_steps"):  # linear: ..., imputer, one-hot
        encoder = encoder.named_steps.get("onehotencoder")
    if prep is None or encoder is None or not hasattr(encoder, "categories_"):
        return None
    columns = next((list(cols) for name, _, cols in prep.transformers_ if name == "categorical"), [])
    rare = getattr(encoder, "infrequent_categories_", None) or [None] * len(columns)

    def as_text(values: Any) -> frozenset[str]:
        listed = [] if values is None else list(values)
        return frozenset(str(v) for v in listed if not pd.isna(v) and v != MISSING_FILL)

    levels = {}
    for column, seen, infrequent in zip(columns, encoder.categories_, rare, strict=True):
        pooled = as_text(infrequent)
        levels[str(column)] = CategoryLevels(as_text(seen) - pooled, pooled)
    return levels


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
        categorical: object = CategoryCodes(
            handle_unknown="use_encoded_value",
            unknown_value=np.nan,
            encoded_missing_value=np.nan,
            max_categories=max_categories,
            dtype=np.float64,
        )
    else:
        numeric = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
        categorical = make_pipeline(
            KnownCategories(),
            SimpleImputer(strategy="constant", fill_value=MISSING_FILL),
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
