"""`reproml simulate`: the production split replayed as production through the monitoring flow
(July-December 2013 for the bundled flights; by default every month the production split of a
user's dated data reaches into).

Each period goes through the same monitoring flow the daily schedule runs; a `retrain` verdict
hands the batch to the training flow (new DVC data version on the simulation's own branch,
`dvc repro`, challenger, gate). The replay starts from the pipeline's model and a clean
`monitoring/` (earlier outputs are moved to `monitoring/archive/`), so running it twice tells
the same story. Binary, multiclass and regression alike: the table and the page show the
monitor's metric for the task.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.monitoring import monitoring
from flows.training import worktree

BRANCH = "reproml/simulation"


@task(name="reset")
def reset(root: Path, branch: str) -> int:
    """Archive earlier monitoring outputs, start the branch again from HEAD, and make the
    pipeline's registered model the champion (a forced promotion, recorded, if it is not)."""
    from mlflow.tracking import MlflowClient

    from reproml import registry, tracking
    from reproml.io import read_json
    from reproml.monitoring import store
    from reproml.stages.common import load
    from reproml.stages.register import REGISTERED, run_promote

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    archive = root / store.MONITORING / "archive" / stamp
    for folder in (store.RECORDS, store.PREDICTIONS, store.LABELLED, store.QUARANTINE, store.REPORTS):
        if (root / folder).exists():
            archive.mkdir(parents=True, exist_ok=True)
            shutil.move(str(root / folder), str(archive / folder.name))
    worktree.fn(root, branch, reset=True)
    registered = root / REGISTERED
    if not registered.is_file():
        raise FileNotFoundError(f"{registered} not found: run `dvc repro` before `reproml simulate`")
    start = int(read_json(registered)["version"])
    params = load(root)
    tracking.setup(root, params.mlflow.experiment_name)
    current = registry.alias_version(MlflowClient(), params.register_.model_name, registry.CHAMPION)
    if current is None or int(current.version) != start:
        run_promote(root, version=start, reason="reproml simulate starts from the pipeline's model")
    return start


@task(name="report")
def report(root: Path, outcomes: list[dict[str, Any]], baseline_version: int) -> dict[str, Any]:
    """Score the never-retrained model on each batch's labelled rows; write the HTML and JSON."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from reproml import provenance, registry, simulation, tracking
    from reproml.monitoring import store
    from reproml.stages.common import load

    params = load(root)
    experiment_id = tracking.setup(root, params.mlflow.experiment_name)
    name = params.register_.model_name
    client = MlflowClient()
    model = provenance.load_model_version(
        client, client.get_model_version(name, str(baseline_version)), experiment_id
    )
    rows = []
    for outcome in outcomes:
        baseline = float("nan")
        if outcome.get("labelled"):
            frame = pd.read_parquet(root / outcome["labelled"])
            baseline = simulation.baseline_metric(
                model, frame, params.data.target, params.data.task, params.monitor.metric
            )
        rows.append(simulation.row(outcome, baseline, outcome["champion_after"]))
    champion = registry.alias_version(client, name, registry.CHAMPION)
    metric = next(
        (r["metric"] for r in rows if r.get("metric")),
        simulation.metric_name(params.data.task, params.monitor.metric),
    )
    page = simulation.write(
        root / store.REPORTS, rows, metric, baseline_version, "reproml simulate: production replay"
    )
    return {
        "rows": rows,
        "html": str(page.relative_to(root)),
        "baseline_version": baseline_version,
        "final_champion": None if champion is None else int(champion.version),
        "metric": metric,
    }


def production_span(root: Path, every: str) -> tuple[str, str]:
    """The first and last period (`every`: month or week) the production split reaches into."""
    import pandas as pd

    from reproml.errors import ReproError
    from reproml.monitoring import batches
    from reproml.stages.common import load

    column = load(root).data.time_column
    source = root / batches.PRODUCTION
    if column is None or not source.is_file():
        raise ReproError(
            f"nothing to replay: the replay needs dated production data ({batches.PRODUCTION} with "
            f"data.time_column set, now {column!r}); run `dvc repro` with prepare.split: time"
        )
    when = pd.read_parquet(source, columns=[column])[column]
    if when.empty:
        raise ReproError(
            f"nothing to replay: {batches.PRODUCTION} has no rows (no data after prepare.test_end)"
        )
    return batches.period_label(when.min(), every), batches.period_label(when.max(), every)


@flow(name="simulate", log_prints=True)
def simulate(
    root: str = ".",
    every: str = "month",
    start: str | None = None,
    end: str | None = None,
    branch: str = BRANCH,
) -> dict[str, Any]:
    """Replay the periods `start`..`end` (default: the production split's first and last)."""
    from mlflow.tracking import MlflowClient

    from reproml import registry
    from reproml.monitoring.batches import periods
    from reproml.paths import project_root
    from reproml.stages.common import load

    log = get_run_logger()
    home = project_root(root, "root")
    if start is None or end is None:
        first, last = production_span(home, every)
        start, end = start or first, end or last
    spans = periods(start, end, every)
    baseline_version = reset(home, branch)
    name = load(home).register_.model_name
    outcomes = []
    for period in spans:
        outcome = monitoring(root=str(home), batch=period.label, every=every, branch=branch)
        champion = registry.alias_version(MlflowClient(), name, registry.CHAMPION)
        outcome["champion_after"] = None if champion is None else int(champion.version)
        log.info("%s: %s, champion v%s", period.label, outcome.get("verdict"), outcome["champion_after"])
        outcomes.append(outcome)
    return {**report(home, outcomes, baseline_version), "start": start, "end": end}
