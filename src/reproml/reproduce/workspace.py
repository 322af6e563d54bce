"""The rebuild's workspace: a throw-away git worktree of the run's commit, its params and data
placed in it, the commit's own `train` and `evaluate` run there, and the run they logged read back.

Everything lies under `.reproml/reproduce/<run id>/` (git-ignored): the worktree in `wt/`, the
run's downloaded params.json in `record/`. The stages run with PYTHONPATH=<worktree>/src against
an MLflow store inside the worktree, so the project's own store is only read.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from reproml.env import environ_snapshot
from reproml.io import file_md5
from reproml.reproduce.checks import Check, diff_keys, flat
from reproml.reproduce.record import PARAMS_FILE, Recorded, download_params
from reproml.stores import git
from reproml.stores.dvc import CacheObject, DvcStore, Progress, verified_objects

WORK_DIR = Path(".reproml/reproduce")
# MLflow settings that would send the rebuild's run into the project's store (or another one).
MLFLOW_REDIRECTS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_RUN_ID",
)

if TYPE_CHECKING:
    from reproml.stores.mlflow.runs import Run


def work_dir(root: Path, run_id: str) -> Path:
    """Where the reproduction of `run_id` works: `<root>/.reproml/reproduce/<run id>`."""
    return root / WORK_DIR / run_id


def remove_work(root: Path, work: Path) -> None:
    """Remove the worktree (and git's record of it) and everything else under `work`."""
    worktree = work / "wt"
    if worktree.exists():
        git.remove_worktree(root, worktree)
    shutil.rmtree(work, ignore_errors=True)
    git.prune_worktrees(root)
    with contextlib.suppress(OSError):
        work.parent.rmdir()  # .reproml/reproduce, when no other reproduction is under way


def place_params(recorded: Recorded, worktree: Path, work: Path) -> list[str]:
    """Write the run's exact params into the worktree (from params.json when it logged one).

    Returns notes: when the run's params are not the commit's params.yaml, it was an experiment
    (`dvc exp run -S`, or an edit before `dvc repro`) and is rebuilt with the run's own params.
    """
    if not recorded.has_params_json:
        return []
    logged = download_params(recorded.run_id, work / "record")
    target = worktree / PARAMS_FILE
    committed = yaml.safe_load(target.read_text()) if target.is_file() else {}
    target.write_text(yaml.safe_dump(logged, sort_keys=False))
    changed = diff_keys(flat(logged), flat(committed))
    if not changed:
        return []
    shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
    return [
        f"the run's params differ from params.yaml at {recorded.commit[:7]} in {shown} "
        "(an experiment, as `dvc exp run -S` makes); rebuilt with the run's own params.json"
    ]


def place_data(
    store: DvcStore, data: dict[str, str], objects: dict[str, CacheObject], worktree: Path
) -> list[Check]:
    """Copy each recorded version into the worktree and check the copy's md5 against the record.

    Each object is verified again as it is read (a concurrent `dvc gc` may have removed it since,
    and then it is fetched again); the copy is hashed too, so what the rebuild reads is the record.
    """
    checks = []
    for path, md5 in data.items():
        source = verified_objects(store, {path: md5})[path]
        target = worktree / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.path, target)
        got = file_md5(target)
        detail = objects[path].source if got == md5 else f"{source.path} changed while it was copied"
        checks.append(Check("data", path, md5, got, got == md5, detail))
    return checks


def _stage_env(worktree: Path) -> dict[str, str]:
    env = {k: v for k, v in environ_snapshot().items() if k not in MLFLOW_REDIRECTS}
    env["PYTHONPATH"] = str(worktree / "src")
    return env


STAGES = ("train", "evaluate")
# Runs the commit's CLI whether or not its cli.py has a `__main__` guard.
STAGE_LAUNCHER = "import sys; sys.argv[0] = 'reproml'; from reproml.cli import app; app()"


def run_stages(worktree: Path, progress: Progress, stages: Iterable[str] = STAGES) -> str | None:
    """Run the commit's own stages in the worktree; None, or what failed with its output's tail."""
    env = _stage_env(worktree)
    for stage in stages:
        progress(f"rebuilding: {stage}")
        done = subprocess.run(
            [sys.executable, "-c", STAGE_LAUNCHER, stage],
            cwd=worktree,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip()[-2000:]
            return f"`reproml {stage}` of commit's code exited {done.returncode}:\n{tail}"
    return None


def rebuilt_run(worktree: Path) -> Run | None:
    """The one run the rebuild logged into the worktree's own MLflow store, if any (read through
    a store of its own, closed afterwards: see `runs.newest_run_in`)."""
    from reproml.stores.mlflow import runs

    database = worktree / "mlflow.db"
    if not database.is_file():
        return None
    return runs.newest_run_in(database, worktree / "mlartifacts")
