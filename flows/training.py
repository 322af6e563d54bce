"""The training flow: (new labelled data ->) new DVC data version -> `dvc repro` -> challenger ->
promotion gate, on the retrain branch's worktree. The steps are `reproml.orchestration.training`;
this module makes them Prefect tasks (retries for what a moment fixes, one task per DVC stage) and
holds the retrain slot (a Prefect global concurrency limit: flows/slot.py) and the workspace's
training lock around them. On a work pool a run lost with its worker is run again as the same flow
run, and resumes after what the lost attempt published (`steps.earlier_commit` and the two after it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows.common import retry_transient
from flows.slot import retrain_slot
from reproml.orchestration import training as steps
from reproml.orchestration.worktree import open_worktree
from reproml.retrain import TrainingSummary

BACKOFF_S = [5.0, 30.0]  # two more tries for what a moment fixes (commands.TRANSIENT_MARKERS)
# A training flow killed with SIGKILL frees the slot after this long. Prefect renews it every
# 0.75 x LEASE_S, so a renewal late by more than a quarter of it loses the slot and Prefect ends the
# flow: at 120 s, `make run` on 2 cores busy with other jobs lost a retrain that way (renewal
# answered 410 Gone). 300 s is Prefect's own default.
LEASE_S = 300.0
RETRIED: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": BACKOFF_S,
    "retry_condition_fn": retry_transient,
}


@task(name="worktree", **RETRIED)
def worktree(root: Path, branch: str, reset: bool = False) -> Path:
    return open_worktree(root, branch, reset=reset)


check_batch = task(name="check_batch")(steps.check_batch)
add_batch = task(name="add_batch")(steps.add_batch)
stage = task(name="stage", **RETRIED)(steps.run_stage)
push = task(name="push", **RETRIED)(steps.push)
commit_lock = task(name="commit")(steps.commit_lock)
promote = task(name="promote", **RETRIED)(steps.promote)
refit = task(name="refit")(steps.refit)  # not retried: it registers a version
pull_branch = task(name="pull_branch", **RETRIED)(steps.pull_branch)
restore = task(name="restore", **RETRIED)(steps.restore)
publish_branch = task(name="publish_branch", **RETRIED)(steps.publish_branch)


@flow(name="training", log_prints=True)
def training(
    root: str = ".",
    labelled: str | None = None,
    reason: str = "on demand",
    branch: str | None = None,
    shared: bool = False,
) -> TrainingSummary:
    """Retrain on the retrain branch (`branch`, default `retrain.branch`): optionally add
    `labelled` (a Parquet batch of labelled production rows under data/ or monitoring/) as a new
    data version, run the DVC pipeline, push, commit, gate. Both paths are checked before anything
    else (`reproml.paths`): the batch becomes a pushed data version. `shared` (set by deployments
    on a work pool, whose workers run in throw-away clones): the retrain branch is fetched from
    the repository's `origin` first and pushed back after its commits."""
    from reproml.paths import confined, project_root
    from reproml.stages.common import load
    from reproml.training_lock import training_lock

    log = get_run_logger()
    home = project_root(root, "root")
    source = None if labelled is None else confined(labelled, home, "labelled")
    params = load(home)
    target = branch or params.retrain.branch
    refused = None if source is None else check_batch(home, source)
    if refused is not None:  # before the slot, the lock and the worktree: nothing is touched
        log.warning("retrain refused: %s", refused)
        return steps.refusal(target, reason, refused)
    # Prefect's limit orders training flows (the team's across workers: flows/slot.py); the
    # workspace's training lock (held throughout, its token inherited by the stages' `dvc repro`)
    # keeps out `dvc repro` and `reproml train/promote`.
    run_id = str(flow_run.id)
    held_by = f"training flow run {flow_run.name} ({run_id})"
    with (
        retrain_slot(home, log, LEASE_S),
        training_lock(home, command=held_by, notify=log.warning),
    ):
        if shared:
            pull_branch(home, target)
        tree = worktree(home, target)
        env = steps.stage_env(home)
        added = None
        stages: dict[str, str] = {}
        # run again after its worker was lost (the same flow run, a fresh clone): what the lost
        # attempt published is kept, the steps before it are not done twice
        lock_commit = steps.earlier_commit(tree, run_id) if shared else None
        if lock_commit is not None:
            log.warning(
                "flow run %s published %s before: resuming after it (no repro, push or commit again)",
                run_id, lock_commit[:10],
            )  # fmt: skip
            restore(tree, env)
        else:
            start = steps.head(tree)
            try:
                if source is not None:
                    added = add_batch(home, tree, source)
                for stage_name in steps.stage_order(tree):
                    run_stage = stage.with_options(name=stage_name, task_run_name=stage_name)
                    stages[stage_name] = run_stage(tree, stage_name, env)
                push(tree, env)
                lock_commit = commit_lock(tree, steps.lock_message(reason, run_id if shared else None))
                if shared:
                    publish_branch(home, target)
            except BaseException:  # a failure, SIGTERM or Ctrl-C: the branch goes back to where it was
                steps.rollback(tree, start)
                raise
        decision = steps.earlier_decision(home, tree, run_id) if shared else None
        if decision is not None:
            log.warning("flow run %s: the gate decided before (%s): not again", run_id, decision["action"])
        else:
            decision = promote(home, tree, run_id if shared else None)
        refitted = steps.earlier_refit(home, tree, decision, run_id) if shared else None
        if refitted is not None:
            log.warning("flow run %s: v%s, its refit, is the champion already", run_id, refitted["version"])
        else:
            refitted = refit(home, tree, decision, run_id if shared else None)
    log.info("promotion: %s (%s)", decision.get("action"), decision.get("reason"))
    if refitted is not None:
        log.info("refit: v%s is the champion (%s)", refitted["version"], refitted["decision"]["reason"])
    return steps.summary(target, tree, reason, added, stages, lock_commit, decision, refitted)
