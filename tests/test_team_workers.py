"""Retrains on the team stack's Prefect workers: `reproml deploy --pool` registers the flows with a
`git_clone` pull step of the project's repository (a bare repository under the stack's folder
stands in for the remote), a process worker clones it and runs the flow there, and the
`reproml-retrain` concurrency limit lets one retrain at a time through, whichever worker runs it.

The ordering test runs a tiny flow holding the same slot as the training flow (`flows/slot.py`),
long enough that the two runs meet; the full retrain on a worker (3,000 sampled rows, tuning off)
moves the shared MLflow server's champion and pushes its data version to the team's S3 remote:
~70-130 s on 2 busy cores, so it is not marked `slow`; a fresh clone of the branch it pushed then
rebuilds its run `identical` with only the team variables (~40 s). Two real retrains started
together run one after the other (`slow`, ~2.7 min). A worker killed with SIGKILL
mid-run (`slow`, ~2.5 min: lost runs are found after 90 s without a heartbeat) runs last and
starts it again; a
worker killed under a training run that has pushed its branch (`slow`, ~8 min) sees the rerun
resume after it, doing nothing twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from reproml.errors import ReproError
from reproml.orchestration.deploy import ENTRYPOINTS, git_source, pool_specs
from reproml.orchestration.training import TEAM_LIMIT, limit_name, slot_name
from reproml.paths import site_cache
from reproml.team import stack
from reproml.team.layout import WORK_POOL
from tests.conftest import default_params, team_env
from tests.project import BIN, Project, sampled_params

MODEL = "workers-late"  # this module's own registered model on the shared MLflow server
PROBE = '''"""Holds the retrain slot (as the training flow does) for a while: the team tests' probe."""
import os
import signal
import time
from pathlib import Path

from prefect import flow, get_run_logger

from flows.slot import retrain_slot


@flow(name="slot-probe")
def probe(hold_s: float = 20.0, lease_s: float = 120.0) -> int:
    log = get_run_logger()
    log.info("probe pid %d in %s", os.getpid(), Path.cwd())
    with retrain_slot(Path.cwd(), log, lease_s):
        time.sleep(hold_s)
    log.info("probe done")  # its one effect: counted by the fault test
    return os.getpid()
'''
DEPLOY_PROBE = """
import sys
from prefect import Flow
from prefect.runner.storage import GitRepository
from reproml.orchestration.deploy import RERUN_TAG, pool_job_env
source = GitRepository(url=sys.argv[1], branch="main")
Flow.from_source(source=source, entrypoint="flows/probe.py:probe").deploy(
    name="probe", work_pool_name=sys.argv[2], print_next_steps=False, tags=[RERUN_TAG],
    job_variables={"env": pool_job_env()})
"""


# --- without the stack -----------------------------------------------------------------------------


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def test_the_source_is_the_remote_and_branch_and_what_workers_cannot_use_is_refused(
    tmp_path: Path,
) -> None:
    root = tmp_path / "p"
    root.mkdir()
    _git(root, "init", "-q", "-b", "work")
    with pytest.raises(ReproError, match=r"no git remote `origin`.*--repo"):
        git_source(root)
    (tmp_path / "remote.git").mkdir()
    _git(root, "remote", "add", "origin", "../remote.git")
    found = git_source(root)
    assert found.url == str((tmp_path / "remote.git").resolve())
    assert found.branch == "work"
    assert git_source(root, str(tmp_path / "remote.git"), "main").url == str(
        (tmp_path / "remote.git").resolve()
    )
    assert git_source(root, "https://git.example/p.git", "main").branch == "main"
    with pytest.raises(ReproError, match="carries a password"):
        git_source(root, "https://me:s3cret@git.example/p.git")


def test_pool_deployments_run_in_the_workers_clone_and_share_one_retrain_limit(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params()))
    specs = pool_specs(tmp_path)
    assert {s.flow for s in specs} == {"monitoring", "training"}
    assert all("root" not in s.parameters for s in specs)
    assert all(s.flow in ENTRYPOINTS for s in specs)
    assert slot_name(tmp_path, team=True) == TEAM_LIMIT == slot_name(tmp_path / "other", team=True)
    assert slot_name(tmp_path, team=False) == limit_name(tmp_path) != limit_name(tmp_path / "other")


def test_the_team_remote_comes_from_the_environment_without_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reproml.env import DVC_REMOTE_ENV, DVC_REMOTE_URL_ENV
    from reproml.stores.dvc import shared_remote

    monkeypatch.delenv(DVC_REMOTE_URL_ENV, raising=False)
    monkeypatch.delenv(DVC_REMOTE_ENV, raising=False)
    assert shared_remote() is None
    monkeypatch.setenv(DVC_REMOTE_URL_ENV, "s3://bucket/dvc")
    assert shared_remote() == ("team", "s3://bucket/dvc")
    monkeypatch.setenv(DVC_REMOTE_ENV, "shared")
    assert shared_remote() == ("shared", "s3://bucket/dvc")
    monkeypatch.setenv(DVC_REMOTE_ENV, "bad name;")
    with pytest.raises(ReproError, match=DVC_REMOTE_ENV):
        shared_remote()
    monkeypatch.setenv(DVC_REMOTE_ENV, "team")
    monkeypatch.setenv(DVC_REMOTE_URL_ENV, "https://key:secret@s3.example/bucket")
    with pytest.raises(ReproError, match="carries credentials") as refused:
        shared_remote()
    assert "secret" not in str(refused.value)


def test_pool_runs_beat_and_silent_ones_are_crashed_or_run_again_by_their_tag(tmp_path: Path) -> None:
    """Not forced, only for runs tagged as the pool's (whose deployments set the heartbeat), and
    only after three missed beats; monitoring is crashed, training (which resumes) run again."""
    from flows.deploy import zombie_automation
    from reproml.orchestration.deploy import HEARTBEAT_S, POOL_TAG, RERUN_TAG, ZOMBIE_AFTER_S, pool_job_env

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params()))
    tags = {s.flow: set(s.tags) & {POOL_TAG, RERUN_TAG} for s in pool_specs(tmp_path)}
    assert tags == {"monitoring": {POOL_TAG}, "training": {RERUN_TAG}}
    assert pool_job_env() == {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}
    for tag, state in ((POOL_TAG, "CRASHED"), (RERUN_TAG, "SCHEDULED")):
        automation = zombie_automation(tag)
        trigger, (action,) = automation.trigger, automation.actions
        assert trigger.posture == "Proactive" and trigger.after == {"prefect.flow-run.heartbeat"}
        assert "prefect.flow-run.Completed" in trigger.expect
        assert trigger.within.total_seconds() == ZOMBIE_AFTER_S >= 3 * HEARTBEAT_S
        assert trigger.match_related["prefect.resource.id"] == [f"prefect.tag.{tag}"]
        assert action.state.value == state and action.force is False


def test_a_rerun_finds_the_dvc_lock_commit_its_flow_run_published_and_no_other(tmp_path: Path) -> None:
    from reproml.orchestration.training import FLOW_RUN_TRAILER, earlier_commit, lock_message

    root = tmp_path / "p"
    root.mkdir()
    _git(root, "init", "-q", "-b", "retrain")
    _git(root, "config", "user.email", "t@example.org")
    _git(root, "config", "user.name", "t")
    mine, other = "0f3c1a2e-9b7d-4c11-8e2f-5a6b7c8d9e0f", "7d2e4f60-1111-4222-8333-944455556666"
    assert earlier_commit(root, mine) is None  # no commit at all yet
    for i, run_id in enumerate((other, None, mine, None)):
        (root / "dvc.lock").write_text(f"v{i}\n")
        _git(root, "add", "dvc.lock")
        _git(root, "commit", "-q", "-m", lock_message("on demand", run_id))
    shas = subprocess.run(
        ["git", "log", "--format=%H"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    assert earlier_commit(root, mine) == shas[1]  # the third commit, with later ones on top
    assert earlier_commit(root, other) == shas[3]
    assert earlier_commit(root, "a-flow-run-that-never-committed") is None
    assert earlier_commit(root, None) is None  # not a flow run (e.g. not shared): never resumes
    assert lock_message("on demand", mine).endswith(f"\n\n{FLOW_RUN_TRAILER}: {mine}")
    assert "\n" not in lock_message("on demand")
    with pytest.raises(ValueError, match="letters, digits and dashes"):
        lock_message("x", "id\nInjected: trailer")
    with pytest.raises(ValueError, match="letters, digits and dashes"):
        earlier_commit(root, "--all")


# --- on the stack ----------------------------------------------------------------------------------


@dataclass
class Deployed:
    project: Project
    remote: Path
    api: str
    stack: Path


@pytest.fixture(scope="module")
def deployed(team_stack: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """A tiny project pushed to a bare repository, deployed with `reproml deploy --pool`, plus the
    probe flow deployed from the same repository. The stack is brought up again first: in a session
    that ran test_team_stack.py before this file, its last test stopped it (`up` keeps what runs)."""
    stack.up(team_stack)
    params = sampled_params(3000)
    params["tune"]["enabled"] = False
    params["register"]["model_name"] = MODEL
    project = Project(tmp_path_factory.mktemp("workers-project"), params)
    foreign = ("PREFECT_", "AWS_", "DASK_", "PG")
    project.env = {k: v for k, v in project.env.items() if not k.startswith(foreign)} | team_env(team_stack)
    (project.root / "flows" / "probe.py").write_text(PROBE)
    project.commit("the probe flow")
    remote = team_stack / "remotes" / "project.git"
    remote.parent.mkdir(exist_ok=True)
    project.run("git", "clone", "-q", "--bare", str(project.root), str(remote))
    project.run("git", "remote", "add", "origin", str(remote))
    shown = project.run("reproml", "deploy", "--pool", WORK_POOL, timeout=300)
    assert "training/on-demand on pool" in shown.stdout, shown.stdout
    done = subprocess.run(
        [sys.executable, "-c", DEPLOY_PROBE, str(remote), WORK_POOL],
        cwd=project.root, env=project.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    yield Deployed(project, remote, team_env(team_stack)["PREFECT_API_URL"], team_stack)


@contextlib.contextmanager
def _client(api: str) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        yield client


def _start(api: str, deployment: str, parameters: dict[str, Any] | None = None) -> Any:
    with _client(api) as client:
        found = client.read_deployment_by_name(deployment)
        return client.create_flow_run_from_deployment(found.id, parameters=parameters or {}).id


def _finish(api: str, run_ids: list[Any], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    with _client(api) as client:
        while True:
            runs = [client.read_flow_run(i) for i in run_ids]
            if all(r.state is not None and r.state.is_final() for r in runs):
                return runs
            assert time.monotonic() < deadline, [(r.name, r.state) for r in runs]
            time.sleep(2)


def _logs(api: str, run_id: Any, timeout: float = 60) -> list[tuple[dt.datetime, str]]:
    """The flow run's log, once it holds the slot's "released" line: a run's last lines reach the
    server after its final state (its process ships them on exit). Read page by page: the server
    answers at most 200 lines a query (its default limit), fewer than two attempts of a retrain log."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    page = 200
    with _client(api) as client:
        while True:
            found: list[Any] = []
            while True:
                more = client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                    limit=page,
                    offset=len(found),
                )
                found += more
                if len(more) < page:
                    break
            logs = sorted((log.timestamp, log.message) for log in found)
            if (
                any(m == f"retrain slot {TEAM_LIMIT} released" for _, m in logs)
                or time.monotonic() > deadline
            ):
                return logs
            time.sleep(1)


def _section(logs: list[tuple[dt.datetime, str]]) -> tuple[dt.datetime, dt.datetime]:
    taken = [t for t, m in logs if m == f"retrain slot {TEAM_LIMIT} taken"]
    released = [t for t, m in logs if m == f"retrain slot {TEAM_LIMIT} released"]
    assert len(taken) == 1 and len(released) == 1, logs
    return taken[0], released[0]


def _on_a_worker(run: Any) -> None:
    assert run.work_pool_name == WORK_POOL
    assert run.infrastructure_pid, run
    pid = int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
    assert pid != os.getpid()


@pytest.mark.team
@pytest.mark.integration
def test_the_deployments_clone_the_repository_and_the_retrain_limit_exists(deployed: Deployed) -> None:
    with _client(deployed.api) as client:
        training = client.read_deployment_by_name("training/on-demand")
        limit = client.read_global_concurrency_limit_by_name(TEAM_LIMIT)
    assert training.work_pool_name == WORK_POOL
    assert training.entrypoint == ENTRYPOINTS["training"]
    assert "root" not in training.parameters
    steps = json.dumps(training.pull_steps)
    assert "prefect.deployments.steps.git_clone" in steps and str(deployed.remote) in steps, steps
    assert limit.limit == 1


@pytest.mark.slow  # suite time: the default suite runs the two real retrains below, which take this slot
@pytest.mark.team
@pytest.mark.integration
def test_two_runs_started_together_hold_the_retrain_slot_one_after_the_other(deployed: Deployed) -> None:
    api = deployed.api
    ids = [_start(api, "slot-probe/probe", {"hold_s": 15.0}) for _ in range(2)]
    runs = _finish(api, ids, timeout=240)
    assert [r.state.type.value for r in runs] == ["COMPLETED", "COMPLETED"], [r.state for r in runs]
    for run in runs:
        _on_a_worker(run)
    logs = [_logs(api, i) for i in ids]
    first, second = sorted(_section(found) for found in logs)
    assert first[1] <= second[0], f"the critical sections overlap: {first} and {second}"
    # both ran at once (one waited for the other), so the limit, not luck, kept them apart
    waited = [m for found in logs for _, m in found if m.startswith("waiting for the retrain slot")]
    assert waited, logs


CHAMPION = """
import json, sys
from mlflow.tracking import MlflowClient
try:
    v = MlflowClient().get_model_version_by_alias(sys.argv[1], "champion").version
except Exception:
    v = None
print(json.dumps(v))
"""
BRANCH = f"reproml/{MODEL}/retrain"


def _champion(deployed: Deployed) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", CHAMPION, MODEL], env=deployed.project.env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _remote_branch(deployed: Deployed) -> list[str]:
    """The retrain branch's commits in the bare repository, newest first ([] when it has none)."""
    done = subprocess.run(
        ["git", "--git-dir", str(deployed.remote), "log", "--format=%H %s", f"refs/heads/{BRANCH}", "--"],
        capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout.splitlines() if done.returncode == 0 else []


def _trained(deployed: Deployed, run_ids: list[Any], timeout: float) -> list[tuple[dt.datetime, dt.datetime]]:
    runs = _finish(deployed.api, run_ids, timeout=timeout)
    sections = []
    for run in runs:
        logs = _logs(deployed.api, run.id)
        assert run.state.type.value == "COMPLETED", "\n".join(m for _, m in logs[-40:])
        _on_a_worker(run)
        sections.append(_section(logs))
    return sorted(sections)


@pytest.mark.team
@pytest.mark.integration
def test_the_training_flow_runs_on_a_worker_moves_the_shared_champion_and_pushes_its_branch(
    deployed: Deployed,
) -> None:
    before = _champion(deployed)
    began = time.monotonic()
    _trained(deployed, [_start(deployed.api, "training/on-demand")], timeout=900)
    print(f"training on a worker: {time.monotonic() - began:.0f} s")
    after = _champion(deployed)
    assert after is not None and after != before, (before, after)
    pushed = _remote_branch(deployed)
    assert any("dvc.lock after dvc repro" in line for line in pushed), pushed
    # the data version the worker made is on the team's S3 remote (REPROML_DVC_REMOTE_URL), not
    # only in the committed default remote its fresh clone has
    wanted = _pushed_outputs(deployed)
    stored = _bucket_keys(deployed)
    assert wanted and wanted <= stored, sorted(wanted - stored)


TRAINED_RUN = """
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient()
champion = client.get_model_version_by_alias(sys.argv[1], "champion")
parent = json.loads(champion.tags.get("reproml.refit_of") or "null")
trained = client.get_model_version(sys.argv[1], str(parent["version"])) if parent else champion
print(json.dumps(trained.run_id))
"""


@pytest.mark.team
@pytest.mark.integration
def test_a_workers_champion_is_rebuilt_identically_in_a_clone_with_only_the_repo_and_the_variables(
    deployed: Deployed, tmp_path: Path
) -> None:
    """Reproducible from anywhere: a `git clone` of the retrain branch the worker pushed, on a
    "machine" with no DVC cache, no MLflow store and no records of its own, only the team
    variables: `reproml reproduce` of the run the worker's `dvc repro` trained (the champion's
    parent: the champion is its refit on the whole window, which has no held-out test split to
    compare and is refused by `reproduce`) reads the run from the shared MLflow server, pulls its
    data versions from the team's S3 remote and rebuilds the same model."""
    found = subprocess.run(
        [sys.executable, "-c", TRAINED_RUN, MODEL], env=deployed.project.env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    run_id = json.loads(found.stdout.strip().splitlines()[-1])
    home, tmp, clone = tmp_path / "home", tmp_path / "tmp", tmp_path / "clone"
    home.mkdir()
    tmp.mkdir()
    foreign = ("MLFLOW_", "PREFECT_", "AWS_", "DASK_", "PG", "DVC_", "GIT_", "REPROML_")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(foreign)},
        **team_env(deployed.stack),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "COLUMNS": "200",
        **{k: v for k, v in deployed.project.env.items() if k.startswith("GIT_")},
    }
    git = ["git", "clone", "-q", "--branch", BRANCH, str(deployed.remote), str(clone)]
    subprocess.run(git, env=env, check=True, timeout=120)
    subprocess.run(
        ["dvc", "config", "--local", "core.site_cache_dir", str(site_cache(clone))],
        cwd=clone,
        env=env,
        check=True,
        timeout=120,
    )  # fmt: skip (as `make install` does)
    done = subprocess.run(
        ["reproml", "reproduce", run_id], cwd=clone, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("identical"), done.stdout
    remote = env["REPROML_DVC_REMOTE"]
    assert f"DVC remote '{remote}'" in done.stdout, done.stdout  # the worker's data came from S3
    assert (clone / ".dvc" / "cache").is_dir()


def _pushed_outputs(deployed: Deployed) -> set[str]:
    """The S3 keys (DVC 3's `files/md5/..` layout) of every cached stage output in dvc.lock of
    the retrain branch the worker pushed."""

    def show(path: str) -> Any:
        done = subprocess.run(
            ["git", "--git-dir", str(deployed.remote), "show", f"refs/heads/{BRANCH}:{path}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return yaml.safe_load(done.stdout)

    uncached = {
        next(iter(out)) if isinstance(out, dict) else out
        for stage in show("dvc.yaml")["stages"].values()
        for out in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", [])
        if isinstance(out, dict) and (next(iter(out.values())) or {}).get("cache") is False
    }
    keys = set()
    for stage in show("dvc.lock")["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] not in uncached:
                md5 = out["md5"]
                keys.add(f"dvc/files/md5/{md5[:2]}/{md5[2:]}")
    return keys


def _bucket_keys(deployed: Deployed) -> set[str]:
    import boto3

    env = team_env(deployed.stack)
    s3 = boto3.client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"],
    )  # fmt: skip
    bucket, _, _ = env["REPROML_DVC_REMOTE_URL"].removeprefix("s3://").partition("/")
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="dvc/"):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


@pytest.mark.team
@pytest.mark.integration  # ~2.7 min of one xdist worker: issue 15's must-show, so in the default suite
def test_two_retrains_started_together_run_one_after_the_other_on_one_branch(deployed: Deployed) -> None:
    """Two training runs at once: one waits for the other's slot; the second continues the
    branch the first pushed (a fast-forward), so both retrains' commits are in the repository."""
    earlier = _remote_branch(deployed)
    began = time.monotonic()
    ids = [_start(deployed.api, "training/on-demand", {"reason": f"together {i}"}) for i in (1, 2)]
    first, second = _trained(deployed, ids, timeout=1200)
    print(f"two trainings on workers: {time.monotonic() - began:.0f} s")
    assert first[1] <= second[0], f"the critical sections overlap: {first} and {second}"
    pushed = _remote_branch(deployed)
    assert pushed[len(pushed) - len(earlier) :] == earlier, "the branch was rewritten, not continued"


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
@pytest.mark.team
@pytest.mark.integration
def test_reproml_retrain_in_a_shell_waits_for_the_team_slot(deployed: Deployed) -> None:
    """The flow run in-process (`reproml retrain`) against the team's server takes the same slot:
    while a worker's retrain holds it (here: the test), it says so and runs no step."""
    from prefect.concurrency.sync import concurrency
    from prefect.settings import PREFECT_API_URL, temporary_settings

    p = deployed.project
    with temporary_settings({PREFECT_API_URL: deployed.api}), concurrency(TEAM_LIMIT, occupy=1, strict=True):
        waiting = subprocess.Popen(
            ["reproml", "retrain"], cwd=p.root, env=p.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            said = ""
            with _client(deployed.api) as client:
                while "waiting for the retrain slot" not in said:
                    assert time.monotonic() < deadline and waiting.poll() is None, said
                    time.sleep(1)
                    # the in-process run is the one running outside any deployment
                    mine = [
                        r.id
                        for r in client.read_flow_runs()
                        if r.deployment_id is None and r.state_name == "Running"
                    ]
                    said = " ".join(m for i in mine for _, m in _logs(deployed.api, i, timeout=0))
            assert waiting.poll() is None, "the in-process retrain did not wait"
            assert "retrain slot reproml-retrain taken" not in said
        finally:
            waiting.send_signal(signal.SIGTERM)
            waiting.communicate(timeout=60)


# --- a worker killed mid-run ------------------------------------------------------------------------


def _wait_for_log(api: str, run_id: Any, line: str, timeout: float) -> None:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    with _client(api) as client:
        while True:
            found = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            if any(log.message == line for log in found):
                return
            run = client.read_flow_run(run_id)
            said = [log.message for log in found]
            assert time.monotonic() < deadline and not run.state.is_final(), (run.state, said)
            time.sleep(1)


def _kill_worker_of(root: Path, run: Any) -> str:
    """SIGKILL to every process group of the worker service whose child runs `run` (the worker,
    the flow run's process and whatever it started), as a lost machine would; returns the
    service's name."""
    from reproml.team import processes

    pid = int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
    found = processes.ours(root)
    service = next(name for name, procs in found.items() if any(p.pid == pid for p in procs))
    assert service.startswith("prefect-worker-"), service
    groups = {os.getpgid(p.pid) for p in found[service] if p.is_running()}
    worker = processes.leader(found[service])
    own = worker is not None and os.getpgid(pid) != worker.pid
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    where = "its own session" if own else "the worker's group"
    print(f"{service}: SIGKILL to {len(groups)} process group(s); the flow run was in {where}")
    return service


def _tell(deployed: Deployed, run_id: Any, killed_at: float) -> None:
    """What the run went through, and the workers' logs: printed when the run did not finish."""
    from reproml.team.layout import Layout
    from reproml.team.services import PREFECT_WORKERS

    print(f"the kill was {time.monotonic() - killed_at:.0f} s ago (now {dt.datetime.now(dt.UTC)})")
    with _client(deployed.api) as client:
        for state in client.read_flow_run_states(run_id):
            print("state", state.timestamp, state.name, state.message)
    for name in PREFECT_WORKERS:
        print(f"--- {name}:", "".join(Layout(deployed.stack).log(name).read_text().splitlines(True)[-25:]))


@pytest.mark.team
@pytest.mark.integration
@pytest.mark.slow  # ~2.5 min: the zombie automation waits ZOMBIE_AFTER_S (90 s) for a missed heartbeat
def test_a_worker_killed_mid_run_its_run_is_retried_once_on_the_other_worker_and_the_slot_is_freed(
    deployed: Deployed,
) -> None:
    """`kill -9` of a worker's process groups (the worker and the flow run it started) while the run
    holds the retrain slot: the run stays Running until its heartbeats have been missing for
    ZOMBIE_AFTER_S, when the team's automation for lost runs tagged RERUN_TAG puts it back to
    Scheduled (AwaitingRetry), the other worker runs it again, and it completes: one flow run, two
    attempts, one effect ("probe done"). The slot the
    killed attempt held is a lease that nobody renews: it is free again (the retry takes it, then
    releases it), and no slot is left held at the end. The killed worker is not restarted by the
    stack (no supervisor): `make team-up` starts it again, as the test does at the end."""
    from reproml.orchestration.deploy import ZOMBIE_AFTER_S
    from reproml.team import processes

    api = deployed.api
    began = time.monotonic()
    run_id = _start(api, "slot-probe/probe", {"hold_s": 15.0, "lease_s": 60.0})
    _wait_for_log(api, run_id, f"retrain slot {TEAM_LIMIT} taken", timeout=180)
    time.sleep(2)  # the first heartbeat (sent as the run starts) is on the server by now
    with _client(api) as client:
        running = client.read_flow_run(run_id)
    assert running.state is not None and running.state.is_running(), running.state
    killed = _kill_worker_of(deployed.stack, running)
    killed_at = time.monotonic()
    try:
        time.sleep(5)
        with _client(api) as client:
            assert client.read_flow_run(run_id).state.is_running()  # nobody noticed yet: a zombie
        try:
            (run,) = _finish(api, [run_id], timeout=ZOMBIE_AFTER_S + 150)
        except AssertionError:
            _tell(deployed, run_id, killed_at)
            raise
        recovered = time.monotonic() - killed_at
        print(f"killed {killed}; the run completed {recovered:.0f} s after the kill")
        assert run.state.type.value == "COMPLETED", run.state
        assert run.run_count == 2, run.run_count  # the killed attempt and one retry, no more
        assert killed not in processes.ours(deployed.stack)  # so the other worker ran the retry
        with _client(api) as client:
            history = [s.name for s in client.read_flow_run_states(run_id)]
            assert "AwaitingRetry" in history, history
            logs = [m for _, m in _logs(api, run_id)]
            assert sum(m.startswith("probe pid") for m in logs) == 2, logs
            assert logs.count(f"retrain slot {TEAM_LIMIT} taken") == 2, logs
            assert logs.count(f"retrain slot {TEAM_LIMIT} released") == 1, logs
            assert logs.count("probe done") == 1, logs
            assert client.read_global_concurrency_limit_by_name(TEAM_LIMIT).active_slots == 0
            mine = [r for r in client.read_flow_runs() if r.parameters.get("lease_s") == 60.0]
            assert [r.id for r in mine] == [run_id]  # retried in place: no second flow run
    finally:
        stack.up(deployed.stack)  # the killed worker back, for whatever runs next
    assert processes.ours(deployed.stack).get(killed), f"{killed} was not started again"
    print(f"worker kill test: {time.monotonic() - began:.0f} s")


VERSIONS = """
import json, sys
from mlflow.tracking import MlflowClient
try:
    found = MlflowClient().search_model_versions(f"name = '{sys.argv[1]}'")
except Exception:
    found = []
print(json.dumps({v.version: dict(v.tags) for v in found}))
"""


def _versions(deployed: Deployed) -> dict[int, dict[str, str]]:
    """Every registered version of this module's model, with its tags."""
    done = subprocess.run(
        [sys.executable, "-c", VERSIONS, MODEL], env=deployed.project.env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


AUDIT = """
import json, sys
from pathlib import Path
from reproml import registry
print(json.dumps([r for r in registry.history(Path(".")) if r.get("model_name") == sys.argv[1]]))
"""


def _audit(deployed: Deployed) -> list[dict[str, Any]]:
    """This module's model's decisions in the team's audit trail (the records database)."""
    p = deployed.project
    done = subprocess.run(
        [sys.executable, "-c", AUDIT, MODEL], cwd=p.root, env=p.env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def _published_by(deployed: Deployed, run_id: Any) -> list[str]:
    """The retrain branch's commits in the bare repository whose trailer names flow run `run_id`."""
    from reproml.orchestration.training import FLOW_RUN_TRAILER

    shown = f"--format=%H %(trailers:key={FLOW_RUN_TRAILER},valueonly)"
    done = subprocess.run(
        ["git", "--git-dir", str(deployed.remote), "log", shown, f"refs/heads/{BRANCH}", "--"],
        capture_output=True, text=True,
    )  # fmt: skip
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip().endswith(str(run_id))]


@pytest.mark.team
@pytest.mark.integration
@pytest.mark.slow  # ~8 min: a retrain, 90 s of silence, the slot's 300 s lease, the resumed rerun
def test_a_worker_killed_after_its_retrain_published_the_rerun_resumes_and_nothing_is_done_twice(
    deployed: Deployed,
) -> None:
    """`kill -9` of the worker's process groups once the training run has pushed its retrain branch
    (its dvc.lock commit, trailer naming the flow run, is in the repository): the run is put back
    to Scheduled and the other worker runs it again, as the same flow run; the rerun finds that
    commit, pulls its outputs and goes on from there. One commit of it on the branch, one
    challenger version tagged with the flow run, the gate run to completion once across both
    attempts, at most one refit of that challenger, the slot free."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from reproml.orchestration.deploy import ZOMBIE_AFTER_S
    from reproml.orchestration.training import FLOW_RUN_TAG
    from reproml.team import processes

    api = deployed.api
    began = time.monotonic()
    before = _versions(deployed)
    run_id = _start(api, "training/on-demand", {"reason": "worker lost"})
    deadline = time.monotonic() + 600
    with _client(api) as client:
        while not _published_by(deployed, run_id):  # past the point of no return
            running = client.read_flow_run(run_id)
            assert time.monotonic() < deadline and not running.state.is_final(), running.state
            time.sleep(0.5)
        running = client.read_flow_run(run_id)
    assert running.state is not None and running.state.is_running(), running.state
    killed = _kill_worker_of(deployed.stack, running)
    killed_at = time.monotonic()
    print(f"published {killed_at - began:.0f} s after the start; killed {killed}")
    try:
        try:
            (run,) = _finish(api, [run_id], timeout=ZOMBIE_AFTER_S + 660)  # the lease (LEASE_S) included
        except AssertionError:
            _tell(deployed, run_id, killed_at)
            raise
        print(f"the run completed {time.monotonic() - killed_at:.0f} s after the kill")
        logs = [m for _, m in _logs(api, run_id)]
        assert run.state.type.value == "COMPLETED", "\n".join(logs[-40:])
        assert run.run_count == 2, run.run_count
        assert killed not in processes.ours(deployed.stack)  # so the other worker ran the rerun
        resumed = [m for m in logs if m.startswith(f"flow run {run_id}")]
        print("the rerun:", *resumed, sep="\n  ")
        assert any("before: resuming after it" in m for m in resumed), logs
        assert len(_published_by(deployed, run_id)) == 1
        after = _versions(deployed)
        new = {v: tags for v, tags in after.items() if v not in before}
        ours = [v for v, tags in new.items() if tags.get(FLOW_RUN_TAG) == str(run_id)]
        refits = [v for v, tags in new.items() if json.loads(tags.get("reproml.refit_of") or "{}")]
        assert set(refits) <= set(ours), new  # a refit names the flow run that made it, from its creation
        challengers = [v for v in ours if v not in refits]
        assert len(challengers) == 1, new  # one challenger for this flow run
        (challenger,) = challengers
        assert new[challenger].get("reproml.decision"), new[challenger]  # the gate decided, once
        assert all(json.loads(new[v]["reproml.refit_of"])["version"] == challenger for v in refits), new
        assert len(refits) == (1 if new[challenger]["reproml.decision"] == "promote" else 0), new
        assert set(new) == {challenger, *refits}, new  # nothing else registered
        audit = _audit(deployed)
        subjects = [(r["action"], (r.get("challenger") or {}).get("version")) for r in audit]
        assert sum(v == challenger for _, v in subjects) == 1, subjects  # one audit entry: the gate's
        assert all(sum(v == r for _, v in subjects) == 1 for r in refits), subjects
        with _client(api) as client:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            done = [t.name.rsplit("-", 1)[0] for t in tasks if t.state is not None and t.state.is_completed()]
            assert done.count("promote") <= 1 and done.count("refit") <= 1, sorted(done)
            assert done.count("commit") == 1 and done.count("restore") == 1, sorted(done)
            assert client.read_global_concurrency_limit_by_name(TEAM_LIMIT).active_slots == 0
    finally:
        stack.up(deployed.stack)
    print(f"training worker kill test: {time.monotonic() - began:.0f} s")
