"""The retrain branch's working copy: a git worktree under `.reproml/worktrees/`, sharing the
project's DVC cache and remote, so new data versions never touch the branch the user is on."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from reproml.env import DVC_REMOTE_URL_ENV
from reproml.orchestration.commands import logger, run
from reproml.paths import branch_name, site_cache
from reproml.stores import git
from reproml.stores.dvc import DvcStore, shared_remote


def tool(name: str) -> str:
    """An executable of this environment (dvc, reproml), found next to the running Python."""
    return str(Path(sys.executable).with_name(name))


def worktree_path(root: Path, branch: str) -> Path:
    branch_name(branch)
    return root / ".reproml" / "worktrees" / re.sub(r"[^A-Za-z0-9._-]", "-", branch)


def branch_exists(root: Path, branch: str) -> bool:
    return git.branch_exists(root, branch)


def open_worktree(root: Path, branch: str, reset: bool = False) -> Path:
    """A checkout of `branch` (created from HEAD the first time, or again with `reset`) that
    shares the project's DVC cache and remotes."""
    path = worktree_path(root, branch)
    logger().info("worktree of branch %s at %s%s", branch, path, " (reset)" if reset else "")
    git.add_branch_worktree(root, path, branch, reset=reset)
    with DvcStore.open(root) as store:
        cache, remotes = store.cache, store.remotes
    dvc = tool("dvc")
    run([dvc, "config", "--local", "cache.dir", str(cache)], path, quiet=True)
    run([dvc, "config", "--local", "core.site_cache_dir", str(site_cache(root))], path, quiet=True)
    shared = shared_remote()
    for name, url in remotes.items():
        if shared is None or url != shared[1]:  # the team's remote is added below, as the default
            run([dvc, "remote", "modify", "--local", name, "url", url], path, quiet=True)
    if shared is not None:  # the team's remote, as this worktree's default: `dvc push` goes there
        name, url = shared
        run([dvc, "remote", "add", "--local", "--force", "--default", name, url], path, quiet=True)
        logger().info("DVC remote %s (%s) is the worktree's default (%s)", name, url, DVC_REMOTE_URL_ENV)
    # data you `dvc add`ed (data.path) is a .dvc file in git and its bytes in the shared cache:
    # a new worktree has only the former until it is checked out
    tracked = git.ls_files(path, "*.dvc")
    if tracked:
        run([dvc, "checkout", "--quiet", *tracked], path, quiet=True)
    return path


def commit(tree: Path, message: str, paths: list[str]) -> str | None:
    """Commit `paths` (whatever of them changed) on the worktree's branch; None if nothing did."""
    return git.commit(tree, message, paths)
