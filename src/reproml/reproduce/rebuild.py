"""`reproml reproduce`: rebuild a recorded run from its lineage and compare the two.

Reproducing a run rebuilds the model from exactly its lineage (`record`): the commit, checked out
in a throw-away git worktree; the data versions, read verified from the DVC cache or fetched from
the project's DVC remote (`reproml.stores.dvc`); the run's own params (its `params.json`) and so
its seed. The commit's own `train` and `evaluate` run in that worktree (`workspace`), and what
the rebuild recorded is compared with what the run recorded (`checks`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from reproml import lineage
from reproml.reproduce.checks import (
    Check,
    Reproduction,
    compare_code,
    compare_libraries,
    compare_metrics,
    compare_params,
    compare_predictions,
    compare_uv_lock,
    flat,
    with_environment_notes,
)
from reproml.reproduce.record import PARAMS_FILE, PREDICTIONS_TAG, Recorded, check_lineage, load_run
from reproml.reproduce.workspace import (
    place_data,
    place_params,
    rebuilt_run,
    remove_work,
    run_stages,
    work_dir,
)
from reproml.stores import git
from reproml.stores.dvc import DvcStore, Progress, verified_objects

if TYPE_CHECKING:
    from reproml.stores.mlflow.runs import Run


def _quiet(message: str) -> None:
    return None


def reproduce(root: Path, ref: str, keep: bool = False, progress: Progress = _quiet) -> Reproduction:
    """Rebuild run `ref` from its recorded lineage and compare; a ReproError when it cannot be.

    Everything is done under `.reproml/reproduce/<run id>/` (git-ignored) and removed afterwards
    unless `keep`; the project's working tree, params, data and MLflow store are left as they are
    (fetched data lands in the project's DVC cache, as `dvc fetch` would put it).
    """
    root = root.resolve()
    progress("reading the run's lineage")
    recorded = check_lineage(root, load_run(root, ref))
    work = work_dir(root, recorded.run_id)
    remove_work(root, work)  # a previous reproduction of this run that was interrupted or kept
    try:
        result = _rebuild_and_compare(root, recorded, work, progress)
    except BaseException:
        remove_work(root, work)
        raise
    if keep:
        return with_environment_notes(dataclasses.replace(result, kept=work / "wt"))
    remove_work(root, work)
    return with_environment_notes(result)


def _rebuild_and_compare(root: Path, recorded: Recorded, work: Path, progress: Progress) -> Reproduction:
    """Fetch the data, check out the commit, place params and data, run the stages, compare."""
    worktree = work / "wt"
    refuse = f"run {recorded.run_id} cannot be rebuilt:"
    with DvcStore.open(root) as store:
        objects = verified_objects(store, recorded.data, progress, refuse)
        progress(f"checking out {recorded.commit[:7]} in a worktree")
        git.add_worktree(root, worktree, recorded.commit)
        notes = place_params(recorded, worktree, work)
        data_checks = place_data(store, recorded.data, objects, worktree)
    failure = run_stages(worktree, progress)
    rebuilt = None if failure else rebuilt_run(worktree)
    if failure is None and rebuilt is None:
        failure = "the rebuild logged no MLflow run in the worktree's store"
    progress("comparing")
    if rebuilt is None:
        checks = compare_unbuilt(recorded, worktree, root)
    else:
        checks = compare_rebuild(recorded, rebuilt, worktree, root)
    return Reproduction(
        run_id=recorded.run_id,
        commit=recorded.commit,
        checks=(*data_checks, *checks),
        notes=tuple(notes),
        failure=failure,
    )


def compare_rebuild(recorded: Recorded, rebuilt: Run, worktree: Path, root: Path) -> list[Check]:
    """Recorded against rebuilt: what the rebuild logged, measured by the commit's own code."""
    tags, params, metrics = dict(rebuilt.tags), dict(rebuilt.params), dict(rebuilt.metrics)
    libraries = json.loads(tags["reproml.libraries"]) if tags.get("reproml.libraries") else None
    return [
        compare_code(recorded, tags.get("reproml.code_sha256") or lineage.code_hash(worktree)),
        *compare_params(
            recorded, tags.get("reproml.params_sha256", ""), tags.get("reproml.seed", ""), params
        ),
        compare_libraries(recorded.tags.get("reproml.libraries"), libraries or lineage.library_versions()),
        compare_uv_lock(recorded.tags.get("reproml.uv_lock_sha256"), lineage.sha256_file(root / "uv.lock")),
        *compare_metrics(recorded.metrics, metrics),
        compare_predictions(recorded.tags[PREDICTIONS_TAG], tags.get(PREDICTIONS_TAG, "")),
    ]


def compare_unbuilt(recorded: Recorded, worktree: Path, root: Path) -> list[Check]:
    """What can be compared when the rebuild failed: code and params, measured by this code."""
    try:
        params = flat(yaml.safe_load((worktree / PARAMS_FILE).read_text()))
    except (OSError, yaml.YAMLError):
        params = {}
    return [
        compare_code(recorded, lineage.code_hash(worktree)),
        *compare_params(recorded, lineage.params_hash(params), params.get("seed", ""), params),
        compare_libraries(recorded.tags.get("reproml.libraries"), lineage.library_versions()),
        compare_uv_lock(recorded.tags.get("reproml.uv_lock_sha256"), lineage.sha256_file(root / "uv.lock")),
    ]
