"""The production feed's S3 prefix (team mode): the objects directly under it, copied down.

`monitor.feed: s3://bucket/prefix` makes the feed read an S3 prefix instead of a local folder. The
feed does not read S3 objects in place: each new or changed object is copied (atomically) into a
local inbox under `monitoring/<model>/`, its modification time set to the object's, and the local
feed takes it from there, so the ledger, the order, the labels rule and the refusal of changed
content are the same for both. Credentials and the endpoint come from the environment, as for
DVC's S3 remote (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`; `AWS_ENDPOINT_URL` for an
S3-compatible store such as the team stack's stand-in, whose env file sets it).
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reproml.errors import ReproError
from reproml.io import write_with

SCHEME = "s3://"


class S3Error(ReproError):
    """The feed's S3 prefix could not be listed or an object could not be copied."""


def is_s3(url: str | None) -> bool:
    return bool(url) and str(url).startswith(SCHEME)


def _filesystem() -> Any:
    import s3fs

    # a fresh instance: fsspec caches them by arguments, and the endpoint comes from the environment
    return s3fs.S3FileSystem(
        skip_instance_cache=True, endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None
    )


def mirror(url: str, inbox: Path, wanted: Callable[[str], bool]) -> list[str]:
    """Copy each object directly under `url` whose name `wanted` accepts into `inbox`, unless the
    copy there already has its size and modification time; the names copied now."""
    fs = _filesystem()
    prefix = url[len(SCHEME) :].rstrip("/")
    try:
        listed = fs.ls(prefix, detail=True, refresh=True)
    except (OSError, ValueError) as exc:
        raise S3Error(
            f"monitor.feed={url!r}: could not list the prefix: {type(exc).__name__}: {exc}"
        ) from None
    copied: list[str] = []
    inbox.mkdir(parents=True, exist_ok=True)
    for item in listed:
        name = str(item["name"]).rsplit("/", 1)[-1]
        if item.get("type") != "file" or not wanted(name):
            continue
        modified = item.get("LastModified")
        stamp = modified.timestamp() if modified is not None else None
        local = inbox / name
        if local.is_file() and local.stat().st_size == item["size"] and stamp == local.stat().st_mtime:
            continue
        try:
            write_with(local, functools.partial(_copy, fs, str(item["name"])))
        except OSError as exc:
            raise S3Error(
                f"{SCHEME}{item['name']}: could not be copied: {type(exc).__name__}: {exc}"
            ) from None
        if stamp is not None:
            os.utime(local, (stamp, stamp))
        copied.append(name)
    return copied


def _copy(fs: Any, key: str, target: Path) -> None:
    with fs.open(key, "rb") as source, target.open("wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
