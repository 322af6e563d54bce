"""The monitoring flow's steps: which production batch comes next, the monitor itself, and the
flow's summary of a monitored batch (what the hand-off to the training flow reads)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reproml.monitoring.records import BatchRecord, BatchSummary, FeedSummary


def next_batch(root: Path, every: str) -> str | None:
    """The period after the newest monitored batch, or None when production data runs out."""
    import pandas as pd

    from reproml.monitoring import batches, store
    from reproml.stages.common import load

    params = load(root)
    first, last = batches.production_span(root, params.data.time_column)
    history = store.history(root, params.register_.model_name)
    seen = [pd.Timestamp(stamp) for r in history if (stamp := r.get("batch_time"))]
    return batches.next_period(max(seen, default=None), first, last, every)


def monitor(root: Path, batch: str, backfill: bool = False, withhold_labels: bool = False) -> BatchRecord:
    """One batch against the champion (`reproml monitor`): its record, verdict included;
    `withhold_labels`: judged without its labels (`reproml simulate --labels late`)."""
    from reproml.stages.monitor import run_monitor

    return run_monitor(root, batch, backfill=backfill, withhold_labels=withhold_labels)


def feed(
    root: Path,
    judge: Callable[[Path, str], BatchRecord] | None = None,
    hand_off: Callable[[BatchRecord], BatchSummary] | None = None,
    hand_off_labels: Callable[[BatchRecord], BatchSummary] | None = None,
) -> FeedSummary:
    """Every new file of the production feed, once, in time order (`reproml monitor --feed`):
    each batch judged by `judge` (the flow's monitor task) and its record handed to `hand_off`
    (the flow's retrain hand-off) before the next batch is judged; then the labels that arrived,
    each batch they label handed to `hand_off_labels` (its verdict on them)."""
    from reproml.stages.monitor import run_feed

    handed: list[BatchSummary] = []

    def after(record: BatchRecord) -> None:
        handed.append(hand_off(record) if hand_off is not None else summary(record))

    def after_labels(record: BatchRecord) -> None:
        if hand_off_labels is not None:
            handed.append(hand_off_labels(record))

    run = run_feed(root, judge=judge, after=after, after_labels=after_labels)
    return {"feed": run.feed, "rows": run.rows, "batches": handed, "busy": run.busy, "refused": run.refused}


def summary(record: BatchRecord) -> BatchSummary:
    """What the monitoring flow returns for a monitored batch; `retrain` is filled by the hand-off."""
    drift = record.get("drift")
    quality = record.get("quality")
    return {
        "batch": record["batch_id"],
        "verdict": record["verdict"],
        "summary": record.get("summary"),
        "reasons": record.get("reasons"),
        "rows": record.get("rows"),
        "weighted_drift_share": None if drift is None else drift.get("weighted_drift_share"),
        "drift_share": None if drift is None else drift.get("drift_share"),
        "quality": None if quality is None else quality.get("batch_value"),
        "metric": None if quality is None else quality.get("metric"),
        "champion": record["champion"],
        "labelled": record.get("labelled"),
        "estimate": record.get("estimate"),  # the quality estimated without labels (CBPE / DLE)
        "shadow": record.get("shadow"),  # the challenger scored beside the champion, if one waits
        "labels_withheld": bool(record.get("labels_withheld")),
        "retrain": None,
    }
