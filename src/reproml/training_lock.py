"""One training per workspace: `tune`, `train`, `evaluate`, `register`, `promote` and the training
flow take the same lock, `.reproml/locks/training.lock` in the workspace (`paths.workspace`).

Without it, `dvc repro` in the project and a retrain flow (whose stages run in a worktree but write
the workspace's `mlflow.db`, registry and studies) interleave their writes and both move
`challenger`. The lock is an flock, so the kernel frees it when its holder dies, even by SIGKILL;
a JSON record beside it says who holds it (pid, command, since when) for the waiting message.

Nesting: the holder exports a random token (`REPROML_TRAINING_LOCK`) that its child processes
inherit (the training flow's `dvc repro` -> `reproml train`). A child whose token matches the
recorded holder, while that holder is alive and still holds the lock, runs inside it instead of
waiting for its own parent. Such children also hold a shared "members" lock, and a new holder
first waits for any members left running by a holder that died, so stages orphaned by a killed
flow never overlap the next training.

A contender waits (polling, with a message naming the holder) for `REPROML_LOCK_WAIT_S` seconds
(default one hour), then gives up with an error; 0 refuses at once. Waiting is the default because
`dvc repro` runs stages without flags: two `dvc repro` then run one after the other instead of one
failing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from reproml import env
from reproml.errors import ReproError
from reproml.io import file_lock, process_start, write_json
from reproml.paths import workspace

LOCK_DIR = Path(".reproml/locks")
LOCK_FILE = "training.lock"
HOLDER_FILE = "training.holder.json"
MEMBERS_FILE = "training.members.lock"
TOKEN_ENV = "REPROML_TRAINING_LOCK"
WAIT_ENV = "REPROML_LOCK_WAIT_S"
DEFAULT_WAIT_S = 3600.0
POLL_S = 0.25
REMIND_S = 60.0  # a waiting contender repeats its message this often

Notify = Callable[[str], None]


class TrainingLockTimeoutError(ReproError):
    """Another training held the workspace's lock for longer than this one would wait."""


@dataclass(frozen=True)
class Holder:
    """Who holds the lock: enough to find the process and to tell whether it is still alive."""

    pid: int
    proc_start: str
    host: str
    command: str
    since: str
    token: str

    def alive(self) -> bool:
        return self.host == socket.gethostname() and process_start(self.pid) == self.proc_start

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (`{self.command}`) since {self.since}"


def wait_limit() -> float:
    """Seconds a contender waits (`REPROML_LOCK_WAIT_S`, default one hour; 0 refuses at once)."""
    return env.seconds(WAIT_ENV, DEFAULT_WAIT_S, " (0 refuses at once)")


def _folder(root: Path) -> Path:
    return workspace(root) / LOCK_DIR


def read_holder(root: Path) -> Holder | None:
    """The recorded holder, or None when there is no (readable) record."""
    try:
        record = json.loads((_folder(root) / HOLDER_FILE).read_text())
        return Holder(**record)
    except (OSError, ValueError, TypeError):
        return None


def _command() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _busy(root: Path, holder: Holder | None, waited: float, limit: float) -> str:
    alive = holder is not None and holder.alive()
    who = holder.describe() if holder is not None and alive else "a process that has not recorded itself yet"
    return (
        f"the training lock of workspace {workspace(root).resolve()} is held by {who}; "
        f"waited {waited:.0f} s of {limit:.0f} s ({WAIT_ENV}; 0 refuses at once)"
    )


def _timeout(message: str) -> TrainingLockTimeoutError:
    return TrainingLockTimeoutError(
        f"gave up: {message}. One training per workspace runs at a time: wait for it to finish, "
        f"stop it, or set {WAIT_ENV} to wait longer"
    )


@contextlib.contextmanager
def training_lock(
    root: Path, command: str | None = None, wait_s: float | None = None, notify: Notify | None = None
) -> Iterator[Holder]:
    """Hold the workspace's training lock for the block (or run inside the parent that holds it).

    Yields the holder: this process, or the ancestor whose lock it runs under. Raises
    `TrainingLockTimeoutError` naming the holder when it is not free within `wait_s` (default
    `wait_limit()`).
    """
    limit = wait_limit() if wait_s is None else wait_s
    say = notify or _stderr
    folder = _folder(root)
    started = time.monotonic()
    said_at: float | None = None
    while True:
        with file_lock(folder / LOCK_FILE, blocking=False) as held:
            if held:
                with _holding(root, command or _command(), started, limit, say) as holder:
                    yield holder
                return
        recorded = read_holder(root)
        if recorded is not None and recorded.token == os.environ.get(TOKEN_ENV) and recorded.alive():
            with file_lock(folder / MEMBERS_FILE, shared=True):
                yield recorded
            return
        waited = time.monotonic() - started
        if waited >= limit:
            raise _timeout(_busy(root, recorded, waited, limit))
        if said_at is None or time.monotonic() - said_at >= REMIND_S:
            say(f"waiting: {_busy(root, recorded, waited, limit)}")
            said_at = time.monotonic()
        time.sleep(POLL_S)


@contextlib.contextmanager
def _holding(root: Path, command: str, started: float, limit: float, say: Notify) -> Iterator[Holder]:
    """With the lock held: wait out members orphaned by a dead holder, record this process, and
    export the token for children; undo both at the end."""
    folder = _folder(root)
    said = False
    while True:
        with file_lock(folder / MEMBERS_FILE, blocking=False) as free:
            if free:
                break
        waited = time.monotonic() - started
        previous = read_holder(root)
        message = (
            f"stages started under an earlier holder of the training lock of workspace "
            f"{workspace(root).resolve()} ({previous.describe() if previous else 'unknown'}, now gone) are "
            f"still running; waited {waited:.0f} s of {limit:.0f} s ({WAIT_ENV})"
        )
        if waited >= limit:
            raise _timeout(message)
        if not said:
            say(f"waiting: {message}")
            said = True
        time.sleep(POLL_S)
    pid = os.getpid()
    holder = Holder(
        pid=pid,
        proc_start=str(process_start(pid)),
        host=socket.gethostname(),
        command=command,
        since=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        token=secrets.token_hex(16),
    )
    write_json(folder / HOLDER_FILE, asdict(holder))
    previous_token = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = holder.token
    try:
        yield holder
    finally:
        if previous_token is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = previous_token
        with contextlib.suppress(OSError):
            (folder / HOLDER_FILE).unlink()
