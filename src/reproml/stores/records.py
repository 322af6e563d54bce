"""The project's own records: the registry's audit trail, the monitoring batch records, the feed ledger.

Two backends behind one small interface (`RecordStore`), chosen by `REPROML_RECORDS_URL`:

- unset (the default): `FileRecords`, one JSON file per record where reproml always kept them
  (`registry/records/<key>.json`, `monitoring/<model>/records/<batch>.json`,
  `monitoring/<model>/feed.json`), written atomically; nothing changes on disk.
- a SQLAlchemy URL (`postgresql://reproml@db/reproml`, or `sqlite:///...`): `SqlRecords`, one table
  `reproml_records` (created if missing) keyed by model name + kind + key, holding the JSON record
  and when it was written. Two clones (two machines) pointed at one database read one history and
  decide on one champion. The team stack writes the variable into `.reproml/team/env`; the
  password is never in it (libpq's `PGPASSFILE`), and the URL is shown only through
  `reproml.redaction.redact_url`.

With a database, the database is the record: every read comes from it. Each write is also
mirrored to the record's usual file (after the row is committed), so the monitoring reports'
links, the MLflow monitoring run's artifact and a person browsing the folder still find it there;
nothing reads the mirror back.

Both also give a lock (`RecordStore.lock`) that decisions reading and then writing records hold
(a promotion, a monitored batch): none for files, which the callers' file locks already cover on
their one machine; a PostgreSQL advisory lock for a database, so that the rule "a `pending` audit
record seen under the promotion lock is a dead process's" still holds when two machines share the
records (a session lock: the server drops it when the holder's connection dies, even by SIGKILL).

Only this module imports SQLAlchemy for records (an import-linter contract says so).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from reproml.errors import ReproError
from reproml.io import file_lock, read_json, write_json
from reproml.redaction import redact_url, scrub

if TYPE_CHECKING:
    from sqlalchemy import Table
    from sqlalchemy.engine import Engine

RECORDS_URL_ENV = "REPROML_RECORDS_URL"
TABLE = "reproml_records"
# the kinds of record reproml keeps (the `kind` column)
REGISTRY, MONITORING, FEED = "registry", "monitoring", "feed"


class RecordsError(ReproError):
    """The records store cannot be read or written; the message names the store and the record."""


class RecordStore(Protocol):
    """Where records go. `file` / `folder` name the record's usual place on disk: the file backend's
    storage, the SQL backend's mirror. `model` None in `all` lists every model's records of `kind`
    (the file backend lists the folder, which is already that scope)."""

    @property
    def shown(self) -> str: ...

    def put(self, kind: str, model: str, key: str, record: Mapping[str, Any], file: Path) -> None: ...

    def get(self, kind: str, model: str, key: str, file: Path) -> dict[str, Any] | None: ...

    def all(self, kind: str, model: str | None, folder: Path) -> list[dict[str, Any]]: ...

    def lock(self, scope: str) -> contextlib.AbstractContextManager[None]: ...

    def archive(self, kind: str, model: str, stamp: str) -> int: ...


def archived_kind(kind: str, stamp: str) -> str:
    """The kind a record of `kind` moved aside at `stamp` is kept under (`monitoring@<stamp>`)."""
    return f"{kind}@{stamp}"


class FileRecords:
    """Today's behaviour: one JSON file per record, written atomically, read in name order."""

    shown = "files"

    def put(self, kind: str, model: str, key: str, record: Mapping[str, Any], file: Path) -> None:
        write_json(file, dict(record))

    def get(self, kind: str, model: str, key: str, file: Path) -> dict[str, Any] | None:
        if not file.is_file():
            return None
        return _record(read_json(file), str(file))

    def all(self, kind: str, model: str | None, folder: Path) -> list[dict[str, Any]]:
        return [_record(read_json(p), str(p)) for p in sorted(folder.glob("*.json"))]

    @contextlib.contextmanager
    def lock(self, scope: str) -> Iterator[None]:
        yield  # one machine: the caller's file lock is the lock

    def archive(self, kind: str, model: str, stamp: str) -> int:
        return 0  # the records are their folder, which the caller moves aside


def _record(found: Any, where: str) -> dict[str, Any]:
    if not isinstance(found, dict):
        raise RecordsError(f"{where} is not a record (expected a JSON object)")
    return found


class SqlRecords:
    """One table in a SQL database; each write one transaction (an upsert), reads ordered by key."""

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def shown(self) -> str:
        return redact_url(self.url)

    def _failed(self, doing: str, exc: Exception) -> RecordsError:
        said = str(exc).split("\n[SQL:")[0][:600]  # not the statement and its parameters (the record)
        return RecordsError(
            f"records store {self.shown} ({RECORDS_URL_ENV}) failed while {doing}: "
            f"{scrub(f'{type(exc).__name__}: {said}')}"
        )

    def put(self, kind: str, model: str, key: str, record: Mapping[str, Any], file: Path) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        text = json.dumps(record, sort_keys=True, default=str)
        now = dt.datetime.now(dt.UTC)
        row = {"model": model, "kind": kind, "key": key, "record": text, "written_at": now}
        try:
            engine, table = _open(self.url)
            with engine.begin() as connection:
                connection.execute(_upsert(engine, table, row))
        except SQLAlchemyError as exc:
            raise self._failed(f"writing {kind} record {key!r} of model {model!r}", exc) from None
        write_json(file, dict(record))  # the mirror, once the row is committed

    def get(self, kind: str, model: str, key: str, file: Path) -> dict[str, Any] | None:
        from sqlalchemy import select
        from sqlalchemy.exc import SQLAlchemyError

        try:
            engine, table = _open(self.url)
            query = select(table.c.record).where(
                table.c.model == model, table.c.kind == kind, table.c.key == key
            )
            with engine.connect() as connection:
                text = connection.execute(query).scalar_one_or_none()
        except SQLAlchemyError as exc:
            raise self._failed(f"reading {kind} record {key!r} of model {model!r}", exc) from None
        return None if text is None else _record(json.loads(text), f"{self.shown} {kind}/{model}/{key}")

    def all(self, kind: str, model: str | None, folder: Path) -> list[dict[str, Any]]:
        from sqlalchemy import select
        from sqlalchemy.exc import SQLAlchemyError

        try:
            engine, table = _open(self.url)
            query = select(table.c.model, table.c.key, table.c.record).where(table.c.kind == kind)
            if model is not None:
                query = query.where(table.c.model == model)
            with engine.connect() as connection:
                rows = connection.execute(query.order_by(table.c.key, table.c.model)).all()
        except SQLAlchemyError as exc:
            raise self._failed(f"listing {kind} records of {model or 'every model'!r}", exc) from None
        return [_record(json.loads(text), f"{self.shown} {kind}/{name}/{key}") for name, key, text in rows]

    def archive(self, kind: str, model: str, stamp: str) -> int:
        """Move every `kind` record of `model` aside, kept under the kind `archived_kind(kind, stamp)`
        (no read of `kind` sees them again): the database's half of moving a records folder to
        `archive/<stamp>/`. One transaction; returns how many moved."""
        from sqlalchemy import update
        from sqlalchemy.exc import SQLAlchemyError

        try:
            engine, table = _open(self.url)
            moved = (
                update(table)
                .where(table.c.model == model, table.c.kind == kind)
                .values(kind=archived_kind(kind, stamp))
            )
            with engine.begin() as connection:
                return int(connection.execute(moved).rowcount)
        except SQLAlchemyError as exc:
            raise self._failed(f"archiving the {kind} records of model {model!r}", exc) from None

    @contextlib.contextmanager
    def lock(self, scope: str) -> Iterator[None]:
        """`scope` held by one process of every machine on this database at a time (blocking)."""
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        engine, _ = _open(self.url)
        if engine.dialect.name != "postgresql":
            # SQLite: one file on one host; a lock file beside it serves every clone using it
            database = engine.url.database or ""
            with file_lock(f"{database}.{hashlib.sha256(scope.encode()).hexdigest()[:16]}.lock"):
                yield
            return
        key = int.from_bytes(hashlib.sha256(f"reproml:{scope}".encode()).digest()[:8], "big", signed=True)
        try:
            connection = engine.connect()
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.commit()
        except SQLAlchemyError as exc:
            raise self._failed(f"taking the lock {scope!r}", exc) from None
        try:
            yield
        finally:
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
                connection.close()
            except SQLAlchemyError:
                connection.invalidate()  # a dropped connection: the server released the lock with it


@functools.cache
def _open(url: str) -> tuple[Engine, Table]:
    """The engine for `url` (one per process) and the records table, created if missing."""
    from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, create_engine
    from sqlalchemy.exc import SQLAlchemyError

    metadata = MetaData()
    table = Table(
        TABLE,
        metadata,
        Column("model", String(255), primary_key=True),
        Column("kind", String(64), primary_key=True),
        Column("key", String(255), primary_key=True),
        Column("record", Text, nullable=False),
        Column("written_at", DateTime(timezone=True), nullable=False),
    )
    engine = create_engine(url, pool_pre_ping=True)
    try:
        metadata.create_all(engine, checkfirst=True)
    except SQLAlchemyError:
        # two processes creating it at once: the loser's CREATE fails, and the table is there now
        metadata.create_all(engine, checkfirst=True)
    return engine, table


def _upsert(engine: Engine, table: Table, row: dict[str, Any]) -> Any:
    """INSERT ... ON CONFLICT (model, kind, key) DO UPDATE: one statement, so one writer wins whole."""
    changed = {"record": row["record"], "written_at": row["written_at"]}
    keys = ["model", "kind", "key"]
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).values(**row).on_conflict_do_update(index_elements=keys, set_=changed)
    if engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).values(**row).on_conflict_do_update(index_elements=keys, set_=changed)
    raise RecordsError(
        f"records store {redact_url(str(engine.url))}: {engine.dialect.name} is not supported "
        f"({RECORDS_URL_ENV} takes postgresql:// or sqlite:// URLs)"
    )


def records_store() -> RecordStore:
    """The store `REPROML_RECORDS_URL` names (read on each call), else the files."""
    url = os.environ.get(RECORDS_URL_ENV, "").strip()
    if not url:
        return FileRecords()
    if "://" not in url:
        raise RecordsError(
            f"{RECORDS_URL_ENV}={redact_url(url)!r} is not a database URL "
            "(postgresql://user@host/db, sqlite:///path); unset it to keep records in files"
        )
    return SqlRecords(url)
