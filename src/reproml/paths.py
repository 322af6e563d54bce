"""Where each stage reads and writes, relative to the project root (mirrors dvc.yaml)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from reproml.errors import ReproError

INGESTED = Path("data/ingested.parquet")
SCHEMA = Path("data/schema.json")
PREPARED = Path("data/prepared")
MODEL = Path("models/model.joblib")
HISTORY = Path("models/history.json")
BEST_PARAMS = Path("models/best_params.json")  # written by `tune`, read by `train`
METRICS = Path("metrics")
PLOTS = Path("plots")
PREDICTIONS = Path("predictions/test.parquet")
# Labelled production batches the training flow added: a DVC-tracked folder `ingest` appends.
LABELLED_DATA = Path("data/raw/labelled")
# Set by the training flow when it runs the pipeline in a git worktree of the project, so MLflow,
# the registry's audit trail and the Optuna studies stay the workspace's, not the worktree's.
WORKSPACE_ENV = "REPROML_WORKSPACE"


def split_file(name: str) -> Path:
    return PREPARED / f"{name}.parquet"


def workspace(root: Path) -> Path:
    """Where the project's local state lives (mlflow.db, mlartifacts/, registry/, optuna/):
    `REPROML_WORKSPACE` when set, else the project root itself."""
    value = os.environ.get(WORKSPACE_ENV)
    return Path(value) if value else root


# --- path parameters from outside (flow parameters, CLI options) ---------------------------------

# Where a batch or labelled file handed to `reproml monitor --batch`, `reproml retrain --labelled`
# or the flows' `batch` / `labelled` parameters may live: `data/` (the project's data, where new
# batches are put) and `monitoring/` (the labelled rows the monitoring flow keeps and hands to the
# training flow). What is read is copied into monitoring outputs, reports and new DVC data versions
# (pushed to the remote), so a path elsewhere would let whoever can start a flow run (the Prefect
# API has no authentication) copy any file this user can read into them.
DATA_DIRS = (Path("data"), Path("monitoring"))
PROJECT_FILES = ("params.yaml", "dvc.yaml")
# DVC's site cache inside the clone (`make install` points `core.site_cache_dir` here).
SITE_CACHE = Path(".dvc/site_cache")


class PathError(ReproError):
    """A path parameter outside the directories it may name, or a root that is not this project."""


def _real(path: Path) -> Path:
    """`path` with `..`, `.` and every symlink resolved (what the kernel would open)."""
    return Path(os.path.realpath(path))


def confined(value: str | Path, root: Path, param: str, allowed: tuple[Path, ...] = DATA_DIRS) -> Path:
    """`value` (absolute, or relative to `root`) resolved, if it lies inside one of `root`'s
    `allowed` folders; else a `PathError` naming the parameter, the path and those folders.

    The candidate is resolved before the check, so `data/../../x`, `/etc/x` and a symlink inside
    `data/` that points elsewhere are all refused. The allowed folders are resolved too: a `data/`
    the owner symlinked to a bigger disk stays usable (the project tree itself is trusted).
    """
    base = _real(root)
    target = _real(base / value)
    folders = [_real(base / folder) for folder in allowed]
    if any(target.is_relative_to(folder) for folder in folders):
        return target
    shown = ", ".join(f"{folder}/" for folder in folders)
    raise PathError(
        f"{param}={str(value)!r} resolves to {target}, which is outside the directories it may name "
        f"({shown}); copy the file into one of them and pass that path"
    )


def relative(path: Path, root: Path) -> str:
    """`path` relative to the resolved `root` when inside it (as records show it), else absolute."""
    base = _real(root)
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def project_root(value: str | Path, param: str = "root") -> Path:
    """The resolved `value` if it is the project this process works for; else a `PathError`.

    "This project" is the directory the process runs in (`reproml serve`, `retrain` and `simulate`
    run flows there; deployments are served from it) or its workspace (`REPROML_WORKSPACE`, set
    for stages in a training worktree). The training flow makes its worktrees itself and never
    takes one as a parameter, so no other folder, not even another reproml project, is accepted:
    a flow run's `root` decides whose `dvc.yaml` commands run and where outputs go.
    """
    target = _real(Path(value))
    here = _real(Path.cwd())
    homes = [here, _real(workspace(here))]
    missing = [name for name in PROJECT_FILES if not (target / name).is_file()]
    if missing:
        raise PathError(
            f"{param}={str(value)!r} ({target}) is not a reproml project: it lacks {', '.join(missing)}"
        )
    if target not in homes:
        allowed = " or ".join(sorted({str(home) for home in homes}))
        raise PathError(
            f"{param}={str(value)!r} resolves to {target}, which is not this project ({allowed}); "
            "run the flow from the project it should work on"
        )
    return target


# What `git check-ref-format --branch` accepts, narrowed to names that map to one worktree folder.
_BRANCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")


def branch_name(value: str, param: str = "branch") -> str:
    """`value` if it is a plain git branch name (`reproml/retrain`); else a `PathError`.

    The branch names a worktree folder under `.reproml/worktrees/` that the training flow may
    remove and re-create, so `..`, a leading `-` or `.`, and `.lock` endings are refused before git
    (or `git worktree remove --force`) ever sees them.
    """
    if not _BRANCH.fullmatch(value) or ".." in value or value.endswith((".lock", ".")):
        raise PathError(
            f"{param}={value!r} is not a branch name reproml accepts: letters, digits, '.', '_', '-' "
            "and '/' between parts, no '..', not starting with '.' or '-', not ending with '.lock'"
        )
    return value


def site_cache(root: Path) -> Path:
    """DVC's site cache for the clone at `root`, with its `repo/` folder created private first.

    DVC creates `<site cache>/repo` with mode 0777 and no sticky bit (it is meant to be shared
    under /var/tmp), so another local user could rename DVC's state folder inside it. An existing
    folder's mode DVC leaves alone: making both 0700 beforehand keeps them private.
    """
    folder = root / SITE_CACHE
    for path in (folder, folder / "repo"):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)
    return folder
