"""What a model learned: the data versions, rows and time range it was fit on, and the recent part
of it that the drift monitor compares production against.

A pipeline model learns the train split (validation only stops its boosting early, the test split
judges it). A refit (`reproml refit`, after the gate promoted a challenger) learns all three: the
whole window, the newest labelled batch included. Both say so in one record, the run tag
`reproml.learned` (JSON), which the registry copies onto the model version and into its decision
records, and which monitoring reads to build its reference.

The drift reference is the newest `monitor.reference_days` of what the champion learned (measured
back from its newest learned row in the data's own time), so a drift verdict means "production
moved since this model learned it", not "it is not the start of the training window any more".
"""

from __future__ import annotations

import hashlib
import json
from typing import NotRequired, TypedDict, cast

import pandas as pd

from reproml.errors import ReproError

TAG = "reproml.learned"


class LearnedRecord(TypedDict):
    """What a model learned (the `reproml.learned` tag, JSON), as `describe` writes it."""

    kind: str  # `train split` or `refit`
    splits: dict[str, str]  # split path -> md5
    rows: int
    first: str | None  # the first and last timestamps; None without a time column
    last: str | None
    data_hash: str


class ParentRef(TypedDict):
    """A refit's parent (tag `reproml.refit_of`, JSON): the promoted version whose hyperparameters
    and round count it refit on the whole window."""

    version: int
    run_id: NotRequired[str | None]


def data_hash(splits: dict[str, str]) -> str:
    """One digest for several data versions: sha256 over `path:md5` lines, sorted by path."""
    text = "\n".join(f"{path}:{md5}" for path, md5 in sorted(splits.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def describe(
    frame: pd.DataFrame, splits: dict[str, str], time_column: str | None, kind: str
) -> LearnedRecord:
    """The record of what a model learned: `kind` (`train split` or `refit`), the split files and
    their md5s, the row count, the first and last timestamps (None without a time column) and
    the combined data hash."""
    first = last = None
    if time_column is not None and time_column in frame.columns and frame[time_column].notna().any():
        first = pd.Timestamp(frame[time_column].min()).isoformat()
        last = pd.Timestamp(frame[time_column].max()).isoformat()
    return {
        "kind": kind,
        "splits": dict(splits),
        "rows": len(frame),
        "first": first,
        "last": last,
        "data_hash": data_hash(splits),
    }


def parse(text: str | None, where: str) -> LearnedRecord | None:
    """The tag's record, or None when there is no tag (a model trained before it existed);
    a tag that is not such a record is refused naming `where`."""
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        raise ReproError(f"{where}: tag {TAG} is not JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("splits"), dict) or not record["splits"]:
        raise ReproError(f"{where}: tag {TAG} names no learned splits")
    return cast(LearnedRecord, record)  # the JSON edge: checked for its splits, the rest as written


def summary(record: LearnedRecord | None) -> str:
    """One line: what was learned, for records and logs."""
    if not record:
        return "unknown (no reproml.learned tag)"
    span = f"{record.get('first')} .. {record.get('last')}" if record.get("first") else "no time column"
    return (
        f"{record.get('kind')}: {record.get('rows')} rows, {span}, "
        f"data {str(record.get('data_hash', ''))[:12]} ({', '.join(sorted(record['splits']))})"
    )


def recent(frame: pd.DataFrame, time_column: str | None, days: int | None) -> pd.DataFrame:
    """The rows of `frame` within `days` days before its newest timestamp (the newest day
    included); all of it with `days` None, without a time column, or when it has no times."""
    if days is None or time_column is None or time_column not in frame.columns:
        return frame
    when = pd.to_datetime(frame[time_column])
    if when.isna().all():
        return frame
    start = when.max() - pd.Timedelta(days=days)
    return frame.loc[when > start].reset_index(drop=True)
