"""The records store (`reproml.stores.records`) without the team stack: the SQL backend on SQLite.

Two folders stand for two clones of one project; one SQLite file stands for the team's database.
What one clone writes, through the registry's audit trail, the monitoring records or the feed
ledger, the other reads; the default (no `REPROML_RECORDS_URL`) keeps files exactly as before.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, cast

import pytest

from reproml import registry
from reproml.monitoring import feed, store
from reproml.monitoring.records import BatchRecord
from reproml.stores.records import (
    MONITORING,
    RECORDS_URL_ENV,
    TABLE,
    FileRecords,
    RecordsError,
    SqlRecords,
    records_store,
)

NAME = "flights-late"


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """One SQLite database as the records store of every clone in the test."""
    url = f"sqlite:///{tmp_path / 'team.db'}"
    monkeypatch.setenv(RECORDS_URL_ENV, url)
    return url


def batch(batch_id: str, seq: int, **more: Any) -> BatchRecord:
    return cast(BatchRecord, {"batch_id": batch_id, "seq": seq, "verdict": "ok", **more})


def rows(url: str) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return db.execute(f"SELECT model, kind, key, record FROM {TABLE} ORDER BY kind, key").fetchall()


def test_without_the_variable_records_stay_files_where_they_always_were(tmp_path: Path) -> None:
    assert isinstance(records_store(), FileRecords)
    written = store.write_record(tmp_path, NAME, batch("2013-07", 1))
    assert written == tmp_path / "monitoring" / NAME / "records" / "2013-07.json"
    assert json.loads(written.read_text()) == {"batch_id": "2013-07", "seq": 1, "verdict": "ok"}
    assert store.find(tmp_path, NAME, "2013-07") == json.loads(written.read_text())
    assert store.find(tmp_path, NAME, "2013-08") is None


def test_a_record_written_in_one_clone_is_read_in_the_other(shared: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    store.write_record(a, NAME, batch("2013-08", 2))
    store.write_record(a, NAME, batch("2013-07", 1))
    store.write_record(a, "other-model", batch("2013-07", 1))
    assert [r["batch_id"] for r in store.history(b, NAME)] == ["2013-07", "2013-08"]  # in seq order
    assert store.find(b, NAME, "2013-08") == {"batch_id": "2013-08", "seq": 2, "verdict": "ok"}
    # A wrote a mirror beside its row; B has no file at all, yet sees the record
    assert (a / store.record_path(NAME, "2013-08")).is_file()
    assert not (b / "monitoring").exists()
    assert [(m, k, key) for m, k, key, _ in rows(shared)] == [
        (NAME, MONITORING, "2013-07"), ("other-model", MONITORING, "2013-07"), (NAME, MONITORING, "2013-08"),
    ]  # fmt: skip


def test_a_replays_clean_start_sets_the_models_database_history_aside(shared: str, tmp_path: Path) -> None:
    """`reproml simulate` moves `records/` to `archive/<stamp>/`; with a database its rows are kept
    under `monitoring@<stamp>`, so no clone's history, cooldown or batch order sees them again."""
    a, b = tmp_path / "a", tmp_path / "b"
    store.write_record(a, NAME, batch("2013-08", 1))
    store.write_record(a, "other-model", batch("2013-08", 1))
    assert store.archive_records(b, NAME, "20261203T120000Z") == 1
    assert store.history(a, NAME) == [] and store.find(b, NAME, "2013-08") is None
    assert [r["batch_id"] for r in store.history(b, "other-model")] == ["2013-08"]  # only this model's
    # the rows, ordered by kind: the other model's as they were, this model's set aside
    assert [(m, k, key) for m, k, key, _ in rows(shared)] == [
        ("other-model", MONITORING, "2013-08"), (NAME, "monitoring@20261203T120000Z", "2013-08"),
    ]  # fmt: skip
    store.write_record(b, NAME, batch("2013-07", 1))  # the replay's first batch: a history of one
    assert [r["batch_id"] for r in store.history(a, NAME)] == ["2013-07"]


def test_a_rewrite_is_one_row_updated_not_a_second_row(shared: str, tmp_path: Path) -> None:
    store.write_record(tmp_path / "a", NAME, batch("2013-07", 1))
    store.write_record(tmp_path / "b", NAME, batch("2013-07", 1, labelled_rows=40))
    [row] = rows(shared)
    assert json.loads(row[3])["labelled_rows"] == 40
    assert store.find(tmp_path / "a", NAME, "2013-07") == {**batch("2013-07", 1), "labelled_rows": 40}


def test_concurrent_writers_of_one_key_leave_one_whole_record(shared: str, tmp_path: Path) -> None:
    backend = SqlRecords(shared)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for _ in range(10):
                backend.put(MONITORING, NAME, "k", {"writer": i, "pad": "x" * 2000}, tmp_path / f"m{i}.json")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    [row] = rows(shared)
    assert json.loads(row[3])["writer"] in range(4) and len(json.loads(row[3])["pad"]) == 2000


def test_the_audit_trail_is_one_history_for_both_clones(shared: str, tmp_path: Path) -> None:
    """A decision made in clone A (through the registry's own `_decide`) is in clone B's history,
    oldest first, with the record's file named as A wrote it; B's own decision follows it."""
    a, b = tmp_path / "a", tmp_path / "b"
    decision: registry.DecisionRecord = {
        "action": "reject",
        "reason": "worse",
        "challenger": None,
        "champion": None,
    }
    first = registry._decide(a, NAME, decision, None)
    second = registry._decide(b, "another-model", {**decision, "reason": "also worse"}, None)
    seen = registry.history(b)
    assert [r["reason"] for r in seen] == ["worse", "also worse"]
    assert seen[0] == first and seen[1] == second
    assert (a / first["record"]).is_file() and not (b / first["record"]).exists()
    assert {m for m, kind, _, _ in rows(shared) if kind == "registry"} == {NAME, "another-model"}


def test_the_feed_ledger_is_shared(shared: str, tmp_path: Path) -> None:
    ledger: Any = {"taken": [{"file": "data/feed/a.parquet", "md5": "0" * 32}]}
    feed.write_ledger(tmp_path / "a", NAME, ledger)
    assert feed.read_ledger(tmp_path / "b", NAME) == ledger
    assert feed.read_ledger(tmp_path / "b", "other-model") == {"taken": []}


def test_an_unreachable_database_is_named_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        RECORDS_URL_ENV, "postgresql://team:s3cretPassw0rd@127.0.0.1:1/reproml?connect_timeout=2"
    )
    with pytest.raises(RecordsError) as caught:
        store.history(tmp_path, NAME)
    message = str(caught.value)
    assert "s3cretPassw0rd" not in message
    assert "postgresql://team:***@127.0.0.1:1/reproml" in message and RECORDS_URL_ENV in message
    assert f"listing monitoring records of {NAME!r}" in message


def test_a_value_that_is_no_url_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RECORDS_URL_ENV, "records.db")
    with pytest.raises(RecordsError, match=f"{RECORDS_URL_ENV}='records.db' is not a database URL"):
        records_store()


def exclusive(backend: SqlRecords, scope: str) -> list[str]:
    """What happened, in order, when a second holder asked for `scope` while a first held it."""
    events: list[str] = []
    entered = threading.Event()

    def second() -> None:
        with backend.lock(scope):
            events.append("second in")
            entered.set()

    with backend.lock(scope):
        events.append("first in")
        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(1.0)
        events.append("first out")
    assert entered.wait(30)
    thread.join()
    return events


def test_the_lock_is_held_by_one_holder_at_a_time(shared: str) -> None:
    assert exclusive(SqlRecords(shared), "promote") == ["first in", "first out", "second in"]
    with SqlRecords(shared).lock("promote"), SqlRecords(shared).lock("monitor:x"):
        pass  # another scope is another lock
