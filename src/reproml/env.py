"""Keep every file a run writes inside the project.

MLflow's lock files, joblib's workers and tempfile go to $TMPDIR; matplotlib caches fonts under
$HOME. Pointing both at `.reproml/` (git-ignored) before those libraries are imported keeps a run
from leaving anything behind elsewhere on the machine.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOCAL_DIR = ".reproml"
# What `dvc exp run` sets for each stage command it runs (dvc.org/doc/user-guide/env); `dvc repro`
# sets neither.
DVC_EXP_NAME = "DVC_EXP_NAME"
DVC_EXP_BASELINE_REV = "DVC_EXP_BASELINE_REV"
# The retrain flow's DVC remote, when set (the team stack's env file sets both): its worktree gets
# it as the local default remote, so `dvc push` there, in a worker's fresh clone as in yours, goes
# to the team's bucket. Only a name and a URL: credentials and endpoint come from AWS_*.
DVC_REMOTE_ENV = "REPROML_DVC_REMOTE"
DVC_REMOTE_URL_ENV = "REPROML_DVC_REMOTE_URL"


def keep_inside(root: Path) -> None:
    base = (root / LOCAL_DIR).resolve()
    tmp = base / "tmp"
    mpl = base / "matplotlib"
    for folder in (tmp, mpl):
        folder.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(tmp)
    os.environ.setdefault("MPLCONFIGDIR", str(mpl))
    os.environ.setdefault("MPLBACKEND", "Agg")
    tempfile.tempdir = str(tmp)


@contextlib.contextmanager
def overridden(name: str, value: str) -> Iterator[None]:
    """`os.environ[name] = value` for the block, then as it was (unset if it was unset)."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def seconds(name: str, default: float, note: str = "") -> float:
    """A duration from the environment variable `name` (unset or empty: `default`), refused with a
    message naming the variable unless it is a number >= 0 (NaN included)."""
    from reproml.errors import ReproError

    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        parsed = float(value)
    except ValueError:
        parsed = -1.0
    if not parsed >= 0:
        raise ReproError(f"{name}={value!r}: expected a number of seconds >= 0{note}")
    return parsed


def port(name: str) -> int | None:
    """A port number from the environment variable `name` (unset or empty: None); ValueError with
    a message naming the variable unless it is 1-65535."""
    value = os.environ.get(name)
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 0 < number < 65536:
        raise ValueError(f"{name}={value!r} is not a port number (1-65535)")
    return number


def environ_snapshot() -> dict[str, str]:
    """A copy of os.environ that survives other threads changing it.

    MLflow's telemetry thread sets and removes `_MLFLOW_TELEMETRY_SESSION_ID`; iterating os.environ
    while that happens raises KeyError (seen in a fresh-clone `make run`). The copy takes
    microseconds, so a retry lands between two changes.
    """
    for _ in range(100):
        try:
            return dict(os.environ)
        except KeyError:
            continue
    return dict(os.environ)


@dataclass(frozen=True)
class DvcExperiment:
    """The DVC experiment a stage runs in: `dvc exp run -n NAME` (or DVC's generated name)."""

    name: str
    baseline_rev: str  # the git commit the experiment derives from; "" if DVC did not say

    def tags(self) -> dict[str, str]:
        """MLflow tags naming the experiment, so `dvc exp show` and the MLflow run list match up."""
        return {"dvc.exp_name": self.name, "dvc.exp_baseline_rev": self.baseline_rev}


def dvc_experiment() -> DvcExperiment | None:
    """The experiment `dvc exp run` is running this process in (its environment says), else None."""
    name = os.environ.get(DVC_EXP_NAME, "").strip()
    if not name:
        return None
    return DvcExperiment(name=name, baseline_rev=os.environ.get(DVC_EXP_BASELINE_REV, "").strip())
