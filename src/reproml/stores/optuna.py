"""The Optuna storage store: where studies live, opening that storage, and the locks and repairs
that keep it whole across crashes (samplers, pruners and trials stay in `reproml.tuning`).

The default is an Optuna journal file in the project: an append-only log that several processes
can share, and that keeps every finished trial when a process is killed. A crash in the middle of
an append can leave a torn last line; Optuna then fails on the next read, so it is repaired here
(backed up, truncated to the last whole record) before the study is opened.

A database (RDB URL) is opened with Optuna's heartbeats: each running trial records a heartbeat
every `heartbeat_interval` seconds, and a trial silent for `grace_period` seconds is marked FAIL by
whichever client looks next and queued again (`RetryHeartbeatStaleTrialCallback`, at most
`max_retry` times). A server database (PostgreSQL, MySQL) may be shared by clients on several
machines (`StorageInfo.shared`): nothing here then assumes one host, and the budget's claim is
guarded by a PostgreSQL advisory lock (`budget_lock`), not a file lock. SQLite is one machine's
file and keeps the journal's host-local rules (session lock, file lock).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reproml.errors import ReproError
from reproml.io import file_lock
from reproml.paths import workspace
from reproml.redaction import redact_url

DEFAULT_JOURNAL = Path("optuna/studies.journal")
# Heartbeat defaults (`tune.heartbeat_interval` / `tune.grace_period` / `tune.stale_retries`): a
# trial silent for 30 s is taken as dead; three beats missed is far beyond a busy client's jitter.
HEARTBEAT_S = 10
GRACE_S = 30
STALE_RETRIES = 2
STORAGE_ENV = "REPROML_TUNE_STORAGE"
# How long a database client keeps trying while its server is away (a restart takes seconds); the
# variable overrides it. Beyond it the call fails with an error naming the storage.
RECONNECT_S = 120.0
RECONNECT_ENV = "REPROML_TUNE_RECONNECT_S"
_RDB = re.compile(r"^[a-z][a-z0-9+]*://")


class TuneError(ReproError):
    """A study that must not be run: changed direction or space, a busy study, a corrupt journal."""


@dataclass(frozen=True)
class StorageInfo:
    """A resolved storage: a journal file path or an RDB URL, and where its locks go."""

    kind: str  # "journal" | "rdb"
    location: str
    lock_dir: Path
    heartbeat_interval: int = HEARTBEAT_S  # RDB only: seconds between a running trial's heartbeats
    grace_period: int = GRACE_S  # RDB only: a trial without a heartbeat this long is stale (FAIL)
    max_retry: int = STALE_RETRIES  # RDB only: how often a stale trial is queued again

    @property
    def backend(self) -> str:
        """`journal`, or the URL's database: `sqlite`, `postgresql`, `mysql`, ..."""
        if self.kind == "journal":
            return "journal"
        from sqlalchemy.engine import make_url

        return make_url(self.location).get_backend_name()

    @property
    def shared(self) -> bool:
        """A database server that clients on several machines may share a study on: no host-local
        lock can guard it, and a RUNNING trial may be another machine's live one."""
        return self.backend not in ("journal", "sqlite")

    @property
    def shown(self) -> str:
        """The location with any password or secret query parameter masked, for logs, tags and
        errors (`reproml.redaction.redact_url`)."""
        return redact_url(self.location)


def resolve(
    root: Path,
    setting: str | None,
    heartbeat_interval: int = HEARTBEAT_S,
    grace_period: int = GRACE_S,
    max_retry: int = STALE_RETRIES,
) -> StorageInfo:
    """`REPROML_TUNE_STORAGE`, else `tune.storage`, else the project's journal file."""
    value = os.environ.get(STORAGE_ENV) or setting
    if value and _RDB.match(value):
        lock_dir = (workspace(root) / ".reproml" / "optuna-locks").resolve()
        return StorageInfo("rdb", value, lock_dir, heartbeat_interval, grace_period, max_retry)
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
    """The study storage; a database with heartbeats and the bounded retry of stale trials."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if info.kind == "rdb":
        # Two clients opening a fresh database at once would both create Optuna's tables (and
        # one fail on a duplicate type): on PostgreSQL, one at a time
        first_use = _advisory_lock(info.location, SCHEMA_KEY) if info.backend == "postgresql" else None
        with warnings.catch_warnings(), first_use or contextlib.nullcontext():  # experimental in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=info.max_retry)
            store = optuna.storages.RDBStorage(
                info.location,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=info.heartbeat_interval,
                grace_period=info.grace_period,
                heartbeat_stale_trial_callback=retry,
            )
        # a database server may restart under its clients; a SQLite file does not go away
        return reconnecting(store, info.shown) if info.shared else store
    path = Path(info.location)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=journal_lock(path)))


def _server_away(exc: BaseException) -> bool:
    """Whether `exc` (or what Optuna wrapped in it) says the database server cannot be reached
    now: a refused or cut connection, a server shutting down or starting up."""
    import sqlalchemy.exc

    if any(words in str(exc) for words in _NOT_AWAY):
        return False
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InvalidatePoolError)):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# A server that answers and refuses: waiting would not help.
_NOT_AWAY = ("authentication failed", "no password supplied", "does not exist", "permission denied")


def _reconnect_s() -> float:
    value = os.environ.get(RECONNECT_ENV)
    try:
        return float(value) if value else RECONNECT_S
    except ValueError:
        raise TuneError(f"{RECONNECT_ENV}={value!r} is not a number of seconds") from None


def retried(call: Callable[..., Any], shown: str) -> Callable[..., Any]:
    """`call`, tried again while the database server is away (`_server_away`), for at most
    `REPROML_TUNE_RECONNECT_S` seconds; the pool's pre-ping then replaces the dead connections.

    Why this is safe for Optuna's writes: a server that stops rolls back every open transaction,
    so a failed call changed nothing and is simply made again. The one unsafe moment, a commit the
    server applied whose answer was lost with the connection, is a window of microseconds; an
    `ask` repeated there would leave one extra RUNNING trial, which the heartbeats fail and the
    budget does not count.
    """

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + _reconnect_s()
        pause = 0.2
        while True:
            try:
                return call(*args, **kwargs)
            except Exception as exc:
                if not _server_away(exc):
                    raise
                if time.monotonic() > deadline:
                    raise TuneError(
                        f"the study storage {shown} did not answer for {_reconnect_s():.0f} s "
                        f"({type(exc).__name__}): is the database server running? "
                        f"({RECONNECT_ENV} sets the wait)"
                    ) from exc
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    return wrapper


def reconnecting(store: Any, shown: str) -> Any:
    """The RDB storage with each of its public methods `retried`: Optuna's own calls (ask, tell,
    the heartbeat thread's beats) ride out a database restart. The instance stays an RDBStorage
    (Optuna checks `isinstance`); only its bound methods are replaced."""
    for name in dir(type(store)):
        if name.startswith("_") or name in ("remove_session", "upgrade", "get_current_version"):
            continue
        member = getattr(store, name)
        if callable(member):
            setattr(store, name, retried(member, shown))
    return store


def client_session(info: StorageInfo, study_name: str) -> contextlib.AbstractContextManager[None]:
    """What a `reproml tune` holds while it tunes: the host session lock for a journal or SQLite
    file (one tuning process per study, `study_session`); nothing for a shared database, whose
    study is meant to be tuned by several clients at once, from any machine."""
    return contextlib.nullcontext() if info.shared else study_session(info, study_name)


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


def has_heartbeats(study: Any) -> bool:
    """Whether the study's storage records heartbeats (a database opened by `open_storage`)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return bool(is_heartbeat_enabled(study._storage))


def reap_stale(study: Any) -> None:
    """Mark FAIL the trials whose heartbeat stopped more than `grace_period` ago, and queue them
    again (the storage's retry callback). Optuna does this before each of its own trials; the
    budget's claim does it too, so a client waiting at the end of a study retries a dead one."""
    import optuna

    if not has_heartbeats(study):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    _reap_silent(study)


def _reap_silent(study: Any) -> None:
    """Fail and retry the RUNNING trials that never beat at all, once older than the grace period.

    Optuna's heartbeat check skips a trial without any heartbeat, and such a trial would never end:
    one left by a client killed between `ask` and its first beat, or by a client without heartbeats
    (an older reproml). A client waiting for the running trials to finish would wait for ever.
    """
    import copy

    import optuna
    import sqlalchemy

    store = study._storage  # Optuna wraps an RDBStorage in a cache: the database is its backend
    database = getattr(store, "_backend", store)
    grace = dt.timedelta(seconds=database.grace_period or 2 * database.heartbeat_interval)
    running = {
        t._trial_id: t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if t.datetime_start is not None
        and dt.datetime.now(t.datetime_start.tzinfo) - t.datetime_start > grace
    }
    if not running:
        return
    query = sqlalchemy.text("SELECT trial_id FROM trial_heartbeats WHERE trial_id IN :ids").bindparams(
        sqlalchemy.bindparam("ids", expanding=True)
    )
    with database.engine.connect() as connection:
        beating = {row[0] for row in connection.execute(query, {"ids": list(running)})}
    retry = store.get_heartbeat_stale_trial_callback()
    for trial_id in sorted(set(running) - beating):
        try:
            failed = store.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished, or another client failed it, meanwhile
        if failed and retry is not None:
            retry(study, copy.deepcopy(store.get_trial(trial_id)))


def advisory_key(study_name: str) -> int:
    """A study's PostgreSQL advisory lock key: a stable signed 64-bit hash of its name."""
    return _key(f"reproml.budget:{study_name}")


def _key(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


SCHEMA_KEY = _key("reproml.optuna-schema")


_ENGINES: dict[str, Any] = {}


def _engine(url: str) -> Any:
    """One small pool per URL and process: the lock's connection is reused between claims."""
    if url not in _ENGINES:
        import sqlalchemy

        _ENGINES[url] = sqlalchemy.create_engine(url, pool_size=1, max_overflow=4, pool_pre_ping=True)
    return _ENGINES[url]


@contextlib.contextmanager
def _advisory_lock(url: str, key: int) -> Iterator[None]:
    import sqlalchemy

    def locked() -> Any:
        connection = _engine(url).connect()
        try:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.commit()
        except BaseException:
            connection.close()
            raise
        return connection

    connection = retried(locked, redact_url(url))()  # the server may be restarting
    try:
        yield
    finally:
        try:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()
        except sqlalchemy.exc.OperationalError:
            pass  # the server restarted meanwhile: the lock went with its session
        finally:
            connection.close()


@contextlib.contextmanager
def budget_lock(info: StorageInfo, study_name: str) -> Iterator[None]:
    """Held around "count the trials, then ask for one" so that every client of a study, on any
    machine, sees the others' claims: the budget stays exact.

    PostgreSQL: a session advisory lock keyed by the study, on a connection of its own; the server
    drops it when a client dies, even by SIGKILL. The journal and SQLite are files on one machine,
    so a file lock is exact for them. Other servers (MySQL) get the file lock too, exact only among
    the clients of one host: run one client per study there, or use PostgreSQL.
    """
    if info.backend == "postgresql":
        with _advisory_lock(info.location, advisory_key(study_name)):
            yield
    else:
        with file_lock(info.lock_dir / f"{study_name}.claim"):
            yield
