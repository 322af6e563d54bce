"""Atomic writes: a reader sees the old file or the whole new one, never half of either.

Every stage output goes through here, so a crash or a validation error leaves no partial file that
DVC could mistake for a result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `target`; rename it over `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs get the mode open() would give
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_with(target: str | Path, writer: Callable[[Path], Any]) -> Path:
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def write_json(target: str | Path, payload: Any) -> Path:
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    return write_with(target, lambda p: p.write_text(text))


def write_text(target: str | Path, text: str) -> Path:
    return write_with(target, lambda p: p.write_text(text))


def write_parquet(target: str | Path, frame: pd.DataFrame) -> Path:
    return write_with(target, lambda p: frame.to_parquet(p, index=False))


def file_md5(path: str | Path) -> str:
    """The md5 DVC 3 records for a single file (plain md5 of its bytes)."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def file_lock(path: str | Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive flock on `path` (created if needed), for one process on this host at a time.

    Yields True once held; when `blocking` is False and another holder has it, yields False at
    once instead of waiting. The kernel releases it when the holder dies, even by SIGKILL.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(handle, flags)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
