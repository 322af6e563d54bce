"""The Optuna storage store: where studies live, opening that storage, and the locks and repairs
that keep it whole across crashes (samplers, pruners and trials stay in `reproml.tuning`).

The default is an Optuna journal file in the project: an append-only log that several processes
can share, and that keeps every finished trial when a process is killed. A crash in the middle of
an append can leave a torn last line; Optuna then fails on the next read, so it is repaired here
(backed up, truncated to the last whole record) before the study is opened.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reproml.errors import ReproError
from reproml.io import file_lock
from reproml.paths import workspace
from reproml.redaction import redact_url

DEFAULT_JOURNAL = Path("optuna/studies.journal")
STORAGE_ENV = "REPROML_TUNE_STORAGE"
_RDB = re.compile(r"^[a-z][a-z0-9+]*://")


class TuneError(ReproError):
    """A study that must not be run: changed direction or space, a busy study, a corrupt journal."""


@dataclass(frozen=True)
class StorageInfo:
    """A resolved storage: a journal file path or an RDB URL, and where its locks go."""

    kind: str  # "journal" | "rdb"
    location: str
    lock_dir: Path

    @property
    def shown(self) -> str:
        """The location with any password or secret query parameter masked, for logs, tags and
        errors (`reproml.redaction.redact_url`)."""
        return redact_url(self.location)


def resolve(root: Path, setting: str | None) -> StorageInfo:
    """`REPROML_TUNE_STORAGE`, else `tune.storage`, else the project's journal file."""
    value = os.environ.get(STORAGE_ENV) or setting
    if value and _RDB.match(value):
        return StorageInfo("rdb", value, (workspace(root) / ".reproml" / "optuna-locks").resolve())
    path = Path(value) if value else workspace(root) / DEFAULT_JOURNAL
    path = path if path.is_absolute() else (root / path)
    path = path.resolve()
    return StorageInfo("journal", str(path), path.parent / ".locks")


JOURNAL_LOCK_GRACE_S = 30  # Optuna's own default: a lock file untouched this long is stale


def journal_lock(path: Path, grace_period: int = JOURNAL_LOCK_GRACE_S) -> Any:
    """Optuna's own lock on the journal file (`<journal>.lock`, created with O_EXCL), the one its
    `JournalFileBackend` holds while it appends: whoever holds it is the only writer."""
    from optuna.storages.journal import JournalFileOpenLock

    return JournalFileOpenLock(str(path), grace_period=grace_period)


def repair_journal(path: Path, grace_period: int = JOURNAL_LOCK_GRACE_S) -> Path | None:
    """Cut a torn tail off a journal file; returns the backup made, or None if it was whole.

    Runs only while holding Optuna's own journal lock (`journal_lock`): a live writer's append in
    progress looks exactly like a torn tail, and a cut made while it writes would lose its trial.
    The lock of a writer killed mid-append is taken over after `grace_period` seconds, as Optuna's
    writers do. Only the tail is repaired: a record that does not parse and is followed by whole
    ones is not a torn write but corruption, and is refused rather than guessed at.
    """
    if not path.is_file():
        return None
    lock = journal_lock(path, grace_period)
    lock.acquire()
    try:
        return _repair_locked(path)
    finally:
        lock.release()


def _repair_locked(path: Path) -> Path | None:
    data = path.read_bytes()
    keep = len(data)
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
    while keep > 0:
        start = data.rfind(b"\n", 0, keep - 1) + 1
        try:
            json.loads(data[start:keep])
            break
        except ValueError:
            keep = start
    for number, line in enumerate(data[:keep].splitlines(), start=1):
        try:
            json.loads(line)
        except ValueError:
            raise TuneError(
                f"{path}: record {number} is not valid JSON and whole records follow it; the journal "
                "is corrupt, not torn. Restore it from a backup or point tune.storage elsewhere"
            ) from None
    if keep == len(data):
        return None
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    backup = path.with_name(f"{path.name}.torn-{stamp}.bak")
    shutil.copy2(path, backup)
    with path.open("r+b") as handle:
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    warnings.warn(
        f"{path}: the last {len(data) - keep} bytes were a torn record (a crash during a write); "
        f"cut them off, the original is kept as {backup.name}",
        stacklevel=3,
    )
    return backup


def open_storage(info: StorageInfo) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if info.kind == "rdb":
        return optuna.storages.RDBStorage(info.location)
    path = Path(info.location)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=journal_lock(path)))


@contextlib.contextmanager
def study_session(info: StorageInfo, study_name: str) -> Iterator[None]:
    """One `reproml tune` per study at a time on this host (its workers share the session)."""
    with file_lock(info.lock_dir / f"{study_name}.session", blocking=False) as acquired:
        if not acquired:
            raise TuneError(
                f"study {study_name!r} in {info.shown} is being tuned by another process; "
                "wait for it, or add workers to it with tune.workers instead"
            )
        yield
