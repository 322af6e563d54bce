"""A disposable copy of this project as its own git + DVC repository, for integration tests.

The copy holds the project's files (what git would ship), a fresh git history with one commit,
DVC configured to keep its site cache inside, and params changed by the test. Commands run with
HOME and TMPDIR pointed at empty folders so a test can prove nothing was written outside.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from reproml.paths import site_cache
from tests.conftest import default_params

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
# Outputs of a previous run in the developer's tree; a fresh project starts without them.
SKIP = ("dvc.lock", "metrics/")
# The pipeline's own runs (train opens them); tuning studies and their trials are runs of their own.
PIPELINE_RUNS = "tags.`reproml.stage` = 'train'"


def project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    return [f for f in listed if not f.startswith(SKIP) and (REPO / f).is_file()]


def sampled_params(rows: int = 6000) -> dict[str, Any]:
    """The committed params on a seeded sample of the real flights: a full repro in ~15 s."""
    params = default_params()
    params["data"]["sample_rows"] = rows
    params["evaluate"]["importance_rows"] = 500
    params["train"]["random_forest"]["n_estimators"] = 40
    params["tune"]["n_trials"] = 4
    # XGBoost's OpenMP threads crawl when other jobs share the 2 cores; one thread keeps tests quick
    params["train"]["n_jobs"] = 1
    return params


class Project:
    def __init__(self, base: Path, params: dict[str, Any]) -> None:
        self.root = base / "repo"
        self.home = base / "home"
        self.tmp = base / "tmp"
        for folder in (self.root, self.home, self.tmp):
            folder.mkdir(parents=True)
        for rel in project_files():
            target = self.root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, target)
        self.write_params(params)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "GIT_"))},
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "reproml test",
            "GIT_AUTHOR_EMAIL": "test@reproml.invalid",
            "GIT_COMMITTER_NAME": "reproml test",
            "GIT_COMMITTER_EMAIL": "test@reproml.invalid",
        }
        self.run("git", "init", "-q", "-b", "main")
        # as `make install` does: DVC's site cache inside the clone, made private before DVC uses it
        self.run("dvc", "config", "--local", "core.site_cache_dir", str(site_cache(self.root)))
        self.commit("project")

    def write_params(self, params: dict[str, Any]) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            list(args), cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def commit(self, message: str) -> str:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "--allow-empty", "-m", message)
        return self.run("git", "rev-parse", "HEAD").stdout.strip()

    def lock(self) -> dict[str, Any]:
        lock: dict[str, Any] = yaml.safe_load((self.root / "dvc.lock").read_text())
        return lock

    def lock_md5(self, path: str) -> str:
        for stage in self.lock()["stages"].values():
            for out in stage.get("outs", []):
                if out["path"] == path:
                    return str(out["md5"])
        raise KeyError(path)

    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"
