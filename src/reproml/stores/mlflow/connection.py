"""The MLflow tracking store: where it is, pointing MLflow at it, and a locked store made clear.

A locked SQLite store (another process inside a write transaction) becomes `StoreLockedError`,
naming the database file and what to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from reproml import env
from reproml.errors import ReproError
from reproml.paths import workspace
from reproml.redaction import redact_url, split_userinfo

# How long a call waits for another process's write lock on a SQLite store before giving up.
STORE_WAIT_ENV = "REPROML_STORE_WAIT_S"
MLFLOW_STORE_WAIT_S = 20.0  # MLflow's own `PRAGMA busy_timeout`, used when the variable is unset
LOCKED = "database is locked"  # SQLite's words; reproml.orchestration.commands retries on them

# What MLflow raises for a refused call (no such run, version or alias...): callers catch this name.
MlflowError = MlflowException


class StoreLockedError(ReproError):
    """The MLflow store is locked by another process's write transaction for too long."""


USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


def tracking_uri(root: Path) -> str:
    """The tracking store as configured (it may carry a password: show `shown_tracking_uri`)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(workspace(root) / 'mlflow.db').resolve()}"


def shown_tracking_uri(root: Path) -> str:
    """The tracking store, fit for output and error messages (password and tokens masked)."""
    return redact_url(tracking_uri(root))


def _credentials_to_env(uri: str) -> str:
    """An HTTP(S) tracking URI without its `user:password@`, which go to MLflow's own
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (unless those are set) instead.

    MLflow sends both as the same basic auth, but prints and raises with the URI it was given
    ("View run at: <uri>/#/...", "API request to <uri>/api/... failed"): given none, it has no
    password to show. Variables already set win. Child processes inherit the clean URI (MLflow
    exports it) and the variables.
    """
    if not uri.lower().startswith(("http://", "https://")):
        return uri
    clean, user, password = split_userinfo(uri)
    if password is None:
        return uri
    os.environ.setdefault(USERNAME_ENV, user or "")
    os.environ.setdefault(PASSWORD_ENV, password)
    return clean


def setup(root: Path, experiment_name: str) -> str:
    """Point MLflow at the project's store and return the experiment id (created if needed).

    With the default local store, artifacts go to `mlartifacts/` in the project, not to the
    process's working directory. Credentials in an HTTP tracking URI are handed to MLflow
    separately (`_credentials_to_env`), so MLflow never sees them in the URI.
    """
    uri = _credentials_to_env(tracking_uri(root))
    mlflow.set_tracking_uri(uri)
    _apply_store_wait()
    _quiet_locked_store_logs()
    with store_guard():
        experiment = mlflow.get_experiment_by_name(experiment_name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = (workspace(root) / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
        return str(mlflow.create_experiment(experiment_name, artifact_location=location))


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI (query string dropped), else None."""
    if not uri.startswith("sqlite:"):
        return None
    path = urllib.parse.urlsplit(uri).path  # `sqlite:////abs.db` -> //abs.db, `sqlite:///rel.db` -> /rel.db
    return Path(path[1:] if path.startswith("/") else path)


def store_name(uri: str) -> str:
    """The store as a person should see it: the SQLite file, else scheme and host (no credentials)."""
    database = _sqlite_file(uri)
    if database is not None:
        return str(database)
    parts = urllib.parse.urlsplit(uri)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def store_wait_s() -> float:
    """Seconds a call waits for a locked SQLite store (`REPROML_STORE_WAIT_S`, default MLflow's 20)."""
    return env.seconds(STORE_WAIT_ENV, MLFLOW_STORE_WAIT_S)


_WAIT_APPLIED: list[int] = []  # the busy timeout in ms, once the listeners are in


def _apply_store_wait() -> None:
    """Make SQLite calls wait `store_wait_s()` for a lock instead of MLflow's fixed 20 s.

    MLflow runs `PRAGMA busy_timeout = 20000` at the start of every session; a SQLAlchemy event
    sets ours right after it, and on every new connection (MLflow's schema check runs before any
    session). Only SQLite connections are touched, and only when the variable is set.
    """
    if os.environ.get(STORE_WAIT_ENV) is None:
        return
    millis = int(store_wait_s() * 1000)
    if _WAIT_APPLIED:
        _WAIT_APPLIED[0] = millis
        return
    _WAIT_APPLIED.append(millis)
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def sqlite(connection: Any) -> bool:
        return type(connection).__module__.startswith("sqlite3")

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        if sqlite(dbapi_connection):
            dbapi_connection.execute(f"PRAGMA busy_timeout = {_WAIT_APPLIED[0]}")

    def after_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().lower().startswith("pragma busy_timeout") and sqlite(cursor):
            cursor.execute(f"PRAGMA busy_timeout = {_WAIT_APPLIED[0]}")

    event.listen(Engine, "connect", on_connect)
    event.listen(Engine, "after_cursor_execute", after_execute)


def _drop_locked(record: logging.LogRecord) -> bool:
    return not (record.exc_info and record.exc_info[1] and is_store_locked(record.exc_info[1]))


def _quiet_locked_store_logs() -> None:
    """MLflow logs every "database is locked" with a traceback before raising it; the caller gets
    `StoreLockedError` with what to do instead, so those log records are dropped (others stay)."""
    logger = logging.getLogger("mlflow.store.db.utils")
    if _drop_locked not in logger.filters:
        logger.addFilter(_drop_locked)


def is_store_locked(exc: BaseException) -> bool:
    """True when `exc`, or anything it was raised from, is SQLite's "database is locked"."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, StoreLockedError) or LOCKED in str(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def store_locked_error(uri: str | None = None) -> StoreLockedError:
    """What a person needs: which store, that another process holds it, and what to do."""
    uri = uri or mlflow.get_tracking_uri()
    name = store_name(uri)
    return StoreLockedError(
        f"MLflow store {name} is locked ({LOCKED}): another process held a write lock on it for "
        f"more than {store_wait_s():g} s. It may be another reproml command or flow, `mlflow ui` / "
        f"`mlflow server`, or a sqlite3 session left inside a transaction; `fuser -v {name}` lists "
        f"the processes that have it open. Wait for it to finish or stop it, then run again "
        f"({STORE_WAIT_ENV} sets how long to wait). A run this left RUNNING is ended FAILED when "
        f"the next run starts"
    )


@contextlib.contextmanager
def store_guard() -> Iterator[None]:
    """Turn a locked-store failure inside the block into `StoreLockedError`."""
    try:
        yield
    except StoreLockedError:
        raise
    except Exception as exc:
        if is_store_locked(exc):
            raise store_locked_error() from exc
        raise


def current_uri() -> str:
    """The tracking URI MLflow uses in this process (after `setup`; may carry a password)."""
    return str(mlflow.get_tracking_uri())
