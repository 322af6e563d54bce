"""The production replay's steps (`reproml simulate`): a clean start, the champion after each
period, and the report against the model never retrained.

The replay starts from the pipeline's model and a clean history (the model's earlier outputs are
moved to `monitoring/<model>/archive/`), so running it twice tells the same story. Binary,
multiclass and regression alike: the table and the page show the monitor's metric for the task.

Labels late (`--labels late`): each period is judged without its labels, which arrive at the start
of the next period (`arrive_labels`, the path `reproml monitor --batch ID --labels FILE` takes), the
last period's after the replay; each period's quality is then the realised metric its record gained
(`with_realised`), the same rows and scores the labels-now replay judges.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, NotRequired, TypedDict

from reproml.orchestration.worktree import open_worktree

if TYPE_CHECKING:
    from reproml.monitoring.records import BatchRecord, BatchSummary
    from reproml.simulation import PolicySummary, SimulationRow


class ReplayReport(TypedDict):
    """One policy's replay (`report`); the simulate flow adds the seconds it took."""

    policy: str | None
    rows: list[SimulationRow]
    html: str
    baseline_version: int
    final_champion: int | None
    metric: str
    labels: str  # `now` (each period judged with its labels) or `late` (they came a period later)
    seconds: NotRequired[float]


class Comparison(TypedDict):
    """The policies side by side (`compare`): `simulation.compare`'s table and the files written."""

    batches: list[str]
    policies: list[PolicySummary]
    files: dict[str, str]  # md, svg, json, html -> path relative to the project
    metric: str
    labels: str


def reset(root: Path, branch: str, keep_reports: bool = False) -> int:
    """Archive earlier monitoring outputs, start the branch again from HEAD, and make the
    pipeline's registered model the champion (a forced promotion, recorded, if it is not).
    `keep_reports`: the reports folder stays (the next policy of one `--policies` replay keeps the
    pages of the policies before it; its batches' reports replace theirs)."""
    from reproml import registry
    from reproml.io import read_json
    from reproml.monitoring import store
    from reproml.stages.common import load
    from reproml.stages.register import REGISTERED, run_promote
    from reproml.stores.mlflow import connection

    params = load(root)
    name = params.register_.model_name
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    archive = root / store.archive(name) / stamp
    for kind in store.KINDS:
        if keep_reports and kind == "reports":
            continue
        folder = root / store.home(name) / kind
        if folder.exists():
            archive.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(archive / kind))
    store.archive_records(root, name, stamp)  # a records database's rows too (`REPROML_RECORDS_URL`)
    open_worktree(root, branch, reset=True)
    registered = root / REGISTERED
    if not registered.is_file():
        raise FileNotFoundError(f"{registered} not found: run `dvc repro` before `reproml simulate`")
    start = int(read_json(registered)["version"])
    connection.setup(root, params.mlflow.experiment_name)
    current = registry.alias_version(params.register_.model_name, registry.CHAMPION)
    if current is None or int(current.version) != start:
        run_promote(root, version=start, reason="reproml simulate starts from the pipeline's model")
    return start


def champion_version(root: Path) -> int | None:
    """The version the `champion` alias names now, or None."""
    from reproml import registry
    from reproml.stages.common import load

    name = load(root).register_.model_name
    champion = registry.alias_version(name, registry.CHAMPION)
    return None if champion is None else int(champion.version)


def arrive_labels(root: Path, period: str) -> BatchRecord | None:
    """The labels of the replayed period `period` arrive (`--labels late`): its production rows,
    labels included, are written to `monitoring/<model>/late-labels/<batch id>.parquet` and
    attached to its record by `labels.add_labels` (`reproml monitor --batch ID --labels FILE`):
    realised metric, labelled window (the next retrain's rows), estimate's error. None when the
    period was not scored (never monitored, quarantined, back-dated): there is nothing to label."""
    from reproml.io import write_parquet
    from reproml.monitoring import batches, store
    from reproml.monitoring.labels import add_labels
    from reproml.stages.common import load

    params = load(root)
    name = params.register_.model_name
    found = batches.parse_period(period)
    if found is None:
        raise batches.BatchError(f"{period!r} is not a period ({batches.PERIOD_FORMS})")
    record = store.find(root, name, found.batch_id)
    if record is None or not record.get("predictions"):
        return None
    rows = batches.from_period(root, found, params.data.time_column).frame
    path = write_parquet(root / store.late_labels(name) / f"{found.batch_id}.parquet", rows)
    return add_labels(root, params, found.batch_id, str(path.relative_to(root)))


def with_realised(root: Path, outcome: BatchSummary) -> BatchSummary:
    """A period judged without its labels, once they arrived: its quality is the realised metric
    of the champion that judged it (the record's `realised`), its labelled window the one the
    labels wrote; the estimate as the record now holds it (its error against the realised)."""
    from reproml.monitoring import store
    from reproml.stages.common import load

    batch = outcome.get("batch")
    if not batch:
        return outcome
    record = store.find(root, load(root).register_.model_name, batch)
    if record is None:
        return outcome
    realised = record.get("realised")
    out: BatchSummary = {**outcome, "labelled": record.get("labelled"), "estimate": record.get("estimate")}
    if realised:
        out["quality"], out["metric"] = realised["value"], realised["metric"]
    return out


def report(
    root: Path,
    outcomes: list[BatchSummary],
    baseline_version: int,
    policy: str | None = None,
    labels: str = "now",
) -> ReplayReport:
    """Score the never-retrained model on each batch's labelled rows; write the HTML and JSON
    (simulation.html, or simulation-<policy>.html for a policy other than `reproml`). `labels`:
    the replay's label mode (`now`, `late`), named in the title and the JSON."""
    import pandas as pd

    from reproml import provenance, registry, simulation
    from reproml.monitoring import store
    from reproml.stages.common import load
    from reproml.stores.mlflow import connection, versions

    params = load(root)
    experiment_id = connection.setup(root, params.mlflow.experiment_name)
    name = params.register_.model_name
    model = provenance.load_model_version(versions.get_version(name, baseline_version), experiment_id)
    rows = []
    for outcome in outcomes:
        baseline = float("nan")
        labelled = outcome.get("labelled")
        if labelled:
            frame = pd.read_parquet(root / labelled)
            baseline = simulation.baseline_metric(
                model, frame, params.data.target, params.data.task, params.monitor.metric
            )
        rows.append(simulation.row(outcome, baseline, outcome.get("champion_after")))
    champion = registry.alias_version(name, registry.CHAMPION)
    metric = next(
        (m for r in rows if (m := r.get("metric"))),
        simulation.metric_name(params.data.task, params.monitor.metric),
    )
    title = (
        f"reproml simulate: {name}'s production replay"
        + (f" (policy {policy})" if policy else "")
        + f", {simulation.LABEL_MODES[labels]}"
    )
    page = simulation.write(root / store.reports(name), rows, metric, baseline_version, title, policy, labels)
    return {
        "policy": policy,
        "rows": rows,
        "html": str(page.relative_to(root)),
        "baseline_version": baseline_version,
        "final_champion": None if champion is None else int(champion.version),
        "metric": metric,
        "labels": labels,
    }


def compare(root: Path, results: list[ReplayReport]) -> Comparison:
    """The policies side by side (`results`: each policy's `report` plus its `seconds`): one table
    (policies.md / .html / .json) and one plot (policies.svg) under monitoring/<model>/reports/."""
    from reproml import simulation
    from reproml.monitoring import store
    from reproml.stages.common import load

    name = load(root).register_.model_name
    summaries = [simulation.policy_summary(str(r["policy"]), r["rows"], r["seconds"]) for r in results]
    table = simulation.compare(summaries)
    judged = next((r for r in results if r["policy"] == simulation.REPROML), results[-1])
    verdicts = simulation.verdict_lines(judged["rows"])
    metric = results[0]["metric"]
    labels = results[0].get("labels", "now")
    title = f"reproml simulate: retrain policies side by side ({name}), {simulation.LABEL_MODES[labels]}"
    written = simulation.write_policies(root / store.reports(name), table, metric, verdicts, title)
    files = {k: str(v.relative_to(root)) for k, v in written.items()}
    return {
        "batches": table["batches"],
        "policies": table["policies"],
        "files": files,
        "metric": metric,
        "labels": labels,
    }
