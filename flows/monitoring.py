"""The monitoring flow: the next production batch against the champion, and on a `retrain`
verdict the training flow with that batch as a new data version, then the gate; and the
production feed's flow, which does the same for each new file of the feed folder. The steps are
`reproml.orchestration.monitoring`; what the run shows in Prefect's UI (a summary, the drifted
features, a link to the report) is built by `reproml.monitoring.artifacts`."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.common import retry_transient
from flows.training import training
from reproml.monitoring.records import BatchRecord, BatchSummary, FeedSummary
from reproml.orchestration import monitoring as steps

next_batch = task(name="next_batch")(steps.next_batch)
monitor = task(name="monitor", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)(
    steps.monitor
)


def publish(root: Path, record: BatchRecord) -> None:
    """The batch's Prefect artifacts, on the current flow run: its summary, its drifted features
    (when drift was measured) and a link to its HTML report."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    from reproml.monitoring.artifacts import run_artifacts

    made = run_artifacts(root, record)
    create_markdown_artifact(made.summary, key=made.summary_key, description=made.description)
    if record.get("drift"):
        create_table_artifact(
            [dict(row) for row in made.table], key=made.table_key, description=made.table_description
        )
    create_link_artifact(made.link, link_text=made.link_text, key=made.link_key, description=made.description)


@flow(name="monitoring", log_prints=True)
def monitoring(
    root: str = ".",
    batch: str | None = None,
    every: str = "month",
    retrain: bool = True,
    branch: str | None = None,
    backfill: bool = False,
    policy: str = "reproml",
    withhold_labels: bool = False,
) -> BatchSummary:
    """Monitor `batch` (a file under data/ or monitoring/, or a period; default: the next one after
    the newest monitored) and hand a `retrain` verdict to the training flow with the batch's
    labelled rows (a batch without labels: the newest labelled window that has arrived after what
    the champion learned). A `batch` older than the newest monitored one is `out_of_order` (not
    judged) unless `backfill`. `root` must be the project the flow runs in
    (`reproml.paths.project_root`). `policy` (`reproml.simulation.POLICIES`): `reproml` retrains on
    a `retrain` verdict, `always` on every measured batch, `never` not at all (the replay's
    comparison). `withhold_labels`: the batch is judged without its labels (on the estimate;
    `reproml simulate --labels late` brings them with the next period)."""
    from reproml.monitoring.batches import batch_spec
    from reproml.paths import project_root

    log = get_run_logger()
    home = project_root(root, "root")
    spec = batch_spec(home, batch, "batch") if batch else next_batch(home, every)
    if spec is None:
        log.info("no production batch after the newest monitored one: nothing to do")
        return {"batch": None}
    record = monitor(home, spec, backfill, withhold_labels)
    return hand_off(home, record, retrain, branch, policy)


def hand_off(home: Path, record: BatchRecord, retrain: bool, branch: str | None, policy: str) -> BatchSummary:
    """The batch's artifacts, its summary, and on a retrain verdict (as `policy` reads it) the
    training flow with the batch's labelled rows; for a batch without labels (withheld, or still
    to come), with the newest labelled window that has arrived after what the champion learned
    (`labels.retrain_window`), or, when there is none, no retrain and why in the summary."""
    import time

    from reproml.monitoring.labels import retrain_window, skip_retrain
    from reproml.simulation import wants_retrain
    from reproml.stages.common import load

    log = get_run_logger()
    try:
        publish(home, record)
    except Exception as exc:  # the record is written and the hand-off below matters more than the view
        log.warning("could not publish the run's artifacts: %s: %s", type(exc).__name__, exc)
    summary = steps.summary(record)
    log.info("%s: %s (%s)", record["batch_id"], record["verdict"], record.get("summary"))
    summary["policy"] = policy
    if retrain and wants_retrain(policy, record["verdict"]):
        labelled = record.get("labelled")
        reason = f"monitor {record['batch_id']}" + ("" if policy == "reproml" else f" (policy {policy})")
        if not labelled:
            labelled, why = retrain_window(home, record, load(home))
            if labelled is None:
                log.warning("verdict %s: %s", record["verdict"], why)
                summary["retrain_skipped"] = why
                skip_retrain(home, record, why)  # started no retrain: no cooldown after it
                return summary
            log.info("verdict %s: %s", record["verdict"], why)
            summary["retrain_window"] = labelled
            reason += f" (no labels: the window {Path(labelled).stem})"
        started = time.perf_counter()
        summary["retrain"] = training(
            root=str(home), labelled=str(home / labelled), reason=reason, branch=branch
        )
        summary["retrain_seconds"] = round(time.perf_counter() - started, 1)
    return summary


def hand_off_labels(
    home: Path, record: BatchRecord, retrain: bool, branch: str | None, policy: str
) -> BatchSummary:
    """Labels arrived for a batch judged without them: when its verdict on them (the record's
    `labels_decision`, as `policy` reads it) is a retrain, the training flow learns the batch's
    labelled window now, before the next batch is judged. The summary gains `labels_retrain`."""
    import time

    from reproml.monitoring.labels import note_labels_retrain
    from reproml.simulation import wants_retrain

    log = get_run_logger()
    summary = steps.summary(record)
    summary["policy"] = policy
    decided, labelled = record.get("labels_decision"), record.get("labelled")
    if not decided:
        return summary
    log.info("%s on its labels: %s (%s)", record["batch_id"], decided["verdict"], decided["summary"])
    if retrain and labelled and wants_retrain(policy, decided["verdict"]):
        reason = f"labels of {record['batch_id']} arrived" + (
            "" if policy == "reproml" else f" (policy {policy})"
        )
        started = time.perf_counter()
        done = training(root=str(home), labelled=str(home / labelled), reason=reason, branch=branch)
        summary["labels_retrain"] = done
        summary["labels_retrain_seconds"] = round(time.perf_counter() - started, 1)
        note_labels_retrain(home, record, str(done["promotion"].get("action")))
    return summary


@flow(name="monitoring-feed", log_prints=True)
def monitoring_feed(root: str = ".", retrain: bool = True, branch: str | None = None) -> FeedSummary:
    """The production feed (`monitor.feed` in params.yaml): every batch file that arrived since the
    last run, once and in time order, each judged like `monitoring`'s batch and its `retrain`
    verdict handed to the training flow before the next file is judged; then the labels files
    that arrived for batches already taken (`reproml.monitoring.feed`), each batch's verdict on
    them handed on the same way."""
    from reproml.paths import project_root

    log = get_run_logger()
    home = project_root(root, "root")
    result = steps.feed(
        home,
        judge=monitor,
        hand_off=lambda record: hand_off(home, record, retrain, branch, "reproml"),
        hand_off_labels=lambda record: hand_off_labels(home, record, retrain, branch, "reproml"),
    )
    if result["busy"]:
        log.warning("another feed run holds %s's feed: nothing taken", result["feed"])
    elif not result["rows"]:
        log.info("%s: nothing new", result["feed"])
    for row in result["rows"]:
        log.info("%s (%s): %s", row["file"], row["batch_id"] or "-", row["outcome"])
    return result
