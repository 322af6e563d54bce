"""The stores layer on real systems: git in a temporary repository, DVC on a real repository with
a local remote (`reproml.stores.git`, `reproml.stores.dvc`)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from reproml.errors import ReproError
from reproml.stores import git
from reproml.stores.dvc import CorruptCacheError, DvcStore, lock_versions, tracked_md5, verified_objects


def git_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "params.yaml").write_text("seed: 1\n")
    for args in (
        ("init", "-q"),
        ("add", "-A"),
        ("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "i"),
    ):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git + DVC repository with one file pushed to a local remote, its cache then emptied."""
    from dvc.repo import Repo

    root = git_repo(tmp_path / "project")
    Repo.init(str(root)).close()
    (root / ".dvc" / "config").write_text(  # as `dvc remote add -d storage ../storage` writes it
        "[core]\n    analytics = false\n    remote = storage\n"
        "['remote \"storage\"']\n    url = ../../storage\n"
    )
    local_config(root, f"[core]\n    site_cache_dir = {root / '.dvc' / 'site_cache'}\n")
    with Repo(str(root)) as repo:
        (root / "data.txt").write_text("the data\n")
        repo.add(str(root / "data.txt"))
        repo.push()
    return root


def local_config(root: Path, text: str) -> None:
    """`.dvc/config.local`, as `dvc config --local` writes it (a user's machine-specific level)."""
    (root / ".dvc" / "config.local").write_text(text)


def md5_of(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


# --- git ---------------------------------------------------------------------------------------


def test_git_look_ups_answer_and_failures_name_the_command(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "repo")
    commit = git.head(root)
    assert commit is not None and git.has_commit(root, commit)
    assert not git.has_commit(root, "f" * 40)
    assert git.has_file(root, "HEAD", "params.yaml") and not git.has_file(root, "HEAD", "nope.yaml")
    assert git.show_file(root, "HEAD", "params.yaml") == "seed: 1\n"
    (root / "new.py").write_text("x = 1\n")
    assert git.changed_paths(root) == ["new.py"]
    with pytest.raises(git.GitError, match=r"`git show HEAD:nope.yaml` failed in .*repo") as refused:
        git.show_file(root, "HEAD", "nope.yaml")
    assert "nope.yaml" in refused.value.reason
    outside = tmp_path / "outside"
    outside.mkdir()
    assert git.head(outside) is None and git.changed_paths(outside) is None


def test_a_worktree_is_added_at_a_commit_and_removed(tmp_path: Path) -> None:
    root = git_repo(tmp_path / "repo")
    commit = git.head(root)
    assert commit is not None
    tree = tmp_path / "trees" / "wt"
    git.add_worktree(root, tree, commit)
    assert git.head(tree) == commit and (tree / "params.yaml").is_file()
    git.remove_worktree(root, tree)
    git.prune_worktrees(root)
    assert not tree.exists()
    listed = git.run(root, "worktree", "list", "--porcelain").stdout
    assert str(tree) not in listed


def test_a_branch_worktree_is_made_kept_and_reset_and_commits_only_what_changed(tmp_path: Path) -> None:
    """The retrain branch's worktree: made from HEAD, reopened as it is, remade with `reset`;
    `commit` commits the named paths that changed (none: None), with or without an identity."""
    root = git_repo(tmp_path / "repo")
    start = git.head(root)
    tree = tmp_path / "trees" / "retrain"
    assert not git.branch_exists(root, "retrain")
    git.add_branch_worktree(root, tree, "retrain")
    assert git.branch_exists(root, "retrain") and git.head(tree) == start
    assert git.commit(tree, "nothing", ["params.yaml", "absent.txt"]) is None
    (tree / "params.yaml").write_text("seed: 2\n")
    (tree / "other.txt").write_text("not named\n")
    env = {"GIT_CONFIG_GLOBAL": str(tmp_path / "none"), "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path)}
    with pytest.MonkeyPatch.context() as patch:  # no identity anywhere: reproml's own is used
        for key, value in env.items():
            patch.setenv(key, value)
        made = git.commit(tree, "seed 2", ["params.yaml", "absent.txt"])
    assert made is not None and made != start and git.head(tree) == made
    assert git.show_file(root, "retrain", "params.yaml") == "seed: 2\n"
    assert git.changed_paths(tree) == ["other.txt"]
    assert "reproml@localhost" in git.run(tree, "log", "-1", "--format=%ae").stdout
    git.add_branch_worktree(root, tree, "retrain")  # reopened: the branch as it is
    assert git.head(tree) == made
    git.add_branch_worktree(root, tree, "retrain", reset=True)  # remade at root's HEAD
    assert git.head(tree) == start and not (tree / "other.txt").exists()
    assert git.ls_files(tree, "*.yaml") == ["params.yaml"] and git.ls_files(tree, "*.dvc") == []
    (tree / "params.yaml").write_text("seed: 3\n")
    git.reset_hard(tree, start or "HEAD")
    assert (tree / "params.yaml").read_text() == "seed: 1\n"


# --- DVC ---------------------------------------------------------------------------------------


def test_config_levels_merge_as_dvc_merges_them(project: Path) -> None:
    """The local config overrides the repository's; relative local URLs are absolute."""
    local_config(
        project,
        "['remote \"storage\"']\n    url = /abs/two\n"
        "['remote \"s3\"']\n    url = s3://bucket/path\n    endpointurl = http://minio:9000\n",
    )
    with DvcStore.open(project) as store:
        assert store.cache == (project / ".dvc" / "cache").resolve()
        assert store.default == "storage"
        assert store.remotes == {"storage": "/abs/two", "s3": "s3://bucket/path"}
        assert store.ordered_remotes() == ["storage", "s3"]
    (project / ".dvc" / "config.local").unlink()
    with DvcStore.open(project) as store:  # `../../storage` from .dvc/config: beside the project
        assert store.remotes == {"storage": str(project.parent / "storage")}


def test_a_cache_dir_set_elsewhere_is_followed(project: Path, tmp_path: Path) -> None:
    local_config(project, f"[cache]\n    dir = {tmp_path / 'elsewhere'}\n")
    with DvcStore.open(project) as store:
        assert store.cache == tmp_path / "elsewhere"
        assert store.object_path(md5_of("the data\n")) is None  # not fetched there yet
        found = verified_objects(store, {"data.txt": md5_of("the data\n")})["data.txt"]
    assert found.source == "DVC remote 'storage'" and found.path.is_relative_to(tmp_path / "elsewhere")


def evict(store: DvcStore, md5: str) -> None:
    """Remove object `md5` from the cache (DVC keeps it read-only), so a read must fetch it."""
    cached = store.object_path(md5)
    assert cached is not None
    cached.chmod(0o644)
    cached.unlink()


def test_a_missing_object_is_pulled_from_the_remote_and_verified(project: Path) -> None:
    md5 = md5_of("the data\n")
    with DvcStore.open(project) as store:
        evict(store, md5)
        found = verified_objects(store, {"data.txt": md5})["data.txt"]
        assert found.source == "DVC remote 'storage'" and found.path.read_text() == "the data\n"
        assert store.verified_object(md5, "data.txt") == found.path


def test_the_team_remote_from_the_environment_is_read_after_the_committed_ones(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`REPROML_DVC_REMOTE_URL` (team mode): a fresh clone fetches what a worker pushed to the
    team's remote without configuring DVC; a committed remote of the same name keeps its URL."""
    import shutil

    md5 = md5_of("the data\n")
    team = project.parent / "team-bucket"
    shutil.move(str(project.parent / "storage"), team)  # the data is only on the team's remote now
    monkeypatch.setenv("REPROML_DVC_REMOTE_URL", str(team))
    with DvcStore.open(project) as store:
        assert store.remotes == {"storage": str(project.parent / "storage"), "team": str(team)}
        assert store.ordered_remotes() == ["storage", "team"]
        evict(store, md5)
        found = verified_objects(store, {"data.txt": md5})["data.txt"]
    assert found.source == "DVC remote 'team'" and found.path.read_text() == "the data\n"
    monkeypatch.setenv("REPROML_DVC_REMOTE", "storage")
    with DvcStore.open(project) as store:
        assert store.remotes == {"storage": str(project.parent / "storage"), "storage-env": str(team)}
    monkeypatch.setenv("REPROML_DVC_REMOTE_URL", "s3://key:secret@bucket/dvc")
    with pytest.raises(ReproError, match="carries credentials"):
        DvcStore.open(project)


def test_a_corrupt_object_is_refused_naming_it_and_both_md5s(project: Path) -> None:
    md5 = md5_of("the data\n")
    with DvcStore.open(project) as store:
        cached = store.object_path(md5)
        assert cached is not None
        cached.chmod(0o644)
        cached.write_text("other bytes\n")
        with pytest.raises(CorruptCacheError) as refused:
            verified_objects(store, {"data.txt": md5}, refuse="run r cannot be rebuilt:")
    message = str(refused.value)
    assert message.startswith("run r cannot be rebuilt: the DVC cache object")
    assert str(cached) in message and f"expected md5 {md5}" in message
    assert f"have md5 {md5_of('other bytes' + chr(10))}" in message


def test_a_version_nowhere_names_the_file_the_md5_and_the_remote(project: Path) -> None:
    with DvcStore.open(project) as store, pytest.raises(ReproError) as refused:
        verified_objects(store, {"data.txt": "0" * 32})
    message = str(refused.value)
    assert f"data.txt (md5 {'0' * 32})" in message and "'storage'" in message
    assert "dvc push" in message


def test_outside_a_dvc_repository_opening_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReproError, match="not a usable DVC repository"):
        DvcStore.open(tmp_path)


def test_lock_versions_are_every_dependency_and_output(tmp_path: Path) -> None:
    assert lock_versions(tmp_path) == {}
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: reproml prepare\n"
        "    deps:\n    - path: data/raw.csv\n      md5: aaa\n    - path: params.yaml\n"
        "    outs:\n    - path: data/train.parquet\n      md5: bbb\n      size: 3\n"
    )
    assert lock_versions(tmp_path) == {"data/raw.csv": "aaa", "data/train.parquet": "bbb"}
    (tmp_path / "dvc.lock").write_text("stages: [1, 2]\n")
    with pytest.raises(ReproError, match=r"dvc\.lock is not a DVC lock file"):
        lock_versions(tmp_path)


def test_a_dvc_file_md5_is_its_output_md5_or_refused_naming_it(tmp_path: Path) -> None:
    added = tmp_path / "labelled.dvc"
    added.write_text("outs:\n- md5: abc.dir\n  size: 3\n  nfiles: 1\n  path: labelled\n")
    assert tracked_md5(added) == "abc.dir"
    added.write_text("outs: []\n")
    with pytest.raises(ReproError, match=r"labelled\.dvc is not a \.dvc file"):
        tracked_md5(added)
    with pytest.raises(ReproError, match=r"absent\.dvc is not a \.dvc file"):
        tracked_md5(tmp_path / "absent.dvc")


def test_a_flow_refuses_data_that_head_does_not_hold(tmp_path: Path) -> None:
    """data/source.py through the git store: HEAD's params.yaml and data file decide, not the
    working tree's."""
    import yaml

    from reproml.config import parse_params
    from reproml.data.source import check_committed

    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(ReproError, match=r"HEAD has no params\.yaml \(.+\): commit the project first"):
        check_committed(outside, parse_params({}), "reproml retrain")
    root = git_repo(tmp_path / "repo")  # HEAD's params.yaml: the bundled flights
    check_committed(root, parse_params({}), "reproml retrain")
    mine = {"data": {"path": "data/raw/mine.csv", "target": "y", "time_column": None}}
    with pytest.raises(ReproError, match=r"HEAD, whose params\.yaml names .*commit params\.yaml"):
        check_committed(root, parse_params(mine), "reproml simulate")
    (root / "params.yaml").write_text(yaml.safe_dump(mine))
    git.run(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "mine")
    with pytest.raises(ReproError, match=r"holds neither data/raw/mine\.csv \(data\.path\) nor .*\.dvc"):
        check_committed(root, parse_params(mine), "reproml simulate")
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / "mine.csv.dvc").write_text("outs: []\n")
    git.run(root, "add", "-A")
    git.run(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "dvc file")
    check_committed(root, parse_params(mine), "reproml simulate")
