"""Metrics agree with sklearn, the overfitting check, digests, curve frames, permutation importance."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from reproml.config import Params
from reproml.features import FeatureSpec
from reproml.fitting import fit_model
from reproml.scoring import (
    compute_metrics,
    confusion_frame,
    learning_curve_frame,
    overfit_check,
    permutation_importance_frame,
    precision_recall_frame,
    predict_scores,
    predictions_digest,
    roc_frame,
)
from tests.conftest import default_params, tiny_frame

Y = np.array([0, 0, 1, 1, 1, 0, 1, 0, 1, 1])
SCORES = np.array([0.1, 0.6, 0.55, 0.9, 0.4, 0.2, 0.7, 0.45, 0.5, 0.8])


def test_classification_metrics_agree_with_sklearn() -> None:
    got = compute_metrics(Y, SCORES, "classification")
    labels = (SCORES >= 0.5).astype(int)  # 0.5 itself counts as positive
    assert labels.tolist() == [0, 1, 1, 1, 0, 0, 1, 0, 1, 1]
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(Y, labels)) == pytest.approx(0.8)
    assert got["precision"] == pytest.approx(skm.precision_score(Y, labels))
    assert got["recall"] == pytest.approx(skm.recall_score(Y, labels))
    assert got["f1"] == pytest.approx(skm.f1_score(Y, labels))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(Y, SCORES))
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(Y, SCORES))
    assert got["log_loss"] == pytest.approx(skm.log_loss(Y, SCORES))
    manual_log_loss = -np.mean(Y * np.log(SCORES) + (1 - Y) * np.log(1 - SCORES))
    assert got["log_loss"] == pytest.approx(manual_log_loss)


def test_classification_threshold_is_used() -> None:
    got = compute_metrics(Y, SCORES, "classification", threshold=0.65)
    labels = (SCORES >= 0.65).astype(int)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(Y, labels))
    assert got["recall"] == pytest.approx(skm.recall_score(Y, labels))
    # threshold-free metrics do not move
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(Y, SCORES))


def test_log_loss_is_finite_for_certain_wrong_scores() -> None:
    got = compute_metrics(np.array([0, 1]), np.array([1.0, 0.0]), "classification")
    assert math.isfinite(got["log_loss"])
    assert got["log_loss"] > 30  # -log(1e-15) ~ 34.5


def test_regression_metrics_agree_with_sklearn() -> None:
    y = np.array([3.0, -0.5, 2.0, 7.0, 4.2])
    pred = np.array([2.5, 0.0, 2.0, 8.0, 3.0])
    got = compute_metrics(y, pred, "regression")
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert got["mse"] == pytest.approx(skm.mean_squared_error(y, pred))
    assert got["rmse"] == pytest.approx(math.sqrt(got["mse"]))
    assert got["rmse"] == pytest.approx(skm.root_mean_squared_error(y, pred))
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred))
    assert got["mae"] == pytest.approx((0.5 + 0.5 + 0 + 1 + 1.2) / 5)


def _by_split(metric: str, train: float, valid: float) -> dict[str, dict[str, float]]:
    return {"train": {metric: train}, "valid": {metric: valid}}


@pytest.mark.parametrize(
    ("train", "valid", "overfit"),
    [(0.95, 0.80, True), (0.90, 0.90, False), (0.85, 0.90, False), (0.90, 0.86, False), (0.9, 0.849, True)],
)
def test_overfit_check_classification_auc_gap(train: float, valid: float, overfit: bool) -> None:
    result = overfit_check(_by_split("roc_auc", train, valid), "classification", margin=0.05)
    assert result["metric"] == "roc_auc"
    assert result["gap"] == pytest.approx(train - valid)
    assert result["margin"] == 0.05
    assert result["overfit"] is overfit


def test_overfit_check_classification_gap_equal_to_margin_is_not_flagged() -> None:
    result = overfit_check(_by_split("roc_auc", 0.75, 0.5), "classification", margin=0.25)
    assert result["gap"] == 0.25
    assert result["overfit"] is False


def test_overfit_check_regression_uses_relative_rmse_gap() -> None:
    # absolute gap 50 (huge), relative gap 50 / 1000 = 5%: within a 10% margin
    big_units = overfit_check(_by_split("rmse", 1000.0, 1050.0), "regression", margin=0.1)
    assert big_units["metric"] == "rmse"
    assert big_units["gap"] == pytest.approx(0.05)
    assert big_units["overfit"] is False
    # absolute gap 0.5 (small), relative gap 0.5 / 1 = 50%: flagged
    small_units = overfit_check(_by_split("rmse", 1.0, 1.5), "regression", margin=0.1)
    assert small_units["gap"] == pytest.approx(0.5)
    assert small_units["overfit"] is True
    # a better validation RMSE is a negative gap, never flagged
    better = overfit_check(_by_split("rmse", 2.0, 1.0), "regression", margin=0.0)
    assert better["gap"] == pytest.approx(-0.5)
    assert better["overfit"] is False


def test_overfit_check_regression_zero_train_rmse_does_not_divide_by_zero() -> None:
    result = overfit_check(_by_split("rmse", 0.0, 1.0), "regression", margin=0.1)
    assert math.isfinite(result["gap"])
    assert result["overfit"] is True


def test_predictions_digest() -> None:
    scores = np.array([0.1, 0.25, 0.5, 0.987654321])
    digest = predictions_digest(scores)
    assert len(digest) == 64
    assert predictions_digest(scores.copy()) == digest
    changed = scores.copy()
    changed[2] += 1e-6
    assert predictions_digest(changed) != digest
    tiny = scores.copy()
    tiny[2] += 1e-14  # below the 12-decimal rounding
    assert not np.array_equal(tiny, scores)
    assert predictions_digest(tiny) == digest
    # float32 scores with the same values give the same digest (it hashes float64 bytes)
    halves = np.array([0.5, 0.25])
    assert predictions_digest(halves.astype(np.float32)) == predictions_digest(halves)
    # order matters
    assert predictions_digest(scores[::-1]) != digest


def _many_scores(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    scores = np.clip(y * 0.2 + rng.uniform(size=n) * 0.8, 0, 1)
    return y, scores


def test_roc_frame_is_thinned_and_keeps_both_ends() -> None:
    y, scores = _many_scores()
    full_fpr, full_tpr, _ = skm.roc_curve(y, scores, drop_intermediate=True)
    assert len(full_fpr) > 500  # otherwise there is nothing to thin
    frame = roc_frame(y, scores)
    assert list(frame.columns) == ["fpr", "tpr"]
    assert 2 < len(frame) <= 500
    assert (frame.iloc[0]["fpr"], frame.iloc[0]["tpr"]) == (0.0, 0.0)
    assert (frame.iloc[-1]["fpr"], frame.iloc[-1]["tpr"]) == (1.0, 1.0)
    assert frame["fpr"].is_monotonic_increasing
    assert list(frame.index) == list(range(len(frame)))
    # every kept point is a real point of the curve
    points = set(zip(full_fpr.tolist(), full_tpr.tolist(), strict=True))
    assert all(p in points for p in zip(frame["fpr"], frame["tpr"], strict=True))


def test_roc_frame_small_curve_is_kept_whole() -> None:
    frame = roc_frame(Y, SCORES)
    fpr, tpr, _ = skm.roc_curve(Y, SCORES, drop_intermediate=True)
    np.testing.assert_array_equal(frame["fpr"], fpr)
    np.testing.assert_array_equal(frame["tpr"], tpr)


def test_precision_recall_frame_is_thinned_and_keeps_both_ends() -> None:
    y, scores = _many_scores()
    precision, recall, _ = skm.precision_recall_curve(y, scores, drop_intermediate=True)
    assert len(recall) > 500
    frame = precision_recall_frame(y, scores)
    assert list(frame.columns) == ["recall", "precision"]
    assert len(frame) <= 500
    assert frame.iloc[0]["recall"] == recall[0] == 1.0
    assert frame.iloc[0]["precision"] == precision[0]
    assert frame.iloc[-1]["recall"] == recall[-1] == 0.0
    assert frame.iloc[-1]["precision"] == precision[-1] == 1.0


def test_confusion_frame_counts_match_sklearn() -> None:
    frame = confusion_frame(Y, SCORES)
    assert list(frame.columns) == ["actual", "predicted"]
    assert len(frame) == len(Y)
    counts = pd.crosstab(frame["actual"], frame["predicted"]).reindex(
        index=[0, 1], columns=[0, 1], fill_value=0
    )
    expected = skm.confusion_matrix(Y, (SCORES >= 0.5).astype(int), labels=[0, 1])
    np.testing.assert_array_equal(counts.to_numpy(), expected)
    np.testing.assert_array_equal(expected, [[3, 1], [1, 5]])
    # a float target (as read back from parquet) still gives integer labels
    float_frame = confusion_frame(Y.astype(float), SCORES, threshold=0.65)
    assert float_frame["actual"].dtype.kind == "i"
    assert float_frame["predicted"].tolist() == (SCORES >= 0.65).astype(int).tolist()


def test_learning_curve_frame() -> None:
    empty = learning_curve_frame({})
    assert list(empty.columns) == ["round", "train", "valid"]
    assert len(empty) == 0
    frame = learning_curve_frame({"train": [0.7, 0.8, 0.9], "valid": [0.6, 0.65, 0.64]})
    assert list(frame.columns) == ["round", "train", "valid"]
    assert frame["round"].tolist() == [1, 2, 3]
    assert frame["valid"].tolist() == [0.6, 0.65, 0.64]


@pytest.mark.parametrize(("model", "task"), [("random_forest", "classification"), ("linear", "regression")])
def test_permutation_importance_ranks_informative_above_noise(model: str, task: str) -> None:
    frame = tiny_frame(rows=400, seed=5, task=task)
    rng = np.random.default_rng(11)
    frame["x2"] = rng.normal(size=len(frame))  # pure noise: y never sees it
    if task == "regression":
        frame["y"] = frame["x1"] * 10 + rng.normal(scale=1.0, size=len(frame))
    spec = FeatureSpec(numeric=["x1", "x2"], categorical=["cat"], time_column=None, date_parts=[])
    raw = default_params()
    raw["data"].update({"path": "data/raw/tiny.csv", "target": "y", "task": task, "time_column": None})
    raw["train"].update({"model": model, "n_jobs": 1})
    raw["train"]["random_forest"].update({"n_estimators": 20, "min_samples_leaf": 5})
    params = Params.model_validate(raw)
    train, valid = frame.iloc[:300].reset_index(drop=True), frame.iloc[300:].reset_index(drop=True)
    trained = fit_model(train, valid, spec, params)

    X = valid[spec.input_columns]
    result = permutation_importance_frame(trained.pipeline, X, valid["y"].to_numpy(), task, repeats=3, seed=0)
    assert list(result.columns) == ["feature", "importance", "std"]
    assert sorted(result["feature"]) == ["cat", "x1", "x2"]
    assert result["feature"].iloc[0] == "x1"
    assert result["importance"].is_monotonic_decreasing
    by_name = result.set_index("feature")["importance"]
    assert by_name["x1"] > (0.1 if task == "classification" else 1.0)
    assert by_name["x1"] > by_name["x2"] + 0.05
    assert abs(by_name["x2"]) < by_name["x1"] / 5
    # importance is the drop in the primary metric: shuffling x1 alone must cost that much
    baseline = compute_metrics(valid["y"].to_numpy(), predict_scores(trained.pipeline, X, task), task)
    metric = "roc_auc" if task == "classification" else "rmse"
    shuffled = X.copy()
    shuffled["x1"] = np.random.default_rng(1).permutation(shuffled["x1"].to_numpy())
    worse = compute_metrics(valid["y"].to_numpy(), predict_scores(trained.pipeline, shuffled, task), task)
    drop = baseline[metric] - worse[metric] if task == "classification" else worse[metric] - baseline[metric]
    assert drop == pytest.approx(by_name["x1"], rel=0.5)


@pytest.mark.parametrize(
    ("model", "task", "calibration"),
    [
        ("xgboost", "classification", None),
        ("hist_gradient_boosting", "regression", None),
        ("logistic", "classification", None),
        ("random_forest", "multiclass", None),
        ("xgboost", "classification", "isotonic"),
        ("random_forest", "multiclass", "sigmoid"),
    ],
)
def test_permutation_importance_equals_sklearn_on_the_whole_pipeline(
    model: str, task: str, calibration: str | None
) -> None:
    """Preprocessing once and redoing only the shuffled column's transformer changes no number:
    the frame equals sklearn's permutation importance of the plain pipeline, for tree models
    (codes, date parts) and linear ones (one-hot, scaling), and for the served model (calibrated,
    with its threshold step: `reproml.decisions`)."""
    from sklearn.inspection import permutation_importance

    from reproml.metrics import metric_spec
    from reproml.scoring import _PreprocessedOnce, _scorer, _shuffled_column_only

    frame = tiny_frame(rows=400, seed=3, task="classification" if task != "regression" else task)
    if task == "multiclass":
        frame["y"] = np.where(frame["x1"] > 0.5, "high", np.where(frame["x1"] < -0.5, "low", "mid"))
    frame.loc[frame.index[::17], "cat"] = None  # missing categories take their own path
    spec = FeatureSpec(numeric=["x1", "x2"], categorical=["cat"], time_column="when", date_parts=["hour"])
    raw = default_params()
    raw["data"].update({"path": "data/raw/tiny.csv", "target": "y", "task": task, "time_column": "when"})
    raw["train"].update({"model": model, "n_jobs": 1})
    raw["train"]["xgboost"].update({"n_estimators": 30, "min_child_weight": 1.0})
    raw["train"]["random_forest"].update({"n_estimators": 10, "min_samples_leaf": 5})
    raw["train"]["hist_gradient_boosting"].update({"max_iter": 30})
    params = Params.model_validate(raw)
    train, valid = frame.iloc[:300].reset_index(drop=True), frame.iloc[300:].reset_index(drop=True)
    classes = sorted(frame["y"].unique()) if task == "multiclass" else None
    trained = fit_model(train, valid, spec, params, classes)
    if calibration is not None:
        from reproml.decisions import decide

        trained.pipeline = decide(trained.pipeline, valid, spec.input_columns, "y", task, calibration)[0]
    X, y = valid[spec.input_columns], valid["y"].to_numpy()

    assert isinstance(_shuffled_column_only(trained.pipeline, X), _PreprocessedOnce)
    got = permutation_importance_frame(trained.pipeline, X, y, task, repeats=3, seed=7)
    scoring: object = {"classification": "roc_auc", "regression": "neg_root_mean_squared_error"}.get(task)
    if task == "multiclass":
        scoring = _scorer(metric_spec(None, task), task)
    plain = permutation_importance(trained.pipeline, X, y, scoring=scoring, n_repeats=3, random_state=7)
    expected = pd.DataFrame(
        {"feature": list(X.columns), "importance": plain.importances_mean, "std": plain.importances_std}
    ).sort_values("importance", ascending=False, kind="stable")
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True), check_exact=True)
    assert got["importance"].abs().sum() > 0  # something was shuffled that mattered


def test_permutation_importance_falls_back_to_the_plain_model_when_it_is_no_column_pipeline() -> None:
    from sklearn.linear_model import LogisticRegression

    from reproml.scoring import _shuffled_column_only

    frame = tiny_frame(rows=100, seed=1)
    X = frame[["x1", "x2"]]
    model = LogisticRegression().fit(X, frame["y"])
    assert _shuffled_column_only(model, X) is model
    result = permutation_importance_frame(model, X, frame["y"].to_numpy(), "classification", 2, 0)
    assert result["feature"].iloc[0] == "x1"
