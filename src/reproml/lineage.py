"""What a run needs to be rebuilt: code version, data versions, params, lock file, seeds, libraries.

Read-only look-ups with no MLflow in them, so `reproduce` can compare a recorded lineage with the
current one using the same functions that recorded it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from pathlib import Path
from typing import TypedDict

from reproml.stores import git

LIBRARIES = ("mlflow", "xgboost-cpu", "scikit-learn", "pandas", "numpy", "pyarrow", "dvc", "optuna")
# Paths a running `dvc repro` rewrites itself; their changes do not make the code dirty.
PIPELINE_WRITES = ("dvc.lock", "metrics/")


class GitState(TypedDict):
    """The code a run was made from: its commit (None outside a git repository with commits) and
    whether the tree had changes, with up to 20 of the changed paths."""

    commit: str | None
    dirty: bool
    dirty_paths: list[str]


def git_state(root: Path) -> GitState:
    """Commit and dirty flag; dirty ignores the files the pipeline itself writes while running."""
    commit = git.head(root)
    changed = git.changed_paths(root)
    if commit is None or changed is None:
        return {"commit": None, "dirty": True, "dirty_paths": ["(not a git repository with commits)"]}
    # DVC adds each new stage output to a .gitignore; ignore rules never change what is built.
    dirty = [p for p in changed if not p.startswith(PIPELINE_WRITES) and Path(p).name != ".gitignore"]
    return {"commit": commit, "dirty": bool(dirty), "dirty_paths": dirty[:20]}


# What decides a model besides data and params: the library code and the pipeline definition.
CODE_PATHS = ("src", "dvc.yaml")


def code_hash(root: Path) -> str:
    """sha256 over the Python sources under src/ and dvc.yaml (paths and bytes, sorted).

    A commit names the code only if the tree was clean; this names the code that actually ran, so
    `reproduce` can tell a code difference from a data or params difference.
    """
    digest = hashlib.sha256()
    files = [root / "dvc.yaml", *sorted((root / "src").rglob("*.py"))]
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def sha256_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def params_hash(resolved: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
