"""The data-quality gate: a batch the champion cannot be fairly judged on is quarantined, not measured.

It runs before any statistics because Evidently silently drops NaN and infinite values before its
drift tests (a feature 90% missing can show "no drift") and raises on an all-missing column, and
because a string where a number belongs would make scoring fail or, worse, turn into NaN quietly.

Checks, against the champion's own training split (the reference), each naming the column:

- the batch could be read and has rows;
- every column the champion takes is present;
- numeric columns hold numbers (examples of the strings found are given), the time column dates;
- a feature's missing share is at most `max_missing_share`, unless it was already mostly
  missing in training (there missingness is the normal state, e.g. `wind_gust`: ~70% missing);
- a numeric feature's share of infinite values is at most `max_inf_share`;
- a category column's share of rows with values never seen in training is at most
  `max_unseen_category_share`;
- labels, where present, are values the target can take: numbers for binary classification and
  regression, and for multiclass one of the champion's classes (compared as the data writes
  them, so `2`, `2.0` and `"2"` in a CSV are class 2; the typed copy holds the class itself).

The result carries a typed copy of the batch (numbers as float, categories as strings, time
parsed) that the rest of monitoring uses, so every step sees the same values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
import pandas as pd

from reproml.config import MonitorParams
from reproml.monitoring.records import ColumnStats, QualityGateRecord

NUMERIC, CATEGORICAL, TIME = "numeric", "categorical", "time"


@dataclass(frozen=True)
class Schema:
    """The champion's input columns by kind, read off its training split's dtypes."""

    numeric: list[str]
    categorical: list[str]
    time_column: str | None
    target: str
    task: str
    classes: tuple[Any, ...] | None = None  # multiclass: the champion's classes, in column order

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def columns(self) -> list[str]:
        return [*self.features, *([self.time_column] if self.time_column else [])]

    def kind(self, column: str) -> str:
        if column == self.time_column:
            return TIME
        return NUMERIC if column in self.numeric else CATEGORICAL


def schema_of(reference: pd.DataFrame, input_columns: list[str], time_column: str | None,
              target: str, task: str, classes: list[Any] | None = None) -> Schema:  # fmt: skip
    numeric: list[str] = []
    categorical: list[str] = []
    for column in input_columns:
        if column == time_column:
            continue
        dtype = reference[column].dtype
        is_number = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        (numeric if is_number else categorical).append(column)
    used_time = time_column if time_column in input_columns else None
    return Schema(numeric, categorical, used_time, target, task, None if classes is None else tuple(classes))


class ReferenceStatsRecord(TypedDict):
    """`ReferenceStats` as the reference profile keeps it (JSON: sets become sorted lists)."""

    seen: dict[str, list[str]]
    missing: dict[str, float]
    labels: list[Any]  # the target's values as training held them (numbers, text or booleans)


@dataclass(frozen=True)
class ReferenceStats:
    """What the gate reads off the champion's training rows, so that it is read once per champion
    (`reproml.monitoring.profile` keeps it) instead of from every row at every batch."""

    seen: dict[str, frozenset[str]]  # category column -> every value training held, as text
    missing: dict[str, float]  # column -> its missing share in training
    labels: tuple[Any, ...]  # binary classification: the target values training held

    @classmethod
    def of(cls, reference: pd.DataFrame, schema: Schema) -> ReferenceStats:
        seen = {c: frozenset(reference[c].dropna().astype(str)) for c in schema.categorical}
        missing = {c: float(reference[c].isna().mean()) for c in schema.columns}
        labels: tuple[Any, ...] = ()
        if schema.task == "classification" and schema.target in reference.columns:
            labels = tuple(sorted(reference[schema.target].dropna().unique().tolist()))
        return cls(seen, missing, labels)

    def to_dict(self) -> ReferenceStatsRecord:
        return {"seen": {c: sorted(v) for c, v in self.seen.items()}, "missing": self.missing,
                "labels": list(self.labels)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceStats:
        """Read back from a profile on disk: every value is converted, none trusted."""
        seen = {str(c): frozenset(str(v) for v in values) for c, values in data["seen"].items()}
        missing = {str(c): float(v) for c, v in data["missing"].items()}
        return cls(seen, missing, tuple(data["labels"]))


@dataclass(frozen=True)
class QualityResult:
    passed: bool
    problems: list[str]
    rows: int
    labelled_rows: int
    columns: dict[str, ColumnStats]  # per column: shares measured, reference shares
    frame: pd.DataFrame = field(repr=False)  # typed copy; empty when the batch could not be typed

    def to_dict(self) -> QualityGateRecord:
        return {
            "passed": self.passed,
            "problems": self.problems,
            "rows": self.rows,
            "labelled_rows": self.labelled_rows,
            "columns": self.columns,
        }


def _non_numeric(values: pd.Series) -> tuple[pd.Series, list[str]]:
    """Values as float, and up to three of the strings that are not numbers."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype("float64"), []
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64"), []
    parsed = pd.to_numeric(values, errors="coerce")
    bad = values[parsed.isna() & values.notna()]
    return parsed.astype("float64"), [str(v) for v in bad.unique()[:3]]


def _as_categories(values: pd.Series) -> pd.Series:
    return values.astype("string").astype(object).where(values.notna(), None)


def _as_time(values: pd.Series) -> pd.Series:
    when = pd.to_datetime(values, errors="raise")
    if isinstance(when.dtype, pd.DatetimeTZDtype):  # the splits are naive UTC (data/validate.py)
        when = when.dt.tz_convert(None)
    return when


def check(
    frame: pd.DataFrame,
    reference: pd.DataFrame | ReferenceStats,
    schema: Schema,
    params: MonitorParams,
    read_error: str | None = None,
) -> QualityResult:
    """Every check on the whole batch (vectorised; cheap even at a million rows), against the
    champion's training rows or what the gate needs of them (`ReferenceStats`)."""
    known = reference if isinstance(reference, ReferenceStats) else ReferenceStats.of(reference, schema)
    problems: list[str] = []
    rows = len(frame)

    def failed(columns: dict[str, ColumnStats] | None = None) -> QualityResult:
        return QualityResult(False, problems, rows, 0, columns or {}, pd.DataFrame())

    if read_error:
        problems.append(read_error)
        return failed()
    if rows == 0:
        problems.append("the batch has no rows")
        return failed()
    absent = [c for c in schema.columns if c not in frame.columns]
    if absent:
        problems.append(f"columns {absent} are missing; the champion needs all of {schema.columns}")
        return failed()

    typed = frame.copy()
    columns: dict[str, ColumnStats] = {}
    for column in schema.columns:
        kind = schema.kind(column)
        values = frame[column]
        stats: ColumnStats = {"kind": kind}
        if kind == NUMERIC:
            numbers, strings = _non_numeric(values)
            if strings:
                problems.append(f"column {column!r} is numeric but holds strings such as {strings}")
            infinite = np.isinf(numbers.to_numpy())
            stats["inf_share"] = inf_share = float(infinite.mean())
            if inf_share > params.max_inf_share:
                problems.append(
                    f"column {column!r}: {inf_share:.1%} of values are infinite "
                    f"(monitor.max_inf_share {params.max_inf_share:.1%})"
                )
            typed[column] = numbers
        elif kind == CATEGORICAL:
            typed[column] = _as_categories(values)
            seen = known.seen[column]
            present = typed[column].dropna()
            unseen = ~present.isin(seen)
            stats["unseen_share"] = unseen_share = float(unseen.mean()) if len(present) else 0.0
            if unseen_share > params.max_unseen_category_share:
                examples = [str(v) for v in present[unseen].unique()[:3]]
                problems.append(
                    f"column {column!r}: {unseen_share:.1%} of rows hold categories never seen "
                    f"in training, such as {examples} "
                    f"(monitor.max_unseen_category_share {params.max_unseen_category_share:.1%})"
                )
        else:
            try:
                typed[column] = _as_time(values)
            except (ValueError, TypeError) as exc:
                problems.append(f"time column {column!r} holds values that are not dates: {exc}")
        missing = float(typed[column].isna().mean()) if column in typed else 1.0
        reference_missing = known.missing[column]
        stats |= {"missing_share": missing, "reference_missing_share": reference_missing}
        sparse = reference_missing > params.max_missing_share  # mostly missing already in training
        if missing > params.max_missing_share and not sparse:
            what = "all values are missing" if missing == 1.0 else f"{missing:.1%} of values are missing"
            problems.append(
                f"column {column!r}: {what} (training: {reference_missing:.1%}; "
                f"monitor.max_missing_share {params.max_missing_share:.1%})"
            )
        columns[column] = stats

    labelled = 0
    if schema.target in frame.columns:
        labels, problem = _labels(frame[schema.target], known.labels, schema)
        if problem:
            problems.append(problem)
        else:
            typed[schema.target] = labels
            labelled = int(labels.notna().sum())
    if problems:
        return failed(columns)
    return QualityResult(True, [], rows, labelled, columns, typed)


def _labels(values: pd.Series, known: tuple[Any, ...], schema: Schema) -> tuple[pd.Series, str | None]:
    """Labels as numbers, or multiclass as the champion's classes (missing = unlabelled row), or why
    they cannot be."""
    if schema.task == "multiclass":
        return class_labels(values, schema)
    numbers, strings = _non_numeric(values)
    if strings:
        return numbers, f"target {schema.target!r} holds non-numeric values such as {strings}"
    if schema.task == "classification":
        allowed = set(known)
        odd = sorted(set(numbers.dropna().unique().tolist()) - allowed)
        odd = [int(v) if float(v).is_integer() else v for v in odd]  # 2, not 2.0: as the user wrote it
        if odd:
            return numbers, f"target {schema.target!r} holds {odd[:3]}; training had only {sorted(allowed)}"
    elif np.isinf(numbers.to_numpy()).any():
        return numbers, f"target {schema.target!r} holds infinite values"
    return numbers, None


def label_key(value: Any) -> str:
    """How a class label is compared: a whole number as its digits (`2`, `2.0`, `"2"` alike: a CSV
    column with a blank reads as floats), anything else as its text."""
    if isinstance(value, bool | np.bool_):
        return str(value)
    if isinstance(value, int | float | np.integer | np.floating) and float(value).is_integer():
        return str(int(value))
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def class_labels(values: pd.Series, schema: Schema) -> tuple[pd.Series, str | None]:
    """Each label as the champion's class it names (an object column; missing stays missing), or
    which labels name no class."""
    classes = list(schema.classes or ())
    lookup = {label_key(c): c for c in classes}
    present = values.notna()
    keys = values[present].map(label_key)
    unknown = sorted(set(keys) - set(lookup))
    if unknown:
        return values, (
            f"target {schema.target!r} holds {unknown[:3]}{' and more' if len(unknown) > 3 else ''}; "
            f"the champion knows only the classes {classes}"
        )
    out = np.full(len(values), None, dtype=object)
    out[present.to_numpy()] = [lookup[k] for k in keys]
    return pd.Series(out, index=values.index, dtype=object), None
