"""MLflow runs: one per pipeline execution, their params, metrics, tags and artifacts, and search.

`train` opens a run and logs params, lineage, datasets and the model; `evaluate` re-opens the same
run (found by the md5 of the model file it evaluates) and adds metrics and plots. Runs end FINISHED
only when the block succeeds: an exception ends them FAILED, SIGTERM or Ctrl-C ends them KILLED.

A run that could not be ended (the store was locked, or the process was killed) is ended by the
next run that starts on this host (`mark_dead_runs`): FAILED with the reason when its process
recorded one, else KILLED. Runs are read as `Run` records, not MLflow's entities.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from reproml import env
from reproml.errors import ReproError
from reproml.io import process_start, read_json, write_json
from reproml.redaction import scrub
from reproml.stores.mlflow.connection import (
    _sqlite_file,
    is_store_locked,
    store_guard,
    store_locked_error,
)

TAG_PREFIX = "reproml."
MODEL_MD5_TAG = "reproml.model_md5"
# The resolved params.yaml, exactly (MLflow params are strings and lose types).
PARAMS_ARTIFACT = "params.json"
# log_batch accepts at most 100 params / 1000 metrics / 100 tags per call.
BATCH = 100
# Beside a SQLite store: how runs this host could not end (locked store) should be ended.
UNENDED_DIR = Path(".reproml/unended-runs")


class _Terminated(SystemExit):
    pass


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(128 + signum)


def owner_tags() -> dict[str, str]:
    """Who runs the run (host, process), and the DVC experiment it belongs to under `dvc exp run`."""
    from reproml.env import dvc_experiment

    pid = os.getpid()
    experiment = dvc_experiment()
    return {
        "reproml.host": socket.gethostname(),
        "reproml.pid": str(pid),
        "reproml.proc_start": str(process_start(pid)),
        **(experiment.tags() if experiment else {}),
    }


def _unended_file(run_id: str) -> Path | None:
    """Where this host notes how a run it could not end should end (beside a SQLite store only:
    a locked store is a SQLite condition)."""
    database = _sqlite_file(mlflow.get_tracking_uri())
    return None if database is None else database.parent / UNENDED_DIR / f"{run_id}.json"


def _note_unended(run_id: str, status: str, reason: str) -> None:
    target = _unended_file(run_id)
    if target is not None:
        with contextlib.suppress(OSError, ReproError):  # best effort: the disk may be the problem
            write_json(target, {"status": status, "reason": reason})


def mark_dead_runs(experiment_id: str) -> list[str]:
    """End the RUNNING runs whose process on this host is gone (`kill -9`, power loss, a store
    that was locked when the run should have ended).

    MLflow leaves such runs RUNNING forever. A run whose process noted why it could not end it
    ends as noted (FAILED, with the reason in `reproml.failed_reason`); any other ends KILLED
    (`reproml.killed_reason`). Runs started on other hosts are left alone: their process cannot
    be checked from here.
    """
    client = MlflowClient()
    host = socket.gethostname()
    ended = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get("reproml.host") != host or "reproml.pid" not in tags:
            continue
        if process_start(int(tags["reproml.pid"])) == tags.get("reproml.proc_start"):
            continue
        run_id = run.info.run_id
        note = _unended_file(run_id)
        if note is not None and note.is_file():
            noted = read_json(note)
            client.set_tag(run_id, "reproml.failed_reason", str(noted["reason"])[:5000])
            client.set_terminated(run_id, str(noted["status"]))
            note.unlink(missing_ok=True)
        else:
            reason = f"process {tags['reproml.pid']} on {host} ended without ending the run"
            client.set_tag(run_id, "reproml.killed_reason", reason)
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        ended.append(run_id)
    return ended


def _end(run_id: str, status: str, failure: BaseException | None) -> None:
    """End the active run; if the store refuses, note how it should end and say why."""
    try:
        mlflow.end_run(status=status)
    except Exception as exc:
        cause = failure if failure is not None else exc
        reason = f"the run could not be ended ({status} was due): {type(cause).__name__}: {cause}"
        killed = RunStatus.to_string(RunStatus.KILLED)
        _note_unended(run_id, killed if status == killed else RunStatus.to_string(RunStatus.FAILED), reason)
        if is_store_locked(exc):
            raise store_locked_error() from exc
        raise


@contextlib.contextmanager
def tracked_run(
    experiment_id: str, run_id: str | None = None, run_name: str | None = None
) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume) a run whose final status tells the truth about how the block ended.

    Starting one first ends any run left RUNNING by a process that died on this host. A locked
    store, at the start, inside the block or at the end, raises `StoreLockedError`.
    """
    with store_guard():
        mark_dead_runs(experiment_id)
        run = mlflow.start_run(
            run_id=run_id, experiment_id=experiment_id, run_name=run_name, tags=owner_tags()
        )
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    status = RunStatus.to_string(RunStatus.FAILED)
    failure: BaseException | None = None
    try:
        with store_guard():
            yield run
        status = RunStatus.to_string(RunStatus.FINISHED)
    except (KeyboardInterrupt, SystemExit) as exc:
        status, failure = RunStatus.to_string(RunStatus.KILLED), exc
        raise
    except BaseException as exc:
        failure = exc
        raise
    finally:
        try:
            _end(run.info.run_id, status, failure)
        finally:
            signal.signal(signal.SIGTERM, previous)


def log_batch(
    run_id: str,
    params: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    step: int = 0,
) -> None:
    """Params, metrics and tags in as few round trips as MLflow allows.

    Every param and tag value is scrubbed of credentials (`reproml.redaction.scrub`): the last line
    of defence for a password or token that reached a value some other way than params.yaml.
    """
    client = MlflowClient()
    now = int(time.time() * 1000)
    p = [Param(k, scrub(str(v))[:6000]) for k, v in (params or {}).items()]
    m = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
    t = [RunTag(k, scrub(str(v))[:5000]) for k, v in (tags or {}).items()]
    for start in range(0, max(len(p), len(m), len(t)), BATCH):
        client.log_batch(
            run_id,
            metrics=m[start : start + BATCH],
            params=p[start : start + BATCH],
            tags=t[start : start + BATCH],
        )


def log_metric_series(run_id: str, name: str, values: list[float]) -> None:
    """A per-round curve as one MLflow metric with steps, so the UI draws it."""
    client = MlflowClient()
    now = int(time.time() * 1000)
    series = [Metric(name, float(v), now, step) for step, v in enumerate(values, start=1)]
    for start in range(0, len(series), 1000):
        client.log_batch(run_id, metrics=series[start : start + 1000])


def log_child_run(
    experiment_id: str,
    parent_run_id: str,
    run_name: str,
    status: str,
    start_ms: int,
    end_ms: int,
    params: dict[str, str],
    metrics: dict[str, float],
    tags: dict[str, str],
    series: dict[str, list[tuple[int, float]]] | None = None,
) -> str:
    """A finished child run written in one go, with the times and status of what it records.

    Used for Optuna trials: they run in worker processes that never touch MLflow, and are logged
    by the study's process once they end, so their status is exactly the trial's (a pruned trial
    FINISHED, a failed one FAILED) and no worker can leave a run RUNNING.
    """
    client = MlflowClient()
    clean = {k: scrub(str(v)) for k, v in tags.items()}  # a failed trial's error text, say
    run = client.create_run(
        experiment_id,
        start_time=start_ms,
        tags={"mlflow.parentRunId": parent_run_id, "mlflow.runName": run_name, **clean},
        run_name=run_name,
    )
    run_id = run.info.run_id
    log_batch(run_id, params=params, metrics=metrics)
    for name, points in (series or {}).items():
        values = [Metric(name, float(v), end_ms, int(step)) for step, v in points]
        for start in range(0, len(values), 1000):
            client.log_batch(run_id, metrics=values[start : start + 1000])
    client.set_terminated(run_id, status=status, end_time=end_ms)
    return str(run_id)


def logged_tag_values(experiment_id: str, run_filter: str, tag: str) -> set[str]:
    """The values of `tag` on the ended runs matching `run_filter` (e.g. the trials already logged).

    A run still RUNNING here was being written by `log_child_run` when its process died; the
    caller holds the lock that rules out a live writer, so it is deleted and logged again.
    """
    client = MlflowClient()
    values: set[str] = set()
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=run_filter, max_results=1000, page_token=token
        )
        for run in page:
            if run.info.status == "RUNNING":
                client.delete_run(run.info.run_id)
            elif tag in run.data.tags:
                values.add(run.data.tags[tag])
        token = page.token
        if not token:
            return values


def find_run_for_model(experiment_id: str, model_md5: str) -> str | None:
    """The newest run that logged the model file with this md5."""
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{MODEL_MD5_TAG}` = '{model_md5}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


@dataclass(frozen=True)
class Run:
    """An MLflow run as reproml reads it: identity, status and its logged values."""

    run_id: str
    experiment_id: str
    name: str | None
    status: str
    start_time: int  # ms since the epoch
    artifact_uri: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, run: Any) -> Run:
        """From MLflow's `Run` entity."""
        info, data = run.info, run.data
        return cls(
            run_id=str(info.run_id),
            experiment_id=str(info.experiment_id),
            name=info.run_name,
            status=str(info.status),
            start_time=int(info.start_time or 0),
            artifact_uri=str(info.artifact_uri),
            params=dict(data.params),
            metrics={k: float(v) for k, v in data.metrics.items()},
            tags=dict(data.tags),
        )


def get_run(run_id: str) -> Run:
    """The run `run_id` (MlflowError when the store has none)."""
    return Run.of(MlflowClient().get_run(run_id))


def search_runs(
    experiment_ids: list[str],
    filter_string: str = "",
    order_by: list[str] | None = None,
    max_results: int = 1000,
) -> list[Run]:
    """The runs matching `filter_string` (MLflow's search syntax), in `order_by` order."""
    found = MlflowClient().search_runs(
        experiment_ids, filter_string=filter_string, order_by=order_by, max_results=max_results
    )
    return [Run.of(run) for run in found]


def newest_run(experiment_id: str, filter_string: str) -> Run | None:
    """The newest run (by start time) matching `filter_string`, or None."""
    found = search_runs([experiment_id], filter_string, ["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def experiment_artifact_location(experiment_id: str) -> str:
    """Where experiment `experiment_id` keeps its runs' artifacts, as MLflow records it."""
    return str(MlflowClient().get_experiment(experiment_id).artifact_location)


def log_dict(data: dict[str, Any], artifact_file: str) -> None:
    """A JSON artifact of the active run."""
    mlflow.log_dict(data, artifact_file)


def log_figure(figure: Any, artifact_file: str) -> None:
    """A matplotlib figure as an image artifact of the active run."""
    mlflow.log_figure(figure, artifact_file)


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    """A local file as an artifact of the active run, under `artifact_path`."""
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_artifacts(directory: Path, artifact_path: str) -> None:
    """Every file under `directory` as artifacts of the active run, under `artifact_path`."""
    mlflow.log_artifacts(str(directory), artifact_path=artifact_path)


def log_table(frame: pd.DataFrame, artifact_file: str) -> None:
    """A frame as a JSON table artifact of the active run (`{"columns": [...], "data": [...]}`)."""
    mlflow.log_table(frame, artifact_file=artifact_file)


def artifact_paths(run_id: str, path: str | None = None) -> list[str]:
    """The paths of the run's artifacts directly under `path` (the root when None)."""
    return [str(f.path) for f in MlflowClient().list_artifacts(run_id, path)]


def download_artifact(run_id: str, path: str, into: Path) -> Path:
    """The run's artifact `path`, downloaded under `into` (no progress bar: a file is noise)."""
    into.mkdir(parents=True, exist_ok=True)
    with env.overridden("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"):
        return Path(MlflowClient().download_artifacts(run_id, path, dst_path=str(into)))


def newest_run_in(database: Path, artifacts: Path) -> Run | None:
    """The newest run of any experiment in the SQLite store `database`, read through a store whose
    connections are closed afterwards.

    MLflow caches one engine per database URI: the same file read again in this process after it
    was replaced (a rebuild in the same worktree path) would otherwise be read from the deleted one.
    """
    from mlflow.entities import ViewType
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store_class: Any = SqlAlchemyStore  # untyped in MLflow
    store = store_class(f"sqlite:///{database.resolve()}", artifacts.resolve().as_uri())
    try:
        experiments = [e.experiment_id for e in store.search_experiments(view_type=ViewType.ALL)]
        found = store.search_runs(
            experiments, "", ViewType.ALL, max_results=1, order_by=["attributes.start_time DESC"]
        )
        return Run.of(found[0]) if found else None
    finally:
        store.engine.dispose()
