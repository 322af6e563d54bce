"""Where monitoring keeps what it writes, and the decision records' read/write side.

One data source, one history: everything is kept per registered model (`register.model_name`,
which `reproml.config` derives from the data source and `reproml register` binds to one), so a
new data set starts from nothing and no batch, window or cooldown of one data set is ever read
for another. Layout under `monitoring/<model name>/` (generated, git-ignored; see
monitoring/README.md):

    records/<batch>.json          the decision record: verdict, every number behind it, thresholds
    predictions/<batch>.parquet   the champion's scores for every row of the batch (and the
                                  shadow challenger's beside them, `monitoring.shadow`)
    labelled/<end>_<batch>.parquet  accepted labelled rows; the promotion gate reads the newest
    quarantine/<batch>.parquet    a batch that failed the quality gate, kept as it arrived...
    quarantine/<batch>.json       ...with the reason
    reports/<batch>/drift.html    Evidently data drift (features and predictions)
    reports/<batch>/quality.html  Evidently classification/regression quality (labelled batches)
    reports/index.html            every batch: verdict, drift share, quality, links, a plot
    archive/<time>/               earlier outputs `reproml simulate` moved aside
    reference/<key>/              the champion's reference profile (reproml.monitoring.profile)
    feed.json                     the production feed's ledger: every file taken (reproml.monitoring.feed)
    feed/                         an S3 feed's objects, copied down to be taken (reproml.stores.s3)

`monitoring/workspace/` (Evidently's UI) holds one project per model already.

Paths are relative to the project root (records name files that way). All writes go through
`reproml.io`'s atomic writers: a reader never sees half a file.

The decision records and the feed ledger go through `reproml.stores.records`: the files above by
default; with `REPROML_RECORDS_URL` (the team's database) they are read from there, so every clone
sees one history, and the files are only a mirror of what this clone wrote.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from reproml.errors import ReproError
from reproml.io import file_lock, write_with
from reproml.monitoring.records import BatchRecord
from reproml.redaction import scrub_obj
from reproml.stores.records import MONITORING as MONITORING_KIND
from reproml.stores.records import records_store

MONITORING = Path("monitoring")
# the folders of one model's history, in the order `reproml simulate` archives them
KINDS = ("records", "predictions", "labelled", "quarantine", "reports", "late-labels")


def home(name: str) -> Path:
    """`monitoring/<name>`: one registered model's (so one data source's) monitoring history."""
    from reproml.config import RESERVED_MODEL_NAMES

    if not name or "/" in name or "\\" in name or name in (".", "..") or name.lower() in RESERVED_MODEL_NAMES:
        raise ReproError(f"{name!r} cannot name a monitoring history (register.model_name)")
    return MONITORING / name


def records(name: str) -> Path:
    return home(name) / "records"


def predictions(name: str) -> Path:
    return home(name) / "predictions"


def labelled(name: str) -> Path:
    """Accepted labelled windows; `registry.eval_data` adds the newest to the promotion gate's rows."""
    return home(name) / "labelled"


def late_labels(name: str) -> Path:
    """The labels files `reproml simulate --labels late` brings one period late (each the period's
    rows again, with their labels, as `reproml monitor --labels` reads them)."""
    return home(name) / "late-labels"


def quarantine(name: str) -> Path:
    return home(name) / "quarantine"


def reports(name: str) -> Path:
    return home(name) / "reports"


def index(name: str) -> Path:
    return reports(name) / "index.html"


def archive(name: str) -> Path:
    return home(name) / "archive"


def record_path(name: str, batch_id: str) -> Path:
    return records(name) / f"{batch_id}.json"


def report_dir(name: str, batch_id: str) -> Path:
    return reports(name) / batch_id


def labelled_path(name: str, batch_id: str, end: pd.Timestamp | None) -> Path:
    """Named so that sorting by name sorts by the batch's last timestamp: the promotion gate takes
    the last file in name order as "the newest labelled window" (registry.eval_data)."""
    stamp = "undated" if end is None else end.strftime("%Y%m%dT%H%M%S")
    return labelled(name) / f"{stamp}_{batch_id}.parquet"


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


def write_record(root: Path, name: str, record: BatchRecord) -> Path:
    """Store the batch's record (keyed by its batch id); returns its file (the record itself with
    files, the mirror with a records database)."""
    target = root / record_path(name, record["batch_id"])
    clean = scrub_obj(jsonable(record))  # records feed the reports: no credential in them
    records_store().put(MONITORING_KIND, name, record["batch_id"], clean, target)
    return target


def find(root: Path, name: str, batch_id: str) -> BatchRecord | None:
    """The record of batch `batch_id` of model `name`, or None when it was never monitored."""
    found = records_store().get(MONITORING_KIND, name, batch_id, root / record_path(name, batch_id))
    return None if found is None else cast(BatchRecord, found)


def history(root: Path, name: str) -> list[BatchRecord]:
    """Every decision record of model `name`, in the order the batches were monitored (the JSON
    edge: records `write_record` wrote, by this version or an earlier one; see `records`)."""
    found = [cast(BatchRecord, r) for r in records_store().all(MONITORING_KIND, name, root / records(name))]
    return sorted(found, key=lambda r: (r.get("seq", 0), r.get("batch_id", "")))


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


def archive_records(root: Path, name: str, stamp: str) -> int:
    """Set model `name`'s decision records aside (`reproml simulate`'s clean start): with files the
    caller moves `records/` to `archive/<stamp>/`; with a records database its rows are kept under
    the kind `monitoring@<stamp>`, so the history, cooldown and batch order start empty there too
    (for every clone reading that database). Returns how many rows moved (0 with files)."""
    with monitor_lock(root, name):
        return records_store().archive(MONITORING_KIND, name, stamp)


@contextlib.contextmanager
def monitor_lock(root: Path, name: str) -> Iterator[None]:
    """One batch decision at a time per model: the cooldown reads past records and must see every
    one (with a records database, those of every machine: its lock is held too)."""
    with file_lock(root / home(name) / ".monitor.lock"), records_store().lock(f"monitor:{name}"):
        yield
