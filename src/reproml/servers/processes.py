"""The servers as processes: pid files, the marker that tells ours from a reused pid (read with
psutil), process groups, stopping a group whole, ports and health checks. Nothing here is
specific to Prefect or MLflow."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil

from reproml.io import file_lock
from reproml.servers.layout import (
    LOG_TAIL,
    MARKER_ENV,
    _marker,
    log_file,
    pid_file,
    state_dir,
)

# Our own children, polled so that a stopped server does not linger as a zombie of this process.
_children: dict[int, subprocess.Popen[bytes]] = {}

# Health checks go straight to the server, never through an HTTP(S)_PROXY from the environment.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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


def _address(pid: int) -> tuple[str, int] | None:
    """(host, port) from the `--host` / `--port` options the server was started with."""
    argv = _command_line(pid)
    options = dict(itertools.pairwise(argv))  # option -> the word after it
    try:
        return options["--host"], int(options["--port"])
    except (KeyError, ValueError):
        return None


def _log_tail(root: Path, name: str) -> str:
    try:
        lines = log_file(root, name).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(f"    {line}" for line in lines[-LOG_TAIL:]) or "    (empty)"
