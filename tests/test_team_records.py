"""One history for a team: two clones of one project against the team stack (issue 15).

Clone A is a machine that trains: `dvc repro` on a small sample tracked on the team MLflow server,
its data pushed to the S3 stand-in (the DVC remote `team`, committed), `reproml promote`, and one
monitored batch. Clone B is a second machine with only the repository (`git clone`) and the team
variables (`.reproml/team/env`): it reads the audit trail and the monitoring history A wrote (from
the team's PostgreSQL, `REPROML_RECORDS_URL`), sees the same champion, and rebuilds that champion's
run with `reproml reproduce`, pulling the data from S3 and the run from the MLflow server.

Then what else works unchanged with the variables set: `reproml simulate` in A replays a production
period through the monitoring flow (its runs on the MLflow server, its records in the database, no
local mlflow.db), and the team MLflow server's own UI, in headless Chromium, compares A's two
pipeline runs (the second a `dvc exp run -S` of one parameter). Those two are `slow` (~3 min
together on 2 busy cores, after the clones).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reproml.paths import site_cache
from reproml.stores.records import MONITORING as MONITORING_KIND
from reproml.stores.records import SqlRecords
from reproml.team.layout import BUCKET, DVC_REMOTE, Layout, password
from tests.conftest import team_env
from tests.project import BIN, Project, sampled_params
from tests.test_browser import fetch, shows_the_runs_compared
from tests.test_records_store import exclusive

# `slow` (~4 min of a CI worker: two clones, a pipeline, a reproduce): `make test-slow` runs it
pytestmark = [pytest.mark.team, pytest.mark.integration, pytest.mark.slow]

NAME = "flights-late"
# the period `reproml simulate` replays in clone A: before the 2013-08 that A monitored, which the
# replay's clean start must set aside in the database too (else 2013-07 is turned away as out of order)
REPLAYED = "2013-07"


def params() -> dict[str, Any]:
    values = sampled_params(6000)
    values["tune"]["enabled"] = False
    values["monitor"].update({"min_rows": 200, "bootstrap_samples": 200, "max_unseen_category_share": 0.9})
    values["promote"].update({"bootstrap_samples": 200, "floor": 0.5})
    return values


@pytest.fixture(scope="module")
def clone_a(team_stack: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The machine that trains: its data pushed to S3, its runs, decisions and records shared."""
    a = Project(tmp_path_factory.mktemp("team-clone-a"), params())
    a.env.update(team_env(team_stack))
    # the team's remote is part of the repository (its URL); endpoint and keys come from the variables
    a.run("dvc", "remote", "add", "-d", DVC_REMOTE, f"s3://{BUCKET}/{a.root.parent.name}")
    a.commit("the team's DVC remote")
    a.run("dvc", "repro", timeout=900)
    a.commit("pipeline results")
    a.run("dvc", "push", timeout=300)
    a.run("reproml", "promote", timeout=300)
    a.run("reproml", "monitor", "--batch", "2013-08", timeout=600)
    return a


@pytest.fixture(scope="module")
def clone_b(clone_a: Project, team_stack: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A second machine: `git clone` of A, the team variables, nothing else (no DVC cache, no
    records, no MLflow store of its own)."""
    base = tmp_path_factory.mktemp("team-clone-b")
    b = Project.__new__(Project)
    b.root, b.home, b.tmp = base / "repo", base / "home", base / "tmp"
    b.home.mkdir()
    b.tmp.mkdir()
    foreign = ("MLFLOW_", "PREFECT_", "AWS_", "DASK_", "PG", "DVC_", "GIT_", "REPROML_")
    b.env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(foreign)},
        **team_env(team_stack),
        "HOME": str(b.home),
        "TMPDIR": str(b.tmp),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "COLUMNS": "200",
        **{k: v for k, v in clone_a.env.items() if k.startswith("GIT_")},
    }
    subprocess.run(["git", "clone", "-q", str(clone_a.root), str(b.root)], env=b.env, check=True, timeout=120)
    b.run("dvc", "config", "--local", "core.site_cache_dir", str(site_cache(b.root)))  # as `make install`
    return b


def read_shared(b: Project) -> dict[str, Any]:
    """What clone B's reproml reads: the audit trail, the monitoring history, the champion."""
    code = f"""
import json
from pathlib import Path
from reproml import registry
from reproml.monitoring import store
from reproml.stores.mlflow import connection
from reproml.stores.records import records_store
root = Path(".")
connection.setup(root, "reproml")
champion = registry.alias_version({NAME!r}, "champion")
print(json.dumps({{
    "store": records_store().shown,
    "decisions": registry.history(root),
    "batches": store.history(root, {NAME!r}),
    "champion": None if champion is None else [champion.version, champion.run_id],
}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=b.root, env=b.env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_two_clones_see_one_audit_trail_one_monitoring_history_and_one_champion(
    clone_a: Project, clone_b: Project, team_stack: Path
) -> None:
    registered = json.loads((clone_a.root / "models" / "registered.json").read_text())
    shared = read_shared(clone_b)
    store = shared["store"]
    assert store.startswith("postgresql://reproml@127.0.0.1:") and store.endswith("/reproml"), store
    promoted = [d for d in shared["decisions"] if d["model_name"] == NAME]
    assert [(d["action"], d["status"]) for d in promoted] == [("promote", "done")], promoted
    assert promoted[0]["challenger"]["version"] == registered["version"]
    assert promoted[0]["challenger"]["run_id"] == registered["run_id"]
    # one champion: the version A's decision made champion, as B reads it from the MLflow server
    assert shared["champion"] == [str(registered["version"]), registered["run_id"]]
    [batch] = shared["batches"]
    assert batch["batch_id"] == "2013-08" and batch["champion"]["version"] == registered["version"]
    # B holds no file of either: what it read came from the database; A kept its mirror files
    assert not (clone_b.root / "registry").exists() and not (clone_b.root / "monitoring" / NAME).exists()
    assert (clone_a.root / promoted[0]["record"]).is_file()
    assert (clone_a.root / "monitoring" / NAME / "records" / "2013-08.json").is_file()
    # the CLI of B shows both histories
    decisions = clone_b.run("reproml", "registry").stdout
    assert "promote" in decisions and f"v{registered['version']}" in decisions
    assert "2013-08" in clone_b.run("reproml", "monitoring").stdout
    # and the password is in neither the records nor the variables
    secret = password(Layout(team_stack))
    assert secret and secret not in json.dumps(shared) and secret not in json.dumps(clone_b.env)


def test_the_champion_is_rebuilt_identically_in_a_clone_with_only_the_repository_and_the_variables(
    clone_a: Project, clone_b: Project
) -> None:
    registered = json.loads((clone_a.root / "models" / "registered.json").read_text())
    assert not (clone_b.root / ".dvc" / "cache").exists()
    done = clone_b.run("reproml", "reproduce", registered["run_id"], check=False, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("identical"), done.stdout
    assert f"DVC remote '{DVC_REMOTE}'" in done.stdout  # the data came from S3, not a local cache
    assert (clone_b.root / ".dvc" / "cache").is_dir()


def test_the_records_lock_is_one_across_processes_on_postgresql(
    team_stack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The promotion lock's shared half: a PostgreSQL advisory lock, so a second machine waits."""
    env = team_env(team_stack)
    monkeypatch.setenv("PGPASSFILE", env["PGPASSFILE"])
    events = exclusive(SqlRecords(env["REPROML_RECORDS_URL"]), "promote")
    assert events == ["first in", "first out", "second in"]


@pytest.mark.slow  # after the clones: simulate ~126 s, the UI comparison ~55 s (2 busy cores)
def test_simulate_runs_unchanged_on_the_team_stack(
    clone_a: Project, team_stack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`reproml simulate` in A with the team variables: the monitoring flow on the team's Prefect
    server, its run on the MLflow server, its record in the database; no local MLflow store."""
    env = team_env(team_stack)
    done = clone_a.run(
        "reproml", "simulate", "--start", REPLAYED, "--end", REPLAYED, check=False, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Production replay {REPLAYED}..{REPLAYED}" in done.stdout, done.stdout
    # the flow ran on the team's Prefect server (no server of the clone's own was started)
    flows = fetch(f"{env['PREFECT_API_URL']}/flow_runs/filter", {"flows": {"name": {"any_": ["simulate"]}}})
    assert [run["state_type"] for run in flows] == ["COMPLETED"], flows
    monkeypatch.setenv("PGPASSFILE", env["PGPASSFILE"])
    shared = SqlRecords(env["REPROML_RECORDS_URL"])
    record = shared.get(MONITORING_KIND, NAME, REPLAYED, clone_a.tmp / "unused.json")
    assert record is not None, f"no {REPLAYED} record in {shared.shown}"
    # its monitoring run is on the team server, tagged with the batch
    run = fetch(f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/runs/get?run_id={record['mlflow']['run_id']}")
    tags = {t["key"]: t["value"] for t in run["run"]["data"]["tags"]}
    assert tags["reproml.stage"] == "monitor" and tags["reproml.batch_id"] == REPLAYED, tags
    assert tags["reproml.verdict"] == record["verdict"]
    # a clean start: A's 2013-08 was set aside, so 2013-07 was judged, not turned away
    assert record["verdict"] != "out_of_order", record["reasons"]
    assert [r["batch_id"] for r in shared.all(MONITORING_KIND, NAME, clone_a.tmp / "unused")] == [REPLAYED]
    # the replay's table is the database's record
    report = json.loads((clone_a.root / "monitoring" / NAME / "reports" / "simulation.json").read_text())
    assert [row["batch"] for row in report["rows"]] == [REPLAYED]
    assert report["rows"][0]["verdict"] == record["verdict"]
    # nothing went to a local MLflow store
    assert not (clone_a.root / "mlflow.db").exists() and not (clone_a.root / "mlruns").exists()
    assert not (clone_a.root / "mlartifacts").exists()


@pytest.mark.slow  # after the clones: simulate ~126 s, the UI comparison ~55 s (2 busy cores)
def test_the_team_mlflow_ui_compares_the_last_two_pipeline_runs(
    clone_a: Project, team_stack: Path, chromium: str
) -> None:
    """The team MLflow server's compare page of A's two pipeline runs, as a person opens it."""
    url = team_env(team_stack)["MLFLOW_TRACKING_URI"]
    first = json.loads((clone_a.root / "models" / "registered.json").read_text())["run_id"]
    clone_a.run("dvc", "exp", "run", "-S", "train.xgboost.max_depth=2", timeout=900)
    second = json.loads((clone_a.root / "models" / "registered.json").read_text())["run_id"]
    assert second != first
    runs = [fetch(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"] for run_id in (second, first)]
    for run in runs:  # both on the team server, both pipeline runs
        assert {t["key"]: t["value"] for t in run["data"]["tags"]}["reproml.stage"] == "train"
    assert not (clone_a.root / "mlflow.db").exists()
    shows_the_runs_compared(chromium, url, runs, {first: 5, second: 2})
