"""The Prefect flows against a real Prefect server, a real git + DVC project with a local remote,
real MLflow (SQLite) and a sample of the real flights.

One project serves the module, in order: a same-distribution batch retrains nothing; a drifted
month hands off to the training flow (new DVC data version on the retrain branch, pushed, an
MLflow run naming it, the gate); SIGTERM mid-training leaves everything as it was; the served
deployments are listed with their schedule and a triggered run completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.project import BIN, Project, sampled_params

pytestmark = pytest.mark.integration
MODEL = "flights-late"
BRANCH = "reproml/retrain"


def flow_params() -> dict[str, Any]:
    params = sampled_params(24000)  # ~2,000 flights a month: enough for monthly drift statistics
    params["monitor"].update({"min_rows": 500, "bootstrap_samples": 200})
    params["promote"]["bootstrap_samples"] = 200
    params["tune"]["n_trials"] = 2
    params["retrain"] = {"branch": BRANCH, "tune_trials": 0}  # the default: refit the champion's values
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Iterator[Project]:
    p = Project(tmp_path_factory.mktemp("flows"), flow_params())
    p.env["PREFECT_API_URL"] = prefect_api
    p.env["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"
    p.run("dvc", "repro")
    p.run("dvc", "push", "--quiet")
    p.run("reproml", "promote")
    p.commit("pipeline")
    yield p


def client(p: Project) -> MlflowClient:
    return MlflowClient(tracking_uri=p.tracking_uri())


def versions(p: Project) -> list[int]:
    return sorted(int(v.version) for v in client(p).search_model_versions(f"name = '{MODEL}'"))


def champion(p: Project) -> int:
    return int(client(p).get_model_version_by_alias(MODEL, "champion").version)


def flow_in_subprocess(p: Project, call: str) -> dict[str, Any]:
    """Run `call` (an expression over flows.*) as a user's script would; return its JSON result."""
    script = (
        "import json, sys\n"
        "from flows.monitoring import monitoring\n"
        "from flows.training import training\n"
        f"result = {call}\n"
        "print('RESULT=' + json.dumps(result, default=str))\n"
    )
    done = p.run(str(BIN / "python"), "-c", script, timeout=900)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT="))
    return dict(json.loads(line[len("RESULT=") :]))


def branch_head(p: Project) -> str | None:
    done = p.run("git", "rev-parse", "--verify", "--quiet", f"refs/heads/{BRANCH}", check=False)
    return done.stdout.strip() or None


def worktree(p: Project) -> Path:
    return p.root / ".reproml" / "worktrees" / BRANCH.replace("/", "-")


def remote_has(p: Project, md5: str) -> bool:
    digest = md5.removesuffix(".dir")
    suffix = ".dir" if md5.endswith(".dir") else ""
    return (p.root / "dvc-storage" / "files" / "md5" / digest[:2] / (digest[2:] + suffix)).is_file()


def prefect_flow_runs(api: str, flow_name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as c:
        return list(c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name]))))


def run_artifacts(api: str, flow_run_id: Any) -> dict[str, Any]:
    """The artifacts of one flow run as Prefect's API serves them to its UI: key -> artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as c:
        found = c.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return {str(a.key): a for a in found}


def latest_monitoring_artifacts(api: str) -> dict[str, Any]:
    latest = max(prefect_flow_runs(api, "monitoring"), key=lambda r: r.created)
    assert latest.state is not None and latest.state.is_completed(), latest.state
    return run_artifacts(api, latest.id)


def same_distribution_batch(p: Project) -> str:
    """Rows of what the champion learned most recently (the newest monitor.reference_days of its
    training split, the drift reference), handed in as a file (under data/, as it must be)."""
    from reproml.learned import recent

    train = pd.read_parquet(p.root / "data" / "prepared" / "train.parquet")
    rows = recent(train, "time_hour", 60).sample(1500, random_state=3)
    rows.to_parquet(p.root / "data" / "same.parquet", index=False)
    return "data/same.parquet"


def test_a_same_distribution_batch_retrains_nothing(project: Project, prefect_api: str) -> None:
    """Training-split rows handed in as a file: no drift, no quality drop, no new version; the
    run's artifacts (what Prefect's UI shows) say so and link the batch's drift report."""
    p = project
    same_distribution_batch(p)
    before_versions, before_head = versions(p), p.run("git", "rev-parse", "HEAD").stdout
    out = flow_in_subprocess(p, "monitoring(root='.', batch='data/same.parquet')")
    assert out["verdict"] == "ok", out["reasons"]
    assert out["retrain"] is None
    assert versions(p) == before_versions and branch_head(p) is None
    assert p.run("git", "rev-parse", "HEAD").stdout == before_head

    artifacts = latest_monitoring_artifacts(prefect_api)
    summary = artifacts[f"{MODEL}-monitoring-summary"]
    assert summary.type == "markdown" and "**ok**" in summary.data
    assert "- realised " in summary.data and "- drift: weighted share " in summary.data
    table = artifacts[f"{MODEL}-monitoring-drifted-features"]
    assert table.type == "table" and isinstance(json.loads(table.data), list)
    assert "drifted features" in str(table.description)
    link = artifacts[f"{MODEL}-monitoring-report"]
    target = unquote(link.data[link.data.index("](file://") + len("](file://") : -1])
    assert target.endswith("/drift.html") and Path(target).is_file(), link.data


def test_a_drifted_month_hands_off_to_training_with_a_new_data_version(
    project: Project, prefect_api: str
) -> None:
    p = project
    main_lock = p.lock()
    status_before = p.run("git", "status", "--porcelain").stdout
    head_before = p.run("git", "rev-parse", "HEAD").stdout.strip()
    out = flow_in_subprocess(p, "monitoring(root='.', batch='2013-07')")
    assert out["verdict"] == "retrain", out["reasons"]
    retrain = out["retrain"]
    artifacts = latest_monitoring_artifacts(prefect_api)
    assert "**retrain**" in artifacts[f"{MODEL}-monitoring-summary"].data
    drifted = json.loads(artifacts[f"{MODEL}-monitoring-drifted-features"].data)
    assert bool(drifted) == bool(out["drift_share"])  # the drifted features, most important first
    shares = [row["importance share"] for row in drifted]
    assert shares == sorted(shares, reverse=True)
    assert sum(shares) == pytest.approx(out["weighted_drift_share"], abs=1e-3)
    assert retrain["stages"] == dict.fromkeys(
        ["ingest", "prepare", "tune", "train", "evaluate", "register"], "ran"
    )

    # a new DVC data version: the labelled batch, tracked and pushed; dvc.lock on the branch moved
    tree = worktree(p)
    added = retrain["added"]
    assert (tree / added["file"]).is_file() and remote_has(p, added["md5"])
    lock = (tree / "dvc.lock").read_text()
    new_versions = retrain["data_versions"]
    old_versions = {
        item["path"]: item["md5"]
        for stage in main_lock["stages"].values()
        for item in [*stage.get("deps", []), *stage.get("outs", [])]
    }
    # (ingested.parquet itself may not change: the bundled replay's package already holds July)
    for path in ("data/raw", "data/prepared"):
        assert new_versions[path] != old_versions[path] and new_versions[path] in lock
    assert remote_has(p, new_versions["data/prepared"])
    assert added["window"] == {"train_end": "2013-06-01", "valid_end": "2013-07-01", "test_end": "2013-08-01"}
    log = p.run("git", "log", "--format=%H %s", BRANCH).stdout.splitlines()
    assert log[0].split()[0] == retrain["commit"] and "dvc.lock after dvc repro" in log[0]
    assert log[1].split()[0] == added["commit"] and "add labelled batch" in log[1]

    # the MLflow run that trained the challenger names that data version and commit
    run = client(p).get_run(retrain["challenger"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["reproml.stage"] == "train"
    assert run.data.tags["reproml.git_commit"] == added["commit"]
    first = client(p).get_run(str(client(p).get_model_version(MODEL, "1").run_id))
    split = "reproml.data.data/prepared/test.parquet"
    assert run.data.tags[split] != first.data.tags[split]
    assert run.data.params["prepare.test_end"] == "2013-08-01"

    # the gate ran, its decision is on record in the workspace, and the user's branch is untouched
    promotion = retrain["promotion"]
    assert promotion["action"] in ("promote", "reject")
    assert (p.root / promotion["record"]).is_file()
    # a promoted challenger is refit on the whole window, the batch included, and that is the champion
    refit = retrain["refit"]
    if promotion["action"] == "promote":
        assert refit["refit_of"]["version"] == retrain["challenger"]["version"]
        assert refit["learned"]["last"].startswith("2013-07-31") and refit["decision"]["action"] == "refit"
        assert champion(p) == refit["version"]
    else:
        assert refit is None and champion(p) == 1
    assert p.run("git", "rev-parse", "HEAD").stdout.strip() == head_before
    assert p.run("git", "status", "--porcelain").stdout == status_before
    assert p.lock() == main_lock


def _running_train_run(p: Project) -> str | None:
    """The RUNNING train run's id, read straight from SQLite: polling must be quicker than a stage."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(p.root / "mlflow.db", timeout=5)) as db:
        row = db.execute(
            "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE r.status = 'RUNNING' AND t.key = 'reproml.stage' AND t.value = 'train'"
        ).fetchone()
    return None if row is None else str(row[0])


# `slow`: ~80 s; SIGTERM ending a run KILLED: in CI via test_registry's test_sigterm_ends_the_run_killed
@pytest.mark.slow
def test_sigterm_mid_training_changes_nothing(project: Project, prefect_api: str) -> None:
    """SIGTERM while `reproml train` runs: flow Crashed, MLflow run KILLED, no version, no alias."""
    p = project
    august = p.root / "data" / "august.parquet"
    production = pd.read_parquet(p.root / "data" / "prepared" / "production.parquet")
    production[production["time_hour"].dt.month == 8].to_parquet(august, index=False)
    before = {"versions": versions(p), "champion": champion(p), "branch": branch_head(p)}
    aliases = {a: client(p).get_model_version_by_alias(MODEL, a).version for a in ("champion", "challenger")}
    process = subprocess.Popen(
        [str(BIN / "reproml"), "retrain", "--labelled", str(august)],
        cwd=p.root, env=p.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    run_id = None
    while run_id is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
        run_id = _running_train_run(p)
    if run_id is None:
        process.kill()
        raise AssertionError(f"the train stage was never seen running:\n{process.communicate()[0][-5000:]}")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, output

    assert client(p).get_run(run_id).info.status == "KILLED"
    assert versions(p) == before["versions"] and champion(p) == before["champion"]
    assert {a: client(p).get_model_version_by_alias(MODEL, a).version for a in aliases} == aliases
    # the data version committed before the pipeline ran is rolled back with the rest
    assert branch_head(p) == before["branch"]
    assert not (worktree(p) / "data" / "raw" / "labelled" / august.name).exists()
    assert p.run("git", "-C", str(worktree(p)), "status", "--porcelain").stdout == ""
    latest = max(prefect_flow_runs(prefect_api, "training"), key=lambda r: r.created)
    assert latest.state.type.value == "CRASHED"
    leftovers = subprocess.run(["pgrep", "-f", str(worktree(p))], capture_output=True, text=True).stdout
    assert not leftovers.strip(), f"processes left in the worktree: {leftovers}"


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_served_deployments_are_listed_scheduled_and_run(project: Project, prefect_api: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    p = project
    serve = subprocess.Popen(
        [str(BIN / "reproml"), "serve", "--cron", "0 6 * * *"],
        cwd=p.root, env=p.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        with temporary_settings({PREFECT_API_URL: prefect_api}):
            deadline = time.monotonic() + 120
            with get_client(sync_client=True) as c:
                while True:
                    try:
                        daily = c.read_deployment_by_name("monitoring/daily")
                        c.read_deployment_by_name("training/on-demand")
                        break
                    except Exception:
                        assert time.monotonic() < deadline and serve.poll() is None, (
                            "deployments never appeared"
                        )
                        time.sleep(1)
                assert [getattr(s.schedule, "cron", None) for s in daily.schedules] == ["0 6 * * *"]
                assert (
                    daily.global_concurrency_limit is not None and daily.global_concurrency_limit.limit == 1
                )
                while not c.read_flow_runs(deployment_filter=_by_id(daily.id), limit=1):
                    assert time.monotonic() < deadline, "the scheduler created no run"
                    time.sleep(1)
            listed = p.run(str(BIN / "prefect"), "deployment", "ls").stdout
            assert "monitoring/daily" in listed and "training/on-demand" in listed
            flow_run: Any = run_deployment(
                "monitoring/daily",
                parameters={"batch": same_distribution_batch(p)},
                timeout=300,
                as_subflow=False,
            )
            assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=60)


def _by_id(deployment_id: Any) -> Any:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))


def test_transient_failures_are_retried_and_real_ones_are_not(tmp_path: Path, prefect_api: str) -> None:
    from prefect import flow, task
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.common import retry_transient
    from reproml.orchestration.commands import CommandError, run

    marker = tmp_path / "tried"
    flaky = (
        f"import pathlib, sys; m = pathlib.Path({str(marker)!r})\n"
        "if not m.exists(): m.touch(); print('ERROR: dvc: is busy'); sys.exit(1)\n"
        "print('done')"
    )

    @task(retries=2, retry_delay_seconds=0.1, retry_condition_fn=retry_transient)
    def step(code: str) -> str:
        return run([sys.executable, "-c", code], tmp_path, quiet=True)

    @flow
    def once(code: str) -> str:
        return step(code)

    with temporary_settings({PREFECT_API_URL: prefect_api}):
        assert once(flaky).strip() == "done"
        with pytest.raises(CommandError, match="wrong params"):
            once("import sys; print('wrong params'); sys.exit(2)")
        (tmp_path / "count").write_text("")
        counting = f"open({str(tmp_path / 'count')!r}, 'a').write('x'); raise SystemExit(2)"
        with pytest.raises(CommandError):
            once(counting)
        assert (tmp_path / "count").read_text() == "x"  # not retried


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_a_failed_retrain_leaves_the_champion_as_it_was(project: Project, prefect_api: str) -> None:
    """A labelled batch the data cannot take: ingest fails, the flow fails, nothing is promoted."""
    p = project
    broken = p.root / "data" / "broken.parquet"
    production = pd.read_parquet(p.root / "data" / "prepared" / "production.parquet")
    december = production[production["time_hour"].dt.month == 12]  # after any window the branch has
    december.drop(columns=["carrier"]).to_parquet(broken, index=False)
    before = {"versions": versions(p), "champion": champion(p), "branch": branch_head(p)}
    done = p.run(str(BIN / "reproml"), "retrain", "--labelled", str(broken), check=False)
    assert done.returncode != 0
    assert "labelled batch lacks columns ['carrier']" in done.stdout + done.stderr
    assert {"versions": versions(p), "champion": champion(p), "branch": branch_head(p)} == before
    latest = max(prefect_flow_runs(prefect_api, "training"), key=lambda r: r.created)
    assert latest.state.type.value == "FAILED"
    # the bad data version is gone: the branch and its labelled data are as they were
    assert not (worktree(p) / "data" / "raw" / "labelled" / broken.name).exists()
    assert p.run("git", "-C", str(worktree(p)), "status", "--porcelain").stdout == ""


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_one_training_flow_per_workspace(project: Project, prefect_api: str) -> None:
    """While another training flow holds the workspace's slot, a new one waits and runs nothing."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from reproml.orchestration.training import limit_name

    p = project
    earlier = {r.id for r in prefect_flow_runs(prefect_api, "training")}
    name = limit_name(p.root.resolve())
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        with get_client(sync_client=True) as c:
            c.upsert_global_concurrency_limit_by_name(name, 1)
        with concurrency(name, occupy=1, strict=True):
            waiting = subprocess.Popen(
                [str(BIN / "reproml"), "retrain"], cwd=p.root, env=p.env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 120
                while not (
                    new := [r for r in prefect_flow_runs(prefect_api, "training") if r.id not in earlier]
                ):
                    assert time.monotonic() < deadline and waiting.poll() is None, "the flow never started"
                    time.sleep(0.5)
                time.sleep(8)
                assert waiting.poll() is None, "the second flow did not wait"
                tasks = _task_runs(prefect_api, new[0].id)
                assert tasks == [], f"a second training flow ran {tasks} while the slot was held"
            finally:
                waiting.send_signal(signal.SIGTERM)
                waiting.communicate(timeout=60)


def _task_runs(api: str, flow_run_id: Any) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as c:
        found = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return [t.name for t in found]
