"""MLflow run states and batching against a real SQLite tracking store in tmp_path."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from reproml.stores.mlflow import connection, models, runs


@pytest.fixture
def experiment(tmp_path: Path) -> str:
    return connection.setup(tmp_path, "tests")


def status(run_id: str) -> str:
    return str(MlflowClient().get_run(run_id).info.status)


def test_setup_keeps_store_and_artifacts_in_the_project(tmp_path: Path, experiment: str) -> None:
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    location = MlflowClient().get_experiment(experiment).artifact_location
    assert location == (tmp_path / "mlartifacts").resolve().as_uri()
    assert connection.setup(tmp_path, "tests") == experiment


def test_tracking_uri_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    assert connection.tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'other.db'}"


def test_successful_block_finishes_the_run(experiment: str) -> None:
    with runs.tracked_run(experiment, run_name="ok") as run:
        pass
    assert status(run.info.run_id) == "FINISHED"


def test_a_run_under_dvc_exp_run_carries_the_experiment_name(
    experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "lower-lr")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    with runs.tracked_run(experiment, run_name="lower-lr") as run:
        pass
    tags = MlflowClient().get_run(run.info.run_id).data.tags
    assert tags["dvc.exp_name"] == "lower-lr"
    assert tags["dvc.exp_baseline_rev"] == "a" * 40
    monkeypatch.setenv("DVC_EXP_NAME", " ")  # blank: no experiment, as under `dvc repro`
    with runs.tracked_run(experiment) as plain:
        pass
    assert "dvc.exp_name" not in MlflowClient().get_run(plain.info.run_id).data.tags


def test_exception_marks_the_run_failed(experiment: str) -> None:
    with pytest.raises(ValueError), runs.tracked_run(experiment) as run:
        raise ValueError("boom")
    assert status(run.info.run_id) == "FAILED"


def test_sigterm_marks_the_run_killed_and_restores_the_handler(experiment: str) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped, runs.tracked_run(experiment) as run:
        os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert status(run.info.run_id) == "KILLED"
    assert signal.getsignal(signal.SIGTERM) == before


def test_ctrl_c_marks_the_run_killed(experiment: str) -> None:
    with pytest.raises(KeyboardInterrupt), runs.tracked_run(experiment) as run:
        raise KeyboardInterrupt
    assert status(run.info.run_id) == "KILLED"


def test_resuming_a_run_and_failing_marks_it_failed(experiment: str) -> None:
    with runs.tracked_run(experiment) as run:
        pass
    with pytest.raises(RuntimeError), runs.tracked_run(experiment, run_id=run.info.run_id):
        raise RuntimeError("evaluate broke")
    assert status(run.info.run_id) == "FAILED"


def test_log_batch_goes_past_mlflow_batch_limits(experiment: str) -> None:
    params = {f"p.{i:03d}": str(i) for i in range(250)}
    metrics = {f"m_{i:04d}": float(i) for i in range(1200)}
    tags = {f"reproml.t{i}": "x" for i in range(130)}
    with runs.tracked_run(experiment) as run:
        runs.log_batch(run.info.run_id, params=params, metrics=metrics, tags=tags)
    data = MlflowClient().get_run(run.info.run_id).data
    assert data.params == params
    assert data.metrics == metrics
    assert {k: v for k, v in data.tags.items() if k.startswith("reproml.t")} == tags


def test_metric_series_keeps_every_step(experiment: str) -> None:
    values = list(np.linspace(0.5, 0.8, 1500))
    with runs.tracked_run(experiment) as run:
        runs.log_metric_series(run.info.run_id, "curve_valid_auc", values)
    history = MlflowClient().get_metric_history(run.info.run_id, "curve_valid_auc")
    assert [m.step for m in history] == list(range(1, 1501))
    assert history[-1].value == pytest.approx(0.8)


def test_find_run_for_model_returns_the_newest_match(experiment: str) -> None:
    ids = []
    for _ in range(2):
        with runs.tracked_run(experiment) as run:
            runs.log_batch(run.info.run_id, tags={runs.MODEL_MD5_TAG: "abc"})
        ids.append(run.info.run_id)
    assert runs.find_run_for_model(experiment, "abc") == ids[-1]
    assert runs.find_run_for_model(experiment, "def") is None


def test_frame_schema_marks_columns_with_gaps_optional() -> None:
    frame = pd.DataFrame(
        {
            "n": [1.0, np.nan],
            "i": [1, 2],
            "s": ["a", None],
            "t": pd.to_datetime(["2021-01-01", "2021-01-02"]),
            "b": [True, False],
        }
    )
    schema = {c["name"]: (c["type"], c["required"]) for c in models.frame_schema(frame).to_dict()}
    assert schema == {
        "n": ("double", False),
        "i": ("long", True),
        "s": ("string", False),
        "t": ("datetime", True),
        "b": ("boolean", True),
    }


def test_dataset_input_records_the_given_digest(experiment: str) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    with runs.tracked_run(experiment) as run:
        models.log_dataset(
            run.info.run_id, frame, "train", "data/prepared/train.parquet", "d" * 32, "training"
        )
    inputs = MlflowClient().get_run(run.info.run_id).inputs
    assert inputs is not None
    (only,) = inputs.dataset_inputs
    assert only.dataset.digest == "d" * 32
    assert only.dataset.name == "train"
    assert '"num_rows": 3' in str(only.dataset.profile)


def test_requirement_check_answers_the_same_without_the_module_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """`log_model` runs MLflow's requirement check with an empty module map (no scan of every
    installed distribution): the same answers for our requirements, a mismatch and a missing one,
    and the real map is built again afterwards."""
    from mlflow.utils import requirements_utils as reqs

    from reproml.lineage import library_versions
    from reproml.stages.train import _requirements

    monkeypatch.setattr(reqs, "_MODULES_TO_PACKAGES", None)  # as in a fresh train process
    monkeypatch.setattr(reqs, "_PACKAGES_TO_MODULES", None)
    wanted = [*_requirements(library_versions()), "scikit-learn==0.0.1", "no-such-distribution-xyz==1.0"]
    with models._no_module_scan():
        quick = [str(reqs._check_requirement_satisfied(r)) for r in wanted]
        assert reqs._MODULES_TO_PACKAGES == {}
    assert reqs._MODULES_TO_PACKAGES is None and reqs._PACKAGES_TO_MODULES is None
    scanned = [str(reqs._check_requirement_satisfied(r)) for r in wanted]
    assert reqs._MODULES_TO_PACKAGES  # the real map, built by the check itself
    assert quick == scanned
    assert [a != "None" for a in quick] == [False] * (len(wanted) - 2) + [True, True]
