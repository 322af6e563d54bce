"""Start (or reuse), wait for, stop and list the project's servers; `ensure_prefect` for flows."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reproml.servers.launch import (
    _command,
    _environment,
)
from reproml.servers.layout import (
    NAMES,
    PORT_ENV,
    ServerError,
    _check_name,
    _client_host,
    _health_url,
    host,
    log_file,
    pid_file,
    port,
    prefect_home,
    prefect_url,
    state_dir,
    ui_url,
)
from reproml.servers.processes import (
    _address,
    _alive,
    _children,
    _find,
    _healthy,
    _locked,
    _log_tail,
    _ours_left,
    _read_pid,
    _terminate,
    _write_pid,
    port_in_use,
    running,
)


def _spawn(root: Path, name: str) -> int:
    """Start the server's process in a new session, recording its pid; return the pid."""
    listen, number = host(), port(name)
    if port_in_use(listen, number):
        kind = {"prefect": "a Prefect server", "mlflow": "an MLflow server"}[name]
        what = f"{kind} (another project's?)" if _healthy(_health_url(root, name), 1) else "another program"
        raise ServerError(
            f"cannot start the {name} server: port {number} on {listen} is already in use by {what}, "
            f"not by this project's server. Stop it, or pick another port: {PORT_ENV[name]}=<port> make up"
        )
    command = _command(root, name)
    env = _environment(root, name)
    state_dir(root).mkdir(parents=True, exist_ok=True)
    if name == "prefect":
        prefect_home(root).mkdir(parents=True, exist_ok=True)
    with log_file(root, name).open("wb") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        child = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[child.pid] = child
    _write_pid(root, name, child.pid)
    return child.pid


def _wait_healthy(root: Path, name: str, pid: int, timeout: float) -> None:
    """Wait for the server's /health; on early exit or timeout stop its group and raise."""
    url = _health_url(root, name)
    deadline = time.monotonic() + timeout
    while True:
        if not _alive(pid):
            problem = "exited before it answered"
            break
        if _healthy(url, timeout=1.0):
            return
        if time.monotonic() > deadline:
            problem = f"did not answer {url} within {timeout:.0f} s"
            break
        time.sleep(0.2)
    _terminate(pid, timeout=5)
    pid_file(root, name).unlink(missing_ok=True)
    raise ServerError(
        f"the {name} server {problem}; see {log_file(root, name)}, which ends with:\n{_log_tail(root, name)}"
    )


def start(root: Path, name: str, timeout: float = 60) -> int:
    """Start this project's `name` server (or find it running) and wait until it answers; return its pid."""
    return start_all(root, [name], timeout)[name]


def start_all(root: Path, names: Sequence[str], timeout: float = 60) -> dict[str, int]:
    """Start several servers side by side (they start faster together than one after another).

    Servers already running are reused. If one fails, the others still start and keep running;
    then the error names every failure.
    """
    for name in names:
        _check_name(name)
    pids: dict[str, int] = {}
    errors: list[str] = []
    with contextlib.ExitStack() as locks:
        for name in names:
            locks.enter_context(_locked(root, name))
        spawned: list[str] = []
        try:
            for name in names:
                try:
                    pid = _reuse(root, name)
                    if pid is None:
                        pid = _spawn(root, name)
                        spawned.append(name)
                    pids[name] = pid
                except ServerError as error:
                    errors.append(str(error))
            for name in spawned:
                try:
                    _wait_healthy(root, name, pids[name], timeout)
                except ServerError as error:
                    del pids[name]
                    errors.append(str(error))
        except BaseException:  # Ctrl-C while waiting: leave nothing half-started behind
            for name in spawned:
                _terminate(pids[name], timeout=5)
                pid_file(root, name).unlink(missing_ok=True)
            raise
    if errors:
        raise ServerError("\n".join(errors))
    return pids


def _reuse(root: Path, name: str) -> int | None:
    """The running server's pid if it listens where it is asked to; clears what a killed one left."""
    pid = running(root, name)
    if pid is None:
        leftover = _read_pid(root, name)  # kept only while workers of a killed server live
        if leftover is not None and _ours_left(leftover, root, name) and not _terminate(leftover, 5):
            raise ServerError(f"workers of a killed {name} server (process group {leftover}) do not stop")
        return None
    wanted = (host(), port(name))
    actual = _address(pid)
    if actual is not None and actual != wanted:
        raise ServerError(
            f"this project's {name} server already runs on {actual[0]}:{actual[1]} (pid {pid}), not on "
            f"{wanted[0]}:{wanted[1]} as asked: stop it first (`make down`) to move it"
        )
    return pid


def stop(root: Path, name: str, timeout: float = 20) -> bool:
    """Stop this project's `name` server, whole process group; False if it was not running."""
    with _locked(root, name):
        pid = _read_pid(root, name)
        if pid is None:
            pid_file(root, name).unlink(missing_ok=True)
            pid = _find(root, name)
            if pid is None:
                return False
        ours = _ours_left(pid, root, name)
        if ours and not _terminate(pid, timeout):
            raise ServerError(f"the {name} server (process group {pid}) did not stop, even after SIGKILL")
        pid_file(root, name).unlink(missing_ok=True)
        return ours


def ensure_prefect(root: Path) -> str:
    """The Prefect API flows must use: `PREFECT_API_URL` if set (checked), else the project's server.

    Starts the project's server if it is not running (also when `PREFECT_API_URL` names it). Sets
    `PREFECT_API_URL` and turns Prefect's ephemeral mode off in `os.environ`, so flows and their
    subprocesses never fall back on a temporary server. Prefect reads its settings when imported:
    call this before importing prefect, or run the flow inside
    `prefect.settings.temporary_settings({PREFECT_API_URL: url})`.
    """
    url = (os.environ.get("PREFECT_API_URL") or "").rstrip("/")
    if url and url != prefect_url(root):
        if not _healthy(f"{url}/health", timeout=5):
            raise ServerError(
                f"PREFECT_API_URL={url} does not answer {url}/health: start that server, "
                "or unset PREFECT_API_URL to use the project's own (`make up`)"
            )
    else:
        start(root, "prefect")
        url = prefect_url(root)
    os.environ["PREFECT_API_URL"] = url
    os.environ["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"
    return url


@dataclass(frozen=True)
class Status:
    """One server as `status` shows it."""

    name: str
    url: str
    pid: int | None
    log: Path


def status(root: Path) -> list[Status]:
    """Both servers: where to open them (where they really listen, if running), pid or None, log."""
    rows = []
    for name in NAMES:
        pid = running(root, name)
        address = _address(pid) if pid is not None else None
        url = f"http://{_client_host(address[0])}:{address[1]}" if address else ui_url(root, name)
        rows.append(Status(name, url, pid, log_file(root, name)))
    return rows
