"""Retrains on the team stack's Prefect workers: `reproml deploy --pool` registers the flows with a
`git_clone` pull step of the project's repository (a bare repository under the stack's folder
stands in for the remote), a process worker clones it and runs the flow there, and the
`reproml-retrain` concurrency limit lets one retrain at a time through, whichever worker runs it.

The ordering test runs a tiny flow holding the same slot as the training flow (`flows/slot.py`),
long enough that the two runs meet; the full retrain on a worker (3,000 sampled rows, tuning off)
moves the shared MLflow server's champion: ~70 s on 2 busy cores, so it is not marked `slow`.
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
from reproml.team import stack
from reproml.team.layout import WORK_POOL
from tests.conftest import default_params, team_env
from tests.project import Project, sampled_params

MODEL = "workers-late"  # this module's own registered model on the shared MLflow server
PROBE = '''"""Holds the retrain slot (as the training flow does) for a while: the team tests' probe."""
import os
import signal
import time
from pathlib import Path

from prefect import flow, get_run_logger

from flows.slot import retrain_slot


@flow(name="slot-probe")
def probe(hold_s: float = 20.0) -> int:
    log = get_run_logger()
    log.info("probe pid %d in %s", os.getpid(), Path.cwd())
    with retrain_slot(Path.cwd(), log, 120.0):
        time.sleep(hold_s)
    return os.getpid()
'''
DEPLOY_PROBE = """
import sys
from prefect import Flow
from prefect.runner.storage import GitRepository
source = GitRepository(url=sys.argv[1], branch="main")
Flow.from_source(source=source, entrypoint="flows/probe.py:probe").deploy(
    name="probe", work_pool_name=sys.argv[2], print_next_steps=False)
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


# --- on the stack ----------------------------------------------------------------------------------


@dataclass
class Deployed:
    project: Project
    remote: Path
    api: str


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
    yield Deployed(project, remote, team_env(team_stack)["PREFECT_API_URL"])


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
    server after its final state (its process ships them on exit)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    with _client(api) as client:
        while True:
            found = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
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


@pytest.mark.team
@pytest.mark.integration
@pytest.mark.slow
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
