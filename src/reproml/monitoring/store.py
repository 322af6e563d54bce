"""Where monitoring keeps what it writes, and the decision records' read/write side.

Layout under `monitoring/` (generated, git-ignored; see monitoring/README.md):

    records/<batch>.json          the decision record: verdict, every number behind it, thresholds
    predictions/<batch>.parquet   the champion's scores for every row of the batch
    labelled/<end>_<batch>.parquet  accepted labelled rows; the promotion gate reads the newest
    quarantine/<batch>.parquet    a batch that failed the quality gate, kept as it arrived...
    quarantine/<batch>.json       ...with the reason
    reports/<batch>/drift.html    Evidently data drift (features and predictions)
    reports/<batch>/quality.html  Evidently classification/regression quality (labelled batches)
    reports/index.html            every batch: verdict, drift share, quality, links, a plot

All writes go through `reproml.io`'s atomic writers: a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reproml.io import file_lock, read_json, write_json, write_with
from reproml.redaction import scrub_obj

MONITORING = Path("monitoring")
RECORDS = MONITORING / "records"
PREDICTIONS = MONITORING / "predictions"
LABELLED = MONITORING / "labelled"  # same folder as registry.LABELLED_WINDOWS (the gate reads it)
QUARANTINE = MONITORING / "quarantine"
REPORTS = MONITORING / "reports"
INDEX = REPORTS / "index.html"
LOCK = MONITORING / ".monitor.lock"


def record_path(batch_id: str) -> Path:
    return RECORDS / f"{batch_id}.json"


def report_dir(batch_id: str) -> Path:
    return REPORTS / batch_id


def labelled_path(batch_id: str, end: pd.Timestamp | None) -> Path:
    """Named so that sorting by name sorts by the batch's last timestamp: the promotion gate takes
    the last file in name order as "the newest labelled window" (registry.eval_data)."""
    stamp = "undated" if end is None else end.strftime("%Y%m%dT%H%M%S")
    return LABELLED / f"{stamp}_{batch_id}.parquet"


def jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def write_record(root: Path, record: dict[str, Any]) -> Path:
    target = root / record_path(record["batch_id"])
    write_json(target, scrub_obj(jsonable(record)))  # records feed the reports: no credential in them
    return target


def history(root: Path) -> list[dict[str, Any]]:
    """Every decision record, in the order the batches were monitored."""
    records = [read_json(p) for p in (root / RECORDS).glob("*.json")]
    return sorted(records, key=lambda r: (r.get("seq", 0), r.get("batch_id", "")))


def write_frame(target: Path, frame: pd.DataFrame) -> Path:
    """Parquet, even for a broken batch: object columns holding mixed types (a string among
    numbers, the very thing that gets a batch quarantined) are stored as strings."""
    try:
        return write_with(target, lambda p: frame.to_parquet(p, index=False))
    except (TypeError, ValueError, ArithmeticError, ImportError) as first:
        safe = frame.copy()
        for column in safe.columns:
            if safe[column].dtype == object:
                safe[column] = safe[column].map(lambda v: None if v is None else str(v))
        try:
            return write_with(target, lambda p: safe.to_parquet(p, index=False))
        except Exception:
            raise first from None


@contextlib.contextmanager
def monitor_lock(root: Path) -> Iterator[None]:
    """One batch decision at a time: the cooldown reads past records and must see every one."""
    with file_lock(root / LOCK):
        yield
