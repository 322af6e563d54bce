"""The production feed: batch files dropped into a folder (`monitor.feed`), each taken exactly once
and in time order, and the labels that arrive later for a batch already taken.

The folder holds two kinds of file (CSV or Parquet, nothing else is looked at):

    2013-08-02.parquet            a batch: new production rows
    2013-08-02.labels.parquet     its labels, later: the same rows again with the target filled
                                  (`reproml monitor --batch ID --labels FILE`'s rule), attached to
                                  the batch taken from the file of the same stem

Exactly once: `monitoring/<model>/feed.json` (the ledger) lists every file taken, by its path,
md5, size and modification time. A file in the ledger with the same content is never read again;
the same path with other content is refused, every run, naming both md5s, until it is renamed
(feed files are immutable: a correction is a new file). A file is taken even when it cannot be
read (the monitor quarantines it with its reason) or its labels do not fit (the ledger keeps why),
so nothing is retried forever. A file still being written is left for the next run: dotfiles
(`.x.parquet`, the temp names of atomic writers), other suffixes (`.part`, `.tmp`) and files
modified within the last `SETTLE_SECONDS`.

In time order: batches are taken by their own earliest timestamp (`data.time_column`), file name
as tie-break, not by directory order or arrival; files without a readable time come last, by name.
Labels are matched after the batches of the same run, so a batch and its labels may arrive together.

An S3 feed (`monitor.feed: s3://bucket/prefix`) is copied into `inbox` first
(`reproml.stores.s3`) and taken from there by the same rules.

Two feed runs never take the same file: a run holds `monitoring/<model>/.feed.lock` from scan to
the ledger's last write, and a second run that finds it held takes nothing.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import pandas as pd

from reproml import paths
from reproml.errors import ReproError
from reproml.io import file_lock, file_md5
from reproml.monitoring import store
from reproml.monitoring.records import FeedEntry, FeedLedger, FeedRow
from reproml.stores.records import FEED, records_store

SUFFIXES = (".csv", ".parquet")
LABELS = ".labels"  # `<batch stem>.labels.csv|parquet`
LEDGER_KEY = "ledger"  # the one feed record per model
SETTLE_SECONDS = 5.0  # a file modified more recently may still be being written
Kind = Literal["batch", "labels"]


class FeedError(ReproError):
    """The feed is not configured, or its folder is not one the project may read batches from."""


@dataclass(frozen=True)
class Arrival:
    """A file in the feed folder that no run has taken yet."""

    path: Path  # in the resolved feed folder, the name it arrived under
    file: str  # relative to the project root, as the ledger and the records name it
    kind: Kind
    md5: str
    size: int
    mtime: float
    stem: str  # the batch's stem (a labels file: the stem of the batch it labels)
    first_time: pd.Timestamp | None = None  # a batch's earliest timestamp (UTC), when readable

    def entry(self, batch_id: str | None, outcome: str, error: str | None = None) -> FeedEntry:
        """The ledger's line for this file, taken now."""
        taken: FeedEntry = {
            "file": self.file,
            "kind": self.kind,
            "md5": self.md5,
            "size": self.size,
            "mtime": self.mtime,
            "taken_at": dt.datetime.now(dt.UTC).isoformat(),
            "batch_id": batch_id,
            "outcome": outcome,
        }
        if error is not None:
            taken["error"] = error
        return taken


@dataclass(frozen=True)
class Scan:
    """What one run finds: new batches in time order, new labels in name order, and the files left
    for a later run (`refused` when a person must act: content changed under a taken name)."""

    batches: list[Arrival]
    labels: list[Arrival]
    left: list[FeedRow]
    refused: list[FeedRow]


def folder(root: Path, feed: str | None) -> Path:
    """The feed folder `monitor.feed` names, resolved and confined to data/ or monitoring/ (what
    is read there is copied into monitoring outputs and new data versions, as `--batch` files are)."""
    if not feed:
        raise FeedError(
            "monitor.feed is null in params.yaml: set it to the folder new batch files arrive in "
            "(for example data/feed) to monitor them with --feed"
        )
    found = paths.confined(feed, root, "monitor.feed")
    if not found.is_dir():
        raise FeedError(
            f"monitor.feed={feed!r}: no such folder ({found}); create it and drop batch files there"
        )
    return found


def inbox(name: str) -> Path:
    """Where the objects of an S3 feed (`monitor.feed: s3://...`, `reproml.stores.s3`) are copied
    to be taken like a local feed's files."""
    return store.home(name) / "feed"


def wanted(name: str) -> bool:
    """Whether a file of this name is one the feed takes (a batch or labels; not a temp file)."""
    return kind_of(Path(name)) is not None


def ledger_path(name: str) -> Path:
    return store.home(name) / "feed.json"


def read_ledger(root: Path, name: str) -> FeedLedger:
    """The model's ledger (`reproml.stores.records`: its file, or the team's records database,
    where every clone taking one feed sees what the others took)."""
    found = records_store().get(FEED, name, LEDGER_KEY, root / ledger_path(name))
    if found is None:
        return {"taken": []}
    if not isinstance(found, dict) or not isinstance(found.get("taken"), list):
        raise FeedError(f"{ledger_path(name)} is not a feed ledger (expected an object with a 'taken' list)")
    return {"taken": list(found["taken"])}


def write_ledger(root: Path, name: str, ledger: FeedLedger) -> Path:
    target = root / ledger_path(name)
    records_store().put(FEED, name, LEDGER_KEY, ledger, target)
    return target


@contextmanager
def feed_lock(root: Path, name: str) -> Iterator[bool]:
    """True when this run holds the model's feed; False at once when another run holds it."""
    with file_lock(root / store.home(name) / ".feed.lock", blocking=False) as held:
        yield held


def kind_of(path: Path) -> tuple[Kind, str] | None:
    """("batch" | "labels", the batch stem) for a feed file; None for anything the feed ignores
    (other suffixes, dotfiles: a writer's temp file)."""
    if path.name.startswith(".") or path.suffix.lower() not in SUFFIXES:
        return None
    stem = path.stem
    if stem.lower().endswith(LABELS):
        return "labels", stem[: -len(LABELS)]
    return "batch", stem


def first_time(path: Path, time_column: str | None) -> pd.Timestamp | None:
    """The earliest value of `time_column` in the batch file (as UTC), or None when the data are
    undated or the file or column cannot be read (the monitor says why, in time for its turn)."""
    if time_column is None:
        return None
    try:
        if path.suffix.lower() == ".parquet":
            column = pd.read_parquet(path, columns=[time_column])[time_column]
        else:
            column = pd.read_csv(path, usecols=[time_column])[time_column]
        when = pd.to_datetime(column, errors="coerce", utc=True).min()
    except Exception:  # any unreadable file is ordered last and quarantined by the monitor
        return None
    return None if pd.isna(when) else pd.Timestamp(when)


def _order(arrival: Arrival) -> tuple[bool, pd.Timestamp, str]:
    when = arrival.first_time
    return when is None, when if when is not None else pd.Timestamp(0, tz="UTC"), Path(arrival.file).name


def scan(
    root: Path,
    feed_folder: Path,
    ledger: FeedLedger,
    time_column: str | None,
    settle: float = SETTLE_SECONDS,
    now: float | None = None,
) -> Scan:
    """The feed folder's files against the ledger: what is new, what waits, what is refused."""
    now = time.time() if now is None else now
    taken: dict[str, FeedEntry] = {}
    for entry in ledger["taken"]:
        taken[entry["file"]] = entry  # the newest entry of a path wins
    new_batches: list[Arrival] = []
    new_labels: list[Arrival] = []
    left: list[FeedRow] = []
    refused: list[FeedRow] = []
    for path in sorted(feed_folder.iterdir()):
        kind = kind_of(path)
        if kind is None or not path.is_file():
            continue
        try:  # a link out of data/ and monitoring/ would copy any readable file into the outputs
            resolved = paths.confined(path, root, "monitor.feed")
        except paths.PathError:
            refused.append({"file": paths.relative(path, root), "kind": kind[0], "batch_id": None,
                            "outcome": f"refused: a link to {path.resolve()}, outside data/ and "
                                       "monitoring/; copy the file into the feed instead"})  # fmt: skip
            continue
        stat = resolved.stat()
        file = paths.relative(path, root)  # the name it arrived under (the folder is resolved)
        before = taken.get(file)
        if before is not None and before["size"] == stat.st_size and before.get("mtime") == stat.st_mtime:
            continue  # taken, and untouched since: not even hashed again
        if now - stat.st_mtime < settle:
            left.append({"file": file, "kind": kind[0], "batch_id": None,
                         "outcome": f"left for the next run: modified {now - stat.st_mtime:.0f} s ago, "
                                    "it may still be being written"})  # fmt: skip
            continue
        md5 = file_md5(resolved)
        if before is not None and before["md5"] == md5:
            continue
        if before is not None:
            refused.append({"file": file, "kind": kind[0], "batch_id": before["batch_id"],
                            "outcome": f"refused: its content changed since it was taken at "
                                       f"{before['taken_at']} (md5 {before['md5']} -> {md5}); a feed "
                                       "file is read once, so give the new content a new name"})  # fmt: skip
            continue
        arrival = Arrival(path, file, kind[0], md5, stat.st_size, stat.st_mtime, kind[1])
        if kind[0] == "batch":
            new_batches.append(replace(arrival, first_time=first_time(resolved, time_column)))
        else:
            new_labels.append(arrival)
    return Scan(sorted(new_batches, key=_order), new_labels, left, refused)


def labelled_batch(ledger: FeedLedger, arrival: Arrival) -> FeedEntry | None:
    """The batch a labels file belongs to: the newest batch taken from the same folder with the
    stem the labels file names (`x.labels.csv` -> `x.csv` or `x.parquet`); None if none was taken."""
    parent = Path(arrival.file).parent
    for entry in reversed(ledger["taken"]):
        file = Path(entry["file"])
        if entry["kind"] == "batch" and file.parent == parent and file.stem == arrival.stem:
            return entry
    return None


def waiting(arrival: Arrival) -> FeedRow:
    """A labels file whose batch has not been taken: left until it is."""
    return {"file": arrival.file, "kind": "labels", "batch_id": None,
            "outcome": f"left for the next run: no batch {arrival.stem}.csv/.parquet taken yet"}  # fmt: skip


def taken_row(entry: FeedEntry, note: str = "") -> FeedRow:
    outcome = entry["outcome"] + (f": {entry['error']}" if entry.get("error") else "") + note
    return {"file": entry["file"], "kind": entry["kind"], "batch_id": entry["batch_id"], "outcome": outcome}
