"""`reproml simulate`: the held-back production periods (July-December 2013 for the bundled
flights; by default every period a user's dated production rows reach into) replayed as
production through the monitoring flow.

Each period goes through the same monitoring flow the daily schedule runs; a `retrain` verdict
hands the batch to the training flow (new DVC data version on the simulation's own branch,
`reproml/<model>/simulation`, `dvc repro`, challenger, gate). The replay starts from the
pipeline's model and a clean history (the model's earlier outputs are moved to
`monitoring/<model>/archive/`), so running it twice tells the same story. Binary, multiclass and
regression alike: the table and the page show the monitor's metric for the task.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.monitoring import monitoring
from flows.training import worktree


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

    params = load(root)
    name = params.register_.model_name
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    archive = root / store.archive(name) / stamp
    for kind in store.KINDS:
        folder = root / store.home(name) / kind
        if folder.exists():
            archive.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(archive / kind))
    worktree.fn(root, branch, reset=True)
    registered = root / REGISTERED
    if not registered.is_file():
        raise FileNotFoundError(f"{registered} not found: run `dvc repro` before `reproml simulate`")
    start = int(read_json(registered)["version"])
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
    title = f"reproml simulate: {name}'s production replay"
    page = simulation.write(root / store.reports(name), rows, metric, baseline_version, title)
    return {
        "rows": rows,
        "html": str(page.relative_to(root)),
        "baseline_version": baseline_version,
        "final_champion": None if champion is None else int(champion.version),
        "metric": metric,
    }


@flow(name="simulate", log_prints=True)
def simulate(
    root: str = ".",
    every: str = "month",
    start: str | None = None,
    end: str | None = None,
    branch: str | None = None,
) -> dict[str, Any]:
    """Replay the periods `start`..`end` (default: every period of the held-back production rows)
    on `branch` (default: `reproml/<model>/simulation`). Checked before anything moves: the data
    is dated and the periods lie in its production rows."""
    from mlflow.tracking import MlflowClient

    from reproml import registry
    from reproml.config import simulation_branch
    from reproml.monitoring.batches import replay_periods
    from reproml.paths import branch_name, project_root
    from reproml.stages.common import load

    log = get_run_logger()
    home = project_root(root, "root")
    params = load(home)
    name = params.register_.model_name
    spans = replay_periods(home, params.data.time_column, start, end, every)
    replay_branch = branch_name(branch or simulation_branch(name))
    baseline_version = reset(home, replay_branch)
    outcomes = []
    for period in spans:
        outcome = monitoring(root=str(home), batch=period.label, every=every, branch=replay_branch)
        champion = registry.alias_version(MlflowClient(), name, registry.CHAMPION)
        outcome["champion_after"] = None if champion is None else int(champion.version)
        log.info("%s: %s, champion v%s", period.label, outcome.get("verdict"), outcome["champion_after"])
        outcomes.append(outcome)
    return {**report(home, outcomes, baseline_version), "start": spans[0].label, "end": spans[-1].label}
