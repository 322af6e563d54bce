"""Decisions, not just scores: the threshold chosen on validation, calibration, conformal intervals."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning
from threadpoolctl import threadpool_limits

from reproml import decisions, intervals, thresholds
from reproml.config import parse_params
from reproml.errors import ConfigError, ReproError
from reproml.fitting import fit_model
from reproml.metrics import METRICS, MetricSpec, score
from reproml.monitoring import concept
from tests.test_multiclass import LABELS, params_for, three_class_frame
from tests.test_multiclass import SPEC as MULTICLASS_SPEC
from tests.test_train_models import SPEC, make_params, split_frame


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with threadpool_limits(limits=1):
        yield


def noisy_scores(rows: int = 600, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores with many tied values (rounded), as isotonic calibration produces."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    scores = np.clip(0.3 * y + rng.normal(0.35, 0.2, rows), 0, 1).round(2)
    return y, scores


def candidates(scores: np.ndarray) -> list[float]:
    """Every cut that labels the rows differently: each distinct score, and one above them all."""
    return [*np.unique(scores).tolist(), float(np.nextafter(scores.max(), np.inf))]


def cost(y: np.ndarray, predicted: np.ndarray, fp: float, fn: float) -> float:
    _, false_pos, false_neg, _ = skm.confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    return float(fp * false_pos + fn * false_neg) / len(y)


def test_f1_threshold_is_the_best_of_every_candidate_cut() -> None:
    y, scores = noisy_scores()
    choice = thresholds.choose(y, scores, "f1")
    brute = {t: skm.f1_score(y, (scores >= t).astype(int), zero_division=0) for t in candidates(scores)}
    best = max(brute.values())
    assert choice.value == pytest.approx(best)
    assert skm.f1_score(y, (scores >= choice.threshold).astype(int)) == pytest.approx(best)
    assert choice.threshold == max(t for t, v in brute.items() if v == pytest.approx(best))  # ties: highest
    assert choice.rule == "f1" and choice.rows == len(y)
    assert choice.value > skm.f1_score(y, (scores >= 0.5).astype(int))  # it beats the 0.5 it replaces


@pytest.mark.parametrize(("fp", "fn"), [(1.0, 5.0), (5.0, 1.0), (1.0, 0.01), (0.01, 1.0)])
def test_cost_threshold_has_the_lowest_cost_of_every_candidate_cut(fp: float, fn: float) -> None:
    y, scores = noisy_scores(seed=7)
    choice = thresholds.choose(y, scores, "cost", cost_fp=fp, cost_fn=fn)
    brute = {t: cost(y, (scores >= t).astype(int), fp, fn) for t in candidates(scores)}
    assert choice.value == pytest.approx(min(brute.values()))
    assert cost(y, (scores >= choice.threshold).astype(int), fp, fn) == pytest.approx(min(brute.values()))
    assert (choice.cost_fp, choice.cost_fn) == (fp, fn)
    if fn == 0.01:  # a missed positive costs nearly nothing: predict only the surest positive
        assert (scores >= choice.threshold).mean() < 0.1
    if fp == 0.01:  # a false alarm costs nearly nothing: predict (almost) everything positive
        assert (scores >= choice.threshold).mean() > 0.9


def test_a_fixed_threshold_is_kept_and_bad_labels_are_refused() -> None:
    y, scores = noisy_scores()
    assert thresholds.choose(y, scores, 0.3).threshold == 0.3
    # every positive scored lowest: predicting nothing positive (a cut above every score) costs least
    nothing = thresholds.choose(np.array([1, 0, 0]), np.array([0.1, 0.9, 0.8]), "cost")
    assert nothing.threshold > 0.9 and nothing.value == pytest.approx(1 / 3)
    with pytest.raises(ReproError, match="labels 0/1"):
        thresholds.choose(np.array([0, 2, 1]), np.array([0.1, 0.5, 0.9]), "f1")


def test_threshold_settings_are_validated_naming_the_key() -> None:
    assert parse_params({"evaluate": {"threshold": 0.25}}).evaluate.threshold == 0.25
    assert parse_params({}).evaluate.threshold == "f1"
    for bad in ("f2", 0, 1.5, True):
        with pytest.raises(ConfigError, match=r"evaluate\.threshold"):
            parse_params({"evaluate": {"threshold": bad}})
    multiclass = {"data": {"path": "data/raw/x.csv", "target": "y", "task": "multiclass"}}
    with pytest.raises(ConfigError, match="most probable class"):
        parse_params({**multiclass, "evaluate": {"threshold": "cost"}})
    regression = {"data": {"path": "data/raw/x.csv", "target": "y", "task": "regression"}}
    with pytest.raises(ConfigError, match=r"train\.calibration"):
        parse_params({**regression, "train": {"calibration": "isotonic"}})


@pytest.mark.parametrize("calibration", ["none", "isotonic", "sigmoid"])
def test_decide_serves_the_threshold_and_keeps_the_probabilities(calibration: str) -> None:
    train, valid = split_frame(rows=600)
    trained = fit_model(train, valid, SPEC, make_params("xgboost"))
    served, decided = decisions.decide(
        trained.pipeline, valid, SPEC.input_columns, "y", "classification", calibration=calibration
    )
    assert [name for name, _ in served.steps] == ["preprocess", "model"]
    assert decided.threshold is not None and decided.calibration == calibration
    cut = decisions.threshold_of(served)
    assert cut == decided.threshold.threshold != 0.5
    proba = served.predict_proba(valid[SPEC.input_columns])[:, 1]
    np.testing.assert_array_equal(served.predict(valid[SPEC.input_columns]), (proba >= cut).astype(int))
    # the choice was made on the served (calibrated) probabilities of the validation rows
    assert thresholds.choose(valid["y"].to_numpy(), proba, "f1").threshold == cut
    raw = decisions.uncalibrated(served).predict_proba(valid[SPEC.input_columns])
    np.testing.assert_allclose(raw, trained.pipeline.predict_proba(valid[SPEC.input_columns]))
    if calibration == "isotonic":  # the best monotone map in squared error, identity included
        assert decided.brier_valid["after"] <= decided.brier_valid["before"]
    if calibration == "none":
        assert set(decided.brier_valid) == {"before"}
        np.testing.assert_allclose(proba, raw[:, 1])
    # the served model survives the registry's serialization with its threshold
    data = skops.io.dumps(served)
    loaded = skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
    assert decisions.threshold_of(loaded) == cut


def test_multiclass_calibration_keeps_the_recorded_class_order() -> None:
    frame = three_class_frame()
    train, valid = frame.iloc[:300].reset_index(drop=True), frame.iloc[300:].reset_index(drop=True)
    trained = fit_model(train, valid, MULTICLASS_SPEC, params_for(), classes=LABELS)
    columns = MULTICLASS_SPEC.input_columns
    served, decided = decisions.decide(trained.pipeline, valid, columns, "y", "multiclass", "isotonic")
    assert decided.threshold is None  # multiclass predicts the most probable class
    X = valid[columns]
    proba = served.predict_proba(X)
    assert list(served.classes_) == LABELS
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(served.predict(X), np.asarray(LABELS, dtype=object)[proba.argmax(axis=1)])
    for k, label in enumerate(LABELS):  # column k is still class k's probability
        assert proba[valid["y"].to_numpy() == label].mean(axis=0).argmax() == k
    assert decided.brier_valid["after"] <= decided.brier_valid["before"]
    raw = decisions.uncalibrated(served)
    np.testing.assert_allclose(raw.predict_proba(X), trained.pipeline.predict_proba(X))
    assert isinstance(
        trained.pipeline.named_steps["model"].estimator_, type(raw.named_steps["model"].estimator_)
    )
    without = valid[valid["y"] != LABELS[0]]
    with pytest.raises(ReproError, match="every class in the validation split"):
        decisions.decide(trained.pipeline, without, columns, "y", "multiclass", "sigmoid")


def test_brier_is_sklearns() -> None:
    y, scores = noisy_scores()
    assert score(METRICS["brier"], y, scores) == pytest.approx(skm.brier_score_loss(y, scores))


def test_conformal_intervals_cover_about_the_nominal_share() -> None:
    train, valid = split_frame("regression", rows=1600, seed=1)
    model = fit_model(train, valid.iloc[:600], SPEC, make_params("linear", "regression")).pipeline
    calib, test = valid.iloc[:200], valid.iloc[200:]
    found = intervals.conformal(
        model,
        calib[SPEC.input_columns],
        calib["y"].to_numpy(),
        test[SPEC.input_columns],
        test["y"].to_numpy(),
        0.9,
    )
    predicted = model.predict(test[SPEC.input_columns])
    assert np.all(found.lower <= predicted) and np.all(predicted <= found.upper)
    assert found.coverage == pytest.approx(np.mean((found.lower <= test["y"]) & (test["y"] <= found.upper)))
    assert 0.82 <= found.coverage <= 0.97  # exchangeable rows: close to 0.9
    summary = found.summary()
    assert summary["level"] == 0.9 and summary["coverage_gap"] == pytest.approx(found.coverage - 0.9)
    assert "lower" not in summary and summary["test_rows"] == len(test)


def test_monitoring_label_metrics_cut_at_the_champions_threshold_without_warnings() -> None:
    y, scores = noisy_scores(rows=1500)
    scores = scores * 0.45  # every score below 0.5: at 0.5 nothing would be predicted positive
    frame = pd.DataFrame({"late": y, "prediction": scores})
    cut = thresholds.choose(y, scores, "f1").threshold
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        change = concept.quality_change(
            MetricSpec("roc_auc", True),
            y,
            scores,
            y,
            scores,
            50,
            0.95,
            0,
            task="classification",
            threshold=cut,
        )
        _, values = concept.report("classification", "late", frame, frame, threshold=cut)
        concept.report("classification", "late", frame, frame)  # 0.5: nothing positive, still quiet
    assert change.batch_metrics["f1"] == pytest.approx(skm.f1_score(y, (scores >= cut).astype(int)))
    assert values["F1Score"] == pytest.approx(change.batch_metrics["f1"])


@pytest.mark.integration
def test_the_registered_model_predicts_with_the_threshold_chosen_on_validation(make_project) -> None:
    import json

    import mlflow
    from mlflow.tracking import MlflowClient

    from reproml.stages.evaluate import run_evaluate
    from reproml.stages.ingest import run_ingest
    from reproml.stages.prepare import run_prepare
    from reproml.stages.register import run_register
    from reproml.stages.train import run_train
    from tests.conftest import tiny_frame, user_data_params

    params = user_data_params("data/raw/frame.parquet")
    params["prepare"].update({"train_end": "2021-09-01", "valid_end": "2021-11-01", "test_end": "2022-06-01"})
    params["train"].update({"calibration": "isotonic", "n_jobs": 1})
    params["train"]["xgboost"].update({"n_estimators": 200, "learning_rate": 0.1})
    params["evaluate"].update({"importance_rows": 300, "threshold": "cost", "cost_fp": 1.0, "cost_fn": 4.0})
    params["register"] = {"model_name": "decisions-test"}
    root = make_project(params, files={"data/raw/frame.parquet": tiny_frame(2000, seed=1)})
    run_ingest(root)
    run_prepare(root)
    trained = run_train(root)
    run_evaluate(root)
    registered = run_register(root)

    history = json.loads((root / "models" / "history.json").read_text())
    choice = history["decision"]["threshold"]
    valid = pd.read_parquet(root / "data" / "prepared" / "valid.parquet")
    test = pd.read_parquet(root / "data" / "prepared" / "test.parquet")
    columns = ["x1", "x2", "cat", "when"]
    uri = f"models:/{registered['model_name']}/{registered['version']}"
    served = mlflow.sklearn.load_model(uri)
    # chosen on the validation split: the least cost of every candidate cut of the served probabilities
    proba_valid = served.predict_proba(valid[columns])[:, 1]
    y_valid = valid["y"].to_numpy()
    brute = min(cost(y_valid, (proba_valid >= t).astype(int), 1.0, 4.0) for t in candidates(proba_valid))
    assert choice["rule"] == "cost" and choice["value"] == pytest.approx(brute)
    # ... and applied by the registered model's pyfunc predict, the probabilities still at hand
    predicted = np.asarray(mlflow.pyfunc.load_model(uri).predict(test[columns]))
    proba = served.predict_proba(test[columns])[:, 1]
    np.testing.assert_array_equal(predicted, (proba >= choice["threshold"]).astype(int))
    assert not np.array_equal(predicted, (proba >= 0.5).astype(int))

    metrics = json.loads((root / "metrics" / "metrics.json").read_text())
    decision = metrics["decision"]
    assert decision["threshold"] == choice["threshold"] and decision["calibration"] == "isotonic"
    assert decision["brier"]["valid"]["after"] <= decision["brier"]["valid"]["before"]
    assert metrics["test"]["brier"] == pytest.approx(decision["brier"]["test"]["after"])
    assert metrics["test"]["recall"] == pytest.approx(skm.recall_score(test["y"], predicted))
    run = MlflowClient().get_run(trained["run_id"])
    assert run.data.metrics["threshold"] == pytest.approx(choice["threshold"])
    assert run.data.metrics["valid_threshold_cost"] == pytest.approx(brute)
    assert {"valid_brier_before", "valid_brier_after", "test_brier", "test_brier_uncalibrated"} <= set(
        run.data.metrics
    )
    assert (
        run.data.tags["reproml.threshold_rule"] == "cost" and run.data.params["evaluate.threshold"] == "cost"
    )
    for name in ("threshold", "calibration", "calibration_uncalibrated"):
        assert len(pd.read_csv(root / "plots" / f"{name}.csv")) > 1
    assert (root / "plots" / "images" / "threshold.png").stat().st_size > 0


@pytest.mark.integration
def test_regression_intervals_report_test_coverage_against_the_nominal_level(make_project) -> None:
    import json

    from mlflow.tracking import MlflowClient

    from reproml.stages.evaluate import run_evaluate
    from reproml.stages.ingest import run_ingest
    from reproml.stages.prepare import run_prepare
    from reproml.stages.train import run_train
    from tests.conftest import tiny_frame, user_data_params

    params = user_data_params("data/raw/frame.parquet", task="regression")
    params["prepare"].update({"train_end": "2021-09-01", "valid_end": "2021-11-01", "test_end": "2022-06-01"})
    params["train"].update({"model": "linear"})
    params["evaluate"].update({"importance_rows": 300, "interval_level": 0.8})
    root = make_project(params, files={"data/raw/frame.parquet": tiny_frame(2000, seed=1, task="regression")})
    run_ingest(root)
    run_prepare(root)
    trained = run_train(root)
    result = run_evaluate(root)
    found = json.loads((root / "metrics" / "metrics.json").read_text())["intervals"]
    assert found == result["intervals"] and found["level"] == 0.8
    predictions = pd.read_parquet(root / "predictions" / "test.parquet")
    inside = (predictions["lower"] <= predictions["y"]) & (predictions["y"] <= predictions["upper"])
    assert found["coverage"] == pytest.approx(inside.mean())
    assert abs(found["coverage"] - 0.8) < 0.1
    logged = MlflowClient().get_run(trained["run_id"]).data.metrics
    assert logged["test_interval_coverage"] == pytest.approx(found["coverage"])
    assert logged["interval_level"] == 0.8
