"""Schema checks that stop a bad file before it becomes a dataset version.

Each check raises `DataValidationError` naming the file, the column and what was expected, because
the person reading it is looking at their CSV, not at our code.
"""

from __future__ import annotations

import pandas as pd

from reproml.config import DataParams
from reproml.errors import DataValidationError

# More distinct target values than this is almost always a numeric target given the wrong task.
MAX_CLASSES = 100


def _non_numeric_examples(column: pd.Series) -> list[str]:
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return []
    parsed = pd.to_numeric(column, errors="coerce")
    bad = column[parsed.isna() & column.notna()]
    return [str(v) for v in bad.unique()[:3]]


def validate_frame(
    frame: pd.DataFrame,
    data: DataParams,
    numeric: list[str],
    categorical: list[str],
    name: str,
) -> pd.DataFrame:
    """Return the frame with typed columns (numbers as float, categories as strings, time parsed)."""
    if frame.empty:
        raise DataValidationError(f"{name}: no rows")
    declared = {"data.numeric_columns": numeric, "data.categorical_columns": categorical}
    for key, columns in declared.items():
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataValidationError(f"{name}: columns {missing} listed in {key} are not in the data")
    frame = frame.copy()
    for column in numeric:
        examples = _non_numeric_examples(frame[column])
        if examples:
            raise DataValidationError(
                f"{name}: column {column!r} is declared numeric but holds non-numeric strings "
                f"such as {examples}"
            )
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in categorical:
        values = frame[column]
        frame[column] = values.astype("string").astype(object).where(values.notna(), None)
    if data.time_column:
        if data.time_column not in frame.columns:
            raise DataValidationError(
                f"{name}: time column {data.time_column!r} (data.time_column) not found; "
                "set data.time_column: null for a random split"
            )
        try:
            when = pd.to_datetime(frame[data.time_column])
        except (ValueError, TypeError) as exc:
            raise DataValidationError(
                f"{name}: time column {data.time_column!r} holds values that are not dates: {exc}"
            ) from None
        if isinstance(when.dtype, pd.DatetimeTZDtype):
            # Split cut-offs in params.yaml are plain dates: compare in UTC, without the zone.
            when = when.dt.tz_convert(None)
        frame[data.time_column] = when
    empty = [c for c in [*numeric, *categorical] if frame[c].isna().all()]
    if empty:
        raise DataValidationError(f"{name}: feature columns {empty} are entirely missing")
    if not numeric and not categorical:
        raise DataValidationError(f"{name}: no feature columns left besides target and time")
    target = frame[data.target].dropna()
    if data.task in ("classification", "multiclass"):
        _check_classes(target, data, name)
    else:
        if not pd.api.types.is_numeric_dtype(target):
            raise DataValidationError(
                f"{name}: regression target {data.target!r} must be numeric, got {target.dtype}"
            )
        if target.nunique() < 2:
            raise DataValidationError(f"{name}: regression target {data.target!r} is constant")
    return frame


def _check_classes(target: pd.Series, data: DataParams, name: str) -> None:
    """Binary needs exactly two classes and multiclass three or more: each task has one score shape
    (1-D P(positive) or one column per class), so a wrong count is the user's setting to change."""
    classes = target.unique()
    shown = sorted(str(c) for c in classes)
    if len(classes) < 2:
        raise DataValidationError(
            f"{name}: target {data.target!r} has one class ({classes.tolist()}) among labelled "
            "rows; classification needs at least two"
        )
    if data.task == "classification" and len(classes) > 2:
        raise DataValidationError(
            f"{name}: target {data.target!r} has {len(classes)} classes ({shown[:10]}); "
            "data.task: classification is binary: set data.task: multiclass"
        )
    if data.task == "multiclass" and len(classes) == 2:
        raise DataValidationError(
            f"{name}: target {data.target!r} has 2 classes ({shown}); multiclass needs at least three: "
            "set data.task: classification (binary)"
        )
    if data.task == "multiclass" and len(classes) > MAX_CLASSES:
        raise DataValidationError(
            f"{name}: target {data.target!r} has {len(classes)} distinct values, more than the "
            f"{MAX_CLASSES} classes multiclass supports; is it a numeric target (data.task: regression)?"
        )


def class_labels(target: pd.Series) -> pd.Series:
    """A multiclass target in one plain type: whole numbers as int64 (a CSV column with blanks reads
    as float), other numbers as float64, anything else as str, so the recorded classes and the
    model's predictions are the labels as the user wrote them."""
    if pd.api.types.is_bool_dtype(target) or not pd.api.types.is_numeric_dtype(target):
        return target.astype(str).astype(object)
    values = target.astype("float64")
    if bool(((values % 1) == 0).all()):
        return values.astype("int64")
    return values
