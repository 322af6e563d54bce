"""Hostile paths and unsafe modes: path parameters confined to the project's data folders (library,
CLI and a real Prefect flow), no world-writable directory after a real pipeline, and the torn-journal
repair waiting for Optuna's own journal lock while a live writer appends."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from typer.testing import CliRunner

from reproml import paths
from reproml.cli import app
from reproml.monitoring.batches import batch_spec
from reproml.paths import PathError
from reproml.stores import optuna as storage
from tests.conftest import REPO
from tests.project import BIN, Project, sampled_params

# --- the library function -------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A project folder (params.yaml + dvc.yaml, data/, monitoring/) next to a file outside it."""
    root = tmp_path / "project"
    for folder in ("data/raw", "monitoring/labelled", "models"):
        (root / folder).mkdir(parents=True)
    for name in paths.PROJECT_FILES:
        (root / name).write_text("{}\n")
    (root / "data" / "batch.csv").write_text("x\n1\n")
    (root / "monitoring" / "labelled" / "b.parquet").write_text("")
    (root / "models" / "model.joblib").write_text("")
    (tmp_path / "outside.csv").write_text("secret\n1\n")
    (tmp_path / "elsewhere").mkdir()
    return root


def test_a_dot_dot_escape_is_refused_with_the_parameter_path_and_allowed_folders(tree: Path) -> None:
    with pytest.raises(PathError) as caught:
        paths.confined("data/../../outside.csv", tree, "batch")
    message = str(caught.value)
    assert "batch='data/../../outside.csv'" in message
    assert str(tree.parent / "outside.csv") in message
    assert f"{tree / 'data'}/" in message and f"{tree / 'monitoring'}/" in message
    # in the project, but not in a data folder
    with pytest.raises(PathError, match=re.escape("labelled='models/model.joblib'")):
        paths.confined("models/model.joblib", tree, "labelled")


def test_an_absolute_path_outside_is_refused(tree: Path) -> None:
    with pytest.raises(PathError, match="outside the directories"):
        paths.confined(tree.parent / "outside.csv", tree, "labelled")
    with pytest.raises(PathError, match="'/etc/passwd'"):
        paths.confined("/etc/passwd", tree, "--batch")


def test_a_symlink_inside_pointing_outside_is_refused(tree: Path) -> None:
    (tree / "data" / "link.csv").symlink_to(tree.parent / "outside.csv")
    (tree / "monitoring" / "away").symlink_to(tree.parent / "elsewhere", target_is_directory=True)
    with pytest.raises(PathError, match=re.escape(f"resolves to {tree.parent / 'outside.csv'}")):
        paths.confined("data/link.csv", tree, "batch")
    with pytest.raises(PathError):
        paths.confined("monitoring/away/new.parquet", tree, "labelled")
    # a symlink to the project's root from inside data/ does not widen anything either
    (tree / "data" / "up").symlink_to(tree, target_is_directory=True)
    with pytest.raises(PathError):
        paths.confined("data/up/models/model.joblib", tree, "batch")


def test_allowed_paths_still_work(tree: Path) -> None:
    data = (tree / "data" / "batch.csv").resolve()
    assert paths.confined("data/batch.csv", tree, "batch") == data
    assert paths.confined(str(data), tree, "batch") == data  # absolute, inside
    assert paths.confined("data/raw/../batch.csv", tree, "batch") == data
    labelled = tree / "monitoring" / "labelled" / "b.parquet"
    assert paths.confined("monitoring/labelled/b.parquet", tree, "labelled") == labelled.resolve()
    (tree / "data" / "alias.csv").symlink_to(data)  # a link that stays inside is followed
    assert paths.confined("data/alias.csv", tree, "batch") == data
    # periods are not paths; files come back resolved and relative to the project
    assert batch_spec(tree, "2013-08") == "2013-08"
    assert batch_spec(tree, "2013-02-30") == "2013-02-30"  # the monitor says what is wrong
    assert batch_spec(tree, "data/raw/../batch.csv") == "data/batch.csv"
    with pytest.raises(PathError, match=re.escape("batch='../outside.csv'")):
        batch_spec(tree, "../outside.csv")


def test_root_must_be_this_project(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.WORKSPACE_ENV, raising=False)
    monkeypatch.chdir(tree)
    assert paths.project_root(".") == tree.resolve()
    assert paths.project_root(str(tree / "data" / "..")) == tree.resolve()
    other = tree.parent / "other"
    (other / "data").mkdir(parents=True)
    for name in paths.PROJECT_FILES:
        (other / name).write_text("{}\n")
    refused = f"root='{other}' resolves to {other}, which is not this project"
    with pytest.raises(PathError, match=re.escape(refused)):
        paths.project_root(str(other))
    lacking = "is not a reproml project: it lacks params.yaml, dvc.yaml"
    with pytest.raises(PathError, match=re.escape(lacking)):
        paths.project_root(str(tree.parent / "elsewhere"))
    # a stage in a training worktree works for the workspace it was given
    monkeypatch.chdir(other)
    monkeypatch.setenv(paths.WORKSPACE_ENV, str(tree))
    assert paths.project_root(str(tree)) == tree.resolve()


# --- the edges: CLI and a real Prefect flow -------------------------------------------------------


def flat(text: str) -> str:
    """Output with Rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture
def in_tree(tree: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI runs in `tree` (it points TMPDIR inside the project: undone after the test)."""
    import tempfile

    monkeypatch.chdir(tree)
    monkeypatch.setenv("TMPDIR", os.environ.get("TMPDIR", tempfile.gettempdir()))
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return tree


@pytest.mark.parametrize("name", ["..", "../x", "-f", ".hidden", "a/../b", "x.lock", "a//b", "a b", "x/"])
def test_a_branch_that_could_name_another_folder_is_refused(tree: Path, name: str) -> None:
    from reproml.orchestration.worktree import worktree_path

    with pytest.raises(PathError, match="branch="):
        worktree_path(tree, name)


def test_plain_branch_names_map_to_a_folder_under_worktrees(tree: Path) -> None:
    from reproml.orchestration.worktree import worktree_path

    for name in ("reproml/retrain", "reproml/simulation", "team_a/v1.2"):
        assert worktree_path(tree, name).parent == tree / ".reproml" / "worktrees"


def test_cli_file_options_are_refused_before_any_work(in_tree: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["monitor", "--batch", "../outside.csv"])
    assert done.exit_code == 2, done.output
    assert "--batch='../outside.csv'" in flat(done.output) and "outside the directories" in flat(done.output)
    done = runner.invoke(app, ["retrain", "--labelled", str(in_tree.parent / "outside.csv")])
    assert done.exit_code == 2, done.output
    assert "reproml retrain refused" in flat(done.output) and "--labelled=" in flat(done.output)
    assert not (in_tree / ".reproml" / "servers").exists()  # no Prefect server was started for it
    assert not (in_tree / "monitoring" / "records").exists()


@pytest.mark.integration
def test_a_flow_run_with_a_path_outside_fails_before_any_work(
    in_tree: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real Prefect engine and server: the flow run fails on its parameters, naming
    them, before it loads params, takes the training slot or opens a worktree."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.monitoring import monitoring
    from flows.training import training

    outside = str(in_tree.parent / "outside.csv")
    refused: dict[str, Callable[[], Any]] = {
        "labelled=" + repr(outside): lambda: training(root=str(in_tree), labelled=outside, return_state=True),
        "is not a reproml project": lambda: monitoring(root=str(in_tree.parent), return_state=True),
        "batch='data/../../outside.csv'": lambda: monitoring(
            root=str(in_tree), batch="data/../../outside.csv", return_state=True
        ),
    }
    with temporary_settings({PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as client:
        for message, call in refused.items():
            state = call()
            with pytest.raises(PathError, match=re.escape(message)):
                state.result()
            assert state.state_details.flow_run_id is not None
            runs = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            [recorded] = client.read_flow_runs(flow_run_filter=runs)
            assert recorded.state is not None and recorded.state.type.value == "FAILED"
            assert client.read_task_runs(flow_run_filter=runs) == []  # refused before its first task
    assert not (in_tree / ".reproml").exists()  # no worktree, no lock, no temp files
    assert not (in_tree / "monitoring" / "records").exists()


# --- a real pipeline: modes of every directory, and the CLI with paths allowed and refused --------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """`make install`'s DVC set-up (tests.project), `dvc repro`, a promotion and a monitored batch."""
    params = sampled_params(4000)
    params["monitor"].update({"min_rows": 50, "bootstrap_samples": 100})
    params["promote"]["bootstrap_samples"] = 100
    params["tune"]["n_trials"] = 2
    previous = os.umask(0o022)  # the usual umask, inherited by every command below
    p = Project(tmp_path_factory.mktemp("modes"), params)
    p.run("dvc", "repro")
    p.run("reproml", "promote")
    p.run("reproml", "monitor", "--batch", "2013-07")
    yield p
    os.umask(previous)


def open_to_others(root: Path) -> list[str]:
    """Directories anyone may write to without the sticky bit, and files anyone may write to."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            if mode & stat.S_IWOTH and not (stat.S_ISDIR(mode) and mode & stat.S_ISVTX):
                found.append(f"{stat.filemode(mode)} {path.relative_to(root)}")
    return found


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
@pytest.mark.integration
def test_nothing_is_world_writable_after_a_real_pipeline(pipeline: Project) -> None:
    root = pipeline.root
    site = root / paths.SITE_CACHE
    assert (site / "repo").is_dir() and any((site / "repo").iterdir())  # DVC used it
    assert stat.S_IMODE(site.stat().st_mode) == 0o700
    assert stat.S_IMODE((site / "repo").stat().st_mode) == 0o700
    for made in (".reproml", "registry", "monitoring/flights-late/records", "optuna", "mlartifacts"):
        assert (root / made).is_dir(), made
    assert open_to_others(root) == []


def test_make_install_makes_the_site_cache_private_in_an_older_clone(tmp_path: Path) -> None:
    """The Makefile's own `install` target (the .venv left as it is) tightens what DVC widened."""
    root = tmp_path / "clone"
    (root / ".dvc").mkdir(parents=True)
    (root / "Makefile").write_text((REPO / "Makefile").read_text())
    site = root / paths.SITE_CACHE
    (site / "repo").mkdir(parents=True)
    for folder in (site, site / "repo"):
        folder.chmod(0o777)  # as DVC leaves them
    venv = REPO / ".venv"
    done = subprocess.run(
        ["make", "-o", f"{venv}/.installed", "install", f"VENV={venv}"],
        cwd=root, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert [stat.S_IMODE(f.stat().st_mode) for f in (site, site / "repo")] == [0o700, 0o700]


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
@pytest.mark.integration
def test_cli_monitor_takes_files_in_data_and_refuses_others(pipeline: Project) -> None:
    p = pipeline
    production = pd.read_parquet(p.root / "data" / "prepared" / "production.parquet")
    production.head(80).to_parquet(p.root / "data" / "august.parquet", index=False)
    (p.root / "data" / "away.parquet").symlink_to(p.tmp / "away.parquet")
    production.head(80).to_parquet(p.tmp / "away.parquet", index=False)
    reproml = str(BIN / "reproml")
    done = p.run(reproml, "monitor", "--batch", "data/august.parquet")
    assert "monitoring/flights-late/records/august-" in done.stdout
    for refused in ("data/away.parquet", str(p.tmp / "away.parquet"), "../away.parquet"):
        done = p.run(reproml, "monitor", "--batch", refused, check=False)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "outside the directories" in flat(done.stdout + done.stderr)
    assert not list((p.root / "monitoring" / "flights-late" / "records").glob("away-*"))


# --- the torn-journal repair and Optuna's own journal lock ----------------------------------------

# A real Optuna writer in another process: it completes a trial through `study.tell`, whose append
# (under Optuna's own journal lock, as JournalFileBackend does it) pauses half-written until told
# to go on, as a slow disk or a large record would.
WRITER = r"""
import json, sys, time
from pathlib import Path
import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file
from reproml.stores import optuna as storage

path, flags = Path(sys.argv[1]), Path(sys.argv[2])
optuna.logging.set_verbosity(optuna.logging.WARNING)

def slow_append(self, logs):
    with get_lock_file(self._lock):
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode()
        with open(self._file_path, "ab") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            (flags / "half").touch()
            while not (flags / "go").exists():
                time.sleep(0.01)
            handle.write(data[len(data) // 2 :])
            handle.flush()

info = storage.StorageInfo("journal", str(path), path.parent / ".locks")
study = optuna.load_study(study_name="s", storage=storage.open_storage(info))
trial = study.ask()
trial.suggest_float("x", 0, 1)
JournalFileBackend.append_logs = slow_append
study.tell(trial, 0.5)
"""


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    """A journal with one study and two completed trials, written by Optuna."""
    path = tmp_path / "optuna" / "studies.journal"
    info = storage.StorageInfo("journal", str(path), path.parent / ".locks")
    study = optuna.create_study(study_name="s", storage=storage.open_storage(info))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    return path


def paused_writer(journal: Path, flags: Path) -> subprocess.Popen[bytes]:
    flags.mkdir()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(journal), str(flags)], cwd=REPO, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while not (flags / "half").exists():
        assert writer.poll() is None and time.monotonic() < deadline, "the writer never started its append"
        time.sleep(0.02)
    return writer


def states(journal: Path) -> list[str]:
    info = storage.StorageInfo("journal", str(journal), journal.parent / ".locks")
    study = optuna.load_study(study_name="s", storage=storage.open_storage(info))
    return [t.state.name for t in study.trials]


def test_the_repair_waits_for_a_live_writer_and_loses_no_trial(journal: Path, tmp_path: Path) -> None:
    writer = paused_writer(journal, tmp_path / "flags")
    try:
        outcome: dict[str, object] = {}
        repair = threading.Thread(target=lambda: outcome.update(backup=storage.repair_journal(journal)))
        repair.start()
        time.sleep(1.5)  # the writer holds Optuna's lock with half a record written
        waited = repair.is_alive()
        (tmp_path / "flags" / "go").touch()
        repair.join(timeout=60)
        assert writer.wait(timeout=60) == 0
    finally:
        if writer.poll() is None:
            os.killpg(writer.pid, signal.SIGKILL)
    assert states(journal) == ["COMPLETE"] * 3  # the live writer's trial is whole
    assert waited, "the repair did not wait for Optuna's journal lock"
    assert outcome == {"backup": None} and not list(journal.parent.glob("*.bak"))


def test_a_writer_killed_mid_append_leaves_a_torn_tail_that_is_still_repaired(
    journal: Path, tmp_path: Path
) -> None:
    whole = journal.read_bytes()
    writer = paused_writer(journal, tmp_path / "flags")
    os.killpg(writer.pid, signal.SIGKILL)  # dies holding Optuna's lock, half a record written
    writer.wait()
    lock = Path(f"{journal}.lock")
    assert lock.exists() and not journal.read_bytes().endswith(b"\n")
    began = time.monotonic()
    with pytest.warns(UserWarning, match="torn record"):
        backup = storage.repair_journal(journal, grace_period=3)  # Optuna's stale-lock rule, shortened
    assert time.monotonic() - began >= 3  # the dead writer's lock was honoured until it went stale
    assert backup is not None and journal.read_bytes().startswith(whole)
    assert journal.read_bytes().endswith(b"\n") and not lock.exists()
    assert states(journal) == ["COMPLETE", "COMPLETE", "RUNNING"]  # tune marks the last one FAIL
