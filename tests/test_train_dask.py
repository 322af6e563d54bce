"""`train.backend: dask`: xgboost.dask on a real 2-worker LocalCluster against the local fit; the model
it returns is an ordinary one that the stage logs and MLflow's pyfunc loads; the cluster comes from
DASK_SCHEDULER_ADDRESS or is started for the run; an unreachable address names the variable."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from distributed import Client, LocalCluster
from sklearn.metrics import mean_squared_error, roc_auc_score
from threadpoolctl import threadpool_limits

from reproml import fitting_dask
from reproml.config import Params, parse_params
from reproml.errors import ConfigError, ReproError
from reproml.fitting import TrainedModel, fit_model
from reproml.fitting_dask import dask_client, fit_model_dask
from reproml.models import ClassLabels
from tests.conftest import default_params, free_port, tiny_frame
from tests.test_multiclass import LABELS, three_class_frame
from tests.test_multiclass import SPEC as MULTICLASS_SPEC
from tests.test_train_models import SPEC, make_params, raw_rows


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """Two single-threaded workers in this process: xgboost.dask still runs its collective over
    both (each boosts on its own partitions), without the start-up cost of worker processes."""
    with dask_client(address=None, n_workers=2, processes=False) as started:
        yield started


def _split_files(tmp_path: Path, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, Path, Path]:
    cut = int(len(frame) * 0.75)
    train, valid = frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)
    train_path, valid_path = tmp_path / "train.parquet", tmp_path / "valid.parquet"
    train.to_parquet(train_path, index=False)
    valid.to_parquet(valid_path, index=False)
    return train, valid, train_path, valid_path


def _both(
    client: Client, tmp_path: Path, frame: pd.DataFrame, params: Params, spec: Any, classes: Any = None
) -> tuple[TrainedModel, TrainedModel, pd.DataFrame]:
    train, valid, train_path, valid_path = _split_files(tmp_path, frame)
    local = fit_model(train, valid, spec, params, classes)
    dask = fit_model_dask(client, train_path, valid_path, spec, params, classes)
    return local, dask, valid


def test_binary_fit_on_dask_scores_like_the_local_fit_and_is_an_ordinary_model(
    client: Client, tmp_path: Path
) -> None:
    params = make_params("xgboost", xgboost={"n_estimators": 200, "learning_rate": 0.1})
    local, dask, valid = _both(client, tmp_path, tiny_frame(2000, seed=3), params, SPEC)
    model = dask.pipeline.named_steps["model"]
    assert type(model) is xgb.XGBClassifier  # not the Dask estimator: no client inside
    assert model.get_params()["max_depth"] == params.train.xgboost.max_depth
    # early stopping on valid: the booster keeps the best round, and the history has every round
    assert dask.best_iteration is not None and dask.best_iteration < 199
    assert model.best_iteration == dask.best_iteration
    assert len(dask.history["valid"]) == dask.best_iteration + 1 + params.train.xgboost.early_stopping_rounds
    assert dask.history_metric == local.history_metric == "roc_auc"
    # the same preprocessing: categories fit on the train split, `cat` boosted as a category
    assert model.get_booster().feature_types == ["q", "q", "c", "q", "q", "q"]
    y = valid["y"].to_numpy()
    auc_local = roc_auc_score(y, local.pipeline.predict_proba(valid[SPEC.input_columns])[:, 1])
    auc_dask = roc_auc_score(y, dask.pipeline.predict_proba(valid[SPEC.input_columns])[:, 1])
    assert auc_dask > 0.85
    assert abs(auc_dask - auc_local) < 0.01
    # serving raw rows: a missing number, a category never seen, a new date
    assert dask.pipeline.predict_proba(raw_rows()).shape == (5, 2)


def test_one_parquet_file_is_spread_over_every_worker(client: Client, tmp_path: Path) -> None:
    """The prepared split is one file of one row group: cut and placed so that each worker boosts
    on a share of the rows (left to the scheduler, both pieces stay where the file was read)."""
    from reproml.features import build_preprocessor

    train, _, train_path, _ = _split_files(tmp_path, tiny_frame(800, seed=7))
    prep = build_preprocessor(SPEC, "xgboost", 64).fit(train[SPEC.input_columns])
    X, y = fitting_dask._partitions(client, train_path, prep, SPEC, "y", None, at_least=2)
    assert X.shape == (len(train), 6) and y.shape == (len(train),)
    held = client.has_what()  # type: ignore[no-untyped-call]
    assert len(held) == 2 and all(held.values())
    np.testing.assert_array_equal(y.compute(scheduler=client.get), train["y"].to_numpy())


def test_regression_on_dask_is_as_good_as_the_local_fit(client: Client, tmp_path: Path) -> None:
    params = make_params("xgboost", task="regression", xgboost={"n_estimators": 200, "learning_rate": 0.1})
    local, dask, valid = _both(client, tmp_path, tiny_frame(2000, seed=4, task="regression"), params, SPEC)
    assert type(dask.pipeline.named_steps["model"]) is xgb.XGBRegressor
    y = valid["y"].to_numpy()
    rmse_local = mean_squared_error(y, local.pipeline.predict(valid[SPEC.input_columns])) ** 0.5
    rmse_dask = mean_squared_error(y, dask.pipeline.predict(valid[SPEC.input_columns])) ** 0.5
    assert abs(rmse_dask - rmse_local) / rmse_local < 0.05
    assert dask.history_metric == "rmse"


def test_multiclass_on_dask_answers_in_the_recorded_class_order(client: Client, tmp_path: Path) -> None:
    raw = default_params()
    raw["data"].update({"path": "data/raw/t.csv", "target": "y", "task": "multiclass", "time_column": "when"})
    raw["prepare"]["exclude_columns"] = []
    raw["train"].update({"model": "xgboost", "n_jobs": 1})
    raw["train"]["xgboost"].update(
        {"n_estimators": 100, "learning_rate": 0.2, "min_child_weight": 1.0, "early_stopping_rounds": 10}
    )
    params = parse_params(raw)
    frame = three_class_frame(1200, seed=5)
    local, dask, valid = _both(client, tmp_path, frame, params, MULTICLASS_SPEC, LABELS)
    model = dask.pipeline.named_steps["model"]
    assert isinstance(model, ClassLabels) and type(model.estimator_) is xgb.XGBClassifier
    assert list(model.classes_) == LABELS
    X = valid[MULTICLASS_SPEC.input_columns]
    proba = dask.pipeline.predict_proba(X)
    assert proba.shape == (len(valid), 3)
    by_name = [LABELS.index(label) for label in sorted(LABELS)]  # sklearn wants sorted labels

    def auc(p: np.ndarray) -> float:
        return float(roc_auc_score(valid["y"], p[:, by_name], multi_class="ovr", labels=sorted(LABELS)))

    auc_local, auc_dask = auc(local.pipeline.predict_proba(X)), auc(proba)
    assert auc_dask > 0.85
    assert abs(auc_dask - auc_local) < 0.02
    assert set(dask.pipeline.predict(X)) <= set(LABELS)


def test_a_class_without_training_rows_is_refused_before_the_cluster_works(
    client: Client, tmp_path: Path
) -> None:
    raw = default_params()
    raw["data"].update({"path": "data/raw/t.csv", "target": "y", "task": "multiclass", "time_column": "when"})
    raw["prepare"]["exclude_columns"] = []
    params = parse_params(raw)
    frame = three_class_frame(400, seed=6)
    _, _, train_path, valid_path = _split_files(tmp_path, frame)
    with pytest.raises(ValueError, match=r"\['unseen'\] have no training rows"):
        fit_model_dask(client, train_path, valid_path, MULTICLASS_SPEC, params, [*LABELS, "unseen"])


def test_backend_unset_is_local_and_dask_trains_xgboost_only() -> None:
    raw = default_params()
    raw["train"].pop("backend", None)
    assert parse_params(raw).train.backend == "local"
    raw["train"].update({"backend": "dask", "model": "random_forest"})
    with pytest.raises(ConfigError, match="backend 'dask' trains xgboost only"):
        parse_params(raw)


def test_the_local_backend_never_imports_dask() -> None:
    code = (
        "import sys, reproml.fitting, reproml.fitting_dask, reproml.stages.train\n"
        "loaded = sorted(m for m in ('dask', 'distributed', 'xgboost.dask') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_scheduler_address_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:  # type: ignore[no-untyped-call]
        monkeypatch.setenv(fitting_dask.SCHEDULER_ENV, cluster.scheduler_address)
        with dask_client() as connected:
            assert connected.scheduler is not None
            assert connected.scheduler.address == cluster.scheduler_address
            assert fitting_dask.n_workers(connected) == 1
        # the cluster is the team's: leaving the block closes the client, not the scheduler
        assert cluster.status.name == "running"


def test_a_scheduler_without_workers_is_a_clear_error() -> None:
    with (
        LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster,  # type: ignore[no-untyped-call]
        dask_client(address=cluster.scheduler_address) as connected,
        pytest.raises(ReproError, match=r"has no workers after 0\.5 s"),
    ):
        fitting_dask.wait_for_a_worker(connected, timeout_s=0.5)


def test_an_unreachable_scheduler_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv(fitting_dask.SCHEDULER_ENV, address)
    monkeypatch.setattr(fitting_dask, "CONNECT_TIMEOUT_S", 1)
    expected = rf"DASK_SCHEDULER_ADDRESS='{address}': no Dask scheduler answered"
    with pytest.raises(ReproError, match=expected), dask_client():
        pass


@pytest.mark.integration
def test_the_train_stage_on_dask_logs_a_model_pyfunc_and_evaluate_load(
    make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import mlflow

    from reproml.stages.evaluate import run_evaluate
    from reproml.stages.ingest import run_ingest
    from reproml.stages.prepare import run_prepare
    from reproml.stages.train import run_train
    from tests.conftest import user_data_params

    params = user_data_params("data/raw/frame.parquet")
    params["prepare"].update({"train_end": "2021-09-01", "valid_end": "2021-11-01", "test_end": "2022-06-01"})
    params["tune"]["enabled"] = False
    params["train"].update({"backend": "dask", "n_jobs": 1})
    params["train"]["xgboost"].update({"n_estimators": 100, "learning_rate": 0.1})
    params["evaluate"].update({"importance_rows": 200, "importance_repeats": 1})
    root = make_project(params, files={"data/raw/frame.parquet": tiny_frame(2000, seed=1)})
    run_ingest(root)
    run_prepare(root)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:  # type: ignore[no-untyped-call]
        monkeypatch.setenv(fitting_dask.SCHEDULER_ENV, cluster.scheduler_address)
        trained = run_train(root)
    test = pd.read_parquet(root / "data" / "prepared" / "test.parquet")
    columns = ["x1", "x2", "cat", "when"]
    served = mlflow.sklearn.load_model(trained["model_uri"])
    served_cut = served.named_steps["model"]  # the threshold chosen on valid, around the booster
    assert type(served_cut.estimator.estimator) is xgb.XGBClassifier
    predicted = np.asarray(mlflow.pyfunc.load_model(trained["model_uri"]).predict(test[columns]))
    assert set(predicted.tolist()) <= {0, 1}
    run = mlflow.get_run(trained["run_id"])
    assert run.data.params["train.backend"] == "dask"
    assert run.data.tags["reproml.dask_workers"] == "2"
    run_evaluate(root)
    scored = json.loads((root / "metrics" / "metrics.json").read_text())
    assert scored["test"]["roc_auc"] > 0.8
