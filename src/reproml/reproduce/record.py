"""A run's recorded lineage: which MLflow run, and whether what it recorded suffices to rebuild it.

A run records its lineage as tags (stages/train.py): the commit, whether the tree was dirty and
where, the md5 of every input data file, the hashes of its params and code, its seed, and the hash
of its test predictions. A rebuild needs all of them; a run lacking one is refused up front,
naming what it lacks, before anything is checked out or fetched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reproml import paths
from reproml.errors import ReproError
from reproml.stores import git

if TYPE_CHECKING:
    from reproml.stores.mlflow.runs import Run

DATA_PREFIX = "reproml.data."
PREDICTIONS_TAG = "reproml.test_predictions_sha256"
REQUIRED_TAGS = {
    "reproml.git_commit": "the git commit it was trained from",
    "reproml.git_dirty": "whether the working tree had uncommitted changes",
    "reproml.params_sha256": "the hash of its params",
    "reproml.code_sha256": "the hash of its code",
    "reproml.seed": "its seed",
    PREDICTIONS_TAG: "the hash of its test predictions (was it evaluated?)",
}
# The data files train and evaluate read; a run must name a version of each to be rebuilt.
REBUILD_INPUTS = (paths.SCHEMA, *(paths.split_file(s) for s in ("train", "valid", "test")))
# The only uncommitted change a run may have had: params.yaml, when its exact params were logged.
PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class Recorded:
    """What the run recorded that a rebuild needs or is compared against."""

    run_id: str
    commit: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    data: dict[str, str]  # path -> md5
    dirty_paths: list[str]
    has_params_json: bool


def load_run(root: Path, ref: str) -> Run:
    """The MLflow run `ref` names (a run id, or `@alias` of the registered model) from the
    project's tracking store; a ReproError naming the store when there is none."""
    from reproml.config import load_params
    from reproml.stores.mlflow import connection, runs, versions

    params = load_params(root / "params.yaml")
    connection.setup(root, params.mlflow.experiment_name)
    uri = connection.shown_tracking_uri(root)
    run_id = ref
    if ref.startswith("@"):
        name = params.register_.model_name
        version = versions.alias_version(name, ref[1:])
        if version is None:
            raise ReproError(f"model {name!r} has no version aliased {ref[1:]!r} in {uri}")
        run_id = str(version.run_id)
    try:
        return runs.get_run(run_id)
    except connection.MlflowError:
        raise ReproError(f"no MLflow run with id {run_id!r} in the tracking store {uri}") from None


def _safe_relative(path: str) -> bool:
    parts = Path(path).parts
    return bool(parts) and not Path(path).is_absolute() and ".." not in parts


def check_lineage(root: Path, run: Run) -> Recorded:
    """Everything a rebuild needs, or a ReproError saying what the run lacks.

    A run is rebuildable when it names a commit of this repository, a version of every input data
    file, and its params; a working tree with uncommitted changes other than params.yaml (whose
    exact content the run logged as params.json) cannot be recovered: refused.
    """
    run_id = run.run_id
    tags: dict[str, str] = dict(run.tags)
    refuse = f"run {run_id} cannot be rebuilt:"
    missing = [f"{tag} ({why})" for tag, why in REQUIRED_TAGS.items() if not tags.get(tag)]
    if missing:
        raise ReproError(f"{refuse} it lacks the lineage tags {', '.join(missing)}")
    data = {k.removeprefix(DATA_PREFIX): v for k, v in tags.items() if k.startswith(DATA_PREFIX)}
    absent = [str(p) for p in REBUILD_INPUTS if str(p) not in data]
    if absent:
        raise ReproError(f"{refuse} it records no version (md5) of the data files {', '.join(absent)}")
    unsafe = [p for p in data if not _safe_relative(p)]
    if unsafe:
        raise ReproError(f"{refuse} its data paths {unsafe} are not inside the project")
    commit = tags["reproml.git_commit"]
    known = re.fullmatch(r"[0-9a-f]{7,64}", commit) is not None
    if not known or not git.has_commit(root, commit):
        raise ReproError(
            f"{refuse} its commit {commit} is not in the git repository at {root.resolve()} "
            "(fetch it, or reproduce from a clone that has it)"
        )
    dirty_paths = _dirty_paths(tags.get("reproml.git_dirty_paths"))
    has_params_json = _has_params_artifact(run_id)
    if tags["reproml.git_dirty"] == "true":
        uncommitted = [p for p in dirty_paths if not _recoverable(p)] if dirty_paths else ["(not recorded)"]
        if uncommitted:
            raise ReproError(
                f"{refuse} it was trained from a working tree with uncommitted changes to "
                f"{', '.join(uncommitted)}; they were never committed, so what ran is unknown"
            )
        if PARAMS_FILE in dirty_paths and not has_params_json:
            raise ReproError(
                f"{refuse} params.yaml had uncommitted changes and the run logged no params.json, "
                "so its exact params are unknown"
            )
    return Recorded(
        run_id=run_id,
        commit=commit,
        tags=tags,
        params=dict(run.params),
        metrics=dict(run.metrics),
        data=data,
        dirty_paths=dirty_paths,
        has_params_json=has_params_json,
    )


def _recoverable(dirty_path: str) -> bool:
    """An uncommitted change a rebuild does not need: params.yaml, when the run logged its exact
    params. (`.gitignore` edits never count as dirty: see lineage.git_state.)"""
    return dirty_path == PARAMS_FILE


def _dirty_paths(recorded: str | None) -> list[str]:
    try:
        paths = json.loads(recorded or "[]")
    except ValueError:
        return [f"(unreadable: {recorded!r})"]
    return [str(p) for p in paths] if isinstance(paths, list) else [str(paths)]


def _has_params_artifact(run_id: str) -> bool:
    from reproml.stores.mlflow import runs

    return runs.PARAMS_ARTIFACT in runs.artifact_paths(run_id)


def download_params(run_id: str, into: Path) -> dict[str, Any]:
    """The run's params.json (params.yaml as it trained with it), downloaded under `into`."""
    from reproml.stores.mlflow import runs

    local = runs.download_artifact(run_id, runs.PARAMS_ARTIFACT, into)
    loaded: dict[str, Any] = json.loads(local.read_text())
    return loaded
