"""The retrain branch's working copy: a git worktree under `.reproml/worktrees/`, sharing the
project's DVC cache and remote, so new data versions never touch the branch the user is on."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from reproml.orchestration.commands import CommandError, run
from reproml.paths import branch_name, site_cache


def tool(name: str) -> str:
    """An executable of this environment (dvc, reproml), found next to the running Python."""
    return str(Path(sys.executable).with_name(name))


def worktree_path(root: Path, branch: str) -> Path:
    branch_name(branch)
    return root / ".reproml" / "worktrees" / re.sub(r"[^A-Za-z0-9._-]", "-", branch)


def branch_exists(root: Path, branch: str) -> bool:
    try:
        run(["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], root, quiet=True)
    except CommandError:
        return False
    return True


def _remote_urls(root: Path) -> dict[str, str]:
    """The project's DVC remotes, local paths made absolute (they are relative to `.dvc/`)."""
    urls = {}
    for line in run([tool("dvc"), "remote", "list"], root, quiet=True).splitlines():
        if not line.strip():
            continue
        name, url = line.split(None, 1)
        url = re.sub(r"\s+\(default\)$", "", url.strip())
        if "://" not in url and not Path(url).is_absolute():
            url = str((root / ".dvc" / url).resolve())
        urls[name] = url
    return urls


def open_worktree(root: Path, branch: str, reset: bool = False) -> Path:
    """A checkout of `branch` (created from HEAD the first time, or again with `reset`) that
    shares the project's DVC cache and remotes."""
    path = worktree_path(root, branch)
    run(["git", "worktree", "prune"], root, quiet=True)
    if reset and path.exists():
        run(["git", "worktree", "remove", "--force", str(path)], root, quiet=True)
    if not (path / ".git").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        if branch_exists(root, branch) and not reset:
            run(["git", "worktree", "add", str(path), branch], root, quiet=True)
        else:
            run(["git", "worktree", "add", "-B", branch, str(path), "HEAD"], root, quiet=True)
    dvc = tool("dvc")
    cache = run([dvc, "cache", "dir"], root, quiet=True).strip()
    run([dvc, "config", "--local", "cache.dir", cache], path, quiet=True)
    run([dvc, "config", "--local", "core.site_cache_dir", str(site_cache(root))], path, quiet=True)
    for name, url in _remote_urls(root).items():
        run([dvc, "remote", "modify", "--local", name, "url", url], path, quiet=True)
    # data you `dvc add`ed (data.path) is a .dvc file in git and its bytes in the shared cache:
    # a new worktree has only the former until it is checked out
    tracked = [f for f in run(["git", "ls-files", "--", "*.dvc"], path, quiet=True).split() if f]
    if tracked:
        run([dvc, "checkout", "--quiet", *tracked], path, quiet=True)
    return path


def commit(tree: Path, message: str, paths: list[str]) -> str | None:
    """Commit `paths` (whatever of them changed) on the worktree's branch; None if nothing did."""
    present = [p for p in paths if (tree / p).exists()]
    if present:
        run(["git", "add", "--all", "--", *present], tree, quiet=True)
    staged = run(["git", "diff", "--cached", "--name-only"], tree, quiet=True).split()
    if not staged:
        return None
    try:
        run(["git", "config", "user.email"], tree, quiet=True)
        identity: list[str] = []
    except CommandError:  # no identity configured: say who wrote it rather than fail
        identity = ["-c", "user.name=reproml retrain", "-c", "user.email=reproml@localhost"]
    run(["git", *identity, "commit", "--quiet", "--no-verify", "-m", message], tree, quiet=True)
    return run(["git", "rev-parse", "HEAD"], tree, quiet=True).strip()
