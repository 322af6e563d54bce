"""The team stack against the real engines: PostgreSQL, MLflow and Prefect servers, Dask, the S3 stand-in.

One stack is started for the whole test session (`team_stack`), in a throw-away project folder, the
way `make team-up` starts it; the fixture's teardown stops it and checks with psutil that no
process of it is left (`tests/conftest.py`: other team modules share the stack, so no test may
stop it). Without PostgreSQL installed the tests skip locally and fail under CI=true (`.ci/run`
installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reproml.team import processes, stack
from reproml.team.layout import BUCKET, Layout, TeamError, choose_ports, password
from reproml.team.services import DASK_WORKERS, PREFECT_WORKERS, SERVICES
from tests.conftest import clean_env, team_env
from tests.project import BIN, Project, sampled_params

pytestmark = [pytest.mark.team, pytest.mark.integration]


def python(code: str, env: dict[str, str], cwd: Path, timeout: float = 240) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_bad_port_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPROML_TEAM_MLFLOW_PORT", "http")
    with pytest.raises(TeamError, match="REPROML_TEAM_MLFLOW_PORT='http' is not a port number"):
        choose_ports(Layout(tmp_path), keep=False)


def test_a_lost_secrets_file_is_named_instead_of_a_cluster_that_refuses_every_login(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.pg_dir.mkdir(parents=True)
    (layout.pg_dir / "PG_VERSION").write_text("15\n")
    with pytest.raises(
        TeamError, match=r"secrets is gone but the cluster in .*pg was made with the password"
    ):
        stack.up(tmp_path, timeout=30)
    assert processes.ours(tmp_path) == {}
    assert not layout.secrets.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands PostgreSQL to the postgres user")
def test_a_folder_the_postgres_user_cannot_enter_is_refused_before_anything_starts(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    (locked / "project").mkdir(parents=True)
    locked.chmod(0o700)
    with pytest.raises(TeamError, match=r"cannot enter /\S+ \(mode 0o700\): `chmod o\+x /"):
        stack.up(locked / "project", timeout=30)
    assert processes.ours(locked / "project") == {}
    assert not (locked / "project" / ".reproml" / "team" / "pg").exists()


def test_up_again_starts_nothing_and_status_shows_every_service_ready(team_stack: Path) -> None:
    again = stack.up(team_stack)
    assert again.started == []
    assert sorted(again.running) == sorted(SERVICES)
    rows = stack.status(team_stack)
    assert [r.name for r in rows] == list(SERVICES)
    assert all(r.pids and r.healthy for r in rows), rows
    shown = subprocess.run(
        [sys.executable, "-m", "reproml.team", "status", "--root", str(team_stack)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert all(name in shown.stdout for name in SERVICES)


def test_secrets_and_env_are_private_and_the_password_is_written_nowhere_else(team_stack: Path) -> None:
    layout = Layout(team_stack)
    secret = password(layout)
    assert secret and len(secret) >= 24
    for private in (layout.secrets, layout.env_file):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert secret not in layout.env_file.read_text()
    for log in layout.dir.glob("*.log"):
        assert secret not in log.read_text(errors="replace"), log
    for procs in processes.ours(team_stack).values():
        for process in procs:
            assert not any(secret in arg for arg in process.cmdline()), process.cmdline()
    env = team_env(team_stack)
    assert set(env) >= {"MLFLOW_TRACKING_URI", "PREFECT_API_URL", "REPROML_TUNE_STORAGE", "PGPASSFILE",
                        "DASK_SCHEDULER_ADDRESS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                        "AWS_ENDPOINT_URL"}  # fmt: skip
    assert all(value.startswith(("http://127.0.0.1:", "tcp://127.0.0.1:")) for key, value in env.items()
               if key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "DASK_SCHEDULER_ADDRESS"))  # fmt: skip


def test_every_engine_answers_through_the_env_file(team_stack: Path, tmp_path: Path) -> None:
    """MLflow logs a run with an artifact (served), Optuna runs a study on PostgreSQL, Dask runs a
    task on each worker, Prefect shows the pool's two workers online, the S3 bucket exists."""
    code = """
import json, os, tempfile, urllib.request
import mlflow, optuna, boto3
from distributed import Client
out = {}
exp = mlflow.set_experiment("team-check")
with mlflow.start_run() as run:
    mlflow.log_metric("m", 1.0)
    mlflow.log_text("hello", "note.txt")
out["artifact_uri"] = run.info.artifact_uri
out["experiment_root"] = exp.artifact_location
out["note"] = mlflow.artifacts.load_text(run.info.artifact_uri + "/note.txt")
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(study_name="team-check", storage=os.environ["REPROML_TUNE_STORAGE"],
                            load_if_exists=True)
study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
out["trials"] = len(study.trials)
with Client(os.environ["DASK_SCHEDULER_ADDRESS"], timeout=30) as client:
    out["dask_workers"] = sorted(i["name"] for i in client.scheduler_info()["workers"].values())
    out["dask_sum"] = client.submit(sum, [1, 2, 3]).result()
api = os.environ["PREFECT_API_URL"]
pool = os.environ["REPROML_TEAM_WORK_POOL"]
request = urllib.request.Request(api + "/work_pools/" + pool + "/workers/filter", data=b"{}",
                                 headers={"Content-Type": "application/json"})
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
out["prefect_workers"] = sorted(w["name"] for w in json.load(opener.open(request)) if w["status"] == "ONLINE")
out["buckets"] = [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
print(json.dumps(out))
"""
    found = json.loads(python(code, clean_env(team_stack), tmp_path).strip().splitlines()[-1])
    assert found["experiment_root"].startswith("mlflow-artifacts:"), found
    assert found["artifact_uri"].startswith("mlflow-artifacts:"), found
    assert found["note"] == "hello"
    assert list((Layout(team_stack).artifacts).rglob("note.txt")), "the server did not store the artifact"
    assert found["trials"] >= 3
    assert found["dask_workers"] == sorted(DASK_WORKERS) and found["dask_sum"] == 6
    assert found["prefect_workers"] == sorted(f"{w}@127.0.0.1" for w in PREFECT_WORKERS)
    assert BUCKET in found["buckets"]


def test_dvc_push_and_pull_against_the_s3_stand_in(team_stack: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**clean_env(team_stack), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", "HOME": str(tmp_path)}  # fmt: skip
    endpoint = team_env(team_stack)["AWS_ENDPOINT_URL"]

    def run(*args: str) -> str:
        done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done.stdout

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("dvc", "config", "core.analytics", "false")
    run("dvc", "remote", "add", "-d", "team", f"s3://{BUCKET}/{tmp_path.name}")
    run("dvc", "remote", "modify", "team", "endpointurl", endpoint)
    data = repo / "data.csv"
    data.write_text("a,b\n1,2\n3,4\n")
    run("dvc", "add", "data.csv")
    run("dvc", "push")
    shutil.rmtree(repo / ".dvc" / "cache")
    data.unlink()
    run("dvc", "pull")
    assert data.read_text() == "a,b\n1,2\n3,4\n"


# `slow`: tests/test_team_records.py runs the same pipeline on the team server (and more) in CI
@pytest.mark.slow
def test_dvc_repro_logs_to_the_team_server_and_promote_loads_through_mlflow_artifacts(
    team_stack: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The project's pipeline on a tiny sample, tracked on the team MLflow server, tuned on the team
    PostgreSQL: the model's files live on the server (`mlflow-artifacts:`), and `promote` downloads
    them, checks their digest and loads them."""
    project = Project(tmp_path_factory.mktemp("team-project"), sampled_params(3000))
    project.env.update(team_env(team_stack))
    project.run("dvc", "repro", timeout=900)
    promoted = project.run("reproml", "promote", timeout=300)
    code = """
import json, mlflow
from mlflow.tracking import MlflowClient
client = MlflowClient()
name = [m.name for m in client.search_registered_models()][0]
aliases = client.get_registered_model(name).aliases
version = client.get_model_version_by_alias(name, "champion" if "champion" in aliases else "challenger")
run = client.get_run(version.run_id)
print(json.dumps({"source": version.source,
                  "download": client.get_model_version_download_uri(name, version.version),
                  "root": client.get_experiment(run.info.experiment_id).artifact_location}))
"""
    found = json.loads(python(code, project.env, project.root).strip().splitlines()[-1])
    assert found["root"].startswith("mlflow-artifacts:"), (found, promoted.stdout)
    assert found["download"].startswith("mlflow-artifacts:"), found
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    assert params["data"]["sample_rows"] == 3000
