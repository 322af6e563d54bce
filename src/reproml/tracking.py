"""The only module that talks to MLflow tracking.

One MLflow run per pipeline execution: `train` opens it and logs params, lineage, datasets and the
model; `evaluate` re-opens the same run (found by the md5 of the model file it evaluates) and adds
metrics and plots. Runs end FINISHED only when the block succeeds: an exception ends them FAILED,
SIGTERM or Ctrl-C ends them KILLED.

A locked SQLite store (another process inside a write transaction) becomes `StoreLockedError`,
naming the database file and what to do. A run that could not be ended (the store was locked, or
the process was killed) is ended by the next run that starts on this host (`mark_dead_runs`):
FAILED with the reason when its process recorded one, else KILLED.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import time
import urllib.parse
from collections.abc import Iterator
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
from reproml.paths import workspace
from reproml.redaction import redact_url, scrub, split_userinfo

TAG_PREFIX = "reproml."
MODEL_MD5_TAG = "reproml.model_md5"
# sha256 over the logged MLflow model's files (see `model_digest`), set on the run and the logged
# model when it is logged, checked before every load (`provenance.load_model_version`).
MODEL_SHA256_TAG = "reproml.model_sha256"
# The resolved params.yaml, exactly (MLflow params are strings and lose types).
PARAMS_ARTIFACT = "params.json"
# log_batch accepts at most 100 params / 1000 metrics / 100 tags per call.
BATCH = 100
# How long a call waits for another process's write lock on a SQLite store before giving up.
STORE_WAIT_ENV = "REPROML_STORE_WAIT_S"
MLFLOW_STORE_WAIT_S = 20.0  # MLflow's own `PRAGMA busy_timeout`, used when the variable is unset
LOCKED = "database is locked"  # SQLite's words; reproml.orchestration.commands retries on them
# Beside a SQLite store: how runs this host could not end (locked store) should be ended.
UNENDED_DIR = Path(".reproml/unended-runs")


class StoreLockedError(ReproError):
    """The MLflow store is locked by another process's write transaction for too long."""


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
    _apply_store_wait()
    _quiet_locked_store_logs()
    with store_guard():
        experiment = mlflow.get_experiment_by_name(experiment_name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = (workspace(root) / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
        return str(mlflow.create_experiment(experiment_name, artifact_location=location))


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI (query string dropped), else None."""
    if not uri.startswith("sqlite:"):
        return None
    path = urllib.parse.urlsplit(uri).path  # `sqlite:////abs.db` -> //abs.db, `sqlite:///rel.db` -> /rel.db
    return Path(path[1:] if path.startswith("/") else path)


def store_name(uri: str) -> str:
    """The store as a person should see it: the SQLite file, else scheme and host (no credentials)."""
    database = _sqlite_file(uri)
    if database is not None:
        return str(database)
    parts = urllib.parse.urlsplit(uri)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def store_wait_s() -> float:
    """Seconds a call waits for a locked SQLite store (`REPROML_STORE_WAIT_S`, default MLflow's 20)."""
    return env.seconds(STORE_WAIT_ENV, MLFLOW_STORE_WAIT_S)


_WAIT_APPLIED: list[int] = []  # the busy timeout in ms, once the listeners are in


def _apply_store_wait() -> None:
    """Make SQLite calls wait `store_wait_s()` for a lock instead of MLflow's fixed 20 s.

    MLflow runs `PRAGMA busy_timeout = 20000` at the start of every session; a SQLAlchemy event
    sets ours right after it, and on every new connection (MLflow's schema check runs before any
    session). Only SQLite connections are touched, and only when the variable is set.
    """
    if os.environ.get(STORE_WAIT_ENV) is None:
        return
    millis = int(store_wait_s() * 1000)
    if _WAIT_APPLIED:
        _WAIT_APPLIED[0] = millis
        return
    _WAIT_APPLIED.append(millis)
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def sqlite(connection: Any) -> bool:
        return type(connection).__module__.startswith("sqlite3")

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        if sqlite(dbapi_connection):
            dbapi_connection.execute(f"PRAGMA busy_timeout = {_WAIT_APPLIED[0]}")

    def after_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().lower().startswith("pragma busy_timeout") and sqlite(cursor):
            cursor.execute(f"PRAGMA busy_timeout = {_WAIT_APPLIED[0]}")

    event.listen(Engine, "connect", on_connect)
    event.listen(Engine, "after_cursor_execute", after_execute)


def _drop_locked(record: logging.LogRecord) -> bool:
    return not (record.exc_info and record.exc_info[1] and is_store_locked(record.exc_info[1]))


def _quiet_locked_store_logs() -> None:
    """MLflow logs every "database is locked" with a traceback before raising it; the caller gets
    `StoreLockedError` with what to do instead, so those log records are dropped (others stay)."""
    logger = logging.getLogger("mlflow.store.db.utils")
    if _drop_locked not in logger.filters:
        logger.addFilter(_drop_locked)


def is_store_locked(exc: BaseException) -> bool:
    """True when `exc`, or anything it was raised from, is SQLite's "database is locked"."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, StoreLockedError) or LOCKED in str(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def store_locked_error(uri: str | None = None) -> StoreLockedError:
    """What a person needs: which store, that another process holds it, and what to do."""
    uri = uri or mlflow.get_tracking_uri()
    name = store_name(uri)
    return StoreLockedError(
        f"MLflow store {name} is locked ({LOCKED}): another process held a write lock on it for "
        f"more than {store_wait_s():g} s. It may be another reproml command or flow, `mlflow ui` / "
        f"`mlflow server`, or a sqlite3 session left inside a transaction; `fuser -v {name}` lists "
        f"the processes that have it open. Wait for it to finish or stop it, then run again "
        f"({STORE_WAIT_ENV} sets how long to wait). A run this left RUNNING is ended FAILED when "
        f"the next run starts"
    )


@contextlib.contextmanager
def store_guard() -> Iterator[None]:
    """Turn a locked-store failure inside the block into `StoreLockedError`."""
    try:
        yield
    except StoreLockedError:
        raise
    except Exception as exc:
        if is_store_locked(exc):
            raise store_locked_error() from exc
        raise


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
    record_model_digest(info.run_id, info.model_id)
    return str(info.model_uri)


# MLflow writes this (the registered name and version, nothing it loads) into a *local* model's own
# folder whenever anyone downloads `models:/<name>/<version>`, so it cannot be part of the digest.
MLFLOW_BOOKKEEPING = frozenset({"registered_model_meta"})


def model_digest(directory: Path) -> str:
    """sha256 over the sorted manifest of every file under `directory` (relative path, sha256).

    Any changed byte, added, removed or renamed file changes it: the MLmodel file (which names
    the serialization format and the trusted types) and the shipped code included. Only MLflow's
    `registered_model_meta` is left out (see MLFLOW_BOOKKEEPING).
    """
    manifest = hashlib.sha256()
    files = sorted(
        (p.relative_to(directory).as_posix(), p)
        for p in directory.rglob("*")
        if p.is_file() and p.relative_to(directory).as_posix() not in MLFLOW_BOOKKEEPING
    )
    for relative, path in files:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        manifest.update(f"{relative}\t{digest.hexdigest()}\n".encode())
    return manifest.hexdigest()


def fetch_model_files(location: str, into: Path) -> Path:
    """A local copy of the model files at `location` (an artifact URI), made under `into`.

    Models are hashed and deserialised only from such a copy, so the bytes checked are the bytes
    loaded, whatever happens at `location` in between.
    """
    import mlflow.artifacts

    into.mkdir(parents=True, exist_ok=True)
    with env.overridden("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(into)))


def record_model_digest(run_id: str, model_id: str) -> str:
    """Hash the files just logged as model `model_id` and tag the run (and the logged model)."""
    import tempfile

    client = MlflowClient()
    location = str(client.get_logged_model(model_id).artifact_location)
    with tempfile.TemporaryDirectory(prefix="reproml-model-") as scratch:
        digest = model_digest(fetch_model_files(location, Path(scratch)))
    client.set_tag(run_id, MODEL_SHA256_TAG, digest)
    client.set_logged_model_tags(model_id, {MODEL_SHA256_TAG: digest})
    return digest
