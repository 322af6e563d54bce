"""Faults across processes, with real processes: one training per workspace (the training lock),
`kill -9` in the middle of `dvc repro`, a locked MLflow store, a full disk.

One sampled project (tune off, so a repro takes seconds) serves the module; each test leaves it
in a state `dvc repro` can complete. Disks are filled for real: a small tmpfs where this process
may mount one (root), and a file size limit (RLIMIT_FSIZE, EFBIG) everywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.project import BIN, Project, sampled_params

pytestmark = pytest.mark.integration
OUTPUT_DIRS = ("data", "models", "metrics", "plots", "predictions")


def lock_params() -> dict[str, Any]:
    params = sampled_params()
    params["tune"]["enabled"] = False
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    p = Project(tmp_path_factory.mktemp("locks"), lock_params())
    p.run("dvc", "repro")
    return p


@pytest.fixture
def wait_zero(project: Project) -> Iterator[None]:
    """Contenders refuse at once instead of waiting (REPROML_LOCK_WAIT_S=0)."""
    project.env["REPROML_LOCK_WAIT_S"] = "0"
    yield
    del project.env["REPROML_LOCK_WAIT_S"]


@pytest.fixture
def short_store_wait(project: Project) -> Iterator[None]:
    """A locked store is given up on after 2 s instead of MLflow's 20 (REPROML_STORE_WAIT_S)."""
    project.env["REPROML_STORE_WAIT_S"] = "2"
    yield
    del project.env["REPROML_STORE_WAIT_S"]


def start(p: Project, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A command of the project in its own process group (so SIGKILL can take the whole group)."""
    return subprocess.Popen(
        list(args), cwd=p.root, env={**p.env, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 240, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def holder_record(root: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((root / ".reproml" / "locks" / "training.holder.json").read_text()))
    except (OSError, ValueError):
        return None


def sql_rows(p: Project, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Straight from SQLite: polling must be quicker than a stage, and must not go through MLflow."""
    with contextlib.closing(sqlite3.connect(p.root / "mlflow.db", timeout=30)) as db:
        return list(db.execute(query, args).fetchall())


def train_runs(p: Project) -> dict[str, str]:
    """run id -> status of every train run."""
    rows = sql_rows(
        p,
        "SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = 'reproml.stage' AND t.value = 'train'",
    )
    return {str(run): str(status) for run, status in rows}


def running_train_run(p: Project, known: set[str]) -> str | None:
    """A train run not in `known` that is RUNNING now."""
    return next((r for r, s in train_runs(p).items() if r not in known and s == "RUNNING"), None)


def client(p: Project) -> MlflowClient:
    return MlflowClient(tracking_uri=p.tracking_uri())


def temp_files(p: Project) -> list[Path]:
    return [f for d in OUTPUT_DIRS for f in (p.root / d).rglob(".*.tmp")]


def flat(text: str) -> str:
    """Command output with Rich's line wrapping undone."""
    return " ".join(text.split())


def latest_train_run(p: Project) -> str:
    rows = sql_rows(
        p,
        "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = 'reproml.stage' AND t.value = 'train' ORDER BY r.start_time DESC LIMIT 1",
    )
    return str(rows[0][0])


# --- one training per workspace ------------------------------------------------------------------


def test_two_trainings_in_one_workspace_run_one_after_the_other(project: Project) -> None:
    """Two `reproml train` at once: the second waits, says who holds the lock, then runs."""
    p = project
    before = set(train_runs(p))
    first = start(p, "reproml", "train")
    try:
        wait_until(lambda: running_train_run(p, before) or first.poll() is not None, "the first run to start")
        second = start(p, "reproml", "train")
        out_second, _ = second.communicate(timeout=600)
    finally:
        out_first, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out_first
    assert second.returncode == 0, out_second
    said = flat(out_second)
    assert f"held by pid {first.pid} " in said and "(`reproml train`) since 20" in said, said
    assert "REPROML_LOCK_WAIT_S" in said
    assert "waiting" not in out_first

    runs = {r: client(p).get_run(r) for r in set(train_runs(p)) - before}
    by_pid = {run.data.tags["reproml.pid"]: run.info for run in runs.values()}
    one, two = by_pid[str(first.pid)], by_pid[str(second.pid)]
    assert one.status == two.status == "FINISHED"
    assert two.start_time >= one.end_time, "the second training's run started before the first ended"
    assert holder_record(p.root) is None  # the last holder cleaned up


NESTED_HOLDER = textwrap.dedent(
    """
    import os, subprocess, sys
    from pathlib import Path
    from reproml.training_lock import training_lock

    with training_lock(Path("."), command="test training flow") as holder:
        print("HELD", holder.pid, flush=True)
        sys.stdin.readline()  # the test checks outsiders are refused meanwhile
        env = {**os.environ, "REPROML_LOCK_WAIT_S": "60"}  # a deadlock fails in a minute
        done = subprocess.run(["dvc", "repro", "--force", "--single-item", "evaluate"],
                              env=env, capture_output=True, text=True)
        print("CHILD", done.returncode, flush=True)
        print(done.stdout + done.stderr, flush=True)
    """
)


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
@pytest.mark.usefixtures("wait_zero")
def test_stages_started_by_the_holder_run_inside_its_lock(project: Project) -> None:
    """What the training flow does: hold the lock, run `dvc repro` whose stage runs nested in it,
    while an outsider asking with REPROML_LOCK_WAIT_S=0 is refused at once, naming the holder.
    (evaluate also completes the run the previous test's second `reproml train` left unevaluated.)"""
    p = project
    holder = subprocess.Popen(
        [str(BIN / "python"), "-c", NESTED_HOLDER], cwd=p.root, env=p.env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert holder.stdin is not None and holder.stdout is not None
    try:
        line = holder.stdout.readline()
        assert line.startswith("HELD"), line + holder.stdout.read()
        started = time.monotonic()
        refused = p.run("reproml", "promote", check=False)
        elapsed = time.monotonic() - started
        holder.stdin.write("go\n")
        holder.stdin.flush()
        rest = holder.stdout.read()
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert refused.returncode == 2
    message = flat(refused.stdout + refused.stderr)
    assert f"held by pid {holder.pid} " in message and "(`test training flow`)" in message, message
    assert "Traceback" not in message
    assert "CHILD 0" in rest, rest
    assert "waiting" not in rest, rest
    assert elapsed < 60  # refused without waiting (the command's own start-up is the rest)


DOOMED_HOLDER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from pathlib import Path
    from reproml.training_lock import training_lock

    member = (
        "import sys, time\\n"
        "from pathlib import Path\\n"
        "from reproml.training_lock import training_lock\\n"
        "with training_lock(Path(sys.argv[1]), wait_s=0):\\n"
        "    print('MEMBER', flush=True)\\n"
        "    time.sleep(float(sys.argv[2]))\\n"
        "    (Path(sys.argv[1]) / 'member-done').touch()\\n"
    )
    with training_lock(Path(sys.argv[1]), command="doomed") as holder:
        if float(sys.argv[2]) > 0:
            child = subprocess.Popen([sys.executable, "-c", member, sys.argv[1], sys.argv[2]],
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
            print(child.stdout.readline().strip(), child.pid, flush=True)
        print("HELD", flush=True)
        time.sleep(600)
    """
)


def doomed_holder(root: Path, member_s: float) -> tuple[subprocess.Popen[str], int | None]:
    """A process holding the lock (and a nested member living `member_s` s); returns the member pid."""
    proc = subprocess.Popen(
        [sys.executable, "-c", DOOMED_HOLDER, str(root), str(member_s)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    member = None
    if member_s > 0:
        line = proc.stdout.readline().split()
        assert line[0] == "MEMBER", line
        member = int(line[1])
    assert proc.stdout.readline().strip() == "HELD"
    return proc, member


def test_a_holder_killed_with_sigkill_blocks_nobody(tmp_path: Path) -> None:
    from reproml.training_lock import TrainingLockTimeoutError, training_lock

    proc, _ = doomed_holder(tmp_path, 0)
    busy = rf"held by pid {proc.pid} .*`doomed`\) since"
    with pytest.raises(TrainingLockTimeoutError, match=busy), training_lock(tmp_path, wait_s=0.5):
        pass
    proc.kill()
    proc.wait(timeout=30)
    started = time.monotonic()
    with training_lock(tmp_path, wait_s=5, command="next") as holder:
        assert holder.pid == os.getpid() and holder.command == "next"
    assert time.monotonic() - started < 2


def test_stages_orphaned_by_a_killed_holder_finish_before_the_next_training(tmp_path: Path) -> None:
    """The training flow killed with SIGKILL leaves its running stage behind: the next holder waits
    for that stage, not forever."""
    from reproml.training_lock import training_lock

    proc, member = doomed_holder(tmp_path, 4.0)
    proc.kill()
    proc.wait(timeout=30)
    assert member is not None and running(member)
    messages: list[str] = []
    with training_lock(tmp_path, wait_s=60, notify=messages.append):
        done = (tmp_path / "member-done").exists()
    assert done, "took the lock while a stage of the dead holder still ran"
    assert any("earlier holder" in m and "doomed" in m for m in messages), messages


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- kill -9 in the middle of dvc repro ----------------------------------------------------------


def _complete(path: Path) -> bool:
    """The file reads as a whole one of its kind (a half-written file does not)."""
    import joblib

    with contextlib.suppress(Exception):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".parquet":
            pd.read_parquet(path)
        elif path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".joblib":
            joblib.load(path)  # our own file, written by the test's pipeline
        return True
    return False


def _kill_mid_repro(p: Project, ready: Callable[[], Any], what: str) -> str:
    """`dvc repro` until `ready()` says the stage is in the middle of its work; SIGKILL its whole
    process group; return the output."""
    repro = start(p, "dvc", "repro")
    try:
        wait_until(lambda: ready() or repro.poll() is not None, what)
        assert repro.poll() is None, f"dvc repro ended before {what}:\n{repro.communicate()[0]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(repro.pid, signal.SIGKILL)
        output, _ = repro.communicate(timeout=60)
    wait_until(lambda: not _group_alive(repro.pid), "the killed process group to be gone", timeout=30)
    return output


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    return True
    return False


def _assert_nothing_half_written(p: Project) -> None:
    for folder in OUTPUT_DIRS:
        for path in (p.root / folder).rglob("*"):
            if (
                path.is_file()
                and not path.name.startswith(".")
                and path.suffix in (".json", ".parquet", ".csv", ".joblib")
            ):
                assert _complete(path), f"{path} is half-written"


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_kill_9_during_train_leaves_dvc_lock_and_outputs_whole(project: Project) -> None:
    p = project
    params = yaml.safe_load((p.root / "params.yaml").read_text())
    params["train"]["xgboost"]["max_depth"] = int(params["train"]["xgboost"]["max_depth"]) + 1
    p.write_params(params)  # train (and evaluate, register) are stale
    lock_before = p.lock()["stages"]
    known = set(train_runs(p))

    started = time.time()

    def logging_the_model() -> bool:
        """The run is open and the model file is written: train is logging it to MLflow."""
        model = p.root / "models" / "model.joblib"
        return bool(running_train_run(p, known)) and model.is_file() and model.stat().st_mtime > started

    _kill_mid_repro(p, logging_the_model, "the train stage to log its model")
    (killed,) = set(train_runs(p)) - known
    # tune (off: it only records that) completed and DVC recorded it; train and after are as they were
    after = p.lock()["stages"]
    assert [after.get(s) for s in ("train", "evaluate", "register")] == [
        lock_before[s] for s in ("train", "evaluate", "register")
    ]
    _assert_nothing_half_written(p)
    assert client(p).get_run(killed).info.status == "RUNNING"  # nothing marks it without a next run

    done = p.run("dvc", "repro")
    assert "Running stage 'train'" in done.stdout
    assert client(p).get_run(killed).info.status == "KILLED"
    assert "ended without ending the run" in client(p).get_run(killed).data.tags["reproml.killed_reason"]
    assert p.run("dvc", "status", "--json").stdout.strip() in ("{}", "")
    assert temp_files(p) == []
    (fresh,) = set(train_runs(p)) - known - {killed}
    assert client(p).get_run(fresh).info.status == "FINISHED"


# ~20 s: the default suite's kill -9 mid-stage (the train-stage kill above is `slow`)
def test_kill_9_during_evaluate_leaves_dvc_lock_and_outputs_whole(project: Project) -> None:
    p = project
    params = yaml.safe_load((p.root / "params.yaml").read_text())
    params["evaluate"]["importance_repeats"] = int(params["evaluate"]["importance_repeats"]) + 1
    p.write_params(params)
    lock_before = p.lock()["stages"]
    run_id = latest_train_run(p)
    assert train_runs(p)[run_id] == "FINISHED"

    def mid_evaluate() -> bool:
        running = train_runs(p).get(run_id) == "RUNNING"  # evaluate reopened the train run
        return running and any((p.root / "plots").glob("*.csv"))  # and has begun writing plots

    _kill_mid_repro(p, mid_evaluate, "evaluate to be writing its plots")
    assert p.lock()["stages"] == lock_before  # evaluate was the first stale stage
    _assert_nothing_half_written(p)
    assert client(p).get_run(run_id).info.status == "RUNNING"
    assert "evaluate" in p.run("dvc", "status").stdout  # DVC knows the stage did not complete

    done = p.run("dvc", "repro")
    assert "Running stage 'evaluate'" in done.stdout
    run = client(p).get_run(run_id)
    # evaluate's next start marked the killed attempt, then completed the same run
    assert "ended without ending the run" in run.data.tags["reproml.killed_reason"]
    assert run.info.status == "FINISHED" and run.data.tags["reproml.evaluated"] == "true"
    assert p.run("dvc", "status", "--json").stdout.strip() in ("{}", "")
    assert temp_files(p) == []


# --- a locked MLflow store -----------------------------------------------------------------------


@contextlib.contextmanager
def exclusive(database: Path) -> Iterator[sqlite3.Connection]:
    """Another process's write lock on the store: a real SQLite connection inside BEGIN EXCLUSIVE."""
    db = sqlite3.connect(database, timeout=60, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield db
        db.execute("COMMIT")
    finally:
        db.close()


@pytest.mark.usefixtures("short_store_wait")
def test_a_locked_store_is_a_clear_error_naming_it(project: Project) -> None:
    p = project
    with exclusive(p.root / "mlflow.db"):
        started = time.monotonic()
        done = p.run("reproml", "register", check=False)
        elapsed = time.monotonic() - started
    out = flat(done.stdout + done.stderr)
    assert done.returncode == 2, out
    assert f"MLflow store {p.root / 'mlflow.db'} is locked" in out, out
    assert "fuser -v" in out and "Traceback" not in out
    assert elapsed < 60, "REPROML_STORE_WAIT_S was not honoured"


@pytest.mark.usefixtures("short_store_wait")
def test_a_store_locked_mid_run_ends_the_run_failed(project: Project) -> None:
    """The lock arrives while `reproml train` has its run open: a clear error, and the run, which
    cannot be ended while the store is locked, ends FAILED (with why) when the next run starts."""
    from reproml.stores.mlflow import connection, runs

    p = project
    known = set(train_runs(p))
    train = start(p, "reproml", "train")
    try:
        run_id = wait_until(
            lambda: running_train_run(p, known) or (train.poll() is not None and "ended"),
            "the train run to start",
        )
        assert run_id != "ended", train.communicate()[0]
        with exclusive(p.root / "mlflow.db") as db:
            output, _ = train.communicate(timeout=300)
            status = db.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(train.pid, signal.SIGKILL)
    assert train.returncode == 2, output
    assert f"MLflow store {p.root / 'mlflow.db'} is locked" in flat(output), output
    assert "Traceback" not in output
    assert status == "RUNNING"  # it could not be ended while locked

    experiment = connection.setup(p.root, "reproml")
    with runs.tracked_run(experiment, run_name="next"):
        pass
    run = client(p).get_run(run_id)
    assert run.info.status == "FAILED"
    assert "locked" in run.data.tags["reproml.failed_reason"]
    p.run("dvc", "repro")  # back to a complete pipeline for the tests after this one


# --- a full disk ---------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "16k") -> Iterator[Path]:
    """A real, tiny file system mounted at `folder` (tmpfs); skips where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the RLIMIT_FSIZE test covers it")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def big_frame() -> pd.DataFrame:
    import numpy as np

    return pd.DataFrame({"x": np.random.default_rng(0).random(50_000)})


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    from reproml.io import DiskFullError, write_json, write_parquet, write_text

    with small_disk(tmp_path / "disk") as disk:
        target = disk / "metrics.json"
        write_json(target, {"old": True})
        writes: list[Callable[[], object]] = [
            lambda: write_parquet(target, big_frame()),
            lambda: write_json(target, {"values": list(range(20_000))}),
            lambda: write_text(target, "x" * 100_000),
        ]
        for write in writes:
            with pytest.raises(DiskFullError, match=re.escape(f"could not write {target}: no space left on")):
                write()
            assert json.loads(target.read_text()) == {"old": True}
            assert [f.name for f in disk.iterdir()] == ["metrics.json"]  # no temp file left


FSIZE_WRITER = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    import numpy as np, pandas as pd
    from reproml.errors import ReproError
    from reproml.io import write_parquet
    target = Path(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    try:
        write_parquet(target, pd.DataFrame({"x": np.random.default_rng(0).random(50_000)}))
        print(json.dumps({"error": None}))
    except ReproError as exc:
        print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
    """
)


def test_a_file_size_limit_names_the_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    """EFBIG from RLIMIT_FSIZE (Python ignores SIGXFSZ, so the write fails instead of the process)."""
    target = tmp_path / "out" / "train.parquet"
    target.parent.mkdir()
    target.write_bytes(b"old")
    done = subprocess.run([sys.executable, "-c", FSIZE_WRITER, str(target)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["type"] == "DiskFullError", result
    assert f"could not write {target}: file too large" in result["error"] and "(EFBIG)" in result["error"]
    assert target.read_bytes() == b"old"
    assert [f.name for f in target.parent.iterdir()] == ["train.parquet"]


def test_a_full_disk_at_a_stage_is_a_clear_error(project: Project) -> None:
    """`reproml prepare` writing its splits onto a full file system: the file named, exit 2, no
    traceback, nothing half-written; the splits underneath are untouched once it is gone."""
    p = project
    prepared = p.root / "data" / "prepared"
    before = {f.name: f.read_bytes() for f in prepared.iterdir()}
    with small_disk(prepared):
        done = p.run("reproml", "prepare", check=False)
        left = [f.name for f in prepared.iterdir()]
    out = flat(done.stdout + done.stderr)
    assert done.returncode == 2, out
    assert "could not write data/prepared/" in out and "no space left on the device (ENOSPC)" in out, out
    assert "Traceback" not in out
    assert not [name for name in left if name.endswith(".tmp")], left
    assert {f.name: f.read_bytes() for f in prepared.iterdir()} == before


def test_a_temp_file_of_a_killed_writer_is_swept_by_the_next_write(tmp_path: Path) -> None:
    from reproml.io import process_start, write_json

    target = tmp_path / "metrics.json"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    orphan = tmp_path / f".metrics.json.{dead.stdout.strip()}-1.abc123.tmp"
    orphan.write_text("{half")
    mine = tmp_path / f".metrics.json.{os.getpid()}-{process_start(os.getpid())}.xyz789.tmp"
    mine.write_text("{in progress")
    write_json(target, {"a": 1})
    assert not orphan.exists()
    assert mine.exists()  # a live writer's temp file is left alone


def test_a_full_disk_under_mlflow_artifacts_fails_the_run_clearly(project: Project) -> None:
    """A write MLflow makes (the model's artifacts) on a full disk: the file named at the stage's
    edge, exit 2, no traceback, and the run FAILED rather than RUNNING."""
    p = project
    known = set(train_runs(p))
    with small_disk(p.root / "mlartifacts"):
        done = p.run("reproml", "train", check=False)
    out = flat(done.stdout + done.stderr)
    assert done.returncode == 2, out
    assert f"could not write {p.root / 'mlartifacts'}/" in out and "(ENOSPC)" in out, out
    assert "Traceback" not in out
    (run_id,) = set(train_runs(p)) - known
    assert client(p).get_run(run_id).info.status == "FAILED"
