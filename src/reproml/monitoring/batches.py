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

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

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


def from_file(path: Path, shown: str) -> Batch:
    md5 = file_md5(path)
    frame, error = read_file(path)
    return Batch(f"{safe_id(path.stem)}-{md5[:8]}", frame, shown, md5, path, error)


def from_period(root: Path, period: Period, time_column: str | None) -> Batch:
    source = root / PRODUCTION
    if time_column is None:
        raise BatchError(
            f"--batch {period.label!r} is a period, but data.time_column is null: hand in a file instead"
        )
    if not source.is_file():
        raise BatchError(f"{PRODUCTION} not found: run `dvc repro` (prepare) before monitoring a period")
    when = pd.read_parquet(source, columns=[time_column])[time_column]
    if when.empty:
        raise BatchError(f"{PRODUCTION} has no rows: with prepare.split: random there is no held-back data")
    first, last = when.min(), when.max()
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


def resolve(root: Path, spec: str, time_column: str | None) -> Batch:
    """The batch `spec` names: an existing file first, then a period of the production split."""
    path = Path(spec) if Path(spec).is_absolute() else root / spec
    if path.is_file():
        return from_file(path, spec)
    period = parse_period(spec)
    if period is not None:
        return from_period(root, period, time_column)
    raise BatchError(f"--batch {spec!r} is neither a file (looked for {path}) nor a period ({PERIOD_FORMS})")
