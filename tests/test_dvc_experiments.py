"""What DVC users do after the first run: force a re-run, try a parameter, compare.

`dvc repro --force` must reproduce the same metrics, predictions and data versions; `dvc exp run -S`
must produce a comparable experiment (and its own MLflow run); `dvc metrics diff` and
`dvc plots diff` must work across the two.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from typing import Any

import mlflow
import pytest

from tests.project import PIPELINE_RUNS, Project, sampled_params

# `slow` (~6.5 min of a CI worker's time, measured 2026-12-03): the default suite must stay under 20 min;
# `make test-slow` runs it
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    proj = Project(tmp_path_factory.mktemp("experiments"), sampled_params())
    proj.run("dvc", "repro")
    proj.commit("baseline results")
    return proj


def outputs(project: Project) -> dict[str, Any]:
    root = project.root
    return {
        "metrics": json.loads((root / "metrics" / "metrics.json").read_text()),
        "predictions": hashlib.md5((root / "predictions" / "test.parquet").read_bytes()).hexdigest(),
        # register's output names the new registry version, which a forced re-run must change
        "lock": {
            name: stage.get("outs") for name, stage in project.lock()["stages"].items() if name != "register"
        },
    }


def test_forced_repro_is_identical(project: Project) -> None:
    first = outputs(project)
    project.run("dvc", "repro", "--force")
    second = outputs(project)
    assert second["metrics"] == first["metrics"]
    assert second["predictions"] == first["predictions"]
    assert second["lock"] == first["lock"], "a forced re-run produced different data or model files"
    changed = project.run("git", "status", "--porcelain").stdout.split("\n")
    assert [line for line in changed if line.strip()] == [" M dvc.lock"]  # register's new version only


def test_experiment_with_another_model_is_compared(project: Project) -> None:
    project.run("dvc", "exp", "run", "-n", "rf", "-S", "train.model=random_forest")
    shown = json.loads(project.run("dvc", "exp", "show", "--json").stdout)
    models: dict[str, float] = {}
    for commit in shown:
        for row in [commit, *(e for group in commit.get("experiments") or [] for e in group["revs"])]:
            data = row.get("data") or {}
            model = (
                data.get("params", {}).get("params.yaml", {}).get("data", {}).get("train", {}).get("model")
            )
            auc = data.get("metrics", {}).get("metrics/metrics.json", {}).get("data", {}).get("test", {})
            if model and "roc_auc" in auc:
                models[f"{row.get('name') or row['rev']}:{model}"] = auc["roc_auc"]
    assert any(key.endswith(":xgboost") for key in models), models
    assert any(key.startswith("rf:") and key.endswith(":random_forest") for key in models), models
    rows = list(csv.DictReader(io.StringIO(project.run("dvc", "exp", "show", "--csv").stdout)))
    assert {"Experiment", "test.roc_auc", "train.model"} <= set(rows[0])
    # the table leads with the test metrics; the ingest, prepare and tuning counters follow them
    columns = list(rows[0])
    described = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"}
    data_columns = [c for c in columns if c not in described]
    assert data_columns[0].startswith("test."), columns
    assert {"rows", "rows_read", "best_value"} <= set(columns), columns  # ingest's and tune's are kept
    assert columns.index("test.roc_auc") < columns.index("best_value") < columns.index("rows")
    assert {r["train.model"] for r in rows} == {"xgboost", "random_forest"}
    assert "rf" in {r["Experiment"] for r in rows}


def test_metrics_and_plots_diff_against_the_baseline(project: Project) -> None:
    diff = json.loads(project.run("dvc", "metrics", "diff", "--json").stdout)
    changed = diff["metrics/metrics.json"]
    assert "test.roc_auc" in changed
    assert changed["test.roc_auc"]["old"] != changed["test.roc_auc"]["new"]
    out = project.root / "plots_diff"
    done = project.run("dvc", "plots", "diff", "HEAD", "-o", str(out))
    assert (out / "index.html").is_file(), done.stdout + done.stderr


def test_each_pipeline_execution_is_one_mlflow_run(project: Project) -> None:
    mlflow.set_tracking_uri(project.tracking_uri())
    runs = mlflow.search_runs(experiment_names=["reproml"], filter_string=PIPELINE_RUNS, output_format="list")
    models = sorted(r.data.params["train.model"] for r in runs)
    # baseline repro, forced repro, experiment
    assert models == ["random_forest", "xgboost", "xgboost"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags.get("reproml.evaluated") == "true" for r in runs)
    experiment = next(r for r in runs if r.data.params["train.model"] == "random_forest")
    assert experiment.data.tags["reproml.git_dirty"] == "true"
    assert "params.yaml" in json.loads(experiment.data.tags["reproml.git_dirty_paths"])
    # `dvc exp run -n rf`: the MLflow run carries the experiment's name, as `dvc exp show` lists it
    assert experiment.info.run_name == "rf"
    assert experiment.data.tags["dvc.exp_name"] == "rf"
    baseline = project.run("git", "rev-parse", "HEAD").stdout.strip()
    assert experiment.data.tags["dvc.exp_baseline_rev"] == baseline
    plain = [r for r in runs if r.data.params["train.model"] == "xgboost"]
    assert all("dvc.exp_name" not in r.data.tags for r in plain)  # `dvc repro` runs are no experiment
    tune_runs = mlflow.search_runs(
        experiment_names=["reproml"],
        filter_string="tags.`reproml.stage` = 'tune' and tags.`dvc.exp_name` = 'rf'",
        output_format="list",
    )
    assert [r.info.run_name for r in tune_runs] == ["tune-rf"]


def test_plots_diff_overlays_two_experiments_on_one_chart(project: Project) -> None:
    """Curves are data series declared under `plots:`, so `dvc plots diff` draws both experiments'
    ROC, precision-recall, calibration and threshold curves on one chart each (not two PNGs)."""
    project.run(
        "dvc", "exp", "run", "-n", "decided", "-S", "train.model=xgboost", "-S", "train.calibration=isotonic",
        "-S", "evaluate.threshold=cost", "-S", "evaluate.cost_fn=4",
    )  # fmt: skip
    decision = json.loads((project.root / "metrics" / "metrics.json").read_text())["decision"]
    assert decision["calibration"] == "isotonic" and decision["threshold_choice"]["rule"] == "cost"
    shown = json.loads(project.run("dvc", "plots", "diff", "HEAD", "decided", "--json").stdout)["data"]
    for prefix in ("ROC", "Precision-recall", "Calibration", "Threshold"):
        (title,) = [t for t in shown if t.startswith(prefix)]
        (chart,) = shown[title]  # one chart...
        assert chart["type"] == "vega" and chart["revisions"] == ["HEAD", "decided"]
        values = chart["content"]["data"]["values"]
        assert {v["rev"] for v in values} == {"HEAD", "decided"}, title  # ...holding both experiments
    calibration = next(v for t, v in shown.items() if t.startswith("Calibration"))[0]["content"]["data"][
        "values"
    ]
    files = {(v["rev"], v["filename"]) for v in calibration}
    assert ("decided", "calibration_uncalibrated.csv") in files and ("decided", "calibration.csv") in files
