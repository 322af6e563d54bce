"""Shared fixtures: a throw-away project directory with its own params.yaml, and tiny frames.

Tests never touch the real project's mlflow.db, data or caches: each works in `tmp_path`, with
MLflow pointed at a SQLite file there and temp files kept there too.
"""

from __future__ import annotations

import copy
import glob
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from reproml.team import stack
from reproml.team.layout import Layout

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)  # a run started inside `dvc exp run` names it
    monkeypatch.delenv("REPROML_RECORDS_URL", raising=False)  # records in files unless a test says so
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    yield


def default_params() -> dict[str, Any]:
    """The committed params.yaml as a mutable dict (tests change a copy)."""
    return copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Path]:
    """`make_project(params_dict, files={"data/raw/x.csv": frame_or_text})` -> project root."""

    def build(params: dict[str, Any] | None = None, files: dict[str, Any] | None = None) -> Path:
        root = tmp_path / "project"
        (root / "data" / "raw").mkdir(parents=True, exist_ok=True)
        (root / "params.yaml").write_text(yaml.safe_dump(params or default_params(), sort_keys=False))
        for rel, content in (files or {}).items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, pd.DataFrame):
                if target.suffix == ".parquet":
                    content.to_parquet(target, index=False)
                else:
                    content.to_csv(target, index=False)
            elif isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
        return root

    return build


def tiny_frame(rows: int = 400, seed: int = 0, task: str = "classification") -> pd.DataFrame:
    """A small frame with numeric, categorical, time and a learnable target."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=rows)
    cat = rng.choice(["a", "b", "c"], size=rows)
    when = pd.date_range("2021-01-01", periods=rows, freq="6h")
    signal = x1 + (cat == "a") * 1.0 + rng.normal(scale=0.5, size=rows)
    frame = pd.DataFrame(
        {
            "x1": x1,
            "x2": rng.uniform(size=rows),
            "cat": cat,
            "when": when,
        }
    )
    frame["y"] = (signal > 0.3).astype(int) if task == "classification" else signal * 10
    return frame


def user_data_params(
    path: str, task: str = "classification", time_column: str | None = "when"
) -> dict[str, Any]:
    """Params for a user's own file `path` (relative to the project) with tiny_frame's columns."""
    params = default_params()
    params["data"].update({"path": path, "target": "y", "task": task, "time_column": time_column})
    params["prepare"].update(
        {
            "split": "time" if time_column else "random",
            "train_end": "2021-03-01",
            "valid_end": "2021-03-20",
            "test_end": "2021-04-10",
            "exclude_columns": [],
        }
    )
    return params


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Prefect server for the whole test session (a real one starts in ~8-15 s), on a free
    port with its own home; its scheduler looks for due runs every 5 s instead of 60."""
    from reproml import servers

    root = tmp_path_factory.mktemp("prefect-server")
    with pytest.MonkeyPatch.context() as patch:  # only while starting: projects see just the URL
        patch.setenv("REPROML_PREFECT_PORT", str(free_port()))
        patch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "5")
        patch.delenv("PREFECT_API_URL", raising=False)
        servers.start(root, "prefect", timeout=120)
        url = servers.prefect_url(root)
    try:
        yield url
    finally:
        servers.stop(root, "prefect")


# --- headless Chromium: the pages people open, opened the way they open them ---------------------

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def in_ci() -> bool:
    """`.ci/run` runs with CI=true: there the browser tests must run, never skip."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless browser; without one the browser tests skip locally and FAIL under CI=true."""
    found = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    if found is None:
        message = f"no chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}; apt-get install chromium)"
        if in_ci():
            pytest.fail(f"CI=true, so the browser tests must run, but {message}: .ci/run installs it")
        pytest.skip(message)
    return found


@dataclass(frozen=True)
class Opened:
    console: list[str]  # every console message and uncaught exception, one `:CONSOLE` line each
    dom: str  # the DOM after the page's scripts ran (with dump_dom), else ''


def open_in_chromium(
    binary: str, page: Path | str, *, screenshot: Path | None = None, dump_dom: bool = False
) -> Opened:
    """Load `page` (a file, or a URL such as a server's page) headless, let its scripts run (15 s of
    virtual time), then screenshot it or dump its DOM.

    Virtual time stands still while a request is pending, so a page that fetches its data from a
    server (the MLflow UI) has it when the DOM is dumped. Chromium logs every console message and
    uncaught exception as a `:CONSOLE` line on stderr. Its profile and sockets go to a short private
    folder (a long TMPDIR breaks its socket path).
    """
    scratch = tempfile.mkdtemp(prefix="chr", dir="/tmp")
    address = page if isinstance(page, str) else page.resolve().as_uri()
    action = [f"--screenshot={screenshot}"] if screenshot is not None else ["--dump-dom"] if dump_dom else []
    env = {**os.environ, "TMPDIR": scratch, "HOME": scratch}
    try:
        done = subprocess.run(
            [
                binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--window-size=1280,900",
                f"--user-data-dir={scratch}", *action, address,
            ],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if screenshot is not None:
        assert screenshot.is_file(), done.stderr[-2000:]
    if dump_dom:
        assert "</html>" in done.stdout, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return Opened(console, done.stdout if dump_dom else "")


# --- the team stack (tests marked `team`), shared by every test file that needs it ----------------


def _postgres_installed() -> bool:
    return bool(glob.glob("/usr/lib/postgresql/*/bin/postgres")) or shutil.which("postgres") is not None


@pytest.fixture(scope="session")
def team_stack() -> Iterator[Path]:
    """The stack, started once; its project folder is world-traversable (PostgreSQL runs as the
    `postgres` user when the tests run as root)."""
    if not _postgres_installed():
        message = "PostgreSQL is not installed (apt-get install -y postgresql)"
        if in_ci():
            pytest.fail(f"CI=true, so the team tests must run, but {message}: .ci/run installs it")
        pytest.skip(message)
    # /tmp itself, not tempfile's cached folder: an earlier test in this worker may have pointed
    # that inside a pytest folder (0700), which `postgres` cannot enter
    root = Path(tempfile.mkdtemp(prefix="reproml-team-test-", dir="/tmp"))
    root.chmod(0o755)
    began = time.monotonic()
    try:
        result = stack.up(root)
        print(f"team stack up in {time.monotonic() - began:.1f} s, ready after {result.ready}")
        yield root
    finally:
        try:
            stop_and_check_nothing_is_left(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def stop_and_check_nothing_is_left(root: Path) -> None:
    """`stack.down` at the end of the session (a test cannot do it: every team module of this
    worker shares the stack): every service stops, psutil finds no process carrying the stack's
    marker (nor any descendant of one), and a second `down` finds nothing to stop. A failure here
    is reported as an error at the teardown of the last test that used the stack."""
    import psutil

    from reproml.team import processes
    from reproml.team.services import SERVICES

    pids = [p.pid for procs in processes.ours(root).values() for p in procs]
    stopped = stack.down(root)
    assert sorted(stopped) == sorted(SERVICES), stopped
    assert processes.ours(root) == {}
    marker = f"@{root.resolve()}"
    for process in psutil.process_iter(["environ"]):
        value = (process.info.get("environ") or {}).get(processes.MARKER_ENV, "")
        assert not value.endswith(marker), process
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert stack.down(root) == []


def team_env(root: Path) -> dict[str, str]:
    """The variables `.reproml/team/env` exports, as a dict."""
    found = {}
    for line in Layout(root).env_file.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            found[key] = shlex.split(value)[0]
    return found


def clean_env(root: Path) -> dict[str, str]:
    """This environment with nothing of MLflow, Prefect, AWS or Dask, plus the team variables."""
    foreign = ("MLFLOW_", "PREFECT_", "AWS_", "DASK_", "PG")
    base = {k: v for k, v in os.environ.items() if not k.startswith(foreign)}
    return {**base, **team_env(root)}
