"""External commands (git, dvc, reproml) run for the flows: output into the run's log, a whole
process group stopped when the flow is, and transient failures told apart from real ones.

A stage runs as `dvc repro -s <stage>` in its own process group. When the flow process gets
SIGTERM, Prefect raises `TerminationSignal` in it; `run` then sends SIGTERM to the group, so
`reproml train` ends its MLflow run KILLED and writes no model, and DVC leaves `dvc.lock` as it was.

Where the lines go is set by the edge (`use_logger`): the flows hand in Prefect's run logger, so
this module never imports Prefect; without one, the `reproml.orchestration` logger gets them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reproml.redaction import scrub

# Failures worth another try: another process holds a lock for a moment.
TRANSIENT_MARKERS = (
    "is busy",  # dvc: a second `dvc repro` on the same repo
    "Unable to acquire lock",
    "database is locked",  # SQLite (MLflow's store) under a concurrent writer
    "Timeout: a lock",
)

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]
LOGGER = logging.getLogger("reproml.orchestration")


class CommandError(RuntimeError):
    """A command failed for a reason another try will not fix."""


class TransientError(CommandError):
    """A command failed because something was busy; the flows retry these with backoff."""


def _default_logger() -> Logger:
    return LOGGER


_logger_factory: Callable[[], Logger] = _default_logger


def use_logger(factory: Callable[[], Logger]) -> None:
    """Where command lines and output are logged from now on (`factory` is asked at each command,
    so it can return the logger of whichever flow or task run is current)."""
    global _logger_factory
    _logger_factory = factory


def logger() -> Logger:
    """The logger commands (and the steps that report progress) write to."""
    return _logger_factory()


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is something a moment's wait can fix: a `TransientError`, or a library error
    (in-process MLflow, say) whose message carries one of the same markers."""
    if isinstance(exc, TransientError):
        return True
    return any(marker in str(exc) for marker in TRANSIENT_MARKERS)


def stop_group(process: subprocess.Popen[Any], grace_s: float = 30.0) -> None:
    """SIGTERM to the command's whole process group, then SIGKILL if it outlives `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run(args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None, quiet: bool = False) -> str:
    """Run `args` in `cwd`; return its output, or raise TransientError / CommandError with its tail."""
    log = logger()
    shown = scrub(" ".join(args))
    log.info("$ %s  (in %s)", shown, cwd)
    process = subprocess.Popen(
        list(args),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if not quiet:
                log.info("%s", line.rstrip())
        code = process.wait()
    except BaseException:
        stop_group(process)
        raise
    output = "".join(lines)
    if code != 0:
        kind = TransientError if any(m in output for m in TRANSIENT_MARKERS) else CommandError
        tail = scrub("".join(lines[-25:]))  # the message becomes the task's state on the Prefect server
        raise kind(f"`{shown}` in {cwd} exited with {code}:\n{tail}")
    return output
