"""The project's DVC repository: its cache, its remotes, dvc.lock, and verified reads of data versions.

The only module that reads DVC's config, cache layout or lock file. Config and cache come from
`dvc.repo.Repo` (every config level merged as `dvc` itself merges them, relative paths resolved
against the file that set them); missing objects are pulled with the repository's own
`DataCloud.pull`, straight into the project's cache, without taking the repository lock (a
`dvc repro` may be running: monitoring is one of its stages).

Every data version handed out is hashed first. DVC files an object under the md5 it had when it
was added and never looks again: a flipped bit, a truncated copy or a hand edit of the (read-only)
object would otherwise be read as the recorded version (issue 12). DVC 3's md5 of a file is the
plain md5 of its bytes (`reproml.io.file_md5`).

`dvc` is imported inside the functions that need it: it takes about a second to import, and the
modules that import this one (monitoring, reproduce) must stay quick to import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from reproml.env import DVC_REMOTE_ENV, DVC_REMOTE_URL_ENV
from reproml.errors import ReproError
from reproml.io import file_md5
from reproml.redaction import scrub

LOCK_FILE = "dvc.lock"

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    return None


def shared_remote() -> tuple[str, str] | None:
    """The team's DVC remote from `REPROML_DVC_REMOTE_URL` (and its name, `REPROML_DVC_REMOTE`,
    default `team`), or None when unset. A URL carrying credentials is refused: keys come from
    AWS_* (or the usual AWS profile), never from a variable that ends up in a DVC config."""
    url = os.environ.get(DVC_REMOTE_URL_ENV, "").strip()
    if not url:
        return None
    name = os.environ.get(DVC_REMOTE_ENV, "").strip() or "team"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ReproError(f"{DVC_REMOTE_ENV}={name!r} is not a DVC remote name (letters, digits, - and _)")
    if "@" in url.split("://", 1)[-1].split("/", 1)[0]:
        raise ReproError(f"{DVC_REMOTE_URL_ENV} carries credentials: give only the URL, keys in AWS_*")
    return name, url


class CorruptCacheError(ReproError):
    """A DVC cache object whose bytes do not hash to the md5 it is filed under."""


@dataclass(frozen=True)
class CacheObject:
    """A data version in the DVC cache whose bytes were hashed and match its md5."""

    path: Path  # the object in the cache: read it, never write it
    source: str  # "DVC cache", or "DVC remote '<name>'" when it had to be fetched


@contextlib.contextmanager
def _dvc_quiet() -> Iterator[None]:
    """DVC's own warnings and progress bars off while it works as a library: what was missing is
    said by the caller, in the caller's words (DVC's bars switch off with its logger's level)."""
    logger = logging.getLogger("dvc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class DvcStore:
    """The DVC repository at a project root, open for reading its cache and fetching into it.

    Use as a context manager (`with DvcStore.open(root) as store:`): DVC keeps a state database
    open while the repository is.
    """

    def __init__(self, repo: Any) -> None:
        self._repo = repo  # dvc.repo.Repo (untyped)

    @classmethod
    def open(cls, root: Path) -> DvcStore:
        """The DVC repository at `root`; a ReproError when `root` is not one.

        Opened without git (`core.no_scm`): nothing here needs it, a project's `.dvc/cache` is
        readable even outside a git repository, and DVC then leaves `.gitignore` files alone.
        With `REPROML_DVC_REMOTE_URL` set (team mode), the team's remote is one of the remotes a
        missing data version is fetched from, as retrains push there: a fresh clone on another
        machine reads what a worker trained on without configuring DVC first.
        """
        from dvc.exceptions import DvcException
        from dvc.repo import Repo

        config: dict[str, Any] = {"core": {"no_scm": True}}
        try:
            with _dvc_quiet():
                repo = Repo(str(root), config=config)
                shared = shared_remote()
                if shared is not None:
                    name, url = shared
                    configured = repo.config["remote"]
                    if any(str(options.get("url")) == url for options in configured.values()):
                        return cls(repo)
                    if name in configured:  # a committed remote of that name elsewhere stays as it is
                        name = f"{name}-env"
                    repo.close()
                    repo = Repo(str(root), config={**config, "remote": {name: {"url": url}}})
        except DvcException as exc:
            raise ReproError(f"{root} is not a usable DVC repository: {exc}") from None
        return cls(repo)

    def close(self) -> None:
        self._repo.close()

    def __enter__(self) -> DvcStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    @property
    def root(self) -> Path:
        return Path(self._repo.root_dir)

    @property
    def cache(self) -> Path:
        """The cache folder (`dvc cache dir`): `.dvc/cache` unless `cache.dir` says otherwise."""
        return Path(self._repo.cache.local_cache_dir)

    @property
    def remotes(self) -> dict[str, str]:
        """Remote name -> URL, local paths absolute (DVC resolves them against their config file)."""
        return {name: str(options.get("url", "?")) for name, options in self._repo.config["remote"].items()}

    @property
    def default(self) -> str | None:
        remote = self._repo.config["core"].get("remote")
        return str(remote) if remote else None

    def ordered_remotes(self) -> list[str]:
        """The default remote first, then the others by name."""
        return sorted(self.remotes, key=lambda name: (name != self.default, name))

    def object_path(self, md5: str) -> Path | None:
        """Where the cached copy of a file with this md5 lies (DVC 3 layout, then DVC 2's), if there
        is one. Not checked: read data through `verified_object` / `verified_objects`, never this."""
        for odb in (self._repo.cache.local, self._repo.cache.legacy):
            candidate = Path(odb.oid_to_path(md5))
            if candidate.is_file():
                return candidate
        return None

    def verified_object(self, md5: str, path: str, origin: str = "DVC cache") -> Path | None:
        """The cached copy of `path` version `md5`, its bytes hashed and found to be that md5; None
        when the cache has no such object; CorruptCacheError when it holds other bytes."""
        found = self.object_path(md5)
        if found is None:
            return None
        actual = file_md5(found)
        if actual != md5:
            raise CorruptCacheError(
                f"the DVC cache object {found} for {path} (from the {origin}) is corrupt: expected md5 "
                f"{md5}, its bytes have md5 {actual}; delete it (`rm -f {found}`) and run again to fetch "
                "it from the DVC remote, or restore it with `dvc fetch` / `dvc pull`"
            )
        return found

    def fetch(self, remote: str, md5s: list[str]) -> str | None:
        """Pull these md5s from one remote into the cache, as `dvc fetch` would.

        Returns None, or the error when the pull failed as a whole (an unreachable remote). Objects
        the remote lacks are simply not pulled; the caller looks in the cache after.
        """
        from dvc_data.hashfile.hash_info import HashInfo

        try:
            with _dvc_quiet():
                self._repo.cloud.pull([HashInfo("md5", md5) for md5 in md5s], remote=remote)
        except Exception as exc:  # DvcException, OSError, a cloud SDK's own: the message says which
            return f"{type(exc).__name__}: {exc}"
        return None


def verified_objects(
    store: DvcStore, data: dict[str, str], progress: Progress = _quiet, refuse: str = ""
) -> dict[str, CacheObject]:
    """`path -> verified cache object` for every `path -> md5`, fetching what the cache lacks.

    Every read of the DVC cache goes through here (or `DvcStore.verified_object`): the cache
    first, then a pull of what is missing from the project's remotes, default first. Every object
    is hashed before it is handed out: a corrupt one, cached or just fetched, is refused
    (CorruptCacheError, naming the object, both md5s and the fix), never used; a version available
    nowhere is refused naming the file, md5 and remotes tried. `refuse` opens either message.
    """
    found: dict[str, CacheObject] = {}

    def take(path: str, origin: str) -> None:
        try:
            cached = store.verified_object(data[path], path, origin)
        except CorruptCacheError as exc:
            raise CorruptCacheError(f"{refuse} {exc}" if refuse else str(exc)) from None
        if cached is not None:
            found[path] = CacheObject(cached, origin)

    for path in data:
        take(path, "DVC cache")
    tried: list[str] = []
    remotes = store.remotes
    for remote in store.ordered_remotes():
        wanted = {p: md5 for p, md5 in data.items() if p not in found}
        if not wanted:
            break
        progress(f"fetching {len(wanted)} data file(s) from DVC remote {remote!r}")
        error = store.fetch(remote, sorted(set(wanted.values())))
        # a URL (or an error quoting it) may hold a password
        tried.append(scrub(f"{remote!r} ({remotes[remote]}{'; ' + error if error else ''})"))
        for path in wanted:
            take(path, f"DVC remote {remote!r}")
    missing = {p: md5 for p, md5 in data.items() if p not in found}
    if missing:
        listed = ", ".join(f"{p} (md5 {md5})" for p, md5 in missing.items())
        where = f"nor on the DVC remote {', '.join(tried)}" if tried else "and the project has no DVC remote"
        raise ReproError(
            f"{refuse + ' ' if refuse else ''}the data version {listed} is neither in the DVC cache "
            f"{store.cache} {where}; push it from a clone that has it (`dvc push`)"
        )
    return {p: found[p] for p in data}


def lock_versions(root: Path) -> dict[str, str]:
    """`path -> md5` of every stage dependency and output dvc.lock records (empty before the
    first `dvc repro`); a ReproError naming the file when it is not a lock file."""
    lock = root / LOCK_FILE
    if not lock.is_file():
        return {}
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        versions: dict[str, str] = {}
        for stage in stages.values():
            for item in [*stage.get("deps", []), *stage.get("outs", [])]:
                if "md5" in item:
                    versions[str(item["path"])] = str(item["md5"])
    except (yaml.YAMLError, AttributeError, TypeError, KeyError) as exc:
        raise ReproError(
            f"{lock} is not a DVC lock file (stages: deps/outs with path and md5): {exc}"
        ) from None
    return versions


def tracked_md5(dvc_file: Path) -> str:
    """The md5 a `.dvc` file (what `dvc add` writes) records for its output (`<md5>.dir` for a
    folder); a ReproError naming the file when it records none."""
    try:
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", [])
        return str(outs[0]["md5"])
    except (OSError, yaml.YAMLError, AttributeError, TypeError, KeyError, IndexError) as exc:
        raise ReproError(
            f"{dvc_file} is not a .dvc file recording an output md5 (outs: - md5): {exc}"
        ) from None


def pipeline_stages(root: Path) -> list[str]:
    """The names of the pipeline's command stages at `root` (dvc.yaml), upstream first, in the
    order DVC's own stage graph gives them."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        ordered = reversed(list(nx.topological_sort(repo.index.graph)))
        return [stage.name for stage in ordered if stage.cmd]
