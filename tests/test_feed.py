"""The production feed (`reproml monitor --feed`): each file of `monitor.feed` taken once, in time order.

The first tests need no champion: what a scan finds and leaves, the ledger's refusal of a file
whose content changed, the lock, the CLI's refusals. The integration test monitors real batches
against the champion of tests/test_monitoring.py (one per module): out of name order, a second run
that takes nothing, labels arriving later, an unreadable file taken once, a new file.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from reproml.cli import app
from reproml.config import MonitorParams
from reproml.monitoring import decision, feed, store
from reproml.monitoring.records import FeedLedger
from reproml.stages.monitor import run_feed, run_monitor
from tests.conftest import user_data_params
from tests.test_monitoring import batch, champion_project, project  # noqa: F401 (fixtures)
from tests.test_registry import NAME

FEED = "data/feed"


def drop(root: Path, name: str, content: pd.DataFrame | bytes, age: float = 60.0) -> Path:
    """`content` written as `data/feed/<name>`, last modified `age` seconds ago (settled)."""
    path = root / FEED / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif path.suffix == ".csv":
        content.to_csv(path, index=False)
    else:
        content.to_parquet(path, index=False)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def with_feed(root: Path) -> Path:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["monitor"]["feed"] = FEED
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / FEED).mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def bare(make_project: Callable[..., Path]) -> Path:
    """A project with a feed and no champion: enough for everything that monitors no batch."""
    params = user_data_params("data/raw/frame.parquet")
    params["register"] = {"model_name": NAME}
    return with_feed(make_project(params))


def dated(start: str, rows: int = 5) -> pd.DataFrame:
    return pd.DataFrame({"x1": range(rows), "when": pd.date_range(start, periods=rows, freq="h")})


def test_a_scan_orders_batches_by_their_own_time_and_leaves_what_is_being_written(bare: Path) -> None:
    drop(bare, "a.parquet", dated("2022-07-03"))
    drop(bare, "b.csv", dated("2022-07-01"))
    drop(bare, "c.parquet", dated("2022-07-02"))
    drop(bare, "same-time-z.parquet", dated("2022-07-02"))  # a tie: the file name decides
    drop(bare, "broken.parquet", b"not parquet")  # no readable time: last
    drop(bare, "fresh.parquet", dated("2022-06-01"), age=0)  # still being written
    drop(bare, ".hidden.parquet", dated("2022-06-01"))  # an atomic writer's temp file
    drop(bare, "x.parquet.part", b"half")  # a download in progress
    drop(bare, "a.labels.csv", dated("2022-07-03").assign(y=1))
    found = feed.scan(bare, bare / FEED, {"taken": []}, "when")
    assert [Path(a.file).name for a in found.batches] == [
        "b.csv", "c.parquet", "same-time-z.parquet", "a.parquet", "broken.parquet"
    ]  # fmt: skip
    assert found.batches[0].first_time == pd.Timestamp("2022-07-01", tz="UTC")
    assert [(a.file, a.stem) for a in found.labels] == [(f"{FEED}/a.labels.csv", "a")]
    assert [row["file"] for row in found.left] == [f"{FEED}/fresh.parquet"]
    assert "may still be being written" in found.left[0]["outcome"] and not found.refused


def test_a_taken_file_is_skipped_and_one_changed_under_its_name_is_refused(bare: Path) -> None:
    kept = drop(bare, "kept.parquet", dated("2022-07-01"))
    changed = drop(bare, "changed.parquet", dated("2022-07-02"))
    first = feed.scan(bare, bare / FEED, {"taken": []}, "when")
    ledger: FeedLedger = {"taken": [a.entry(f"id-{a.stem}", "ok") for a in first.batches]}
    drop(bare, "changed.parquet", dated("2022-07-02", rows=9))
    os.utime(kept, (time.time() - 30, time.time() - 30))  # touched, same bytes: hashed, still taken
    again = feed.scan(bare, bare / FEED, ledger, "when")
    assert again.batches == [] and again.labels == [] and again.left == []
    [refused] = again.refused
    assert refused["file"] == f"{FEED}/changed.parquet" and refused["batch_id"] == "id-changed"
    assert "content changed since it was taken" in refused["outcome"] and "new name" in refused["outcome"]
    assert changed.is_file()  # refused, not deleted

    # through the CLI: the refusal is a row, and the exit status says a person must act
    feed.write_ledger(bare, NAME, ledger)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(bare)
        result = CliRunner().invoke(app, ["monitor", "--feed"])
    assert result.exit_code == 1, result.output
    assert "changed.parquet" in result.output and "refused" in result.output


def test_labels_wait_for_their_batch_and_a_busy_feed_takes_nothing(bare: Path) -> None:
    drop(bare, "later.labels.parquet", dated("2022-07-01").assign(y=1))
    run = run_feed(bare)
    assert run.records == [] and not run.busy
    assert [r["outcome"] for r in run.rows] == [
        "left for the next run: no batch later.csv/.parquet taken yet"
    ]
    assert feed.read_ledger(bare, NAME) == {"taken": []}  # nothing taken: it waits

    drop(bare, "new.parquet", dated("2022-07-01"))
    with feed.feed_lock(bare, NAME) as held:  # another run holds the feed
        assert held
        busy = run_feed(bare)
    assert busy.busy and busy.rows == [] and feed.read_ledger(bare, NAME) == {"taken": []}


def test_feed_is_refused_with_batch_and_needs_a_folder_in_the_project(
    bare: Path, make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(bare)
    both = CliRunner().invoke(app, ["monitor", "--feed", "--batch", "data/feed/x.csv"])
    assert both.exit_code == 2 and "cannot be combined with --batch" in both.output
    neither = CliRunner().invoke(app, ["monitor"])
    assert neither.exit_code == 2 and "--batch is required" in neither.output and "--feed" in neither.output
    empty = CliRunner().invoke(app, ["monitor", "--feed"])
    assert empty.exit_code == 0 and f"{FEED}: nothing new" in empty.output

    for outside in ("/tmp/feed", "../feed", "data/../../feed", "feed"):
        with pytest.raises(ValueError, match="under data/ or monitoring/"):
            MonitorParams(feed=outside)
    (bare / "params.yaml").write_text(
        (bare / "params.yaml").read_text().replace("feed: data/feed", "feed: null")
    )
    unset = CliRunner().invoke(app, ["monitor", "--feed"])
    assert unset.exit_code == 2 and "monitor.feed is null" in unset.output


@pytest.mark.integration
def test_the_feed_monitors_each_file_once_in_time_order_and_attaches_late_labels(
    project: Path,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = with_feed(project)
    early, late = batch(seed=31, day=0, labelled=False), batch(seed=32, day=1, labelled=False)
    drop(root, "z-early.parquet", early)  # dropped out of name order: time decides
    drop(root, "a-late.csv", late)
    drop(root, "broken.parquet", b"PAR1 cut short")  # unreadable: taken once, quarantined
    drop(root, "z-early.labels.parquet", batch(seed=31, day=0))  # its labels, in the same run
    drop(root, "writing.parquet", batch(seed=33, day=2), age=0)

    run = run_feed(root)
    assert [r["file"] for r in run.rows] == [
        f"{FEED}/z-early.parquet", f"{FEED}/a-late.csv", f"{FEED}/broken.parquet",
        f"{FEED}/z-early.labels.parquet", f"{FEED}/writing.parquet",
    ]  # fmt: skip
    first, second, broken = run.records
    assert [r["seq"] for r in run.records] == [1, 2, 3]
    assert first["source"] == f"{FEED}/z-early.parquet" and first["verdict"] != "out_of_order"
    assert second["verdict"] != "out_of_order", second["reasons"]  # later rows, judged after
    kept = broken.get("quarantine")
    assert broken["verdict"] == "quarantined" and kept is not None and (root / kept["batch"]).is_file()
    assert run.rows[3]["outcome"] == "labels attached" and run.rows[3]["batch_id"] == first["batch_id"]
    assert run.rows[4]["outcome"].startswith("left for the next run")
    labelled = cast(
        dict[str, Any], json.loads((root / store.record_path(NAME, first["batch_id"])).read_text())
    )
    assert labelled["labels"]["file"] == f"{FEED}/z-early.labels.parquet"
    assert labelled["estimate"]["realised"] is not None  # the realised quality, beside the estimate

    # a second run takes nothing (the broken file is not retried); the CLI says so
    monkeypatch.chdir(root)
    os.utime(root / FEED / "writing.parquet", (time.time() - 60, time.time() - 60))
    (root / FEED / "writing.parquet").rename(root / FEED / "writing.parquet.part")  # not there yet
    again = CliRunner().invoke(app, ["monitor", "--feed"])
    assert again.exit_code == 0 and f"{FEED}: nothing new" in again.output, again.output
    ledger = feed.read_ledger(root, NAME)
    assert [e["file"].rsplit("/", 1)[-1] for e in ledger["taken"]] == [
        "z-early.parquet", "a-late.csv", "broken.parquet", "z-early.labels.parquet"
    ]  # fmt: skip
    assert {e["outcome"] for e in ledger["taken"][:3]} >= {"quarantined"}

    # the file that was being written arrives whole: taken now, and only it
    (root / FEED / "writing.parquet.part").rename(root / FEED / "writing.parquet")
    os.utime(root / FEED / "writing.parquet", (time.time() - 60, time.time() - 60))
    later = CliRunner().invoke(app, ["monitor", "--feed"])
    assert later.exit_code == 0, later.output
    assert "writing.parquet" in later.output and "z-early" not in later.output
    assert len(store.history(root, NAME)) == 4

    # a file monitored by hand first (same name and content: same batch id) is not judged twice
    drop(root, "by-hand.parquet", batch(seed=34, day=3, labelled=False))
    by_hand = run_monitor(root, f"{FEED}/by-hand.parquet")
    fed = run_feed(root)
    assert fed.records == [] and [r["batch_id"] for r in fed.rows] == [by_hand["batch_id"]]
    assert "monitored earlier" in fed.rows[0]["outcome"] and len(store.history(root, NAME)) == 5


@pytest.mark.integration
def test_the_feed_flow_judges_each_new_file_in_order_and_hands_each_verdict_on(
    project: Path,  # noqa: F811 (the fixture)
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the real Prefect engine: the `monitoring-feed` flow takes the files in time order,
    each record goes through the flow's hand-off (its summary and policy), and a second run is empty."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.monitoring import monitoring_feed

    root = with_feed(project)
    (root / "dvc.yaml").write_text("stages: {}\n")  # what makes the folder a project for the flow
    drop(root, "b-first.parquet", batch(seed=41, day=0, labelled=False))
    drop(root, "a-second.parquet", batch(seed=42, day=1, labelled=False, x1=2.0))  # drifted: retrain
    drop(root, "b-first.labels.parquet", batch(seed=41, day=0))  # the first batch's labels
    monkeypatch.chdir(root)
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        out = monitoring_feed(root=str(root), retrain=False)
        again = monitoring_feed(root=str(root), retrain=False)
    first, second, on_labels = out["batches"]
    # the labels' batch judged again on them, and that verdict handed on too (retrain=False: kept)
    assert on_labels["batch"] == first["batch"] and on_labels["policy"] == "reproml"
    record = store.find(root, NAME, str(first["batch"]))
    assert record is not None and record["labels_decision"]["verdict"] in decision.MEASURED
    assert "labels_retrain" not in on_labels
    assert str(first["batch"]).startswith("b-first-") and str(second["batch"]).startswith("a-second-")
    assert (
        second["verdict"] == "retrain" and second["retrain"] is None
    )  # retrain=False: not handed to training
    assert first["policy"] == second["policy"] == "reproml"  # both went through the hand-off
    assert [r["outcome"] for r in out["rows"]] == [first["verdict"], "retrain", "labels attached"]
    assert not out["busy"]
    assert again == {"feed": FEED, "rows": [], "batches": [], "busy": False, "refused": False}


def test_with_a_feed_the_daily_deployment_takes_the_feed(bare: Path) -> None:
    from flows.deploy import deployments
    from reproml.orchestration.deploy import deployment_specs

    daily, training = deployment_specs(bare)
    assert (daily.flow, daily.name, daily.parameters) == (
        "monitoring-feed",
        "daily",
        {"root": str(bare.resolve())},
    )
    assert training.flow == "training"
    built = deployments(bare)
    assert [(d.flow_name, d.name) for d in built] == [("monitoring-feed", "daily"), ("training", "on-demand")]
    (bare / "params.yaml").write_text(
        (bare / "params.yaml").read_text().replace("feed: data/feed", "feed: null")
    )
    assert deployment_specs(bare)[0].flow == "monitoring"  # no feed: the period replay, as before


def test_a_link_out_of_the_data_folders_is_refused_not_read(bare: Path, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.csv"
    secret.parent.mkdir()
    dated("2022-07-01").to_csv(secret, index=False)
    (bare / FEED / "link.csv").symlink_to(secret)
    found = feed.scan(bare, bare / FEED, {"taken": []}, "when")
    assert found.batches == [] and [r["file"] for r in found.refused] == [f"{FEED}/link.csv"]
    assert "outside data/ and monitoring/" in found.refused[0]["outcome"]


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A real S3-compatible server (moto's, as the team stack runs it) on a free port, one bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for key, value in {"AWS_ACCESS_KEY_ID": "feed", "AWS_SECRET_ACCESS_KEY": "feed-secret",
                           "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():  # fmt: skip
            monkeypatch.setenv(key, value)
        client = boto3.client("s3")
        client.create_bucket(Bucket="feed")
        yield client
    finally:
        server.stop()


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.to_parquet(out, index=False)
    return out.getvalue()


@pytest.mark.integration
def test_an_s3_prefix_is_copied_down_once_and_taken_like_a_folder(bare: Path, s3_bucket: Any) -> None:
    from reproml.stores import s3

    s3_bucket.put_object(Bucket="feed", Key="in/a-late.parquet", Body=parquet_bytes(dated("2022-07-03")))
    s3_bucket.put_object(Bucket="feed", Key="in/z-early.parquet", Body=parquet_bytes(dated("2022-07-01")))
    s3_bucket.put_object(Bucket="feed", Key="in/z-early.labels.csv", Body=b"x1,when,y\n")
    for ignored in ("in/.writing.parquet", "in/notes.txt", "in/deeper/x.parquet", "other/y.parquet"):
        s3_bucket.put_object(Bucket="feed", Key=ignored, Body=b"-")
    inbox = bare / feed.inbox(NAME)
    assert sorted(s3.mirror("s3://feed/in", inbox, feed.wanted)) == [
        "a-late.parquet", "z-early.labels.csv", "z-early.parquet"
    ]  # fmt: skip
    assert s3.mirror("s3://feed/in/", inbox, feed.wanted) == []  # unchanged: not copied again
    found = feed.scan(bare, inbox, {"taken": []}, "when", settle=0)
    assert [Path(a.file).name for a in found.batches] == ["z-early.parquet", "a-late.parquet"]
    assert found.batches[0].file == f"monitoring/{NAME}/feed/z-early.parquet"

    # the ledger rules hold as for a folder: an object changed under a taken key is refused
    ledger: FeedLedger = {"taken": [a.entry(f"id-{a.stem}", "ok") for a in found.batches]}
    s3_bucket.put_object(Bucket="feed", Key="in/a-late.parquet", Body=parquet_bytes(dated("2022-07-03", 9)))
    assert s3.mirror("s3://feed/in", inbox, feed.wanted) == ["a-late.parquet"]
    again = feed.scan(bare, inbox, ledger, "when", settle=0)
    assert again.batches == [] and [r["batch_id"] for r in again.refused] == ["id-a-late"]

    # through the feed itself: params name the prefix; its labels file goes to the batch the
    # ledger names (a made-up id here, so it is refused, and taken all the same)
    params = yaml.safe_load((bare / "params.yaml").read_text())
    params["monitor"]["feed"] = "s3://feed/in"
    (bare / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    feed.write_ledger(bare, NAME, ledger)
    run = run_feed(bare, settle=0)
    assert run.feed == "s3://feed/in" and run.refused and run.records == []
    assert {r["file"]: r["outcome"].split(":")[0] for r in run.rows} == {
        f"monitoring/{NAME}/feed/z-early.labels.csv": "labels refused",
        f"monitoring/{NAME}/feed/a-late.parquet": "refused",
    }
    assert "no monitored batch" in feed.read_ledger(bare, NAME)["taken"][-1].get("error", "")
    with pytest.raises(ValueError, match="s3://<bucket>/<prefix>"):
        MonitorParams(feed="s3:///in")
