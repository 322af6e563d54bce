"""Lineage look-ups on a real temporary git repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

from reproml import lineage


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "a.py").write_text("X = 1\n")
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    (root / ".gitignore").write_text("/data\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return root


def test_clean_tree_names_its_commit(tmp_path: Path) -> None:
    root = repo(tmp_path)
    state = lineage.git_state(root)
    assert state["dirty"] is False
    assert state["commit"] is not None and len(state["commit"]) == 40


def test_files_the_pipeline_writes_do_not_make_the_tree_dirty(tmp_path: Path) -> None:
    root = repo(tmp_path)
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (root / ".gitignore").write_text("/data\n/models\n")
    (root / "metrics").mkdir()
    (root / "metrics" / "metrics.json").write_text("{}")
    assert lineage.git_state(root)["dirty"] is False


def test_a_changed_or_new_source_file_makes_it_dirty(tmp_path: Path) -> None:
    root = repo(tmp_path)
    (root / "src" / "pkg" / "a.py").write_text("X = 2\n")
    (root / "src" / "pkg" / "b.py").write_text("Y = 1\n")
    state = lineage.git_state(root)
    assert state["dirty"] is True
    assert set(state["dirty_paths"]) == {"src/pkg/a.py", "src/pkg/b.py"}


def test_outside_git_there_is_no_commit_and_the_tree_counts_as_dirty(tmp_path: Path) -> None:
    state = lineage.git_state(tmp_path)
    assert state["commit"] is None and state["dirty"] is True


def test_code_hash_follows_source_and_pipeline_but_not_data(tmp_path: Path) -> None:
    root = repo(tmp_path)
    before = lineage.code_hash(root)
    (root / "data.csv").write_text("a\n1\n")
    assert lineage.code_hash(root) == before
    (root / "src" / "pkg" / "a.py").write_text("X = 3\n")
    changed = lineage.code_hash(root)
    assert changed != before
    (root / "dvc.yaml").write_text("stages: {x: {cmd: echo}}\n")
    assert lineage.code_hash(root) != changed
