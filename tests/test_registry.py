"""The registry against a real MLflow store, with real models trained by the stages.

Each test builds a small project on a synthetic frame (target driven by `x1` and `cat == 'a'`),
runs ingest -> prepare -> train -> evaluate -> register in-process, and then exercises the gate,
the aliases and the audit trail. Slices are `cat` (three values, ~260 test rows each).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from reproml import gate, registry
from reproml.errors import ReproError
from reproml.stages.evaluate import run_evaluate
from reproml.stages.ingest import run_ingest
from reproml.stages.prepare import run_prepare
from reproml.stages.register import run_promote, run_register, run_rollback
from reproml.stages.train import run_train
from reproml.stores.mlflow import connection, runs
from tests.conftest import tiny_frame, user_data_params

pytestmark = pytest.mark.integration
NAME = "tiny-model"


def project_params(**promote: Any) -> dict[str, Any]:
    params = user_data_params("data/raw/frame.parquet")
    params["prepare"].update({"train_end": "2021-09-01", "valid_end": "2021-11-01", "test_end": "2022-06-01"})
    params["train"]["xgboost"].update({"n_estimators": 200, "learning_rate": 0.1})
    params["evaluate"]["importance_rows"] = 300
    params["register"] = {"model_name": NAME}
    params["promote"].update({"slice_column": "cat", "floor": 0.6, "bootstrap_samples": 200, **promote})
    return params


@pytest.fixture
def project(make_project: Callable[..., Path]) -> Path:
    return make_project(project_params(), files={"data/raw/frame.parquet": tiny_frame(2000, seed=1)})


def pipeline(root: Path, **changes: Any) -> registry.Registered:
    """Re-run the stages with `changes` applied to params ({"prepare.exclude_columns": [...]})."""
    import yaml

    params = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".", 1)
        params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in (run_ingest, run_prepare, run_train, run_evaluate):
        stage(root)
    return run_register(root)


def gate_of(record: registry.DecisionRecord) -> dict[str, Any]:
    """The gate's numbers, loosely typed: on these runs every one of them is a number."""
    return cast(dict[str, Any], record["gate"])


def alias(name: str) -> int | None:
    found = registry.alias_version(NAME, name)
    return None if found is None else int(found.version)


def test_register_tags_lineage_and_sets_challenger(project: Path) -> None:
    registered = pipeline(project)
    version = MlflowClient().get_model_version(NAME, str(registered["version"]))
    run = MlflowClient().get_run(registered["run_id"])
    assert alias("challenger") == registered["version"] == 1
    assert version.tags["reproml.run_id"] == run.info.run_id
    assert version.tags["reproml.git_commit"] == run.data.tags["reproml.git_commit"]
    assert (
        version.tags["reproml.data.data/prepared/train.parquet"]
        == run.data.tags["reproml.data.data/prepared/train.parquet"]
    )
    assert json.loads((project / "models" / "registered.json").read_text())["version"] == 1


def test_first_model_below_the_floor_is_not_promoted(make_project) -> None:
    root = make_project(
        project_params(floor=0.999), files={"data/raw/frame.parquet": tiny_frame(2000, seed=1)}
    )
    pipeline(root)
    record = run_promote(root)
    assert record["action"] == "reject"
    assert "floor" in record["reason"]
    assert alias("champion") is None
    assert len(registry.history(root)) == 1


def test_first_model_meeting_the_floor_becomes_champion(project: Path) -> None:
    pipeline(project)
    record = run_promote(project)
    assert record["action"] == "promote", record["reason"]
    assert alias("champion") == 1
    assert alias("previous") is None
    tags = MlflowClient().get_model_version(NAME, "1").tags
    assert tags["reproml.decision"] == "promote"
    saved = json.loads((project / record["record"]).read_text())
    assert saved["gate"]["champion_value"] is None
    assert set(saved["eval_data"]) == {"data/prepared/test.parquet"}


def test_worse_challenger_is_rejected_and_champion_kept(project: Path) -> None:
    pipeline(project)
    run_promote(project)
    pipeline(project, **{"prepare.exclude_columns": ["x1"]})  # loses the strongest feature
    record = run_promote(project)
    assert record["action"] == "reject"
    assert gate_of(record)["improvement"] < 0
    assert (alias("champion"), alias("challenger"), alias("previous")) == (1, 2, None)
    assert MlflowClient().get_model_version(NAME, "2").tags["reproml.decision"] == "reject"


def test_better_challenger_is_promoted_and_old_champion_kept_as_previous(make_project) -> None:
    root = make_project(project_params(), files={"data/raw/frame.parquet": tiny_frame(2000, seed=1)})
    pipeline(root, **{"prepare.exclude_columns": ["x1"]})
    run_promote(root, version=1, reason="baseline for the test")
    pipeline(root, **{"prepare.exclude_columns": []})
    record = run_promote(root)
    assert record["action"] == "promote", record["reason"]
    low, _ = gate_of(record)["interval"]
    assert gate_of(record)["improvement"] > gate_of(record)["margin"] and low > 0
    assert (alias("champion"), alias("previous")) == (2, 1)


def test_retrained_identical_model_is_a_tie_and_rejected(project: Path) -> None:
    pipeline(project)
    run_promote(project)
    pipeline(project)  # same data, params and seed: identical predictions
    record = run_promote(project)
    assert record["action"] == "reject"
    assert "tie" in record["reason"]
    assert alias("champion") == 1


def test_forced_promotion_needs_a_reason_and_is_recorded(project: Path) -> None:
    pipeline(project)
    with pytest.raises(ReproError, match="--reason"):
        run_promote(project, version=1)
    record = run_promote(project, version=1, reason="hotfix approved by on-call")
    assert record["action"] == "force"
    assert "hotfix approved by on-call" in record["reason"]
    assert alias("champion") == 1


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_rollback_restores_previous_and_is_reversible(project: Path) -> None:
    pipeline(project)
    run_promote(project, version=1, reason="first")
    pipeline(project, **{"prepare.exclude_columns": ["x2"]})
    run_promote(project, version=2, reason="second")
    record = run_rollback(project, reason="v2 misbehaves")
    assert (alias("champion"), alias("previous")) == (1, 2)
    assert record["action"] == "rollback" and "v2 misbehaves" in record["reason"]
    run_rollback(project, reason="false alarm")
    assert (alias("champion"), alias("previous")) == (2, 1)
    actions = [r["action"] for r in registry.history(project)]
    assert actions == ["force", "force", "rollback", "rollback"]


def test_two_concurrent_promotions_one_wins_one_aborts(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline(project)
    barrier = threading.Barrier(2, timeout=60)
    real_decide = gate.decide

    def slow_decide(*args: Any, **kwargs: Any) -> Any:
        barrier.wait()  # both have read the (absent) champion before either moves it
        return real_decide(*args, **kwargs)

    monkeypatch.setattr(gate, "decide", slow_decide)
    results: list[registry.DecisionRecord] = []
    threads = [threading.Thread(target=lambda: results.append(run_promote(project))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(r["action"] for r in results) == ["abort", "promote"]
    aborted = next(r for r in results if r["action"] == "abort")
    assert "champion changed" in aborted["reason"]
    assert alias("champion") == 1
    assert len(registry.history(project)) == 2


def test_a_model_from_outside_the_project_is_refused(project: Path, tmp_path: Path) -> None:
    pipeline(project)
    client = MlflowClient()
    foreign = client.create_model_version(NAME, (tmp_path / "elsewhere" / "model").as_uri())
    with pytest.raises(ReproError, match="outside this project's artifact root"):
        run_promote(project, version=int(foreign.version), reason="try")
    assert alias("champion") is None


def test_register_refuses_a_run_that_did_not_finish(project: Path) -> None:
    pipeline(project)
    run_id = json.loads((project / "models" / "registered.json").read_text())["run_id"]
    MlflowClient().set_terminated(run_id, "FAILED")
    with pytest.raises(ReproError, match="FAILED, not FINISHED"):
        run_register(project)
    assert [int(v.version) for v in MlflowClient().search_model_versions(f"name='{NAME}'")] == [1]


# --- honest run states across real processes ------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from reproml.stores.mlflow import connection, models, runs
    experiment = connection.setup(Path(sys.argv[1]), "states")
    with runs.tracked_run(experiment) as run:
        print(run.info.run_id, flush=True)
        time.sleep(120)
    """
)


def start_holder(root: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "TMPDIR": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def run_status(root: Path, run_id: str) -> str:
    mlflow.set_tracking_uri(connection.tracking_uri(root))
    return str(MlflowClient().get_run(run_id).info.status)


def test_sigterm_ends_the_run_killed(tmp_path: Path) -> None:
    proc, run_id = start_holder(tmp_path)
    assert run_status(tmp_path, run_id) == "RUNNING"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert run_status(tmp_path, run_id) == "KILLED"


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_sigkilled_run_is_marked_killed_when_the_next_run_starts(tmp_path: Path) -> None:
    proc, run_id = start_holder(tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    time.sleep(0.2)
    assert run_status(tmp_path, run_id) == "RUNNING"  # nothing marks it without us
    experiment = connection.setup(tmp_path, "states")
    with runs.tracked_run(experiment) as run:
        pass
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "KILLED"
    assert "ended without ending the run" in client.get_run(run_id).data.tags["reproml.killed_reason"]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_a_live_run_of_another_process_is_left_alone(tmp_path: Path) -> None:
    proc, run_id = start_holder(tmp_path)
    try:
        experiment = connection.setup(tmp_path, "states")
        assert runs.mark_dead_runs(experiment) == []
        assert run_status(tmp_path, run_id) == "RUNNING"
    finally:
        proc.kill()
        proc.wait(timeout=30)


# --- the gate's other rules, with real models in a real store -------------------------------------


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_regression_worse_challenger_is_rejected(make_project) -> None:
    """RMSE: lower is better, so the gate's direction flips."""
    params = project_params(floor=1000.0)
    params["data"]["task"] = "regression"
    root = make_project(params, files={"data/raw/frame.parquet": tiny_frame(2000, seed=1, task="regression")})
    pipeline(root)
    first = run_promote(root)
    assert first["action"] == "promote", first["reason"]
    assert first["gate"]["metric"] == "rmse"
    pipeline(root, **{"prepare.exclude_columns": ["x1"]})
    record = run_promote(root)
    assert record["action"] == "reject"
    assert gate_of(record)["challenger_value"] > gate_of(record)["champion_value"]  # higher error
    assert gate_of(record)["improvement"] < 0
    assert alias("champion") == 1


def test_nan_metric_is_rejected(make_project) -> None:
    """June-like test rows that are all one class make ROC-AUC undefined: no decision on NaN."""
    frame = tiny_frame(2000, seed=1)
    frame.loc[frame["when"] >= "2021-11-01", "y"] = 1
    root = make_project(project_params(), files={"data/raw/frame.parquet": frame})
    pipeline(root)
    record = run_promote(root)
    assert record["action"] == "reject"
    assert "nan" in record["reason"].lower()
    assert alias("champion") is None


def regional_frame(rows: int = 2400, seed: int = 3) -> Any:
    """In region 'R' the target follows x2; elsewhere it follows x1."""
    import numpy as np

    frame = tiny_frame(rows, seed=seed)
    rng = np.random.default_rng(seed)
    frame["region"] = rng.choice(["R", "S", "T", "U"], size=rows)
    noise = rng.normal(scale=0.3, size=rows)
    driver = np.where(frame["region"] == "R", frame["x2"] - 0.5, frame["x1"])
    frame["y"] = (driver + noise > 0).astype(int)
    return frame


def test_challenger_better_overall_but_worse_on_a_slice_is_rejected(make_project) -> None:
    params = project_params(slice_column="region", min_slice_rows=100)
    params["prepare"]["exclude_columns"] = ["x1"]
    root = make_project(params, files={"data/raw/frame.parquet": regional_frame()})
    pipeline(root)  # knows x2 only: good in region R, poor elsewhere
    run_promote(root, version=1, reason="baseline for the test")
    pipeline(root, **{"prepare.exclude_columns": ["x2"]})  # knows x1 only: the reverse
    record = run_promote(root)
    assert gate_of(record)["improvement"] > 0, "the challenger should be better overall"
    assert record["action"] == "reject"
    assert "region=R" in record["reason"]
    judged = {s["value"]: s for s in gate_of(record)["slices"]}
    assert judged["R"]["judged"] and judged["R"]["improvement"] < -0.01
    assert alias("champion") == 1


def test_promoting_the_champion_again_is_a_no_op(project: Path) -> None:
    """A second `make run` with nothing new must not fail or record a decision."""
    pipeline(project)
    run_promote(project)
    again = run_promote(project)
    assert again["action"] == "none"
    assert "already the champion" in again["reason"]
    assert len(registry.history(project)) == 1


def test_a_version_whose_run_did_not_finish_cannot_be_promoted(project: Path) -> None:
    registered = pipeline(project)
    MlflowClient().set_terminated(registered["run_id"], "KILLED")
    with pytest.raises(ReproError, match="KILLED, not FINISHED"):
        run_promote(project, version=registered["version"], reason="try anyway")
    assert alias("champion") is None


def test_the_newest_labelled_production_window_joins_the_evaluation(project: Path) -> None:
    import pandas as pd

    pipeline(project)
    windows = project / registry.labelled_windows(NAME)
    windows.mkdir(parents=True)
    valid = pd.read_parquet(project / "data" / "prepared" / "valid.parquet")
    test = pd.read_parquet(project / "data" / "prepared" / "test.parquet")
    valid["when"] = test["when"].max() + pd.Timedelta(days=1)  # production comes after the test split
    valid.head(50).to_parquet(windows / "2022-05.parquet")
    pd.concat([valid] * 2).to_parquet(windows / "2022-06.parquet")  # newest
    record = run_promote(project)
    assert set(record["eval_data"]) == {
        "data/prepared/test.parquet",
        f"monitoring/{NAME}/labelled/2022-06.parquet",
    }
    assert len(valid) > 100
    assert record["gate"]["rows"] == len(test) + 2 * len(valid)


def test_a_window_the_test_split_already_holds_is_not_counted_twice(project: Path) -> None:
    """After a retrain on a batch, that batch is the new test split: its window adds no evidence."""
    import pandas as pd

    pipeline(project)
    windows = project / registry.labelled_windows(NAME)
    windows.mkdir(parents=True)
    test = pd.read_parquet(project / "data" / "prepared" / "test.parquet")
    test.to_parquet(windows / "2022-06.parquet")
    record = run_promote(project)
    assert set(record["eval_data"]) == {"data/prepared/test.parquet"}
    assert record["gate"]["rows"] == len(test)


def test_a_password_quoted_in_a_forced_reason_reaches_neither_record_nor_tag(project: Path) -> None:
    pipeline(project)
    canary = "Canary-Reason-5e1f"
    record = run_promote(project, version=1, reason=f"data at postgresql://ops:{canary}@db/x is fixed")
    saved = (project / record["record"]).read_text()
    tags = MlflowClient().get_model_version(NAME, "1").tags
    assert canary not in saved and canary not in str(tags)
    assert "postgresql://ops:***@db/x" in saved
