"""The project's local Prefect server and MLflow UI, in the background: `make up` / `make down`.

`python -m reproml.servers up|down|status` in the project root (or `--root`, which must be the
project the command runs in: `reproml.paths.project_root`). Each server runs in its own session
(so its own process group, stopped as a whole), writes its output to `.reproml/servers/<name>.log`
and its pid to `.reproml/servers/<name>.pid`. Prefect keeps its database under `.reproml/prefect`,
so every project has its own; MLflow serves the project's `mlflow.db` and `mlartifacts/`.

A pid counts as ours only if the process carries the marker variable this module put in its
environment (read with psutil), so a pid file left by a crash is never mistaken for a process that
reused the pid. This module only spawns processes: it imports neither Prefect nor MLflow.

Why not `prefect server start --background` / `prefect server stop`: Prefect 3.8 starts the
server with its output piped to a process that exits at once (so no log, and writes that fail),
in the caller's process group, records no way to tell a reused pid, and `stop` sends SIGTERM to
that one pid only; the log, the marker, the group stop and the health wait here are what `make up`
and the tests rely on. One start or stop at a time goes through the library's flock
(`reproml.io.file_lock`), the primitive the training lock is built on.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from reproml.env import port as env_port
from reproml.io import file_lock

PREFECT_PORT = 4200
MLFLOW_PORT = 5000
HOST = "127.0.0.1"
HOST_ENV = "REPROML_SERVER_HOST"
PORT_ENV = {"prefect": "REPROML_PREFECT_PORT", "mlflow": "REPROML_MLFLOW_PORT"}
DEFAULT_PORT = {"prefect": PREFECT_PORT, "mlflow": MLFLOW_PORT}
NAMES = ("prefect", "mlflow")
# Set in each server's environment to `<name>@<root>`: how a pid is recognised as ours.
MARKER_ENV = "REPROML_SERVER_ID"
LOG_TAIL = 20
DESCRIPTION = "Start, stop or show the project's local Prefect server and MLflow UI."

# Our own children, polled so that a stopped server does not linger as a zombie of this process.
_children: dict[int, subprocess.Popen[bytes]] = {}
# Health checks go straight to the server, never through an HTTP(S)_PROXY from the environment.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerError(RuntimeError):
    """A server could not be started, reached or stopped; the message says why and what to do."""


# --- where things are ---------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown server {name!r}: expected one of {', '.join(NAMES)}")


def host() -> str:
    """The interface servers listen on: 127.0.0.1 unless `REPROML_SERVER_HOST` says otherwise."""
    return os.environ.get(HOST_ENV) or HOST


def port(name: str) -> int:
    """The server's port: its default, or `REPROML_PREFECT_PORT` / `REPROML_MLFLOW_PORT`."""
    _check_name(name)
    try:
        chosen = env_port(PORT_ENV[name])
    except ValueError as exc:
        raise ServerError(str(exc)) from None
    return DEFAULT_PORT[name] if chosen is None else chosen


def _client_host(listen: str) -> str:
    """The address clients use for a listen address: a wildcard one is reached on loopback."""
    if listen in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{listen}]" if ":" in listen else listen


def prefect_url(root: Path) -> str:
    """The project's Prefect API, e.g. `http://127.0.0.1:4200/api` (its UI is the same without /api)."""
    return f"http://{_client_host(host())}:{port('prefect')}/api"


def mlflow_url(root: Path) -> str:
    """The project's MLflow UI and REST API, e.g. `http://127.0.0.1:5000`."""
    return f"http://{_client_host(host())}:{port('mlflow')}"


def ui_url(root: Path, name: str) -> str:
    """The address to open in a browser."""
    _check_name(name)
    return prefect_url(root).removesuffix("/api") if name == "prefect" else mlflow_url(root)


def _health_url(root: Path, name: str) -> str:
    return f"{prefect_url(root)}/health" if name == "prefect" else f"{mlflow_url(root)}/health"


def state_dir(root: Path) -> Path:
    """`.reproml/servers/` in the project: pid files, logs and locks."""
    return root / ".reproml" / "servers"


def pid_file(root: Path, name: str) -> Path:
    _check_name(name)
    return state_dir(root) / f"{name}.pid"


def log_file(root: Path, name: str) -> Path:
    _check_name(name)
    return state_dir(root) / f"{name}.log"


def prefect_home(root: Path) -> Path:
    """`PREFECT_HOME` of the project's server: its SQLite database lives here."""
    return root / ".reproml" / "prefect"


# --- processes ----------------------------------------------------------------------------------


def _marker(root: Path, name: str) -> str:
    return f"{name}@{root.resolve()}"


def _executable(tool: str) -> Path:
    """`prefect` / `mlflow` from the running interpreter's environment (the project's .venv)."""
    path = Path(sys.executable).parent / tool
    if not path.exists():
        raise ServerError(f"{path} not found: install the project first (`make install`)")
    return path


def _command(root: Path, name: str) -> list[str]:
    listen = host()
    if name == "prefect":
        return [str(_executable("prefect")), "server", "start", "--host", listen, "--port", str(port(name))]
    root = root.resolve()
    return [
        str(_executable("mlflow")),
        "ui",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        # the same place `reproml.stores.mlflow.connection.setup` gives experiments it creates
        "--default-artifact-root",
        (root / "mlartifacts").as_uri(),
        "--artifacts-destination",
        (root / "mlartifacts").as_uri(),
        "--host",
        listen,
        "--port",
        str(port(name)),
        "--workers",
        "1",
    ]


def _environment(root: Path, name: str) -> dict[str, str]:
    env = dict(os.environ)
    env[MARKER_ENV] = _marker(root, name)
    if name == "prefect":
        # Nothing inherited may point this server at another API, profile or database.
        # (Service tuning such as PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS may pass.)
        tuning = "PREFECT_SERVER_SERVICES_"
        for key in [k for k in env if k.startswith("PREFECT_") and not k.startswith(tuning)]:
            del env[key]
        env["PREFECT_HOME"] = str(prefect_home(root).resolve())
        env["PREFECT_API_URL"] = prefect_url(root)
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    else:
        # One process pair instead of ~16 and a health answer in ~7 s instead of 12-15 s.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def _process(pid: int) -> psutil.Process | None:
    """The process `pid`, or None if there is none (0 and negatives are no process of ours)."""
    if pid <= 0:
        return None
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]


def _alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    _reap(pid)
    process = _process(pid)
    if process is None:
        return False
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _is_ours(pid: int, root: Path, name: str) -> bool:
    """Whether `pid` is (a process of) this project's `name` server, not a reused pid."""
    process = _process(pid)
    if process is None:
        return False
    try:
        return bool(process.environ().get(MARKER_ENV) == _marker(root, name))
    except psutil.Error:  # gone, a zombie, or another user's process
        return False


def _command_line(pid: int) -> list[str]:
    """The process's arguments ([] if it is gone or not readable)."""
    process = _process(pid)
    if process is None:
        return []
    try:
        return list(process.cmdline())
    except psutil.Error:
        return []


def _group(pid: int) -> int | None:
    """The process group of `pid`, None if it is gone."""
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    return [pid for pid in psutil.pids() if _group(pid) == pgid and _alive(pid)]


def _ours_left(pgid: int, root: Path, name: str) -> bool:
    """Whether any process of the `name` server's group `pgid` is alive.

    Our server leads its own group, so pgid == its pid. The kernel never hands out a pid still in
    use as a group id: if a process that is not ours has that pid, our group is gone; if none has
    it, workers a `kill -9` of the main process left behind may still be in the group.
    """
    if _alive(pgid):
        return _is_ours(pgid, root, name)
    return any(_is_ours(pid, root, name) for pid in _members(pgid))


def _read_pid(root: Path, name: str) -> int | None:
    try:
        return int(pid_file(root, name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _write_pid(root: Path, name: str, pid: int) -> None:
    target = pid_file(root, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(f"{pid}\n")
    os.replace(temporary, target)


def _find(root: Path, name: str) -> int | None:
    """This project's `name` server found by its marker (when its pid file was deleted, e.g. by
    `make clean`): the leader of its process group, or None."""
    for pid in psutil.pids():
        if _group(pid) == pid and _alive(pid) and _is_ours(pid, root, name):
            return int(pid)
    return None


def running(root: Path, name: str) -> int | None:
    """The pid of this project's `name` server if it is alive, else None (a stale pid file is removed).

    A server whose pid file was deleted is found again by its marker and its pid file rewritten.
    """
    pid = _read_pid(root, name)
    if pid is None:
        pid_file(root, name).unlink(missing_ok=True)
        pid = _find(root, name)
        if pid is not None:
            _write_pid(root, name, pid)
        return pid
    if _alive(pid) and _is_ours(pid, root, name):
        return pid
    if not _ours_left(pid, root, name):  # workers left behind by a killed main process keep the file
        pid_file(root, name).unlink(missing_ok=True)
    return None


def _locked(root: Path, name: str) -> contextlib.AbstractContextManager[bool]:
    """One start or stop of a server at a time, across processes."""
    return file_lock(state_dir(root) / f"{name}.lock")


def _signal(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _gone(pgid: int, timeout: float) -> bool:
    """Wait until no live process is left in the group (and our own child is reaped)."""
    deadline = time.monotonic() + timeout
    while True:
        _reap(pgid)
        if pgid not in _children and not _members(pgid):
            break
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    # Zombies of workers whose parent died first are reaped by init in a moment.
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            break
        time.sleep(0.02)
    return True


def _terminate(pgid: int, timeout: float) -> bool:
    """SIGTERM the process group, SIGKILL it after `timeout`; True once none of it is left.

    Only for a group known to be ours (`_ours_left`): the whole group is signalled, since SIGTERM
    to the main process alone leaves MLflow's workers running.
    """
    _signal(pgid, signal.SIGTERM)
    if _gone(pgid, timeout):
        return True
    _signal(pgid, signal.SIGKILL)
    return _gone(pgid, 5)


def port_in_use(listen: str, number: int) -> bool:
    """Whether `number` cannot be bound on `listen` (another program holds it)."""
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((listen, number))
        except OSError:
            return True
    return False


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with _http.open(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def _log_tail(root: Path, name: str) -> str:
    try:
        lines = log_file(root, name).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(f"    {line}" for line in lines[-LOG_TAIL:]) or "    (empty)"


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


def _address(pid: int) -> tuple[str, int] | None:
    """(host, port) from the `--host` / `--port` options the server was started with."""
    argv = _command_line(pid)
    options = dict(itertools.pairwise(argv))  # option -> the word after it
    try:
        return options["--host"], int(options["--port"])
    except (KeyError, ValueError):
        return None


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


# --- command line -------------------------------------------------------------------------------


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


def _show(root: Path, rows: list[Status], lines: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("server", "url", "pid", "log"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        log = row.log.relative_to(root) if row.log.is_relative_to(root) else row.log
        pid = str(row.pid) if row.pid is not None else "[red]stopped[/red]"
        table.add_row(row.name, row.url, pid, str(log))
    console = Console()
    console.print(table)
    prefect = [row for row in rows if row.name == "prefect" and row.pid is not None]
    hints = [f"flows and the prefect CLI use PREFECT_API_URL={row.url}/api" for row in prefect]
    for line in [*lines, *hints]:
        console.print(line, soft_wrap=True, highlight=False)


def _listed(names: Sequence[str]) -> str:
    return " and ".join(names)


def main(argv: Sequence[str] | None = None) -> int:
    """`up` starts both servers, `down` stops them, `status` shows them; 1 on failure."""
    from reproml.errors import ReproError
    from reproml.paths import project_root

    parser = argparse.ArgumentParser(prog="python -m reproml.servers", description=DESCRIPTION)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument(
        "--root", type=Path, default=Path("."), help="project root (default: the working directory)"
    )
    args = parser.parse_args(argv)
    try:
        root = project_root(args.root, "--root")
    except ReproError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lines: list[str] = []
    failed = False
    try:
        if args.action == "up":
            before = [name for name in NAMES if running(root, name) is not None]
            began = time.monotonic()
            start_all(root, NAMES)
            started = [name for name in NAMES if name not in before]
            if started:
                lines.append(f"started {_listed(started)} in {time.monotonic() - began:.1f} s")
            if before:
                lines.append(f"already running: {_listed(before)}")
        elif args.action == "down":
            stopped, errors = [], []
            for name in NAMES:
                try:
                    if stop(root, name):
                        stopped.append(name)
                except ServerError as error:
                    errors.append(str(error))
            lines.append(f"stopped {_listed(stopped)}" if stopped else "nothing was running")
            if errors:
                raise ServerError("\n".join(errors))
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        failed = True
    _show(root, status(root), lines)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
