"""The model registry: versions, the challenger/champion/previous aliases, and their audit trail.

MLflow owns versions and aliases; this module owns the rules around them. A version is registered
only from a run that FINISHED and was evaluated. An alias moves only through `promote` (the gate,
or a forced promotion with a reason) or `rollback`, and every such decision, including rejections
and aborted races, is written as a JSON record under `registry/records/` and as tags on the model
version. Models are loaded only if their artifacts live under this project's experiment.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from reproml import paths
from reproml.errors import ReproError
from reproml.io import file_lock, file_md5, read_json, write_json

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
RECORDS = Path("registry/records")
LOCK = Path("registry/.promote.lock")
# The newest labelled production window, written by monitoring; scored with the test split.
LABELLED_WINDOWS = Path("monitoring/labelled")


class RegistryError(ReproError):
    """A registry action that must not happen (unfinished run, foreign model, missing alias...)."""


@dataclass(frozen=True)
class EvalData:
    """The rows both models are scored on, and where they came from."""

    frame: pd.DataFrame
    sources: dict[str, str]  # path -> md5


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def check_source(client: MlflowClient, version: ModelVersion, experiment_id: str) -> None:
    """Refuse a version whose artifacts lie outside this project's experiment artifact root."""
    root = str(client.get_experiment(experiment_id).artifact_location).rstrip("/") + "/"
    source = str(version.source)
    location = source
    if source.startswith("models:/m-"):
        location = str(client.get_logged_model(source.removeprefix("models:/")).artifact_location)
    if not location.startswith(root):
        raise RegistryError(
            f"model {version.name} version {version.version} comes from {location}, outside this "
            f"project's artifact root {root}; refusing to load it"
        )


def register(
    client: MlflowClient, run_id: str, model_name: str, experiment_id: str, model_uri: str
) -> ModelVersion:
    """A new version from a finished, evaluated run, tagged with its lineage, aliased `challenger`."""
    run = client.get_run(run_id)
    if run.info.status != "FINISHED":
        raise RegistryError(f"run {run_id} is {run.info.status}, not FINISHED; nothing registered")
    if run.data.tags.get("reproml.evaluated") != "true":
        raise RegistryError(f"run {run_id} was never evaluated; run `dvc repro` to evaluate it first")
    if run.info.experiment_id != experiment_id:
        raise RegistryError(f"run {run_id} belongs to another experiment; nothing registered")
    lineage = {
        k: v
        for k, v in run.data.tags.items()
        if k.startswith("reproml.data.") or k in ("reproml.git_commit", "reproml.params_sha256")
    }
    with contextlib.suppress(MlflowException):
        client.create_registered_model(model_name)
    # An MLflow server (not the SQLite store) accepts a logged model's `models:/m-...` only with its id.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    version = client.create_model_version(
        model_name, model_uri, run_id=run_id, tags={"reproml.run_id": run_id, **lineage}, model_id=model_id
    )
    check_source(client, version, experiment_id)
    client.set_registered_model_alias(model_name, CHALLENGER, version.version)
    return version


def eval_data(root: Path, time_column: str | None = None) -> EvalData:
    """The frozen test split, plus the newest labelled production window when there is one.

    A window that ends inside the test split's time range is not added: after a retrain on that
    batch the window *is* the test split, and counting its rows twice would only narrow the
    bootstrap interval without adding evidence.
    """
    test = root / paths.split_file("test")
    frames = [pd.read_parquet(test)]
    sources = {str(paths.split_file("test")): file_md5(test)}
    home = paths.workspace(root)
    windows = sorted((home / LABELLED_WINDOWS).glob("*.parquet"))
    if windows:
        window = pd.read_parquet(windows[-1])
        inside = (
            time_column is not None
            and time_column in window.columns
            and not window.empty
            and not frames[0].empty
            and window[time_column].max() <= frames[0][time_column].max()
        )
        if not inside:
            frames.append(window)
            sources[str(windows[-1].relative_to(home))] = file_md5(windows[-1])
    return EvalData(pd.concat(frames, ignore_index=True), sources)


def model_scores(client: MlflowClient, version: ModelVersion, frame: pd.DataFrame, task: str) -> np.ndarray:
    import mlflow

    from reproml.evaluate import predict_scores

    model = mlflow.sklearn.load_model(f"models:/{version.name}/{version.version}")
    return predict_scores(model, frame[list(model.feature_names_in_)], task)


@contextlib.contextmanager
def promotion_lock(root: Path) -> Iterator[None]:
    """One alias move at a time in this project (MLflow has no compare-and-set on aliases)."""
    with file_lock(paths.workspace(root) / LOCK):
        yield


def _describe(version: ModelVersion | None) -> dict[str, Any] | None:
    if version is None:
        return None
    return {"version": int(version.version), "run_id": version.run_id}


def write_record(root: Path, client: MlflowClient, name: str, record: dict[str, Any]) -> Path:
    """The decision as JSON under registry/records/, and as tags on the challenger's version."""
    now = dt.datetime.now(dt.UTC)
    record = {"time": now.isoformat(), "user": getpass.getuser(), "model_name": name, **record}
    subject = record.get("challenger") or record.get("champion") or {}
    stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
    target = (
        paths.workspace(root) / RECORDS / f"{stamp}-{record['action']}-v{subject.get('version', 'none')}.json"
    )
    write_json(target, record)
    if subject.get("version") is not None:
        version = str(subject["version"])
        client.set_model_version_tag(name, version, "reproml.decision", record["action"])
        client.set_model_version_tag(name, version, "reproml.decision_reason", record["reason"][:5000])
        client.set_model_version_tag(
            name, version, "reproml.decision_record", str(target.relative_to(paths.workspace(root)))
        )
    return target


def history(root: Path) -> list[dict[str, Any]]:
    return [read_json(p) for p in sorted((paths.workspace(root) / RECORDS).glob("*.json"))]


def _move_aliases(client: MlflowClient, name: str, new: ModelVersion, old: ModelVersion | None) -> None:
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS, old.version)
    client.set_registered_model_alias(name, CHAMPION, new.version)


def promote(
    root: Path,
    client: MlflowClient,
    name: str,
    experiment_id: str,
    decide: Any,
    task: str,
    version: int | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Run the gate (or force `version` with `reason`) and move aliases only if the champion is
    still the one that was judged; every outcome is recorded.

    `decide(y, challenger_scores, champion_scores, slices) -> GateResult` is the gate, passed in
    so this function holds only the registry's side of the rule.
    """
    if version is not None and not reason:
        raise RegistryError("a forced promotion needs --reason")
    challenger = (
        client.get_model_version(name, str(version))
        if version is not None
        else alias_version(client, name, CHALLENGER)
    )
    if challenger is None:
        raise RegistryError(f"model {name!r} has no {CHALLENGER!r} version; run `dvc repro` first")
    check_source(client, challenger, experiment_id)
    run_status = client.get_run(str(challenger.run_id)).info.status if challenger.run_id else "unknown"
    if run_status != "FINISHED":
        raise RegistryError(
            f"version {challenger.version} comes from run {challenger.run_id} which is {run_status}, "
            "not FINISHED; it cannot be promoted"
        )
    champion = alias_version(client, name, CHAMPION)
    if champion is not None:
        check_source(client, champion, experiment_id)
    if champion is not None and champion.version == challenger.version:
        # e.g. a second `make run` with nothing new: no decision to make, nothing to record
        return {
            "action": "none",
            "challenger": _describe(challenger),
            "champion": _describe(champion),
            "reason": f"version {challenger.version} is already the champion; nothing to decide",
        }
    record: dict[str, Any] = {"challenger": _describe(challenger), "champion": _describe(champion)}
    if version is not None:
        record |= {"action": "force", "reason": f"forced by {getpass.getuser()}: {reason}"}
        promote_it = True
    else:
        schema = read_json(root / paths.SCHEMA)
        data = eval_data(root, schema.get("time_column"))
        target = schema["target"]
        y = data.frame[target].to_numpy()
        challenger_scores = model_scores(client, challenger, data.frame, task)
        champion_scores = None if champion is None else model_scores(client, champion, data.frame, task)
        result = decide(y, challenger_scores, champion_scores, data.frame)
        promote_it = bool(result.promote)
        record |= {
            "action": "promote" if promote_it else "reject",
            "reason": result.reason,
            "gate": result.to_dict(),
            "eval_data": data.sources,
        }
    with promotion_lock(root):
        current = alias_version(client, name, CHAMPION)
        if _describe(current) != _describe(champion):
            record |= {
                "action": "abort",
                "reason": f"champion changed from {_describe(champion)} to {_describe(current)} while "
                f"this decision was being made; nothing moved (was: {record['reason']})",
            }
            promote_it = False
        if promote_it:
            _move_aliases(client, name, challenger, champion)
        record["record"] = str(write_record(root, client, name, record).relative_to(paths.workspace(root)))
    return record


def rollback(root: Path, client: MlflowClient, name: str, reason: str) -> dict[str, Any]:
    """`previous` becomes the champion again; the demoted champion becomes `previous`, so a second
    rollback undoes the first."""
    with promotion_lock(root):
        champion = alias_version(client, name, CHAMPION)
        previous = alias_version(client, name, PREVIOUS)
        if previous is None or champion is None:
            raise RegistryError(f"model {name!r} has no {PREVIOUS!r} version to roll back to")
        _move_aliases(client, name, previous, champion)
        record = {
            "action": "rollback",
            "reason": f"rollback by {getpass.getuser()}: {reason}",
            "champion": _describe(previous),
            "demoted": _describe(champion),
        }
        record["record"] = str(write_record(root, client, name, record).relative_to(paths.workspace(root)))
    return record
