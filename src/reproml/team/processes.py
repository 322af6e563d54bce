"""The team stack's processes: started in their own session, found again by a marker, stopped whole.

Each service is started in a new session (its own process group) with `REPROML_TEAM_ID=<service>@<root>`
in its environment. Everything it forks inherits that variable (PostgreSQL's backends, MLflow's
workers, Dask's nanny and worker, the flow runs a Prefect worker starts), so "what is left of this
project's stack" is exactly the set of live processes carrying a marker for this root: pid files
could go stale or be reused, the environment cannot.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from reproml.team.layout import Layout, TeamError

MARKER_ENV = "REPROML_TEAM_ID"
LOG_TAIL = 15

# Our own children, kept so that they are reaped (not left as zombies) when they stop.
_children: dict[int, subprocess.Popen[bytes]] = {}


def marker(root: Path, service: str) -> str:
    return f"{service}@{root.resolve()}"


def ours(root: Path) -> dict[str, list[psutil.Process]]:
    """Live processes of this project's stack, by service (zombies and other projects' left out).

    A process is the service's if it carries the marker or descends from one that does:
    PostgreSQL writes its process titles over its environment and puts each backend in a session
    of its own, so its backends show no marker and share no group with the postmaster.
    """
    suffix = f"@{root.resolve()}"
    owner: dict[int, str] = {}
    parent: dict[int, int] = {}
    table: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["environ", "status", "ppid"]):
        if process.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        table[process.pid] = process
        parent[process.pid] = process.info.get("ppid") or 0
        value = (process.info.get("environ") or {}).get(MARKER_ENV, "")
        if value.endswith(suffix):
            owner[process.pid] = value.removesuffix(suffix)
    found: dict[str, list[psutil.Process]] = {}
    for pid, process in table.items():
        ancestor, seen = pid, 0
        while ancestor not in owner and ancestor > 1 and seen < 64:
            ancestor, seen = parent.get(ancestor, 0), seen + 1
        if ancestor in owner:
            found.setdefault(owner[ancestor], []).append(process)
    return found


def leader(processes: Sequence[psutil.Process]) -> psutil.Process | None:
    """The service's first process (the one that leads its process group), if alive."""
    for process in processes:
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == process.pid:
                return process
    return None


def spawn(
    layout: Layout,
    service: str,
    command: Sequence[str],
    env: Mapping[str, str],
    user: str | None = None,
    cwd: Path | None = None,
) -> int:
    """Start `command` as `service` in a new session, output to its log (0600); return its pid.

    `user` runs it as that system user (PostgreSQL refuses to run as root).
    """
    environment = dict(env)
    environment[MARKER_ENV] = marker(layout.root, service)
    log = layout.log(service)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(f"$ {' '.join(command)}\n".encode())
        handle.flush()
        try:
            child = subprocess.Popen(
                list(command),
                cwd=cwd or layout.root,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user,
                group=user,
                extra_groups=[] if user else None,
            )
        except OSError as exc:
            raise TeamError(f"cannot start {service} ({command[0]}): {exc}") from None
    _children[child.pid] = child
    return child.pid


def exited(pid: int) -> bool:
    """Whether our child `pid` has exited (reaping it)."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is not None
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def log_tail(layout: Layout, service: str) -> str:
    try:
        lines = layout.log(service).read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join(f"    {line}" for line in lines[-LOG_TAIL:]) or "    (empty)"


def signal_all(processes: Sequence[psutil.Process], signum: int) -> None:
    """Signal each process group of `processes`, and each process (one may have left its group)."""
    groups = set()
    for process in processes:
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(process.pid))
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signum)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signum)


def finish(processes: Sequence[psutil.Process], grace: float, timeout: float) -> list[psutil.Process]:
    """Wait `grace` seconds for signalled processes to end (up to `timeout` for those with no
    shorter grace), SIGKILL the rest; return any still alive after that (none, normally)."""
    _, alive = psutil.wait_procs(list(processes), timeout=min(grace, timeout))
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    _, alive = psutil.wait_procs(alive, timeout=5)
    for pid in [pid for pid, child in _children.items() if child.poll() is not None]:
        del _children[pid]
    return list(alive)


def stop(processes: Sequence[psutil.Process], signum: int, timeout: float) -> list[psutil.Process]:
    """Signal `processes` (their groups), SIGKILL what is left after `timeout`; what survived."""
    signal_all(processes, signum)
    return finish(processes, timeout, timeout)


def wait_gone(root: Path, timeout: float) -> dict[str, list[psutil.Process]]:
    """Wait until nothing of this project's stack is alive; what is left after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = ours(root)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# PostgreSQL's fast shutdown (SIGINT) ends open sessions; SIGTERM would wait for every client.
STOP_SIGNAL = {"postgres": signal.SIGINT}
