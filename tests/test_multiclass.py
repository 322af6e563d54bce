"""Multiclass on tiny frames: the metrics table against sklearn, label round trip through every
model, the gate on a macro metric, tuning and pruning, evaluation frames, ingest and prepare."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from sklearn import metrics as skm
from threadpoolctl import threadpool_limits

from reproml import bootstrap, metrics
from reproml.bootstrap import paired_bootstrap
from reproml.config import PromoteParams, parse_params
from reproml.errors import ConfigError, DataValidationError
from reproml.features import FeatureSpec
from reproml.fitting import fit_model
from reproml.gate import decide
from reproml.metrics import MetricSpec, metric_spec
from reproml.models import ClassLabels
from reproml.scoring import (
    compute_metrics,
    confusion_frame,
    one_vs_rest_frames,
    overfit_check,
    permutation_importance_frame,
    predict_scores,
)
from reproml.tuning.objective import Objective, prepare_data
from tests.conftest import default_params, user_data_params

MakeProject = Callable[..., Path]
LABELS = ["mid", "high", "low"]  # a recorded order that is not sorted: columns must follow it
SPEC = FeatureSpec(numeric=["x1", "x2"], categorical=["cat"], time_column="when", date_parts=["month"])
MODELS = ["xgboost", "hist_gradient_boosting", "random_forest", "logistic"]
AUC_OVR = MetricSpec("roc_auc_ovr", higher_is_better=True)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with threadpool_limits(limits=1):
        yield


def three_class_frame(rows: int = 450, seed: int = 0) -> pd.DataFrame:
    """x1 separates three classes (with noise), `cat` nudges them, x2 is noise."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=rows)
    cat = rng.choice(["a", "b", "c"], size=rows)
    signal = x1 + 0.5 * (cat == "a") + rng.normal(scale=0.4, size=rows)
    y = np.where(signal < -0.4, "low", np.where(signal < 0.5, "mid", "high"))
    when = pd.date_range("2021-01-01", periods=rows, freq="6h")
    return pd.DataFrame({"x1": x1, "x2": rng.uniform(size=rows), "cat": cat, "when": when, "y": y})


def params_for(model: str = "xgboost", **data: Any) -> Any:
    raw = default_params()
    raw["data"].update({"path": "data/raw/t.csv", "target": "y", "task": "multiclass", "time_column": "when"})
    raw["data"].update(data)
    raw["prepare"]["exclude_columns"] = []
    raw["train"].update({"model": model, "n_jobs": 1})
    raw["train"]["xgboost"].update(
        {"n_estimators": 60, "learning_rate": 0.2, "min_child_weight": 1.0, "early_stopping_rounds": 10}
    )
    raw["train"]["hist_gradient_boosting"].update(
        {"max_iter": 30, "learning_rate": 0.2, "min_samples_leaf": 10, "early_stopping_rounds": 5}
    )
    raw["train"]["random_forest"].update({"n_estimators": 15, "min_samples_leaf": 5})
    return parse_params(raw)


def probabilities(y_codes: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Softmax of a noisy one-hot: more noise, worse model."""
    rng = np.random.default_rng(seed)
    logits = 2.0 * np.eye(3)[y_codes] + rng.normal(scale=noise, size=(len(y_codes), 3))
    exp = np.exp(logits)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def labelled(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, codes) with every class present, in LABELS' order."""
    codes = np.random.default_rng(seed).integers(0, 3, size=rows)
    codes[:3] = [0, 1, 2]
    return np.asarray(LABELS, dtype=object)[codes], codes


# --- the metrics table against sklearn ---------------------------------------------------------


def test_multiclass_metrics_agree_with_sklearn_in_the_recorded_class_order() -> None:
    y, codes = labelled(300, seed=1)
    proba = probabilities(codes, noise=1.5, seed=2)
    got = compute_metrics(y, proba, "multiclass", labels=LABELS)
    predicted = np.asarray(LABELS, dtype=object)[proba.argmax(axis=1)]
    names = [
        "accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "f1_weighted",
        "roc_auc_ovr",
        "log_loss",
        "brier",
    ]
    assert list(got) == names
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert got["precision_macro"] == pytest.approx(skm.precision_score(y, predicted, average="macro"))
    assert got["recall_macro"] == pytest.approx(skm.recall_score(y, predicted, average="macro"))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, predicted, average="macro"))
    assert got["f1_weighted"] == pytest.approx(skm.f1_score(y, predicted, average="weighted"))
    # sklearn orders score columns by sorted label: reorder ours to compare
    order = [LABELS.index(c) for c in sorted(LABELS)]
    assert got["roc_auc_ovr"] == pytest.approx(skm.roc_auc_score(y, proba[:, order], multi_class="ovr"))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, proba[:, order]))
    assert 0.6 < got["roc_auc_ovr"] < 0.99  # neither random nor perfect: a real test of the order


def test_per_class_metrics_agree_with_sklearn() -> None:
    y, codes = labelled(200, seed=3)
    proba = probabilities(codes, noise=2.0, seed=4)
    frame = metrics.per_class(y, proba, LABELS)
    predicted = np.asarray(LABELS, dtype=object)[proba.argmax(axis=1)]
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, predicted, labels=LABELS)
    assert frame["class"].tolist() == LABELS
    np.testing.assert_allclose(frame["precision"], precision)
    np.testing.assert_allclose(frame["recall"], recall)
    np.testing.assert_allclose(frame["f1"], f1)
    assert frame["support"].tolist() == support.tolist()


def test_the_table_is_the_one_place_metrics_are_named() -> None:
    for task in metrics.TASKS:
        names = [m.name for m in metrics.for_task(task)]
        assert metrics.PRIMARY[task] in names and metrics.CURVE[task] in names
        assert all(m.higher_is_better == (m.name not in {"log_loss", "brier", "mae", "mse", "rmse"})
                   for m in metrics.for_task(task))  # fmt: skip
    assert metric_spec(None, "multiclass") == MetricSpec("roc_auc_ovr", True)
    assert metrics.xgboost_metric("log_loss", "multiclass") == "mlogloss"
    assert metrics.xgboost_metric("roc_auc_ovr", "multiclass") is None  # XGBoost's multiclass AUC is weighted
    with pytest.raises(ConfigError, match=r"unknown metric 'f1' for multiclass \(tune\.metric\).*f1_macro"):
        metrics.metric_spec("f1", "multiclass", key="tune.metric")
    with pytest.raises(ValueError, match="roc_auc_ovr"):
        metric_spec("roc_auc_ovr", "classification")


def test_undefined_multiclass_metrics_are_nan_and_mismatches_raise() -> None:
    y, codes = labelled(60)
    proba = probabilities(codes, noise=1.0, seed=0)
    two_classes = codes != 2
    assert math.isnan(metrics.score(AUC_OVR, y[two_classes], proba[two_classes], labels=LABELS))
    assert not math.isnan(
        metrics.score(MetricSpec("log_loss", False), y[two_classes], proba[two_classes], labels=LABELS)
    )
    broken = proba.copy()
    broken[0, 0] = np.nan
    assert math.isnan(metrics.score(AUC_OVR, y, broken, labels=LABELS))
    assert math.isnan(metrics.score(AUC_OVR, y[:0], proba[:0], labels=LABELS))
    with pytest.raises(ValueError, match=r"\['unseen'\] are not among the model's classes"):
        metrics.score(AUC_OVR, np.append(y[:-1], "unseen"), proba, labels=LABELS)
    with pytest.raises(ValueError, match="3 score columns but 2 class labels"):
        metrics.score(AUC_OVR, y, proba, labels=LABELS[:2])
    # without labels, y must already be column positions
    assert metrics.score(AUC_OVR, codes, proba) == pytest.approx(
        metrics.score(AUC_OVR, y, proba, labels=LABELS)
    )


def test_weighted_macro_auc_matches_sklearn_with_weights() -> None:
    rng = np.random.default_rng(5)
    for trial in range(10):
        y, codes = labelled(int(rng.integers(20, 300)), seed=trial)
        proba = probabilities(codes, noise=2.0, seed=trial)
        if trial % 2:
            proba = np.round(proba, 1) + 1e-3  # many ties, rows no longer summing to exactly one
        weight = rng.integers(0, 4, size=len(y)).astype(float)
        weight[:3] = 1.0
        normalised = proba / proba.sum(axis=1, keepdims=True)
        expected = skm.roc_auc_score(
            codes, normalised, multi_class="ovr", labels=[0, 1, 2], sample_weight=weight
        )
        fast = bootstrap.weighted_scorer(AUC_OVR, y, proba, labels=LABELS)
        assert fast(weight) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(fast(np.where(codes == 2, 0.0, 1.0)))  # a class weighted out entirely


# --- the gate on a macro metric ----------------------------------------------------------------


def test_gate_promotes_a_better_multiclass_challenger_on_macro_auc_with_an_interval() -> None:
    y, codes = labelled(900, seed=7)
    good, poor = probabilities(codes, noise=1.0, seed=8), probabilities(codes, noise=2.5, seed=9)
    gate_params = PromoteParams.model_validate({"bootstrap_samples": 200, "slice_column": "region"})
    regions = np.where(np.arange(len(y)) % 2, "north", "south")
    promoted = decide(y, good, poor, gate_params, "multiclass", slices=regions, labels=LABELS)
    assert promoted.promote, promoted.reason
    assert promoted.metric == "roc_auc_ovr"
    low, high = promoted.interval or (math.nan, math.nan)
    assert 0.0 < low < promoted.improvement < high  # type: ignore[operator]
    assert {s.value for s in promoted.slices} == {"north", "south"} and all(s.judged for s in promoted.slices)
    rejected = decide(y, poor, good, gate_params, "multiclass", labels=LABELS)
    assert not rejected.promote and "worse" in rejected.reason
    again = paired_bootstrap(AUC_OVR, y, good, poor, 200, 0.95, seed=0, labels=LABELS)
    assert again == paired_bootstrap(AUC_OVR, codes, good, poor, 200, 0.95, seed=0)


def test_gate_first_multiclass_model_meets_the_floor_and_log_loss_points_down() -> None:
    y, codes = labelled(300, seed=1)
    good = probabilities(codes, noise=1.0, seed=2)
    first = decide(y, good, None, PromoteParams(slice_column=None), "multiclass", labels=LABELS)
    assert first.promote and "meets the floor" in first.reason
    by_loss = PromoteParams(metric="log_loss", slice_column=None, floor=1.0, bootstrap_samples=100)
    worse = decide(y, probabilities(codes, 3.0, 3), good, by_loss, "multiclass", labels=LABELS)
    assert not worse.promote and not worse.higher_is_better


# --- models: labels in, labels out -------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_every_model_round_trips_the_labels_in_the_recorded_order(model: str) -> None:
    import skops.io

    frame = three_class_frame()
    train, valid = frame.iloc[:330].reset_index(drop=True), frame.iloc[330:].reset_index(drop=True)
    trained = fit_model(train, valid, SPEC, params_for(model), classes=LABELS)
    pipeline = trained.pipeline
    assert list(pipeline.classes_) == LABELS
    X = valid[SPEC.input_columns]
    predicted = pipeline.predict(X)
    assert set(predicted) <= set(LABELS)
    assert (predicted == valid["y"].to_numpy()).mean() > 0.6
    proba = pipeline.predict_proba(X)
    assert proba.shape == (len(valid), 3)
    for k, label in enumerate(LABELS):  # column k is most probable on rows of class k
        assert proba[valid["y"].to_numpy() == label].mean(axis=0).argmax() == k
    np.testing.assert_array_equal(predict_scores(pipeline, X, "multiclass"), proba)
    payload = skops.io.dumps(pipeline)  # the format MLflow logs the model in
    loaded = skops.io.loads(payload, trusted=skops.io.get_untrusted_types(data=payload))
    np.testing.assert_array_equal(loaded.predict(X), predicted)
    if model in ("xgboost", "random_forest"):
        assert trained.history_metric == "log_loss" and len(trained.history["valid"]) > 0


def test_xgboost_learning_curve_is_the_log_loss_of_the_metrics_table() -> None:
    frame = three_class_frame()
    train, valid = frame.iloc[:330].reset_index(drop=True), frame.iloc[330:].reset_index(drop=True)
    trained = fit_model(train, valid, SPEC, params_for(), classes=LABELS)
    booster = trained.pipeline.named_steps["model"].estimator_
    X_valid = trained.pipeline.named_steps["preprocess"].transform(valid[SPEC.input_columns])
    proba = booster.predict_proba(X_valid, iteration_range=(0, len(trained.history["valid"])))
    ours = metrics.score(metrics.METRICS["log_loss"], valid["y"].to_numpy(), proba, labels=LABELS)
    assert trained.history["valid"][-1] == pytest.approx(ours, rel=1e-4)


def test_a_class_without_training_rows_is_refused_by_name() -> None:
    frame = three_class_frame()
    with pytest.raises(ValueError, match=r"classes \['extra'\] have no training rows"):
        ClassLabels(estimator=None, classes=[*LABELS, "extra"]).fit(frame[["x1"]], frame["y"])


# --- tuning ------------------------------------------------------------------------------------


def _objective(model: str, metric: str | None = None, report_every: int = 5) -> Objective:
    frame = three_class_frame(seed=2)
    params = params_for(model)
    data = prepare_data(frame.iloc[:330], frame.iloc[330:], SPEC, params, LABELS)
    return Objective(data, params, metric_spec(metric, "multiclass"), threads=1, report_every=report_every)


@pytest.mark.parametrize("model", MODELS)
def test_objective_scores_macro_auc_for_each_model(model: str) -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(_objective(model), n_trials=1)
    assert 0.7 < study.trials[0].value <= 1.0  # type: ignore[operator]


def test_xgboost_macro_auc_trials_report_and_can_be_pruned() -> None:
    """XGBoost has no macro one-vs-rest AUC: the callback computes it from the booster."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.ThresholdPruner(lower=0.9999))  # fmt: skip
    study.optimize(_objective("xgboost"), n_trials=2)
    assert {t.state for t in study.trials} == {TrialState.PRUNED}
    assert all(min(t.intermediate_values) == 5 for t in study.trials)
    free = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    free.optimize(_objective("xgboost", report_every=2), n_trials=1)
    reported = free.trials[0].intermediate_values
    assert len(reported) >= 3 and all(0.5 < v <= 1.0 for v in reported.values())
    assert list(reported.values()) == sorted(reported.values())  # best so far never goes down


def test_xgboost_log_loss_trials_use_mlogloss_and_minimise() -> None:
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(_objective("xgboost", metric="log_loss"), n_trials=1)
    trial = study.trials[0]
    assert trial.value is not None and 0.0 < trial.value < math.log(3)
    # the best-so-far mlogloss reported at the last step is the final value (same metric, best round)
    assert trial.intermediate_values[max(trial.intermediate_values)] == pytest.approx(trial.value, rel=1e-4)


# --- evaluation frames -------------------------------------------------------------------------


def test_confusion_and_one_vs_rest_frames_name_the_classes() -> None:
    y, codes = labelled(120, seed=2)
    proba = probabilities(codes, noise=1.0, seed=3)
    confusion = confusion_frame(y, proba, labels=LABELS)
    expected = skm.confusion_matrix(y, np.asarray(LABELS, dtype=object)[proba.argmax(axis=1)], labels=LABELS)
    counted = pd.crosstab(confusion["actual"], confusion["predicted"]).reindex(index=LABELS, columns=LABELS)
    np.testing.assert_array_equal(counted.fillna(0).to_numpy(), expected)
    curves = one_vs_rest_frames(y, proba, LABELS)
    assert set(curves["roc_ovr"]["class"]) == set(LABELS)
    for k, label in enumerate(LABELS):
        part = curves["roc_ovr"][curves["roc_ovr"]["class"] == label]
        area = np.trapezoid(part["tpr"], part["fpr"])
        assert area == pytest.approx(skm.roc_auc_score(codes == k, proba[:, k]))
    assert overfit_check({"train": {"roc_auc_ovr": 0.99}, "valid": {"roc_auc_ovr": 0.9}}, "multiclass", 0.05)[
        "overfit"
    ]


def test_permutation_importance_ranks_the_separating_feature_first() -> None:
    frame = three_class_frame(seed=4)
    spec = FeatureSpec(numeric=["x1", "x2"], categorical=["cat"], time_column=None, date_parts=[])
    trained = fit_model(frame.iloc[:330], frame.iloc[330:], spec, params_for("random_forest"), LABELS)
    valid = frame.iloc[330:]
    result = permutation_importance_frame(
        trained.pipeline, valid[spec.input_columns], valid["y"].to_numpy(), "multiclass", repeats=2, seed=0
    )
    assert result["feature"].iloc[0] == "x1" and result["importance"].iloc[0] > 0.05


# --- ingest, prepare, config -------------------------------------------------------------------


def _project(make_project: MakeProject, frame: pd.DataFrame, task: str = "multiclass") -> Path:
    rel = "data/raw/three.csv"
    params = user_data_params(rel, task=task)
    return make_project(params, files={rel: frame})


def test_a_multiclass_target_ingests_with_its_labels_and_class_order(make_project: MakeProject) -> None:
    from reproml.stages.ingest import run_ingest
    from reproml.stages.prepare import run_prepare

    frame = three_class_frame(400, seed=1)
    frame["y"] = frame["y"].map({"low": 3, "mid": 7, "high": 11}).astype("float64")
    frame.loc[[5, 17], "y"] = np.nan  # a CSV column with blanks reads as float
    root = _project(make_project, frame)
    summary = run_ingest(root)
    assert summary["rows"] == 398 and summary["rows_without_target"] == 2
    schema = json.loads((root / "data" / "schema.json").read_text())
    assert schema["task"] == "multiclass" and schema["classes"] == [3, 7, 11]
    ingested = pd.read_parquet(root / "data" / "ingested.parquet")
    assert ingested["y"].dtype == "int64" and set(ingested["y"]) == {3, 7, 11}
    prepared = run_prepare(root)
    shares = prepared["train"]["class_shares"]
    assert set(shares) == {"3", "7", "11"} and sum(shares.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("task", "classes", "pattern"),
    [
        ("classification", ["a", "b", "c"], r"has 3 classes .*set data\.task: multiclass"),
        ("multiclass", ["a", "b"], r"has 2 classes .*set data\.task: classification"),
        ("multiclass", [f"c{i}" for i in range(150)], r"150 distinct values.*data\.task: regression"),
    ],
)
def test_the_class_count_must_fit_the_task(
    make_project: MakeProject, task: str, classes: list[str], pattern: str
) -> None:
    from reproml.stages.ingest import run_ingest

    frame = three_class_frame(300)
    frame["y"] = [classes[i % len(classes)] for i in range(len(frame))]
    root = _project(make_project, frame, task=task)
    with pytest.raises(DataValidationError, match=pattern):
        run_ingest(root)
    assert not (root / "data" / "schema.json").exists()


def test_prepare_refuses_a_class_the_train_split_lacks(make_project: MakeProject) -> None:
    from reproml.stages.ingest import run_ingest
    from reproml.stages.prepare import run_prepare

    frame = three_class_frame(400)
    late = frame["when"] >= pd.Timestamp("2021-03-01")
    frame.loc[late & (frame.index % 3 == 0), "y"] = "newcomer"  # appears only after train_end
    root = _project(make_project, frame)
    run_ingest(root)
    with pytest.raises(DataValidationError, match=re.escape("classes ['newcomer']") + ".*train split"):
        run_prepare(root)
    assert not (root / "data" / "prepared").exists()


def test_logistic_serves_multiclass_and_linear_does_not() -> None:
    assert params_for("logistic").data.task == "multiclass"
    with pytest.raises(
        ConfigError, match=r"train\.model='linear' is for regression; data\.task is 'multiclass'"
    ):
        params_for("linear")
