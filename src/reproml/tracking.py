"""The only module that talks to MLflow tracking.

One MLflow run per pipeline execution: `train` opens it and logs params, lineage, datasets and the
model; `evaluate` re-opens the same run (found by the md5 of the model file it evaluates) and adds
metrics and plots. Runs end FINISHED only when the block succeeds: an exception ends them FAILED,
SIGTERM or Ctrl-C ends them KILLED.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from reproml.paths import workspace
from reproml.redaction import redact_url, scrub, split_userinfo

TAG_PREFIX = "reproml."
MODEL_MD5_TAG = "reproml.model_md5"
# The resolved params.yaml, exactly (MLflow params are strings and lose types).
PARAMS_ARTIFACT = "params.json"
# log_batch accepts at most 100 params / 1000 metrics / 100 tags per call.
BATCH = 100
USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


def tracking_uri(root: Path) -> str:
    """The tracking store as configured (it may carry a password: show `shown_tracking_uri`)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(workspace(root) / 'mlflow.db').resolve()}"


def shown_tracking_uri(root: Path) -> str:
    """The tracking store, fit for output and error messages (password and tokens masked)."""
    return redact_url(tracking_uri(root))


def _credentials_to_env(uri: str) -> str:
    """An HTTP(S) tracking URI without its `user:password@`, which go to MLflow's own
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (unless those are set) instead.

    MLflow sends both as the same basic auth, but prints and raises with the URI it was given
    ("View run at: <uri>/#/...", "API request to <uri>/api/... failed"): given none, it has no
    password to show. Variables already set win. Child processes inherit the clean URI (MLflow
    exports it) and the variables.
    """
    if not uri.lower().startswith(("http://", "https://")):
        return uri
    clean, user, password = split_userinfo(uri)
    if password is None:
        return uri
    os.environ.setdefault(USERNAME_ENV, user or "")
    os.environ.setdefault(PASSWORD_ENV, password)
    return clean


def setup(root: Path, experiment_name: str) -> str:
    """Point MLflow at the project's store and return the experiment id (created if needed).

    With the default local store, artifacts go to `mlartifacts/` in the project, not to the
    process's working directory. Credentials in an HTTP tracking URI are handed to MLflow
    separately (`_credentials_to_env`), so MLflow never sees them in the URI.
    """
    uri = _credentials_to_env(tracking_uri(root))
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = (workspace(root) / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    return str(mlflow.create_experiment(experiment_name, artifact_location=location))


class _Terminated(SystemExit):
    pass


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(128 + signum)


def _process_start(pid: int) -> str | None:
    """Start time of a live process (clock ticks since boot), or None if it is gone.

    Paired with the pid it identifies a process even after its pid is reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tags() -> dict[str, str]:
    pid = os.getpid()
    return {
        "reproml.host": socket.gethostname(),
        "reproml.pid": str(pid),
        "reproml.proc_start": str(_process_start(pid)),
    }


def mark_dead_runs(experiment_id: str) -> list[str]:
    """End as KILLED the RUNNING runs whose process on this host is gone (`kill -9`, power loss).

    MLflow leaves such runs RUNNING forever. Runs started on other hosts are left alone: their
    process cannot be checked from here.
    """
    client = MlflowClient()
    host = socket.gethostname()
    killed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get("reproml.host") != host or "reproml.pid" not in tags:
            continue
        if _process_start(int(tags["reproml.pid"])) == tags.get("reproml.proc_start"):
            continue
        client.set_tag(run.info.run_id, "reproml.killed_reason",
                       f"process {tags['reproml.pid']} on {host} ended without ending the run")  # fmt: skip
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        killed.append(run.info.run_id)
    return killed


@contextlib.contextmanager
def tracked_run(
    experiment_id: str, run_id: str | None = None, run_name: str | None = None
) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume) a run whose final status tells the truth about how the block ended.

    Starting one first marks KILLED any run left RUNNING by a process that died on this host.
    """
    mark_dead_runs(experiment_id)
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=run_name, tags=owner_tags())
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        yield run
        status = RunStatus.to_string(RunStatus.FINISHED)
    except (KeyboardInterrupt, SystemExit):
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        mlflow.end_run(status=status)
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


def frame_schema(frame: pd.DataFrame) -> Any:
    """MLflow column schema from dtypes, with `required` false where any value is missing.

    MLflow's own inference visits every string value (seconds on 100k rows); dtypes and one
    vectorised null check give the same schema at once.
    """
    from mlflow.types import ColSpec, DataType, Schema

    def kind(column: pd.Series) -> DataType:
        if pd.api.types.is_bool_dtype(column):
            return DataType.boolean
        if pd.api.types.is_integer_dtype(column):
            return DataType.long
        if pd.api.types.is_float_dtype(column):
            return DataType.double
        if pd.api.types.is_datetime64_any_dtype(column):
            return DataType.datetime
        return DataType.string

    nulls = frame.isna().any()
    return Schema([ColSpec(kind(frame[c]), str(c), required=not bool(nulls[c])) for c in frame.columns])


def log_dataset(run_id: str, frame: pd.DataFrame, name: str, source: str, digest: str, context: str) -> None:
    """An MLflow dataset input whose digest is the DVC md5 of the file it came from."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = Dataset(
        name=name,
        digest=digest,
        source_type="local",
        source=json.dumps({"uri": source}),
        schema=json.dumps({"mlflow_colspec": frame_schema(frame).to_dict()}),
        profile=json.dumps({"num_rows": len(frame), "num_elements": int(frame.size)}),
    )
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)]
    MlflowClient().log_inputs(run_id, datasets=[DatasetInput(dataset, tags=tags)])


def find_run_for_model(experiment_id: str, model_md5: str) -> str | None:
    """The newest run that logged the model file with this md5."""
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{MODEL_MD5_TAG}` = '{model_md5}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def log_sklearn_model(
    pipeline: Any, inputs: Any, example: Any, code_dir: Path, requirements: list[str]
) -> str:
    """Log the fitted Pipeline with signature and input example; returns the model URI.

    The signature is inferred from all training inputs, so a column with any missing value is
    optional rather than required because the 5-row example happened to be complete.

    Serialized with skops, MLflow's safe default, trusting exactly the types this pipeline holds
    (our `DateParts` and XGBoost's estimator); `code_paths` ships `reproml` so the model loads
    where the package is not installed.
    """
    import skops.io
    from mlflow.models import infer_signature

    signature = infer_signature(example, pipeline.predict(example))
    signature.inputs = frame_schema(inputs)
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    info = mlflow.sklearn.log_model(
        pipeline,
        name="model",
        signature=signature,
        input_example=example,
        code_paths=[str(code_dir)],
        pip_requirements=requirements,
        serialization_format="skops",
        skops_trusted_types=trusted,
    )
    return str(info.model_uri)
