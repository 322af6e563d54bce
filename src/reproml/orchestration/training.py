"""The training flow's steps: (new labelled data ->) new DVC data version -> `dvc repro` ->
challenger -> promotion gate.

Everything happens in a git worktree of `retrain.branch` (`.reproml/worktrees/`), which shares
the project's DVC cache and remote and, through `REPROML_WORKSPACE`, its MLflow store, registry
audit trail and Optuna studies. The user's branch and working tree are never touched.

DVC decides what is stale and in which order: `stage_order` reads DVC's own graph, and each stage
runs as `dvc repro -s <stage>` (skipped by DVC when nothing it depends on changed). `flows/training.py`
makes each of these steps a Prefect task and holds the workspace's slot and training lock around them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from reproml.orchestration.commands import logger, run
from reproml.orchestration.worktree import commit, tool
from reproml.stores import git
from reproml.stores.dvc import lock_versions, pipeline_stages, tracked_md5

if TYPE_CHECKING:
    from reproml.registry import DecisionRecord, Registered
    from reproml.retrain import AddedBatch, Promotion, RefitOutcome, TrainingSummary

LABELLED_DVC = "data/raw/labelled.dvc"
# what `dvc repro` and `dvc add` change, committed after each step (never the user's other files)
PIPELINE_FILES = ["dvc.lock", "metrics", "params.yaml", LABELLED_DVC, "data/raw/.gitignore"]


def stage_env(root: Path) -> dict[str, str]:
    """Stages in the worktree keep the workspace's state and find this environment's tools."""
    from reproml.paths import WORKSPACE_ENV

    return {
        WORKSPACE_ENV: str(root),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
    }


def workspace_env(root: Path) -> contextlib.AbstractContextManager[None]:
    """In-process library calls (promotion) see the workspace the way the stages do."""
    from reproml.env import overridden
    from reproml.paths import WORKSPACE_ENV

    return overridden(WORKSPACE_ENV, str(root))


# The team's one-retrain-at-a-time limit (`reproml deploy` ensures it, limit 1): when the Prefect
# server has it, every training flow takes it, wherever it runs (a pool's worker, `reproml retrain`).
TEAM_LIMIT = "reproml-retrain"


def limit_name(root: Path) -> str:
    """The name of the workspace's one-training-at-a-time concurrency limit on the Prefect server."""
    return "reproml-training-" + hashlib.sha1(str(root).encode()).hexdigest()[:10]


def slot_name(root: Path, team: bool) -> str:
    """The concurrency limit a training flow takes: the team's (`TEAM_LIMIT`) when the server has
    it, since on workers each flow run has its own clone and so its own workspace, and one limit
    per workspace would order nothing; else the workspace's own (`limit_name`)."""
    return TEAM_LIMIT if team else limit_name(root)


def champion_values(root: Path, model_name: str, model: str) -> dict[str, Any]:
    """The champion's own `train.<model>` values (tuned ones included), from its MLflow run."""
    from reproml import registry, retrain
    from reproml.stages.common import load
    from reproml.stores.mlflow import connection, runs

    with workspace_env(root):
        connection.setup(root, load(root).mlflow.experiment_name)
        version = registry.alias_version(model_name, registry.CHAMPION)
        if version is None or version.run_id is None:
            return {}
        return retrain.champion_values(runs.get_run(version.run_id).params, model)


def champion_classes(root: Path, params: Any) -> tuple[list[Any] | None, str]:
    """The champion's class order (its run's `reproml.classes` tag) and how to name it; without a
    champion, the classes ingest recorded in data/schema.json."""
    from reproml import paths, registry
    from reproml.io import read_json
    from reproml.stores.mlflow import connection, runs

    with workspace_env(root):
        connection.setup(root, params.mlflow.experiment_name)
        version = registry.alias_version(params.register_.model_name, registry.CHAMPION)
        if version is not None and version.run_id is not None:
            tag = runs.get_run(version.run_id).tags.get("reproml.classes")
            if tag:
                return list(json.loads(tag)), f"champion v{version.version}"
    schema = root / paths.SCHEMA
    classes = read_json(schema).get("classes") if schema.is_file() else None
    return (list(classes) if classes else None), "the champion"


def check_batch(root: Path, labelled: Path) -> str | None:
    """Why the labelled batch cannot make a challenger the gate can judge (multiclass: a class
    without rows under a metric that needs every class; see `reproml.retrain`), or None."""
    import pandas as pd
    import pyarrow.parquet as pq

    from reproml import metrics, retrain
    from reproml.stages.common import load

    params = load(root)
    if params.data.task != "multiclass" or not labelled.is_file():
        return None  # a missing file or column is add_batch's to report
    spec = metrics.metric_spec(params.promote.metric, "multiclass")
    target = params.data.target
    if not metrics.METRICS[spec.name].every_class or target not in pq.read_schema(labelled).names:
        return None
    classes, champion = champion_classes(root, params)
    if not classes:
        return None
    absent = retrain.missing_classes(pd.read_parquet(labelled, columns=[target])[target], classes)
    if not absent:
        return None
    return retrain.class_refusal(labelled.name, absent, classes, spec.name, champion)


def add_batch(root: Path, tree: Path, labelled: Path) -> AddedBatch:
    """The batch joins `data/raw/labelled/` as a new DVC data version; the window slides onto it;
    both are committed on the retrain branch so the train run's lineage names that commit."""
    import pandas as pd

    from reproml import paths, retrain
    from reproml.io import write_text
    from reproml.stages.common import load

    params = load(tree)
    if not labelled.is_file():
        raise FileNotFoundError(f"labelled batch {labelled} not found")
    time_column = params.data.time_column
    if time_column is None:
        raise ValueError("data.time_column is null: a retrain slides a time window")
    start, end = retrain.batch_span(pd.read_parquet(labelled, columns=[time_column])[time_column])
    window = retrain.slide(retrain.window_of(params), start, end)
    folder = tree / paths.LABELLED_DATA
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / labelled.name
    shutil.copyfile(labelled, target)
    trials = params.retrain.tune_trials
    fixed = champion_values(root, params.register_.model_name, params.train.model) if trials == 0 else None
    text, _ = retrain.edit_params((tree / "params.yaml").read_text(), window, trials, fixed)
    write_text(tree / "params.yaml", text)
    run([tool("dvc"), "add", "--quiet", str(paths.LABELLED_DATA)], tree, env=stage_env(root))
    sha = commit(
        tree,
        f"reproml retrain: add labelled batch {labelled.name}; window {window.to_dict()}",
        PIPELINE_FILES,
    )
    md5 = tracked_md5(tree / LABELLED_DVC)
    return {"file": str(target.relative_to(tree)), "md5": md5, "window": window.to_dict(), "commit": sha}


def head(tree: Path) -> str:
    found = git.head(tree)
    if found is None:
        raise git.GitError(f"{tree} has no commit checked out (`git rev-parse HEAD` failed)")
    return found


def rollback(tree: Path, commit: str) -> None:
    """The worktree back at `commit`, labelled data included: a failed retrain leaves no data
    version behind for the next one to trip over."""
    from reproml import paths

    logger().warning("retrain failed: resetting %s to %s", tree, commit[:10])
    git.reset_hard(tree, commit)
    if (tree / LABELLED_DVC).is_file():
        run([tool("dvc"), "checkout", "--force", "--quiet", LABELLED_DVC], tree, quiet=True)
    else:
        shutil.rmtree(tree / paths.LABELLED_DATA, ignore_errors=True)


SHARED_REMOTE = "origin"  # the repository a worker cloned: where a shared retrain branch lives


def pull_branch(root: Path, branch: str) -> bool:
    """Before a retrain in a worker's throw-away clone: the retrain branch as the repository has it
    (its earlier data versions), so this retrain continues it; False when there is none yet."""
    found = git.fetch_branch(root, SHARED_REMOTE, branch)
    logger().info("retrain branch %s %s", branch, f"from {SHARED_REMOTE}" if found else "is new")
    return found


def publish_branch(root: Path, branch: str) -> None:
    """After the retrain's commits: the retrain branch pushed to the repository, so the commits the
    MLflow runs name (their lineage) outlive the worker's clone."""
    git.push_branch(root, SHARED_REMOTE, branch)
    logger().info("retrain branch %s pushed to %s", branch, SHARED_REMOTE)


# --- a flow run run again (its worker was lost): resume after the last step that took effect ---
#
# Prefect reruns a lost flow run as the same flow run (same id) on another worker, in a fresh clone.
# What the lost attempt left where every worker sees it, keyed by that id: the dvc.lock commit on
# the shared retrain branch (a `Reproml-Flow-Run: <id>` trailer), the challenger version's tag
# FLOW_RUN_TAG with the gate's decision tags next to it, and a refit version naming its parent.
FLOW_RUN_TRAILER = "Reproml-Flow-Run"
FLOW_RUN_TAG = "reproml.flow_run"  # registry.FLOW_RUN_TAG (the registry is imported lazily here)
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")


def _checked(flow_run_id: str) -> str:
    if not _RUN_ID.fullmatch(flow_run_id):
        raise ValueError(f"flow run id {flow_run_id!r}: letters, digits and dashes only")
    return flow_run_id


def lock_message(reason: str, flow_run_id: str | None = None) -> str:
    """The dvc.lock commit's message; with the flow run's id as a trailer when there is one."""
    message = f"reproml retrain ({reason}): dvc.lock after dvc repro"
    if flow_run_id:
        message += f"\n\n{FLOW_RUN_TRAILER}: {_checked(flow_run_id)}"
    return message


def earlier_commit(tree: Path, flow_run_id: str | None) -> str | None:
    """The commit on the checked-out branch whose trailer names this flow run: an earlier attempt
    of it committed (and, shared, published) its dvc.lock; None when none did."""
    if not flow_run_id:
        return None
    key = _checked(flow_run_id)
    found = git.output(
        tree, "log", f"--format=%H %(trailers:key={FLOW_RUN_TRAILER},valueonly,separator=%x2C)", "HEAD"
    )
    for line in (found or "").splitlines():
        sha, _, ids = line.partition(" ")
        if key in (i.strip() for i in ids.split(",")):
            return sha
    return None


def restore(tree: Path, env: dict[str, str]) -> None:
    """The outputs dvc.lock names, from the DVC remote the earlier attempt pushed them to."""
    run([tool("dvc"), "pull", "--quiet"], tree, env=env)


def earlier_decision(root: Path, tree: Path, flow_run_id: str | None) -> DecisionRecord | None:
    """The gate's decision on this worktree's challenger if this flow run already made it, else
    None (and the gate decides now). The version is tagged FLOW_RUN_TAG = the id before the gate
    decides; the decision is found on the version's decision tags next to that tag, or, when the
    lost attempt died after writing the audit record but before tagging, in the audit trail
    (`registry.recorded_decision`, which tags the version as that attempt would have): one
    decision, and one audit entry, per (version, flow run)."""
    from reproml import registry
    from reproml.stages.common import load
    from reproml.stages.register import REGISTERED
    from reproml.stores.mlflow import connection, versions

    if not flow_run_id:
        return None
    key = _checked(flow_run_id)
    with workspace_env(root):
        params = load(tree)
        connection.setup(tree, params.mlflow.experiment_name)
        name = params.register_.model_name
        ours = versions.get_version(name, json.loads((tree / REGISTERED).read_text())["version"])
        if ours.tags.get(FLOW_RUN_TAG) == key and "reproml.decision" in ours.tags:
            return {
                "action": ours.tags["reproml.decision"],
                "reason": ours.tags.get("reproml.decision_reason", ""),
                "challenger": registry._describe(ours),
                "champion": None,
                "record": ours.tags.get("reproml.decision_record", ""),
            }
        if ours.tags.get(FLOW_RUN_TAG) != key:
            versions.set_version_tag(name, ours.version, FLOW_RUN_TAG, key)
        return registry.recorded_decision(tree, name, ours.number, key)


def earlier_refit(
    root: Path, tree: Path, decision: DecisionRecord, flow_run_id: str | None = None
) -> RefitOutcome | None:
    """The refit of the decision's challenger if one was registered and made the champion: its
    version carries its parent and its `refit` decision, or (its attempt lost before tagging it)
    the audit trail holds that decision, made by this flow run (`registry.recorded_decision`,
    which tags it now). A refit this flow run registered but never decided (lost in between) is
    made the champion now (`stages.refit.decide_registered_refit`), not refit again. Else None."""
    from reproml import registry
    from reproml.stages.common import load
    from reproml.stages.refit import decide_registered_refit
    from reproml.stores.mlflow import connection, versions

    parent = (decision.get("challenger") or {}).get("version")
    if parent is None:
        return None
    with workspace_env(root):
        params = load(tree)
        connection.setup(tree, params.mlflow.experiment_name)
        name = params.register_.model_name
        for version in versions.all_versions(name):
            of = json.loads(version.tags.get("reproml.refit_of") or "{}")
            if of.get("version") != int(parent):
                continue
            tags: dict[str, Any] = dict(version.tags)
            if not tags.get("reproml.decision") and flow_run_id:
                key = _checked(flow_run_id)
                found = registry.recorded_decision(tree, name, version.number, key)
                if found is None:
                    decided = decide_registered_refit(tree, version.number, key)
                    if decided is not None:
                        return decided
                    continue
                tags |= {
                    "reproml.decision": found["action"],
                    "reproml.decision_reason": found.get("reason"),
                    "reproml.decision_record": found.get("record"),
                }
            if tags.get("reproml.decision"):
                return {
                    "version": version.number,
                    "run_id": version.run_id or "",
                    "refit_of": of,
                    "learned": json.loads(tags.get("reproml.learned") or "{}"),
                    "rounds": None,
                    "fit_seconds": 0.0,
                    "decision": {
                        "action": tags["reproml.decision"],
                        "reason": tags.get("reproml.decision_reason"),
                        "record": tags.get("reproml.decision_record"),
                    },
                }
    return None


def stage_order(tree: Path) -> list[str]:
    """The pipeline's stages, upstream first, as DVC's own graph orders them."""
    return pipeline_stages(tree)


def run_stage(tree: Path, name: str, env: dict[str, str]) -> str:
    """`dvc repro` of one stage: `ran`, or `skipped` when DVC found nothing it depends on changed."""
    out = run([tool("dvc"), "repro", "--single-item", name], tree, env=env)
    return "skipped" if "didn't change, skipping" in out else "ran"


def push(tree: Path, env: dict[str, str]) -> None:
    run([tool("dvc"), "push", "--quiet"], tree, env=env)


def commit_lock(tree: Path, message: str) -> str | None:
    """Commit what `dvc repro` changed on the retrain branch; None if nothing did."""
    return commit(tree, message, PIPELINE_FILES)


def promote(root: Path, tree: Path, flow_run_id: str | None = None) -> DecisionRecord:
    """The promotion gate over the worktree's challenger, with the workspace's registry. The flow
    run's id (shared retrains) goes into the audit record, where a rerun finds it
    (`earlier_decision`), and so does this step when its task is retried after a failure that
    followed the record (tagging the version): the recorded decision, not a second judgement."""
    from reproml import registry
    from reproml.stages.common import load
    from reproml.stages.register import REGISTERED, run_promote
    from reproml.stores.mlflow import connection, versions

    key = None if flow_run_id is None else _checked(flow_run_id)
    with workspace_env(root):
        # the gate judges this worktree's model: when DVC restored `register` from its run cache
        # (the same data and params as an earlier retrain), no version was registered now and the
        # `challenger` alias may name another retrain's model; models/registered.json names ours
        params = load(tree)
        connection.setup(tree, params.mlflow.experiment_name)
        name = params.register_.model_name
        ours = json.loads((tree / REGISTERED).read_text())["version"]
        recorded = None if key is None else registry.recorded_decision(tree, name, int(ours), key)
        if recorded is not None:
            return recorded
        current = registry.alias_version(name, registry.CHALLENGER)
        if current is None or int(current.version) != int(ours):
            versions.set_alias(name, registry.CHALLENGER, ours)
        return run_promote(tree, flow_run=key)


def refit(
    root: Path, tree: Path, decision: DecisionRecord, flow_run_id: str | None = None
) -> RefitOutcome | None:
    """After the gate promoted the challenger: the same model refit on the whole window, the
    newest labelled batch included, becomes the champion (`reproml.stages.refit`); None when the
    gate did not promote or `retrain.refit` is off. The flow run's id goes into the refit's record
    (`earlier_refit`)."""
    from reproml.stages.common import load
    from reproml.stages.refit import run_refit

    challenger = decision.get("challenger") or {}
    if decision.get("action") != "promote" or challenger.get("version") is None:
        return None
    if not load(tree).retrain.refit or challenger.get("refit_of"):
        return None  # off, or the promoted version already is a refit: nothing more to learn
    with workspace_env(root):
        flow_run = None if flow_run_id is None else _checked(flow_run_id)
        return run_refit(tree, version=int(challenger["version"]), flow_run=flow_run)


def data_versions(tree: Path) -> dict[str, str]:
    """Every output and dependency md5 dvc.lock now records, by path."""
    return lock_versions(tree)


def refusal(branch: str, reason: str, why: str) -> TrainingSummary:
    """The training flow's summary when it refused to start: the shape of a finished one, with the
    outcome `refused` where a gate decision would be."""
    return {
        "branch": branch,
        "worktree": None,
        "reason": reason,
        "added": None,
        "stages": {},
        "commit": None,
        "data_versions": {},
        "challenger": None,
        "promotion": {
            "action": "refused",
            "reason": why,
        },
        "refit": None,
    }


def summary(
    branch: str,
    tree: Path,
    reason: str,
    added: AddedBatch | None,
    stages: dict[str, str],
    lock_commit: str | None,
    decision: DecisionRecord,
    refitted: RefitOutcome | None = None,
) -> TrainingSummary:
    """The training flow's result: what was added, which stages ran, the data versions dvc.lock
    now names, the challenger, the gate's decision and the refit that became the champion."""
    from reproml.stages.register import REGISTERED

    return {
        "branch": branch,
        "worktree": str(tree),
        "reason": reason,
        "added": added,
        "stages": stages,
        "commit": lock_commit,
        "data_versions": data_versions(tree),
        "challenger": cast("Registered", json.loads((tree / REGISTERED).read_text())),
        "promotion": _promotion(decision),
        "refit": refitted,
    }


def _promotion(decision: DecisionRecord) -> Promotion:
    """The gate's decision as the summary keeps it: action, reason, the two versions, the record
    (a key the decision lacks is None, as before)."""
    return {
        "action": decision.get("action"),
        "reason": decision.get("reason"),
        "challenger": decision.get("challenger"),
        "champion": decision.get("champion"),
        "record": decision.get("record"),
    }
