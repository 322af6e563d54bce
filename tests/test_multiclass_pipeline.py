"""The real `dvc repro` on a multiclass data set a package ships: scikit-learn's wine (178 rows,
three cultivars, no time column), written as a user's CSV under data/raw/ with string labels."""

from __future__ import annotations

import json
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn import metrics as skm

from tests.conftest import default_params
from tests.project import PIPELINE_RUNS, Project

pytestmark = pytest.mark.integration

CLASSES = ["barolo", "grignolino", "barbera"]  # wine's cultivars 0, 1, 2, as a user would name them
SORTED = sorted(CLASSES)
MULTICLASS_METRICS = {
    "accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted", "roc_auc_ovr", "log_loss",
    "brier",
}  # fmt: skip


def wine_params() -> dict[str, Any]:
    params = default_params()
    params["data"].update(
        {"path": "data/raw/wine.csv", "target": "cultivar", "task": "multiclass", "time_column": None}
    )
    params["prepare"].update(
        {"split": "random", "valid_fraction": 0.2, "test_fraction": 0.25, "exclude_columns": []}
    )
    params["train"]["n_jobs"] = 1
    params["train"]["xgboost"].update(
        {"n_estimators": 300, "min_child_weight": 1.0, "early_stopping_rounds": 20}
    )
    params["tune"].update({"n_trials": 4, "report_every": 5})
    params["evaluate"]["importance_repeats"] = 2
    params["register"]["model_name"] = "wine-cultivar"
    params["promote"]["slice_column"] = None
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    from sklearn.datasets import load_wine

    wine = load_wine(as_frame=True)
    frame = wine.frame.rename(columns={"target": "cultivar"})
    frame["cultivar"] = np.asarray(CLASSES, dtype=object)[wine.target.to_numpy()]
    proj = Project(tmp_path_factory.mktemp("wine"), wine_params())
    frame.to_csv(proj.root / "data" / "raw" / "wine.csv", index=False)
    proj.commit("wine data")
    proj.first_repro = proj.run("dvc", "repro")  # type: ignore[attr-defined]
    return proj


@pytest.fixture(scope="module")
def pipeline_run(project: Project) -> Any:
    mlflow.set_tracking_uri(project.tracking_uri())
    runs = mlflow.search_runs(experiment_names=["reproml"], filter_string=PIPELINE_RUNS, output_format="list")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def test_every_stage_ran_and_ingest_recorded_the_classes(project: Project) -> None:
    out = project.first_repro.stdout  # type: ignore[attr-defined]
    for stage in ("ingest", "prepare", "tune", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in out
    schema = json.loads((project.root / "data" / "schema.json").read_text())
    assert schema["task"] == "multiclass"
    assert schema["classes"] == SORTED
    prepared = json.loads((project.root / "metrics" / "prepare.json").read_text())
    assert set(prepared["train"]["class_shares"]) == set(SORTED)


def test_tuning_optimised_macro_roc_auc_on_the_validation_split(project: Project) -> None:
    best = json.loads((project.root / "models" / "best_params.json").read_text())
    assert best["metric"] == "roc_auc_ovr" and best["direction"] == "maximize"
    assert 0.8 < best["best_value"] <= 1.0
    tune = json.loads((project.root / "metrics" / "tune.json").read_text())
    assert tune["finished"] == 4


def test_the_run_holds_the_multiclass_metrics_and_the_class_order(
    project: Project, pipeline_run: Any
) -> None:
    data = pipeline_run.data
    assert pipeline_run.info.status == "FINISHED"
    assert data.params["data.task"] == "multiclass"
    assert json.loads(data.tags["reproml.classes"]) == SORTED
    for split in ("train", "valid", "test"):
        assert {f"{split}_{m}" for m in MULTICLASS_METRICS} <= set(data.metrics)
    assert 0.8 < data.metrics["test_roc_auc_ovr"] <= 1.0
    assert 0.0 < data.metrics["test_log_loss"] < 1.0986  # better than guessing among three (ln 3)
    for label in SORTED:
        for name in ("precision", "recall", "f1"):
            assert 0.0 <= data.metrics[f"test_{name}.{label}"] <= 1.0
    assert "curve_valid_log_loss" in data.metrics  # XGBoost's mlogloss per boosting round
    artifacts = {a.path for a in MlflowClient().list_artifacts(pipeline_run.info.run_id, "plots")}
    assert {
        "plots/confusion.png",
        "plots/per_class.png",
        "plots/roc.png",
        "plots/learning_curve.png",
    } <= artifacts


def test_metrics_file_agrees_with_sklearn_on_the_test_predictions(project: Project) -> None:
    written = json.loads((project.root / "metrics" / "metrics.json").read_text())
    predictions = pd.read_parquet(project.root / "predictions" / "test.parquet")
    proba = predictions[[f"proba_{c}" for c in SORTED]].to_numpy()
    proba = proba / proba.sum(axis=1, keepdims=True)  # XGBoost's float32 rows sum to one within 1e-7
    y = predictions["cultivar"].to_numpy()
    test = written["test"]
    assert set(test) == MULTICLASS_METRICS
    assert test["roc_auc_ovr"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", labels=SORTED))
    assert test["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=SORTED), rel=1e-6)
    assert test["f1_macro"] == pytest.approx(skm.f1_score(y, predictions["prediction"], average="macro"))
    assert written["overfit"]["metric"] == "roc_auc_ovr"
    recall = skm.recall_score(y, predictions["prediction"], labels=SORTED, average=None)
    assert [written["per_class"][c]["recall"] for c in SORTED] == pytest.approx(recall.tolist())
    confusion = pd.read_csv(project.root / "plots" / "confusion.csv")
    assert set(confusion["actual"]) == set(SORTED) and len(confusion) == len(y)


def test_logged_model_predicts_the_original_labels(project: Project, pipeline_run: Any) -> None:
    uri = pipeline_run.data.tags["reproml.model_uri"]
    raw = pd.read_csv(project.root / "data" / "raw" / "wine.csv").drop(columns="cultivar")
    predicted = mlflow.pyfunc.load_model(uri).predict(raw)
    assert set(pd.unique(predicted)) <= set(CLASSES)
    assert (predicted == pd.read_csv(project.root / "data" / "raw" / "wine.csv")["cultivar"]).mean() > 0.8
    model = mlflow.sklearn.load_model(uri)
    assert list(model.classes_) == SORTED
    assert model.predict_proba(raw.head(3)).shape == (3, 3)


def test_register_stage_made_a_challenger_of_the_data_sets_own_name(
    project: Project, pipeline_run: Any
) -> None:
    registered = json.loads((project.root / "models" / "registered.json").read_text())
    assert registered["model_name"] == "wine-cultivar"
    version = MlflowClient().get_model_version_by_alias("wine-cultivar", "challenger")
    assert version.run_id == pipeline_run.info.run_id


def test_second_repro_is_a_no_op(project: Project) -> None:
    again = project.run("dvc", "repro")
    assert "Data and pipelines are up to date" in again.stdout


def test_runs_table_shows_the_macro_metrics(project: Project, pipeline_run: Any) -> None:
    done = project.run("env", "COLUMNS=220", "reproml", "runs")
    assert f"{pipeline_run.data.metrics['test_roc_auc_ovr']:.4f}" in done.stdout


def test_promote_judges_the_first_multiclass_model_on_macro_roc_auc(project: Project) -> None:
    mlflow.set_tracking_uri(project.tracking_uri())
    done = project.run("reproml", "promote")
    record = next(r for r in map(json.loads, _records(project)) if r["action"] in ("promote", "reject"))
    assert record["gate"]["metric"] == "roc_auc_ovr", record
    assert record["action"] == "promote", record
    champion = MlflowClient().get_model_version_by_alias("wine-cultivar", "champion")
    assert str(champion.version) == "1", done.stdout


def _records(project: Project) -> list[str]:
    return [p.read_text() for p in sorted((project.root / "registry" / "records").glob("*.json"))]
