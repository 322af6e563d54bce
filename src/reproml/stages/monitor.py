"""`monitor`: one production batch against the champion; a decision record under monitoring/.

Not a DVC stage: like `promote`, its outcome depends on the registry (which version is champion)
and on earlier decisions (the cooldown), not only on files and params. The Prefect monitor flow
calls `run_monitor` on a schedule; people call `reproml monitor --batch ...`.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from reproml import paths
from reproml.config import Params
from reproml.monitoring.records import BatchRecord, FeedRow
from reproml.stages.common import load


def run_monitor(
    root: Path = Path("."), batch: str = "", backfill: bool = False, withhold_labels: bool = False
) -> BatchRecord:
    """Monitor `batch` (a CSV/Parquet file, or a period such as 2013-08 of the production split);
    `backfill`: judge it even when it is older than the newest monitored batch; `withhold_labels`:
    judge it without its labels (they arrive later: `run_labels`)."""
    from reproml.errors import ReproError
    from reproml.monitoring.run import monitor

    if not batch:
        raise ReproError("--batch is required: a CSV/Parquet file or a period such as 2013-08")
    with fewer_collections():
        params = load(root)
        check_undated_period(root, batch, params)
        check_champion_source(root, params)
        return monitor(root, batch, params, backfill=backfill, withhold_labels=withhold_labels)


GC_THRESHOLD = 100_000  # allocations between two young-generation collections during a check (Python: 700)


@contextmanager
def fewer_collections(threshold: int = GC_THRESHOLD) -> Iterator[None]:
    """Python's cyclic garbage collector runs less often while a check runs; restored after.

    A check in a fresh process imports Evidently, MLflow, scikit-learn and NannyML and builds
    thousands of plotly and pydantic objects: millions of allocations, almost none of them
    garbage, yet at Python's default threshold (a collection every 700 allocations, and a full
    one, walking everything imported so far, every 100 of those) the collector runs thousands
    of times. Memory is still freed as usual (reference counting frees all but cycles, and the
    collector still runs, every `threshold` allocations). Measured in benchmarks/README.md."""
    before = gc.get_threshold()
    gc.set_threshold(threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def run_labels(root: Path = Path("."), batch: str = "", labels: str = "") -> BatchRecord:
    """The labels of the monitored batch `batch` arrived in the file `labels`: its record gains the
    realised metric, the estimate's error and the shift (`monitoring.labels.add_labels`)."""
    from reproml.errors import ReproError
    from reproml.monitoring.labels import add_labels

    if not batch or not labels:
        raise ReproError("--labels needs --batch: the id (or period) of the batch these labels belong to")
    return add_labels(root, load(root), batch, labels)


@dataclass(frozen=True)
class FeedRun:
    """One feed run: every file taken or left (a row each), the records of the batches monitored
    now, whether another run held the feed (then nothing was taken), and whether a file was refused."""

    feed: str
    rows: list[FeedRow] = field(default_factory=list)
    records: list[BatchRecord] = field(default_factory=list)
    busy: bool = False
    refused: bool = False


def run_feed(
    root: Path = Path("."),
    judge: Callable[[Path, str], BatchRecord] | None = None,
    after: Callable[[BatchRecord], object] | None = None,
    settle: float | None = None,
    after_labels: Callable[[BatchRecord], object] | None = None,
) -> FeedRun:
    """Take every new file of the feed folder (`monitor.feed`) once: batches in time order, each
    monitored by `judge` (default `run_monitor`) and handed to `after` (the monitoring flow's
    hand-off: a retrain verdict trains before the next batch is judged), then labels files, each
    attached to its batch (`run_labels`) and handed to `after_labels` (the flow's hand-off of the
    verdict on those labels). The ledger is written after each file, so a run that
    stops (an error that is not the file's: no champion, a locked store) keeps what it took and
    the file it stopped at waits for the next run.

    A batch whose record already exists (monitored by hand, or by a run that stopped before its
    ledger line) is entered in the ledger without being monitored again.
    """
    from reproml.monitoring import batches, feed, store
    from reproml.monitoring.labels import LabelsError
    from reproml.stores import s3

    params = load(root)
    name = params.register_.model_name
    source = params.monitor.feed
    remote = s3.is_s3(source)
    folder = root / feed.inbox(name) if remote else feed.folder(root, source)
    shown = str(source) if remote else paths.relative(folder, root)
    monitor_one = judge or (lambda home, spec: run_monitor(home, spec))
    with feed.feed_lock(root, name) as held:
        if not held:
            return FeedRun(shown, busy=True)
        if remote:
            s3.mirror(str(source), folder, feed.wanted)
        ledger = feed.read_ledger(root, name)
        found = feed.scan(root, folder, ledger, params.data.time_column,
                          feed.SETTLE_SECONDS if settle is None else settle)  # fmt: skip
        run = FeedRun(shown, refused=bool(found.refused))
        for arrival in found.batches:
            batch_id = batches.file_batch_id(arrival.path, arrival.md5)
            done = store.find(root, name, batch_id)
            note = ""
            if done is not None:
                record = done
                note = " (monitored earlier; not handed on again)"
            else:
                record = monitor_one(root, arrival.file)
            entry = arrival.entry(record["batch_id"], record.get("verdict", "?"))
            ledger["taken"].append(entry)
            feed.write_ledger(root, name, ledger)
            run.rows.append(feed.taken_row(entry, note))
            if not note:
                run.records.append(record)
                if after is not None:
                    after(record)
        for arrival in found.labels:
            batch = feed.labelled_batch(ledger, arrival)
            if batch is None or batch["batch_id"] is None:
                run.rows.append(feed.waiting(arrival))
                continue
            labelled = store.find(root, name, batch["batch_id"])
            earlier = labelled.get("labels") if labelled is not None else None
            error, attached = None, None
            if not (earlier and earlier.get("md5") == arrival.md5):
                try:
                    attached = run_labels(root, batch["batch_id"], arrival.file)
                except (LabelsError, batches.BatchError, ValueError) as exc:
                    error = str(exc)  # taken all the same: these labels will not fit on a retry
            entry = arrival.entry(batch["batch_id"], "labels refused" if error else "labels attached", error)
            ledger["taken"].append(entry)
            feed.write_ledger(root, name, ledger)
            run.rows.append(feed.taken_row(entry))
            if attached is not None and after_labels is not None:
                after_labels(attached)
        run.rows.extend(found.refused + found.left)
    return run


def check_undated_period(root: Path, batch: str, params: Params) -> None:
    """A period of an undated data set: said at once, before any model is loaded (a file of that
    name would be a batch, as `batches.resolve` reads it)."""
    from reproml.monitoring.batches import UNDATED, BatchError, parse_period

    is_file = (Path(batch) if Path(batch).is_absolute() else root / batch).is_file()
    if params.data.time_column is None and not is_file and parse_period(batch) is not None:
        raise BatchError(f"--batch {batch!r} is a period, but {UNDATED}")


def check_champion_source(root: Path, params: Params) -> None:
    """Before any batch is read: the champion of `register.model_name` was trained on the data
    source params.yaml names. After switching data without a new champion, a batch of the new data
    would be scored by the old model against the old model's reference: refused, naming both."""
    from reproml import registry
    from reproml.config import data_source
    from reproml.monitoring.champion import ChampionError
    from reproml.stages.register import own_model_hint, version_source
    from reproml.stores.mlflow import connection

    connection.setup(root, params.mlflow.experiment_name)
    name = params.register_.model_name
    champion = registry.alias_version(name, registry.CHAMPION)
    if champion is None:
        return  # the monitor's own message: run `dvc repro` and `reproml promote` first
    found, expected = version_source(champion), data_source(params.data)
    if found is not None and found != expected:
        raise ChampionError(
            f"the champion of {name!r} (register.model_name), v{champion.version}, was trained on "
            f"{found.describe()}, but params.yaml names {expected.describe()}: its batches would be "
            f"scored by a model of another data set. Give the data in use its own model "
            f"({own_model_hint(name, expected)}), run `dvc repro` and `reproml promote`, then monitor"
        )


def monitoring_history(root: Path = Path(".")) -> tuple[str, list[BatchRecord]]:
    """The model of the data in use, and every batch's decision record of its history, in the
    order they were monitored."""
    from reproml.monitoring.store import history

    name = load(root).register_.model_name
    return name, history(root, name)
