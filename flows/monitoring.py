"""The monitoring flow: the next production batch against the champion, and on a `retrain`
verdict the training flow with that batch as a new data version, then the gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.commands import retry_transient
from flows.training import training


@task(name="next_batch")
def next_batch(root: Path, every: str) -> str | None:
    """The period after the newest monitored batch, or None when production data runs out."""
    import pandas as pd

    from reproml.monitoring import batches, store
    from reproml.stages.common import load

    params = load(root)
    first, last = batches.production_span(root, params.data.time_column)
    history = store.history(root, params.register_.model_name)
    seen = [pd.Timestamp(r["batch_time"]) for r in history if r.get("batch_time")]
    return batches.next_period(max(seen, default=None), first, last, every)


@task(name="monitor", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_transient)
def monitor(root: Path, batch: str, backfill: bool = False) -> dict[str, Any]:
    from reproml.stages.monitor import run_monitor

    return run_monitor(root, batch, backfill=backfill)


@flow(name="monitoring", log_prints=True)
def monitoring(
    root: str = ".",
    batch: str | None = None,
    every: str = "month",
    retrain: bool = True,
    branch: str | None = None,
    backfill: bool = False,
) -> dict[str, Any]:
    """Monitor `batch` (a file under data/ or monitoring/, or a period; default: the next one after
    the newest monitored) and hand a `retrain` verdict to the training flow with the batch's
    labelled rows. A `batch` older than the newest monitored one is `out_of_order` (not judged)
    unless `backfill`. `root` must be the project the flow runs in (`reproml.paths.project_root`)."""
    from reproml.paths import batch_spec, project_root

    log = get_run_logger()
    home = project_root(root, "root")
    spec = batch_spec(home, batch, "batch") if batch else next_batch(home, every)
    if spec is None:
        log.info("no production batch after the newest monitored one: nothing to do")
        return {"batch": None}
    record = monitor(home, spec, backfill)
    drift = record.get("drift") or {}
    quality = record.get("quality") or {}
    summary: dict[str, Any] = {
        "batch": record["batch_id"],
        "verdict": record["verdict"],
        "summary": record.get("summary"),
        "reasons": record.get("reasons"),
        "rows": record.get("rows"),
        "weighted_drift_share": drift.get("weighted_drift_share"),
        "drift_share": drift.get("drift_share"),
        "quality": quality.get("batch_value"),
        "metric": quality.get("metric"),
        "champion": record["champion"],
        "labelled": record.get("labelled"),
        "retrain": None,
    }
    log.info("%s: %s (%s)", record["batch_id"], record["verdict"], record.get("summary"))
    if record["verdict"] == "retrain" and retrain:
        if not record.get("labelled"):
            log.warning("verdict retrain but the batch kept no labelled rows: nothing to retrain on")
        else:
            summary["retrain"] = training(
                root=str(home),
                labelled=str(home / record["labelled"]),
                reason=f"monitor {record['batch_id']}",
                branch=branch,
            )
    return summary
