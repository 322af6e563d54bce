"""`reproml tune` as users run it: real processes, a real journal file, real MLflow, real DVC.

A SIGKILL in the middle of a trial (and a record torn by the crash) loses no finished trial and
the next run ends with exactly the budget; two workers share one study to the exact count; pruned
trials are FINISHED runs in MLflow; a changed direction is refused; train uses what tune found.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from tests.project import BIN, Project, sampled_params

# `slow` (~1.5 min of a CI worker's time): shared studies are covered in CI by test_tune_shared
pytestmark = [pytest.mark.integration, pytest.mark.slow]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def tune_params(rows: int, **tune: Any) -> dict[str, Any]:
    params = sampled_params(rows)
    params["tune"].update(tune)
    params["train"]["n_jobs"] = params["tune"].get("workers", 1)  # 2 workers: 1 thread each
    return params


def trials(project: Project) -> list[FrozenTrial]:
    path = project.root / "optuna" / "studies.journal"
    if not path.is_file() or path.stat().st_size == 0:
        return []
    storage = JournalStorage(JournalFileBackend(str(path)))
    names = optuna.study.get_all_study_names(storage)
    if not names:
        return []
    (name,) = names
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def runs(project: Project, stage: str) -> list[Any]:
    client = MlflowClient(tracking_uri=project.tracking_uri())
    experiment = client.get_experiment_by_name("reproml")
    assert experiment is not None
    return client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`reproml.stage` = '{stage}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )


# `slow`: ~65 s; a client killed mid-trial is covered in CI on PostgreSQL by test_tune_shared
@pytest.mark.slow
def test_sigkill_mid_trial_loses_no_finished_trial_and_the_budget_ends_exact(tmp_path: Path) -> None:
    project = Project(tmp_path, tune_params(20000, n_trials=10, pruner="none", warm_start=False))
    project.run("dvc", "repro", "prepare")
    tune = subprocess.Popen(
        [str(BIN / "reproml"), "tune"], cwd=project.root, env=project.env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while True:
        seen = trials(project)
        if sum(t.state in FINISHED for t in seen) >= 3 and any(t.state == TrialState.RUNNING for t in seen):
            break
        assert tune.poll() is None, "tune ended before it could be killed"
        assert time.monotonic() < deadline, "tune made no progress"
        time.sleep(0.02)
    os.killpg(tune.pid, signal.SIGKILL)
    tune.wait()
    at_kill = trials(project)
    finished_before = {t.number: t.value for t in at_kill if t.state in FINISHED}
    running = [t.number for t in at_kill if t.state == TrialState.RUNNING]
    assert running, "the kill was meant to land in the middle of a trial"
    journal = project.root / "optuna" / "studies.journal"
    with journal.open("ab") as handle:  # the crash also tore the record being written
        handle.write(b'{"op_code":6,"worker_id":"dead","trial_id":')

    resumed = project.run("reproml", "tune")

    assert "torn record" in resumed.stderr
    assert list(journal.parent.glob("studies.journal.torn-*.bak"))
    final = trials(project)
    assert sum(t.state in FINISHED for t in final) == 10  # exactly the budget
    assert [t.number for t in final] == list(range(len(final)))  # unique, gap-free numbers
    assert {t.number: t.value for t in final if t.number in finished_before} == finished_before
    for number in running:
        assert final[number].state == TrialState.FAIL and final[number].user_attrs["interrupted"] is True
        retry = [t for t in final if t.user_attrs.get("retry_of") == number]
        assert len(retry) == (1 if final[number].params else 0)  # what it had suggested is tried again
        for again in retry:
            assert {k: again.params[k] for k in final[number].params} == final[number].params
    parents = runs(project, "tune")
    assert [r.info.status for r in parents] == ["KILLED", "FINISHED"]
    children = runs(project, "tune-trial")  # a trial run the kill left half-written is logged again
    assert sorted(int(r.data.tags["reproml.trial_number"]) for r in children) == list(range(len(final)))
    assert {r.info.status for r in children if r.data.tags.get("reproml.interrupted")} == {"FAILED"}
    assert {r.info.status for r in children if not r.data.tags.get("reproml.interrupted")} == {"FINISHED"}


def test_two_workers_share_one_study_and_the_pipeline_trains_what_it_found(tmp_path: Path) -> None:
    project = Project(tmp_path, tune_params(30000, n_trials=20, workers=2, pruner="median", report_every=5))
    project.run("dvc", "repro", "tune")

    final = trials(project)
    assert sum(t.state in FINISHED for t in final) == 20
    assert not [t for t in final if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert [t.number for t in final] == list(range(len(final)))
    assert len({t.user_attrs["worker_pid"] for t in final}) == 2  # both workers ran trials
    children = runs(project, "tune-trial")
    pruned = [r for r in children if r.data.tags["reproml.trial_state"] == "PRUNED"]
    assert pruned and all(
        r.info.status == "FINISHED" and r.data.tags["reproml.pruned"] == "true" for r in pruned
    )
    assert {r.info.status for r in children} == {"FINISHED"}
    (parent,) = runs(project, "tune")
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert parent.data.metrics["finished"] == 20
    artifacts = MlflowClient(tracking_uri=project.tracking_uri()).list_artifacts(parent.info.run_id, "tuning")
    assert {Path(a.path).name for a in artifacts} == {"optimization_history.png", "param_importances.png"}

    # train uses the tuned values, and its run points at the study's parent run
    project.run("dvc", "repro", "train")
    best = json.loads((project.root / "models" / "best_params.json").read_text())
    (train,) = runs(project, "train")
    for key, value in best["params"].items():
        assert float(train.data.params[f"train.xgboost.{key}"]) == pytest.approx(value)
    assert train.data.tags["reproml.tune_run_id"] == parent.info.run_id
    assert train.data.tags["reproml.data.models/best_params.json"]

    # resuming with another direction is refused, and the stored study is left as it was
    journal = project.root / "optuna" / "studies.journal"
    before = journal.read_bytes()
    params = tune_params(30000, n_trials=20, workers=2, pruner="median", report_every=5)
    params["tune"]["direction"] = "minimize"
    project.write_params(params)
    refused = project.run("reproml", "tune", check=False)
    assert refused.returncode == 2
    assert "created to maximize and tune asks to minimize" in refused.stderr
    assert journal.read_bytes() == before

    # tune.enabled: false trains the fixed params of params.yaml
    params["tune"].update({"direction": None, "enabled": False})
    project.write_params(params)
    project.run("dvc", "repro", "train")
    latest = runs(project, "train")[-1]
    assert latest.data.params["train.xgboost.max_depth"] == str(params["train"]["xgboost"]["max_depth"])
    assert "reproml.tune_run_id" not in latest.data.tags
