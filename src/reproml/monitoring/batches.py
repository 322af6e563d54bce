"""Which rows one monitored batch holds: a file handed in, or a period of the held-back data.

`--batch` is either a CSV/Parquet file (relative to the project root or absolute) or, for the
project's own data, a period of `data/prepared/production.parquet` (July-December 2013 for the
bundled flights; those rows carry their label too):

    2013-08                   a calendar month
    2013-W33                  an ISO week (Monday to Sunday)
    2013-08-05                one day
    2013-08-01..2013-08-14    a range of days, both ends included

A file that cannot be read is not an error here: it becomes a batch with no rows and a
`read_error`, which the quality gate quarantines with that reason, so what arrived is kept.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from reproml import paths
from reproml.errors import ReproError
from reproml.io import file_md5

PRODUCTION = paths.split_file("production")
PERIOD_FORMS = "YYYY-MM, YYYY-Www, YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD"
_DAY = r"\d{4}-\d{2}-\d{2}"


class BatchError(ReproError):
    """`--batch` names neither a readable file nor a period of the production data."""


@dataclass(frozen=True)
class Period:
    label: str
    start: pd.Timestamp  # included
    end: pd.Timestamp  # excluded

    @property
    def batch_id(self) -> str:
        return self.label.replace("..", "_")


@dataclass(frozen=True)
class Batch:
    id: str  # file-safe; names the record, the report folder and the predictions
    frame: pd.DataFrame
    source: str  # what a person reads: a path, or the production file and the period
    source_md5: str | None
    source_path: Path | None  # the file as it arrived (quarantine keeps a copy of it)
    read_error: str | None = None


def _day(text: str, spec: str) -> pd.Timestamp:
    try:
        return pd.Timestamp(dt.date.fromisoformat(text))
    except ValueError:
        raise BatchError(f"--batch {spec!r}: {text!r} is not a date (YYYY-MM-DD)") from None


def parse_period(spec: str) -> Period | None:
    """The period `spec` names, or None if it is not written as one."""
    if re.fullmatch(r"\d{4}-\d{2}", spec):
        start = _day(f"{spec}-01", spec)
        return Period(spec, start, start + pd.offsets.MonthBegin(1))
    week = re.fullmatch(r"(\d{4})-W(\d{2})", spec)
    if week:
        try:
            monday = dt.date.fromisocalendar(int(week.group(1)), int(week.group(2)), 1)
        except ValueError:
            raise BatchError(f"--batch {spec!r}: no such ISO week") from None
        start = pd.Timestamp(monday)
        return Period(spec, start, start + pd.Timedelta(days=7))
    if re.fullmatch(_DAY, spec):
        start = _day(spec, spec)
        return Period(spec, start, start + pd.Timedelta(days=1))
    span = re.fullmatch(rf"({_DAY})\.\.({_DAY})", spec)
    if span:
        start, last = _day(span.group(1), spec), _day(span.group(2), spec)
        if last < start:
            raise BatchError(f"--batch {spec!r}: the range ends before it starts")
        return Period(spec, start, last + pd.Timedelta(days=1))
    return None


def period_label(when: pd.Timestamp, every: str) -> str:
    """The month (`2013-08`) or ISO week (`2013-W33`) that holds `when`."""
    if every == "month":
        return f"{when:%Y-%m}"
    if every == "week":
        year, week, _ = when.isocalendar()
        return f"{year}-W{week:02d}"
    raise BatchError(f"every={every!r}: expected 'month' or 'week'")


def periods(first: str, last: str, every: str) -> list[Period]:
    """Consecutive months or ISO weeks from the one `first` names to the one `last` names."""
    start, stop = parse_period(first), parse_period(last)
    if start is None or stop is None:
        raise BatchError(f"{first!r}..{last!r}: expected periods such as 2013-07 or 2013-W27")
    out: list[Period] = []
    label = period_label(start.start, every)
    while True:
        period = parse_period(label)
        assert period is not None
        if period.start > stop.start:
            return out
        out.append(period)
        label = period_label(period.end, every)


def next_period(
    last_batch_time: pd.Timestamp | None, first: pd.Timestamp, last: pd.Timestamp, every: str
) -> str | None:
    """The period after the newest monitored one (or the first holding production data), if
    production data reaches into it; None when every period has been monitored."""
    when = first if last_batch_time is None else last_batch_time
    period = parse_period(period_label(when, every))
    assert period is not None
    if last_batch_time is not None:
        period = parse_period(period_label(period.end, every))
        assert period is not None
    return period.label if period.start <= last else None


def safe_id(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return cleaned or "batch"


def read_file(path: Path) -> tuple[pd.DataFrame, str | None]:
    """The file's rows, or no rows and why it could not be read."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path), None
        if suffix in (".csv", ".txt"):
            return pd.read_csv(path, low_memory=False), None
    except pd.errors.EmptyDataError:
        return pd.DataFrame(), None  # a zero-byte CSV: an empty batch, quarantined as such
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        return pd.DataFrame(), f"{path.name} could not be read: {type(exc).__name__}: {exc}"
    raise BatchError(f"--batch {path}: expected a .csv or .parquet file, got {suffix or 'no suffix'!r}")


def file_batch_id(path: Path, md5: str) -> str:
    """The id of the batch a file holds: its name and content (the feed checks it before reading)."""
    return f"{safe_id(path.stem)}-{md5[:8]}"


def from_file(path: Path, shown: str) -> Batch:
    md5 = file_md5(path)
    frame, error = read_file(path)
    return Batch(file_batch_id(path, md5), frame, shown, md5, path, error)


UNDATED = (
    "data.time_column is null: this data set is undated, so it has no periods to monitor or replay. "
    "Monitor a CSV/Parquet file of new rows under data/ or monitoring/ instead "
    "(reproml monitor --batch data/new_rows.csv)"
)


def production_span(root: Path, time_column: str | None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The first and last time of the held-back production rows (`prepare`'s rows after
    `prepare.test_end`), or a `BatchError` saying why there are none to cut periods from."""
    source = root / PRODUCTION
    if time_column is None:
        raise BatchError(UNDATED)
    if not source.is_file():
        raise BatchError(f"{PRODUCTION} not found: run `dvc repro` (prepare) before monitoring a period")
    import pyarrow.parquet as pq

    columns = pq.read_schema(source).names
    if time_column not in columns:
        raise BatchError(
            f"{PRODUCTION} has no column {time_column!r} (data.time_column; its columns are "
            f"{columns}): it was prepared from another data source or time column; run `dvc repro`"
        )
    when = pd.read_parquet(source, columns=[time_column])[time_column]
    if when.empty:
        raise BatchError(
            f"{PRODUCTION} has no rows: with prepare.split: random, or no rows after prepare.test_end, "
            "there is no held-back data; monitor a CSV/Parquet file under data/ instead"
        )
    return when.min(), when.max()


def replay_periods(
    root: Path, time_column: str | None, start: str | None, end: str | None, every: str
) -> list[Period]:
    """The months or weeks `reproml simulate` replays: `start`..`end`, by default the first and
    the last period of the production rows; refused before anything moves when the data is undated
    or a period lies outside them."""
    first, last = production_span(root, time_column)
    start = start or period_label(first, every)
    end = end or period_label(last, every)
    spans = periods(start, end, every)
    outside = [p.label for p in spans if p.end <= first or p.start > last]
    if not spans or outside:
        raise BatchError(
            f"--start {start} --end {end}: {outside or 'no period'} outside {PRODUCTION}, which covers "
            f"{first:%Y-%m-%d} to {last:%Y-%m-%d} ({period_label(first, every)} to "
            f"{period_label(last, every)}); choose periods inside it"
        )
    return spans


def from_period(root: Path, period: Period, time_column: str | None) -> Batch:
    if time_column is None:
        raise BatchError(f"--batch {period.label!r} is a period, but {UNDATED}")
    source = root / PRODUCTION
    first, last = production_span(root, time_column)
    if period.end <= first or period.start > last:
        raise BatchError(
            f"--batch {period.label!r} is outside {PRODUCTION}, which covers "
            f"{first:%Y-%m-%d} to {last:%Y-%m-%d}"
        )
    frame = pd.read_parquet(
        source, filters=[(time_column, ">=", period.start), (time_column, "<", period.end)]
    )
    return Batch(
        period.batch_id,
        frame.reset_index(drop=True),
        f"{PRODUCTION} [{period.label}]",
        file_md5(source),
        None,
    )


def label_coding(root: Path, target: str, task: str) -> dict[Any, int] | None:
    """Binary classification of your own file: its two labels as `ingest` coded them (negative 0,
    positive 1; `data/schema.json` `classes`), so a batch file that arrives with the labels as
    you wrote them (`yes`/`no`) is judged like the training rows. None when there is nothing to
    code (the bundled flights, regression, multiclass, which keeps its labels)."""
    from reproml.io import read_json

    schema_file = root / paths.SCHEMA
    if task != "classification" or not schema_file.is_file():
        return None
    schema = read_json(schema_file)
    classes = schema.get("classes")
    if schema.get("target") != target or not isinstance(classes, list) or len(classes) != 2:
        return None
    return {classes[0]: 0, classes[1]: 1}


def coded(frame: pd.DataFrame, target: str, coding: dict[Any, int] | None) -> pd.DataFrame:
    """`frame` with its binary labels coded 0/1, when they are the raw labels (all of them one of
    the two classes, and not already 0/1 codes); anything else is left for the quality gate to name."""
    if coding is None or target not in frame.columns:
        return frame
    labels = frame[target].dropna()
    raw = set(labels.tolist())
    if not raw or not raw <= set(coding) or raw <= {0, 1}:
        return frame
    return frame.assign(**{target: frame[target].map(coding).astype("float64")})


def resolve(
    root: Path, spec: str, time_column: str | None, target: str = "", coding: dict[Any, int] | None = None
) -> Batch:
    """The batch `spec` names: an existing file first, then a period of the production split
    (whose labels `prepare` wrote already coded). A file's binary `target` labels are coded with
    `coding` (`label_coding`)."""
    path = Path(spec) if Path(spec).is_absolute() else root / spec
    if path.is_file():
        batch = from_file(path, spec)
        return dataclasses.replace(batch, frame=coded(batch.frame, target, coding))
    period = parse_period(spec)
    if period is not None:
        return from_period(root, period, time_column)
    raise BatchError(f"--batch {spec!r} is neither a file (looked for {path}) nor a period ({PERIOD_FORMS})")


def batch_spec(root: Path, spec: str, param: str = "batch") -> str:
    """A monitoring batch `spec` made safe: a period (`2013-08`, ...) as it is, anything that names
    a file confined to the data folders (`paths.confined`) and returned resolved.

    A spec is a period only when no file of that name exists, the order the monitor itself uses.
    """
    if not os.path.lexists(root / spec):
        try:
            if parse_period(spec) is not None:
                return spec
        except BatchError:
            return spec  # written as a period, but not a valid one: the monitor says why
    return paths.relative(paths.confined(spec, root, param), root)
