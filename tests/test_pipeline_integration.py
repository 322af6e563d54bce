"""The real `dvc repro` on a sample of the real flights data, in a temporary git repository.

One project is built per module (a full repro is the expensive part); the tests then read what it
left behind: dvc.lock, the MLflow store, the model, and the folders standing in for $HOME and
$TMPDIR.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import default_params
from tests.project import PIPELINE_RUNS, Project, sampled_params

pytestmark = pytest.mark.integration

SAMPLE_ROWS = 8000


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    proj = Project(tmp_path_factory.mktemp("pipeline"), sampled_params(SAMPLE_ROWS))
    proj.first_repro = proj.run("dvc", "repro")  # type: ignore[attr-defined]
    return proj


@pytest.fixture(scope="module")
def pipeline_run(project: Project) -> Any:
    mlflow.set_tracking_uri(project.tracking_uri())
    runs = mlflow.search_runs(experiment_names=["reproml"], filter_string=PIPELINE_RUNS, output_format="list")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_repro_runs_every_stage_and_records_them(project: Project) -> None:
    out = project.first_repro.stdout  # type: ignore[attr-defined]
    stages = ("ingest", "prepare", "tune", "train", "evaluate", "register")
    for stage in stages:
        assert f"Running stage '{stage}'" in out
    assert set(project.lock()["stages"]) == set(stages)
    ingest = json.loads((project.root / "metrics" / "ingest.json").read_text())
    assert ingest["rows"] == SAMPLE_ROWS
    assert ingest["rows_without_target"] > 0


def test_metrics_files_and_plots_are_what_dvc_reads(project: Project) -> None:
    shown = json.loads(project.run("dvc", "metrics", "show", "--json").stdout)
    workspace = shown[""]["data"]  # DVC keys the workspace by the empty revision name
    test_metrics = workspace["metrics/metrics.json"]["data"]["test"]
    assert 0.55 < test_metrics["roc_auc"] <= 1.0
    assert set(test_metrics) == {
        "accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss", "brier"
    }  # fmt: skip
    html = project.root / "plots_out"
    done = project.run("dvc", "plots", "show", "-o", str(html))
    assert "failed" not in (done.stdout + done.stderr).lower()
    page = (html / "index.html").read_text()
    for title in ("ROC (test)", "Confusion matrix (test)", "Learning curve", "Permutation importance"):
        assert title in page


def test_second_repro_is_a_no_op(project: Project, pipeline_run: Any) -> None:
    again = project.run("dvc", "repro")
    assert "Data and pipelines are up to date" in again.stdout
    runs = mlflow.search_runs(experiment_names=["reproml"], filter_string=PIPELINE_RUNS, output_format="list")
    assert [r.info.run_id for r in runs] == [pipeline_run.info.run_id]


def test_run_holds_params_metrics_and_finished_status(project: Project, pipeline_run: Any) -> None:
    data = pipeline_run.data
    assert pipeline_run.info.status == "FINISHED"
    assert data.params["train.model"] == "xgboost"
    assert data.params["data.sample_rows"] == str(SAMPLE_ROWS)
    tuned = json.loads((project.root / "models" / "best_params.json").read_text())["params"]
    assert data.params["train.xgboost.max_depth"] == str(tuned["max_depth"])  # the tuned value it trained
    assert data.params["train.xgboost.n_estimators"] == str(
        default_params()["train"]["xgboost"]["n_estimators"]
    )
    for split in ("train", "valid", "test"):
        assert 0.5 < data.metrics[f"{split}_roc_auc"] <= 1.0
    assert data.metrics["overfit"] in (0.0, 1.0)
    assert data.tags["reproml.overfit"] in ("true", "false")


def test_run_lineage_matches_git_and_dvc_lock(project: Project, pipeline_run: Any) -> None:
    tags = pipeline_run.data.tags
    head = project.run("git", "rev-parse", "HEAD").stdout.strip()
    assert tags["reproml.git_commit"] == head
    assert tags["mlflow.source.git.commit"] == head
    assert tags["reproml.git_dirty"] == "false"
    assert tags["reproml.data.data/ingested.parquet"] == project.lock_md5("data/ingested.parquet")
    prepared = project.root / "data" / "prepared" / "train.parquet"
    assert tags["reproml.data.data/prepared/train.parquet"] == md5(prepared)
    uv_lock = hashlib.sha256((project.root / "uv.lock").read_bytes()).hexdigest()
    assert tags["reproml.uv_lock_sha256"] == uv_lock
    assert tags["reproml.seed"] == str(default_params()["seed"])
    assert len(tags["reproml.params_sha256"]) == 64
    libraries = json.loads(tags["reproml.libraries"])
    assert {"python", "mlflow", "xgboost-cpu", "scikit-learn", "pandas"} <= set(libraries)


def test_datasets_are_inputs_with_dvc_digests(project: Project, pipeline_run: Any) -> None:
    run = MlflowClient().get_run(pipeline_run.info.run_id)
    assert run.inputs is not None
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "test"}
    for name in ("train", "test"):
        file = project.root / "data" / "prepared" / f"{name}.parquet"
        assert inputs[name].dataset.digest == md5(file)
        profile = json.loads(str(inputs[name].dataset.profile))
        assert profile["num_rows"] == len(pd.read_parquet(file))
    contexts = {name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for name, d in inputs.items()}
    assert contexts == {"train": "training", "test": "testing"}


def test_logged_model_predicts_on_raw_columns(project: Project, pipeline_run: Any) -> None:
    model = mlflow.pyfunc.load_model(pipeline_run.data.tags["reproml.model_uri"])
    raw = pd.read_parquet(project.root / "data" / "prepared" / "production.parquet")
    with_gaps = raw[raw["temp"].isna()].head(5)
    batch = pd.concat([raw.head(200), with_gaps], ignore_index=True)
    predicted = model.predict(batch)
    assert len(predicted) == len(batch)
    assert set(pd.unique(predicted)) <= {0, 1}
    signature = model.metadata.get_input_schema()
    assert "time_hour" in signature.input_names()
    assert "dep_delay" not in signature.input_names(), "a leaking column reached the model"


def test_logged_model_matches_the_dvc_model_file(project: Project, pipeline_run: Any) -> None:
    assert pipeline_run.data.tags["reproml.model_md5"] == project.lock_md5("models/model.joblib")
    artifacts = [a.path for a in MlflowClient().list_artifacts(pipeline_run.info.run_id, "plots")]
    assert {"plots/roc.png", "plots/learning_curve.png", "plots/importance.png"} <= set(artifacts)


def test_nothing_is_written_outside_the_project(project: Project) -> None:
    leftovers = sorted(str(p.relative_to(project.home.parent)) for p in (project.home, project.tmp)
                       for p in p.rglob("*"))  # fmt: skip
    assert leftovers == []
    assert not (project.root / "site_cache").exists()
    assert (project.root / ".dvc" / "site_cache").exists()


def test_runs_table_shows_the_run_with_metrics_and_data_version(project: Project, pipeline_run: Any) -> None:
    done = project.run("env", "COLUMNS=220", "reproml", "runs")  # Rich uses 80 columns off a terminal
    tags, metrics = pipeline_run.data.tags, pipeline_run.data.metrics
    assert pipeline_run.info.run_name in done.stdout
    assert f"{metrics['test_roc_auc']:.4f}" in done.stdout
    assert tags["reproml.data.data/ingested.parquet"][:10] in done.stdout
    assert tags["reproml.git_commit"][:7] in done.stdout


def test_register_stage_made_the_run_a_challenger_version(project: Project, pipeline_run: Any) -> None:
    registered = json.loads((project.root / "models" / "registered.json").read_text())
    version = MlflowClient().get_model_version_by_alias(registered["model_name"], "challenger")
    assert int(version.version) == registered["version"] == 1
    assert version.run_id == pipeline_run.info.run_id


def test_bytecode_does_not_make_stages_stale(project: Project) -> None:
    """`make install` compiles src/; .pyc files embed mtimes and differ per clone."""
    project.run(str(Path(sys.executable)), "-m", "compileall", "-q", "src")
    assert list((project.root / "src" / "reproml" / "data").glob("__pycache__/*.pyc"))
    status = project.run("dvc", "status")
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
