"""Atomic writes: a reader sees the old file or the whole new one, never half of either.

Every stage output goes through here, so a crash or a validation error leaves no partial file that
DVC could mistake for a result. A full disk (or quota, or file size limit) is reported naming the
file, with the temp file removed and the target untouched; a temp file left by a process killed
mid-write (`kill -9`) is removed by the next write of the same file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reproml.errors import ReproError

if TYPE_CHECKING:  # only an annotation here: a stage that writes no parquet (`tune` switched off,
    import pandas as pd  # `register`) does not pay pandas' import

# What "the storage is full" looks like: no space, no quota left, or over the file size limit.
DISK_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
             errno.EFBIG: "file too large for the file system or the process's file size limit"}  # fmt: skip
TMP_SUFFIX = ".tmp"


class DiskFullError(ReproError):
    """A write failed because the storage is full; names the file, and nothing was written."""


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC / EDQUOT / EFBIG, whichever library raised it (pyarrow keeps the errno)."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def disk_full_error(target: str | Path | None, exc: OSError, atomic: bool = True) -> DiskFullError:
    """The message for a full disk while writing `target`: which file, why, what to do.

    `atomic` says the write went through `atomic_path`, so the previous file is intact. Without a
    file name (a library that does not say), the project's and the MLflow store's disks are named.
    """
    why = DISK_FULL.get(exc.errno or 0, os.strerror(exc.errno or 0))
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    if target is None:
        return DiskFullError(
            f"a write failed: {why} ({code}). Free space on the disks holding the project and its "
            "MLflow store (`df -h . mlflow.db mlartifacts`) and run again"
        )
    folder = Path(target).parent
    kept = f"; nothing was written and any previous {Path(target).name} is unchanged" if atomic else ""
    return DiskFullError(
        f"could not write {target}: {why} ({code}){kept}. Free space where {folder} lives "
        f"(`df -h {folder}`) and run again"
    )


def process_start(pid: int) -> str | None:
    """Start time of a live process (clock ticks since boot), or None if it is gone.

    Paired with the pid it identifies a process even after its pid is reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner() -> str:
    """This process as `<pid>-<start>`, for temp names whose writer can be checked later."""
    pid = os.getpid()
    return f"{pid}-{process_start(pid)}"


def _sweep_orphans(target: Path) -> None:
    """Remove temp files of `target` whose writer is dead (killed mid-write): they are no output."""
    for tmp in target.parent.glob(f".{target.name}.*{TMP_SUFFIX}"):
        owner = tmp.name[len(target.name) + 2 :].split(".", 1)[0]
        pid, _, start = owner.partition("-")
        if pid.isdigit() and start and process_start(int(pid)) != start:
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `target`; rename it over `target` only if the block succeeds.

    A full disk anywhere in the block (the writer, the rename) raises `DiskFullError` naming
    `target`; the temp file is removed either way.
    """
    target = Path(target)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _sweep_orphans(target)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.{_owner()}.", suffix=TMP_SUFFIX, dir=target.parent
        )
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs get the mode open() would give
        os.replace(tmp, target)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(target, exc) from exc
        raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def write_with(target: str | Path, writer: Callable[[Path], Any]) -> Path:
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def write_json(target: str | Path, payload: Any, sort_keys: bool = True) -> Path:
    """`payload` as indented JSON; `sort_keys=False` keeps the mapping's own order (which DVC's
    tables follow)."""
    text = json.dumps(payload, indent=2, sort_keys=sort_keys, default=str) + "\n"
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
def file_lock(path: str | Path, blocking: bool = True, shared: bool = False) -> Iterator[bool]:
    """An exclusive flock on `path` (created if needed), for one process on this host at a time.

    Yields True once held; when `blocking` is False and another holder has it, yields False at
    once instead of waiting. The kernel releases it when the holder dies, even by SIGKILL (the
    descriptor is not inherited by child processes). `shared` takes a shared lock instead: any
    number of shared holders, and an exclusive one only when there is none.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        kind = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        flags = kind | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(handle, flags)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
