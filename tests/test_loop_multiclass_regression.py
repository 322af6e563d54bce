"""The loop after `reproml promote` for multiclass and regression, on a user's own dated CSV.

Two synthetic data sets, eight months from January 2021, 750 rows a month (train: January-March,
valid: April, test: May, production: June-August):

- `zones` (multiclass): four classes decided by x1 and x2; from July the classes x2 points to swap
  (east <-> west), with no change in any feature's distribution. Monitoring June gives `ok`, July
  `retrain` from the drop of macro one-vs-rest ROC-AUC alone, and the retrain's challenger is
  judged on that macro metric.
- `load` (regression): y = 10 + 4 x1 + 3 x2 (+2 for cat a) + noise; from July the x2 slope is
  -3. Monitoring July gives `retrain` on RMSE, and the monitoring flow hands the batch to the
  training flow.

Real DVC, git, MLflow (SQLite), Evidently and a real Prefect server (`prefect_api`). The units at
the top run on small frames without any of them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sklearn import metrics as skm

from reproml.config import MonitorParams
from reproml.metrics import MetricSpec
from reproml.monitoring import concept, drift, quality, scores
from reproml.monitoring.records import BatchSummary
from reproml.orchestration.training import refusal
from tests.conftest import default_params
from tests.project import BIN, Project

CLASSES = ["east", "north", "south", "west"]
MULTICLASS_METRICS = {
    "accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted", "roc_auc_ovr", "log_loss",
    "brier",
}  # fmt: skip
AUC_OVR = MetricSpec("roc_auc_ovr", higher_is_better=True)
BRANCH = "reproml/retrain"


# --- data -----------------------------------------------------------------------------------------


def _times(rng: np.random.Generator, rows_per_month: int, months: int) -> pd.Series:
    """`rows_per_month` sorted minutes in each month from January 2021."""
    starts = pd.date_range("2021-01-01", periods=months + 1, freq="MS")
    parts = []
    for first, after in itertools.pairwise(starts):
        offsets = np.sort(rng.uniform(0, (after - first).total_seconds(), rows_per_month))
        parts.append(pd.Series(first + pd.to_timedelta(offsets, unit="s")))
    return pd.concat(parts, ignore_index=True).dt.floor("min")


def zones_frame(rows_per_month: int = 750, months: int = 8, seed: int = 7) -> pd.DataFrame:
    """Four classes: east/west by x2, north/south by x1; from July 2021 east and west swap."""
    rng = np.random.default_rng(seed)
    when = _times(rng, rows_per_month, months)
    n = len(when)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    cat = rng.choice(["a", "b", "c"], size=n)
    sign = np.where((when >= pd.Timestamp("2021-07-01")).to_numpy(), -1.0, 1.0)
    logits = np.column_stack([sign * x2, x1, -x1, -sign * x2]) * 2.0
    logits += 0.3 * (cat == "a")[:, None] * np.array([1.0, 0.0, 0.0, -1.0])
    logits += rng.gumbel(size=logits.shape) * 0.7
    zone = np.asarray(CLASSES, dtype=object)[logits.argmax(axis=1)]
    return pd.DataFrame(
        {"when": when, "x1": x1.round(4), "x2": x2.round(4), "x3": rng.uniform(size=n).round(4), "cat": cat,
         "zone": zone}
    )  # fmt: skip


def load_frame(rows_per_month: int = 750, months: int = 8, seed: int = 11) -> pd.DataFrame:
    """A numeric target whose x2 slope turns from +3 to -3 in July 2021."""
    rng = np.random.default_rng(seed)
    when = _times(rng, rows_per_month, months)
    n = len(when)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    cat = rng.choice(["a", "b", "c"], size=n)
    slope = np.where((when >= pd.Timestamp("2021-07-01")).to_numpy(), -3.0, 3.0)
    y = 10 + 4 * x1 + slope * x2 + 2.0 * (cat == "a") + rng.normal(scale=1.0, size=n)
    return pd.DataFrame(
        {"when": when, "x1": x1.round(4), "x2": x2.round(4), "x3": rng.uniform(size=n).round(4), "cat": cat,
         "load": y.round(3)}
    )  # fmt: skip


def loop_params(path: str, target: str, task: str, model_name: str) -> dict[str, Any]:
    """A user's dated CSV, small and quick: no tuning, one thread, 200 bootstrap resamples."""
    params = default_params()
    params["data"].update({"path": path, "target": target, "task": task, "time_column": "when"})
    params["prepare"].update(
        {"split": "time", "train_end": "2021-04-01", "valid_end": "2021-05-01", "test_end": "2021-06-01",
         "exclude_columns": []}
    )  # fmt: skip
    params["tune"]["enabled"] = False
    params["train"]["n_jobs"] = 1
    params["train"]["xgboost"].update(
        {"n_estimators": 300, "learning_rate": 0.1, "max_depth": 3, "min_child_weight": 1.0,
         "early_stopping_rounds": 20}
    )  # fmt: skip
    params["evaluate"].update({"importance_rows": 500, "importance_repeats": 2})
    params["register"]["model_name"] = model_name
    params["promote"].update({"slice_column": None, "bootstrap_samples": 200})
    params["monitor"].update({"min_rows": 300, "bootstrap_samples": 200})
    params["retrain"] = {"branch": BRANCH, "tune_trials": 0}
    return params


# --- units: small frames, no services ------------------------------------------------------------


def _probabilities(codes: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = np.eye(len(CLASSES))[codes] * 2.0 + rng.normal(scale=noise, size=(len(codes), len(CLASSES)))
    proba = np.exp(logits)
    return np.asarray(proba / proba.sum(axis=1, keepdims=True))


def _scored(rows: int, noise: float, seed: int, classes: list[Any] = CLASSES) -> pd.DataFrame:
    codes = np.random.default_rng(seed).integers(0, len(classes), size=rows)
    frame = pd.DataFrame({"y": np.asarray(classes, dtype=object)[codes]})
    return scores.with_scores(frame, _probabilities(codes, noise, seed + 1), classes)


def _schema(classes: list[Any] = CLASSES) -> quality.Schema:
    return quality.Schema(["x1"], ["cat"], None, "y", "multiclass", tuple(classes))


def test_multiclass_labels_are_the_champions_classes_however_the_file_writes_them() -> None:
    reference = pd.DataFrame({"x1": [0.0, 1.0, 2.0], "cat": ["a", "b", "a"], "y": [0, 1, 2]})
    batch = pd.DataFrame({"x1": [0.5, 1.5, 2.5, 3.0], "cat": ["a", "b", "a", "b"], "y": ["2", 1.0, None, 0]})
    gate = quality.check(batch, reference, _schema([0, 1, 2]), MonitorParams())
    assert gate.passed, gate.problems
    assert gate.frame["y"].tolist() == [2, 1, None, 0] and gate.labelled_rows == 3
    words = batch.assign(y=["east", "west", "nowhere", "up"])
    refused = quality.check(words, reference.assign(y=["east", "west", "east"]), _schema(), MonitorParams())
    assert not refused.passed
    assert refused.problems == [
        f"target 'y' holds ['nowhere', 'up']; the champion knows only the classes {CLASSES}"
    ]


def test_multiclass_quality_change_is_macro_roc_auc_with_per_class_numbers() -> None:
    test, batch = _scored(800, 1.0, 1), _scored(600, 2.5, 2)
    change = concept.quality_change(
        AUC_OVR, test["y"].to_numpy(), scores.scores_of(test, CLASSES), batch["y"].to_numpy(),
        scores.scores_of(batch, CLASSES), 200, 0.95, 0, labels=CLASSES, task="multiclass",
    )  # fmt: skip
    proba = scores.scores_of(batch, CLASSES)
    expected = skm.roc_auc_score(batch["y"], proba, multi_class="ovr", labels=CLASSES)
    assert change.batch_value == pytest.approx(expected)
    assert change.drop > 0.05 and change.interval[0] > 0.0 and change.note is None
    assert set(change.batch_metrics) == MULTICLASS_METRICS
    assert change.batch_metrics["roc_auc_ovr"] == pytest.approx(expected)
    recall = skm.recall_score(batch["y"], batch["prediction"], labels=CLASSES, average=None)
    assert [change.per_class[c]["recall"] for c in CLASSES] == pytest.approx(recall.tolist())

    no_west = batch[batch["y"] != "west"]
    undefined = concept.quality_change(
        AUC_OVR, test["y"].to_numpy(), scores.scores_of(test, CLASSES), no_west["y"].to_numpy(),
        scores.scores_of(no_west, CLASSES), 200, 0.95, 0, labels=CLASSES, task="multiclass",
    )  # fmt: skip
    assert np.isnan(undefined.batch_value) and np.isnan(undefined.interval[0])
    assert undefined.note == (
        "classes ['west'] have no labelled rows in the batch: roc_auc_ovr needs every class"
    )
    assert undefined.batch_metrics["f1_macro"] > 0  # the label metrics are still there


@pytest.mark.parametrize("classes", [CLASSES, [0, 1, 2, 3]], ids=["words", "numbers"])
def test_evidently_multiclass_report_agrees_and_survives_an_absent_class(classes: list[Any]) -> None:
    test, batch = _scored(800, 1.0, 1, classes), _scored(600, 2.5, 2, classes)
    _, values = concept.report("multiclass", "y", test, batch, classes=classes)
    proba = scores.scores_of(batch, classes)
    labels = np.asarray(batch["y"].tolist())  # an object column of ints is no target type to sklearn
    assert values["RocAuc"] == pytest.approx(skm.roc_auc_score(labels, proba, multi_class="ovr"))
    assert values["Accuracy"] == pytest.approx(float((batch["y"] == batch["prediction"]).mean()))
    assert {f"F1ByLabel.{c}" for c in classes} <= set(values)
    absent = batch[batch["y"] != classes[-1]]
    _, partial = concept.report("multiclass", "y", test, absent, classes=classes)
    assert "RocAuc" not in partial and partial["Accuracy"] == pytest.approx(
        float((absent["y"] == absent["prediction"]).mean())
    )


def test_multiclass_prediction_drift_is_on_the_predicted_class_with_each_probability_listed() -> None:
    from reproml.features import CategoryLevels

    rng = np.random.default_rng(0)
    reference = _scored(1500, 1.0, 3).assign(x1=rng.normal(size=1500), cat=rng.choice(["a", "b"], 1500))
    shifted = _scored(1500, 1.0, 4)
    shifted = shifted[shifted["prediction"] != "west"].reset_index(drop=True)  # the model stops saying west
    shifted = shifted.assign(x1=rng.normal(size=len(shifted)), cat=rng.choice(["a", "b"], len(shifted)))
    levels = {"cat": CategoryLevels(frozenset({"a", "b"}), frozenset())}
    result = drift.measure(reference, shifted, _schema(), {"x1": 1.0, "cat": 0.5}, levels, 0.1, 0.01, 100)
    assert result.prediction is not None
    assert (result.prediction.kind, result.prediction.method) == ("categorical", "jensenshannon")
    assert result.prediction.drifted and result.weighted_drift_share == 0.0
    assert [c.column for c in result.probabilities] == scores.proba_columns(CLASSES)
    assert {c["column"] for c in result.to_dict()["probabilities"]} == set(scores.proba_columns(CLASSES))


def test_a_window_without_a_class_is_named_before_any_retrain() -> None:
    from reproml.retrain import class_refusal, missing_classes

    labels = pd.Series(["east", "north", None, "south"], dtype=object)
    assert missing_classes(labels, CLASSES) == ["west"]
    assert missing_classes(pd.Series([2.0, 1.0, 0.0]), [0, 1, 2]) == []
    text = class_refusal("w.parquet", ["west"], CLASSES, "roc_auc_ovr", "champion v1")
    assert "classes ['west'] have no labelled rows in w.parquet" in text and "champion v1 stays" in text


def test_the_simulation_names_the_metric_and_scores_a_multiclass_baseline() -> None:
    from sklearn.linear_model import LogisticRegression

    from reproml import simulation

    frame = _scored(400, 1.0, 5).assign(x1=np.random.default_rng(6).normal(size=400))
    frame["x1"] += frame["y"].map(dict(zip(CLASSES, range(4), strict=True))).astype(float) * 2
    model = LogisticRegression(max_iter=500).fit(frame[["x1"]], frame["y"])
    value = simulation.baseline_metric(model, frame, "y", "multiclass", None)
    proba = model.predict_proba(frame[["x1"]])
    assert value == pytest.approx(skm.roc_auc_score(frame["y"], proba, multi_class="ovr"))
    assert simulation.metric_name("multiclass", None) == "roc_auc_ovr"
    assert simulation.metric_name("regression", None) == "rmse"
    assert "champion roc_auc_ovr" in simulation.headers("roc_auc_ovr")
    outcome: BatchSummary = {
        "batch": "2021-08",
        "reasons": ["r"],
        "retrain": refusal("reproml/retrain", "monitor 2021-08", "why"),
    }
    refused = simulation.row(outcome, float("nan"), 1)
    assert refused["retrain"] == "refused" and refused["reasons"] == ["r", "retrain: refused: why"]


# --- integration: the user's CSV through promote, monitor and retrain ---------------------------


def _start(base: Path, prefect_api: str, csv: str, frame: pd.DataFrame, params: dict[str, Any]) -> Project:
    p = Project(base, params)
    p.env["PREFECT_API_URL"] = prefect_api
    p.env["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"
    frame.to_csv(p.root / csv, index=False)
    p.commit("the user's data")
    p.run("dvc", "repro")
    p.run("dvc", "push", "--quiet")
    p.run("reproml", "promote")
    p.commit("pipeline")
    return p


def _monitor(p: Project, batch: str, *extra: str) -> dict[str, Any]:
    done = p.run("reproml", "monitor", "--batch", batch, *extra)
    record_id = batch.replace("..", "_") if not batch.endswith(".parquet") else None
    records = sorted((_history(p) / "records").glob("*.json"), key=lambda f: f.stat().st_mtime)
    path = _history(p) / "records" / f"{record_id}.json" if record_id else records[-1]
    record = dict(json.loads(path.read_text()))
    assert record["verdict"] in done.stdout
    return record


def _history(p: Project) -> Path:
    """The model's own monitoring folder, `monitoring/<register.model_name>/`."""
    params = yaml.safe_load((p.root / "params.yaml").read_text())
    return p.root / "monitoring" / str(params["register"]["model_name"])


def _client(p: Project) -> MlflowClient:
    return MlflowClient(tracking_uri=p.tracking_uri())


def _champion(p: Project, name: str) -> int:
    return int(_client(p).get_model_version_by_alias(name, "champion").version)


def _versions(p: Project, name: str) -> list[int]:
    return sorted(int(v.version) for v in _client(p).search_model_versions(f"name = '{name}'"))


def _branch_head(p: Project) -> str | None:
    done = p.run("git", "rev-parse", "--verify", "--quiet", f"refs/heads/{BRANCH}", check=False)
    return done.stdout.strip() or None


def _gate_records(p: Project) -> list[dict[str, Any]]:
    return [json.loads(f.read_text()) for f in sorted((p.root / "registry" / "records").glob("*.json"))]


@pytest.fixture(scope="module")
def zones(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Iterator[Project]:
    params = loop_params("data/raw/zones.csv", "zone", "multiclass", "zones")
    yield _start(tmp_path_factory.mktemp("zones"), prefect_api, "data/raw/zones.csv", zones_frame(), params)


@pytest.mark.slow  # the zones loop: ~3 min of a CI worker; multiclass loops in CI: test_own_data
@pytest.mark.integration
def test_multiclass_month_like_training_is_ok_with_class_predictions(zones: Project) -> None:
    p = zones
    record = _monitor(p, "2021-06")
    assert record["verdict"] == "ok", record["reasons"]
    assert record["champion"]["classes"] == CLASSES
    change = record["quality"]
    assert change["metric"] == "roc_auc_ovr" and abs(change["drop"]) < 0.05
    assert record["drift"]["prediction"]["kind"] == "categorical"
    assert len(record["drift"]["probabilities"]) == 4
    # CBPE estimates the macro ROC-AUC from the class probabilities alone, near the realised value
    assert record["estimate"]["method"] == "cbpe" and record["estimate"]["metric"] == "roc_auc_ovr"
    assert abs(record["estimate"]["error"]) < 0.05
    predictions = pd.read_parquet(p.root / record["predictions"])
    assert set(predictions["prediction"]) <= set(CLASSES)
    proba = predictions[scores.proba_columns(CLASSES)].to_numpy()
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    # the labelled window keeps the labels as the data writes them: the gate and ingest read it
    window = pd.read_parquet(p.root / record["labelled"])
    assert set(window["zone"]) == set(CLASSES) and len(window) == 750


@pytest.mark.slow  # the zones loop: ~3 min of a CI worker; multiclass loops in CI: test_own_data
@pytest.mark.integration
def test_multiclass_quality_drop_gives_retrain_with_macro_and_per_class_numbers(zones: Project) -> None:
    p = zones
    record = _monitor(p, "2021-07")
    assert record["verdict"] == "retrain", record["reasons"]
    assert record["decision"]["triggers"] == {"feature_drift": False, "quality_drop": True}
    assert record["summary"].startswith("roc_auc_ovr drop ")
    change = record["quality"]
    assert change["metric"] == "roc_auc_ovr" and change["drop"] > 0.2 and change["interval"][0] > 0.0
    assert any(r.startswith("roc_auc_ovr ") and "interval excludes 0" in r for r in record["reasons"])
    assert set(change["batch_metrics"]) == MULTICLASS_METRICS
    # east and west swapped: their recall collapses, north and south are as good as before
    recall = {c: change["per_class"][c]["recall"] for c in CLASSES}
    assert recall["east"] < 0.2 and recall["west"] < 0.2, recall
    assert recall["north"] > 0.6 and recall["south"] > 0.6, recall
    evidently = change["evidently"]
    assert evidently["RocAuc"] == pytest.approx(change["batch_value"], abs=1e-6)
    assert evidently["RecallByLabel.east"] == pytest.approx(recall["east"])
    assert (p.root / record["reports"]["quality"]).is_file()

    run = _client(p).get_run(record["mlflow"]["run_id"])
    assert run.data.tags["reproml.verdict"] == "retrain"
    assert run.data.tags["reproml.quality_metric"] == "roc_auc_ovr"
    metrics = run.data.metrics
    assert metrics["quality_batch"] == pytest.approx(change["batch_value"])
    assert metrics["quality.roc_auc_ovr"] == pytest.approx(change["batch_value"])
    assert metrics["quality.f1_macro"] == pytest.approx(change["batch_metrics"]["f1_macro"])
    assert metrics["quality.recall.west"] == pytest.approx(recall["west"])
    assert metrics["evidently.RocAuc"] == pytest.approx(change["batch_value"], abs=1e-6)
    assert metrics["retrain"] == 1.0


@pytest.mark.slow  # the zones loop: ~3 min of a CI worker; multiclass loops in CI: test_own_data
@pytest.mark.integration
def test_a_multiclass_retrain_is_judged_on_the_macro_metric(zones: Project) -> None:
    p = zones
    window = next((_history(p) / "labelled").glob("*_2021-07.parquet"))
    before = len(_gate_records(p))
    done = p.run(str(BIN / "reproml"), "retrain", "--labelled", str(window.relative_to(p.root)), timeout=600)
    records = _gate_records(p)
    assert len(records) == before + 1, done.stdout
    gate = records[-1]
    assert gate["action"] in ("promote", "reject") and gate["gate"]["metric"] == "roc_auc_ovr"
    assert gate["challenger"]["version"] == 2 and gate["champion"]["version"] == 1
    assert gate["gate"]["rows"] == 750  # July is the challenger's test split (and not counted twice)
    assert gate["reason"].startswith("challenger roc_auc_ovr ")
    assert _champion(p, "zones") == (2 if gate["action"] == "promote" else 1)
    # July joined the training data on the retrain branch with its labels as written
    tree = p.root / ".reproml" / "worktrees" / BRANCH.replace("/", "-")
    test = pd.read_parquet(tree / "data" / "prepared" / "test.parquet")
    assert set(test["zone"]) == set(CLASSES) and test["when"].min() >= pd.Timestamp("2021-07-01")
    run = _client(p).get_run(gate["challenger"]["run_id"])
    assert json.loads(run.data.tags["reproml.classes"]) == CLASSES


@pytest.mark.slow  # the zones loop: ~3 min of a CI worker; multiclass loops in CI: test_own_data
@pytest.mark.integration
def test_a_multiclass_window_without_a_class_is_refused_and_nothing_moves(zones: Project) -> None:
    p = zones
    july = pd.read_parquet(next((_history(p) / "labelled").glob("*_2021-07.parquet")))
    july[july["zone"] != "west"].to_parquet(p.root / "data" / "no_west.parquet", index=False)

    def state() -> dict[str, Any]:
        return {
            "versions": _versions(p, "zones"),
            "champion": _champion(p, "zones"),
            "branch": _branch_head(p),
        }

    before = state()
    done = p.run(str(BIN / "reproml"), "retrain", "--labelled", "data/no_west.parquet")
    assert "'action': 'refused'" in done.stdout
    assert "classes ['west'] have no labelled rows in no_west.parquet" in " ".join(done.stdout.split())
    assert state() == before
    # monitored, the same rows say why quality is not judged instead of guessing
    record = _monitor(p, "data/no_west.parquet", "--backfill")
    assert "classes ['west'] have no labelled rows in the batch" in " ".join(record["reasons"])
    assert record["quality"]["batch_metrics"]["accuracy"] > 0


@pytest.fixture(scope="module")
def load(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Iterator[Project]:
    params = loop_params("data/raw/load.csv", "load", "regression", "load")
    params["promote"]["floor"] = 5.0  # RMSE: the first model must be within 5 units (the noise is 1)
    yield _start(tmp_path_factory.mktemp("load"), prefect_api, "data/raw/load.csv", load_frame(), params)


def _flow(p: Project, call: str) -> dict[str, Any]:
    from tests.test_flows import flow_in_subprocess

    return flow_in_subprocess(p, call)


@pytest.mark.slow  # ~85 s; the multiclass loop above covers the same hand-off in the default suite
@pytest.mark.integration
def test_regression_monitoring_with_labels_hands_a_drop_to_the_training_flow(load: Project) -> None:
    p = load
    june = _monitor(p, "2021-06")
    assert june["verdict"] == "ok", june["reasons"]
    assert june["quality"]["metric"] == "rmse" and june["drift"]["prediction"]["kind"] == "numeric"
    assert june["estimate"]["method"] == "dle" and june["estimate"]["metric"] == "rmse", june.get(
        "estimate_skipped"
    )
    out = _flow(p, "monitoring(root='.', batch='2021-07')")
    assert out["verdict"] == "retrain", out["reasons"]
    assert out["metric"] == "rmse" and out["quality"] > 3.0  # RMSE ~1 on the test split
    record = json.loads((_history(p) / "records" / "2021-07.json").read_text())
    assert record["decision"]["triggers"] == {"feature_drift": False, "quality_drop": True}
    assert {"mae", "rmse", "r2"} <= set(record["quality"]["batch_metrics"])
    assert record["quality"]["evidently"]["RMSE"] == pytest.approx(record["quality"]["batch_value"], rel=1e-6)
    metrics = _client(p).get_run(record["mlflow"]["run_id"]).data.metrics
    assert metrics["quality.rmse"] == pytest.approx(record["quality"]["batch_value"])

    retrain = out["retrain"]
    assert retrain is not None and retrain["added"]["window"]["test_end"] == "2021-08-01"
    promotion = retrain["promotion"]
    assert promotion["action"] in ("promote", "reject")
    gate = json.loads((p.root / promotion["record"]).read_text())["gate"]
    assert gate["metric"] == "rmse" and gate["higher_is_better"] is False and gate["rows"] == 750
    promoted = promotion["action"] == "promote"
    assert _champion(p, "load") == (retrain["challenger"]["version"] if promoted else 1)


# --- the replay on the user's own later months (slow: a retrain per retrain verdict) --------------


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("dataset", ["zones", "load"])
def test_the_replay_runs_over_the_users_own_production_months(
    dataset: str, request: pytest.FixtureRequest
) -> None:
    p: Project = request.getfixturevalue(dataset)
    done = p.run("env", "COLUMNS=250", str(BIN / "reproml"), "simulate", timeout=900)
    metric = "roc_auc_ovr" if dataset == "zones" else "rmse"
    assert f"Production replay 2021-06..2021-08 ({metric};" in done.stdout
    assert f"champion {metric}" in done.stdout
    result = json.loads((_history(p) / "reports" / "simulation.json").read_text())
    assert result["metric"] == metric
    rows = {r["batch"]: r for r in result["rows"]}
    assert list(rows) == ["2021-06", "2021-07", "2021-08"]
    assert rows["2021-06"]["verdict"] == "ok" and rows["2021-07"]["verdict"] == "retrain"
    assert rows["2021-07"]["retrain"].split()[0] in ("promote", "reject")
    assert all(r["baseline"] is not None for r in rows.values())
    page = (_history(p) / "reports" / "simulation.html").read_text()
    assert f"champion {metric}" in page
