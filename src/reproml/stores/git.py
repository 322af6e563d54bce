"""The one way reproml runs git: the `git` executable, with its output captured.

Git is run as a program rather than through a library: what the user's own `git` sees (their
config, hooks off for the commands used here, worktrees) is what reproml sees. Every call goes
through `run`, which turns a failure (git missing, not a repository, a bad revision) into a
GitError naming the command and the folder, or hands back the result for callers that decide.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from reproml.errors import ReproError

# Look-ups answer in milliseconds; a hung git (a lock, a network filesystem) must not hang a stage.
LOOKUP_TIMEOUT_S = 30.0


class GitError(ReproError):
    """A git command failed; the message names the command, the folder and git's own words."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason  # git's own words (its stderr), for callers that say it their way


def run(
    root: Path, *args: str, check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """`git <args>` in `root`. With `check`, a non-zero exit is a GitError; without, the caller
    reads `returncode` (git missing or timed out is always a GitError: there is no result)."""
    command = f"`git {' '.join(args)}`"
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise GitError(f"{command} could not run in {root}: {exc}", str(exc)) from None
    if check and done.returncode != 0:
        reason = done.stderr.strip()
        raise GitError(f"{command} failed in {root}: {reason}", reason)
    return done


def output(root: Path, *args: str) -> str | None:
    """git's stdout, or None when git failed for any reason (a look-up that may have no answer)."""
    try:
        return run(root, *args, timeout=LOOKUP_TIMEOUT_S).stdout
    except GitError:
        return None


def head(root: Path) -> str | None:
    """The commit checked out in `root`, or None outside a repository with commits."""
    found = output(root, "rev-parse", "HEAD")
    return found.strip() if found is not None else None


def changed_paths(root: Path) -> list[str] | None:
    """Paths with uncommitted changes (modified, staged or untracked and not ignored), or None
    outside a repository."""
    status = output(root, "status", "--porcelain", "--untracked-files=normal")
    if status is None:
        return None
    return [line[3:] for line in status.splitlines() if line.strip()]


def has_commit(root: Path, commit: str) -> bool:
    """Whether `commit` names a commit object in the repository at `root`."""
    done = run(root, "cat-file", "-e", f"{commit}^{{commit}}", check=False, timeout=LOOKUP_TIMEOUT_S)
    return done.returncode == 0


def has_file(root: Path, revision: str, path: str) -> bool:
    """Whether `path` exists in the tree of `revision` (e.g. HEAD)."""
    done = run(root, "cat-file", "-e", f"{revision}:{path}", check=False, timeout=LOOKUP_TIMEOUT_S)
    return done.returncode == 0


def show_file(root: Path, revision: str, path: str) -> str:
    """The content of `path` at `revision`; a GitError (with git's reason) when it has none."""
    return run(root, "show", f"{revision}:{path}", timeout=LOOKUP_TIMEOUT_S).stdout


def add_worktree(root: Path, path: Path, commit: str) -> None:
    """A detached checkout of `commit` at `path`, recorded as a worktree of `root`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    run(root, "worktree", "add", "--detach", "--force", str(path), commit)


def remove_worktree(root: Path, path: Path) -> None:
    """Remove the worktree at `path` and git's record of it; whatever is left is the caller's."""
    run(root, "worktree", "remove", "--force", str(path), check=False)


def prune_worktrees(root: Path) -> None:
    """Forget worktrees whose folders are gone (removed by hand, or after an interruption)."""
    run(root, "worktree", "prune", check=False)


def branch_exists(root: Path, branch: str) -> bool:
    """Whether the local branch `branch` exists in the repository at `root`."""
    ref = f"refs/heads/{branch}"
    done = run(root, "rev-parse", "--verify", "--quiet", ref, check=False, timeout=LOOKUP_TIMEOUT_S)
    return done.returncode == 0


def add_branch_worktree(root: Path, path: Path, branch: str, reset: bool = False) -> None:
    """A checkout of `branch` at `path`, recorded as a worktree of `root`: the branch as it is when
    it exists, else (or with `reset`) the branch (re)made at `root`'s HEAD. An existing worktree at
    `path` is kept unless `reset`, which removes it first."""
    run(root, "worktree", "prune")
    if reset and path.exists():
        run(root, "worktree", "remove", "--force", str(path))
    if (path / ".git").exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if branch_exists(root, branch) and not reset:
        run(root, "worktree", "add", str(path), branch)
    else:
        run(root, "worktree", "add", "-B", branch, str(path), "HEAD")


# Fetches and pushes talk to another machine: slower than a look-up, still never forever.
NETWORK_TIMEOUT_S = 300.0


def fetch_branch(root: Path, remote: str, branch: str) -> bool:
    """The local branch `branch` set to `remote`'s (created if missing; it must not be checked out
    in `root` itself); False, changing nothing, when the remote has no such branch."""
    found = run(root, "ls-remote", "--exit-code", "--heads", remote, branch, check=False,
                timeout=NETWORK_TIMEOUT_S)  # fmt: skip
    if found.returncode == 2:
        return False
    if found.returncode != 0:
        reason = found.stderr.strip()
        raise GitError(f"`git ls-remote {remote} {branch}` failed in {root}: {reason}", reason)
    run(
        root,
        "fetch",
        "--quiet",
        remote,
        f"+refs/heads/{branch}:refs/heads/{branch}",
        timeout=NETWORK_TIMEOUT_S,
    )
    return True


def push_branch(root: Path, remote: str, branch: str) -> None:
    """`branch` pushed to `remote` (a fast-forward: a rejected push is a GitError naming it)."""
    run(
        root, "push", "--quiet", remote, f"refs/heads/{branch}:refs/heads/{branch}", timeout=NETWORK_TIMEOUT_S
    )


def ls_files(root: Path, *patterns: str) -> list[str]:
    """Tracked paths matching the pathspecs `patterns` (all tracked paths without any)."""
    return [f for f in run(root, "ls-files", "--", *patterns, timeout=LOOKUP_TIMEOUT_S).stdout.split() if f]


def commit(root: Path, message: str, paths: list[str]) -> str | None:
    """Commit `paths` (whatever of them changed; deletions too) and return the new HEAD; None when
    none of them changed. Hooks are skipped (a machine commit, not a user's), and a repository
    without a configured identity commits as "reproml" rather than failing."""
    present = [p for p in paths if (root / p).exists()]
    if present:
        run(root, "add", "--all", "--", *present)
    if not run(root, "diff", "--cached", "--name-only").stdout.split():
        return None
    configured = run(root, "config", "user.email", check=False, timeout=LOOKUP_TIMEOUT_S).returncode == 0
    identity = [] if configured else ["-c", "user.name=reproml retrain", "-c", "user.email=reproml@localhost"]
    run(root, *identity, "commit", "--quiet", "--no-verify", "-m", message)
    return run(root, "rev-parse", "HEAD").stdout.strip()


def reset_hard(root: Path, commit: str) -> None:
    """The working tree and index of `root` back at `commit` (uncommitted changes dropped)."""
    run(root, "reset", "--hard", "--quiet", commit)
