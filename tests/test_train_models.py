"""Every model trains through fit_model on tiny data and serves raw columns; early stopping; seeds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import r2_score, roc_auc_score
from threadpoolctl import threadpool_limits

from reproml.config import Params
from reproml.features import FeatureSpec
from reproml.fitting import TrainedModel, fit_model
from reproml.scoring import predict_scores
from tests.conftest import default_params, tiny_frame

SPEC = FeatureSpec(
    numeric=["x1", "x2"], categorical=["cat"], time_column="when", date_parts=["dayofweek", "hour", "month"]
)
CLASSIFIERS = ["xgboost", "hist_gradient_boosting", "random_forest", "logistic"]
REGRESSORS = ["xgboost", "hist_gradient_boosting", "random_forest", "linear"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """OpenMP spin-waiting makes tiny HistGradientBoosting fits slow on a busy machine."""
    with threadpool_limits(limits=1):
        yield


def make_params(model: str, task: str = "classification", seed: int = 42, **sections: Any) -> Params:
    raw = default_params()
    raw["seed"] = seed
    raw["data"].update({"path": "data/raw/tiny.csv", "target": "y", "task": task, "time_column": "when"})
    raw["prepare"]["exclude_columns"] = []
    train = raw["train"]
    train.update({"model": model, "n_jobs": 1})
    train["xgboost"].update(
        {"n_estimators": 60, "learning_rate": 0.2, "min_child_weight": 1.0, "early_stopping_rounds": 10}
    )
    train["hist_gradient_boosting"].update(
        {"max_iter": 40, "learning_rate": 0.2, "min_samples_leaf": 10, "early_stopping_rounds": 5}
    )
    train["random_forest"].update({"n_estimators": 15, "min_samples_leaf": 5})
    for name, values in sections.items():
        train[name].update(values)
    return Params.model_validate(raw)


def split_frame(task: str = "classification", rows: int = 400, seed: int = 0) -> tuple[pd.DataFrame, ...]:
    frame = tiny_frame(rows=rows, seed=seed, task=task)
    cut = int(rows * 0.75)
    return frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)


def raw_rows() -> pd.DataFrame:
    """What a caller sends at serving time: strings, timestamps, a missing number, a new category."""
    return pd.DataFrame(
        {
            "x1": [0.5, np.nan, -1.0, 2.0, np.nan],
            "x2": [0.1, 0.2, 0.3, 0.4, 0.5],
            "cat": ["a", "b", "c", "never-seen", "a"],
            "when": pd.to_datetime(
                [
                    "2021-01-04 13:00",
                    "2021-02-01 00:00",
                    "2021-03-05 06:00",
                    "2022-06-01 18:00",
                    "2021-01-01 00:00",
                ]
            ),
        }
    )


@pytest.mark.parametrize("model", CLASSIFIERS)
def test_classifiers_train_and_predict_raw_columns(model: str) -> None:
    train, valid = split_frame("classification")
    trained = fit_model(train, valid, SPEC, make_params(model, "classification"))
    assert isinstance(trained, TrainedModel)
    assert trained.history_metric in {"roc_auc", "loss"}

    raw = raw_rows()
    proba = trained.pipeline.predict_proba(raw)
    assert proba.shape == (len(raw), 2)
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    labels = trained.pipeline.predict(raw)
    assert labels.shape == (len(raw),)
    assert set(labels) <= {0, 1}

    # extra, unused columns (the target itself) are ignored, column order does not matter
    shuffled = valid[["y", "when", "cat", "x2", "x1"]]
    scores = predict_scores(trained.pipeline, shuffled, "classification")
    assert scores.shape == (len(valid),)
    assert roc_auc_score(valid["y"], scores) > 0.7


@pytest.mark.parametrize("model", REGRESSORS)
def test_regressors_train_and_predict_raw_columns(model: str) -> None:
    train, valid = split_frame("regression")
    trained = fit_model(train, valid, SPEC, make_params(model, "regression"))
    raw = raw_rows()
    pred = trained.pipeline.predict(raw)
    assert pred.shape == (len(raw),)
    assert np.isfinite(pred).all()
    scores = predict_scores(trained.pipeline, valid, "regression")
    assert r2_score(valid["y"], scores) > 0.5


@pytest.mark.parametrize(
    ("model", "metric"),
    [("xgboost", "roc_auc"), ("hist_gradient_boosting", "loss"), ("random_forest", "roc_auc")],
)
def test_history_has_equal_train_and_valid_curves(model: str, metric: str) -> None:
    train, valid = split_frame()
    trained = fit_model(train, valid, SPEC, make_params(model))
    assert trained.history_metric == metric
    assert set(trained.history) == {"train", "valid"}
    assert len(trained.history["train"]) == len(trained.history["valid"]) > 0
    assert all(isinstance(v, float) for v in trained.history["valid"])


@pytest.mark.parametrize("model", ["logistic"])
def test_linear_models_have_no_history(model: str) -> None:
    train, valid = split_frame()
    trained = fit_model(train, valid, SPEC, make_params(model))
    assert trained.history == {}
    assert trained.best_iteration is None


def test_xgboost_early_stopping_stops() -> None:
    train, valid = split_frame()
    params = make_params("xgboost", xgboost={"n_estimators": 2000, "early_stopping_rounds": 5})
    trained = fit_model(train, valid, SPEC, params)
    assert trained.best_iteration is not None
    assert 0 <= trained.best_iteration < 2000
    rounds = len(trained.history["valid"])
    assert rounds < 2000
    assert len(trained.history["train"]) == rounds
    # training stops exactly early_stopping_rounds after the best round
    assert rounds == trained.best_iteration + 1 + 5
    assert trained.history["valid"][trained.best_iteration] == max(trained.history["valid"])
    assert trained.pipeline.named_steps["model"].best_iteration == trained.best_iteration


def test_xgboost_regression_history_is_rmse() -> None:
    train, valid = split_frame("regression")
    trained = fit_model(train, valid, SPEC, make_params("xgboost", "regression"))
    assert trained.history_metric == "rmse"
    # rmse on the training set falls as trees are added
    assert trained.history["train"][-1] < trained.history["train"][0]


def test_hist_gradient_boosting_early_stopping_stops() -> None:
    train, valid = split_frame()
    params = make_params(
        "hist_gradient_boosting", hist_gradient_boosting={"max_iter": 1000, "early_stopping_rounds": 3}
    )
    trained = fit_model(train, valid, SPEC, params)
    assert trained.best_iteration is not None
    rounds = trained.pipeline.named_steps["model"].n_iter_
    assert rounds < 1000
    # one point per boosting round (sklearn's initial zero-tree score is dropped)
    assert len(trained.history["valid"]) == len(trained.history["train"]) == rounds
    # best_iteration is the 0-based round with the lowest validation loss, as XGBoost reports it
    assert trained.history["valid"][trained.best_iteration] == min(trained.history["valid"])
    assert trained.best_iteration < rounds - 1


def test_random_forest_history_length_equals_n_estimators() -> None:
    train, valid = split_frame()
    trained = fit_model(train, valid, SPEC, make_params("random_forest", random_forest={"n_estimators": 12}))
    assert len(trained.history["train"]) == 12
    assert len(trained.history["valid"]) == 12
    assert trained.history_metric == "roc_auc"
    # the last point of the curve is the whole forest's score
    forest_scores = predict_scores(trained.pipeline, valid, "classification")
    assert trained.history["valid"][-1] == pytest.approx(roc_auc_score(valid["y"], forest_scores))


def test_random_forest_regression_history_is_rmse_of_whole_forest() -> None:
    train, valid = split_frame("regression")
    trained = fit_model(
        train, valid, SPEC, make_params("random_forest", "regression", random_forest={"n_estimators": 7})
    )
    assert len(trained.history["valid"]) == 7
    pred = trained.pipeline.predict(valid)
    rmse = float(np.sqrt(np.mean((valid["y"].to_numpy() - pred) ** 2)))
    assert trained.history["valid"][-1] == pytest.approx(rmse)


def _predictions(model: str, seed: int, **sections: Any) -> np.ndarray:
    train, valid = split_frame()
    trained = fit_model(train, valid, SPEC, make_params(model, seed=seed, **sections))
    return predict_scores(trained.pipeline, valid, "classification")


@pytest.mark.parametrize("model", ["xgboost", "random_forest"])
def test_same_seed_same_predictions(model: str) -> None:
    np.testing.assert_array_equal(_predictions(model, seed=7), _predictions(model, seed=7))


def test_different_seed_different_random_forest_predictions() -> None:
    assert not np.array_equal(_predictions("random_forest", seed=1), _predictions("random_forest", seed=2))


def test_different_seed_different_xgboost_predictions_when_subsampling() -> None:
    """subsample/colsample < 1 make the seed matter; otherwise the test above would be vacuous."""
    first = _predictions("xgboost", seed=1)
    second = _predictions("xgboost", seed=2)
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("model", ["logistic", "xgboost"])
def test_fit_model_fits_preprocessing_on_train_only(model: str) -> None:
    train, valid = split_frame()
    valid = valid.copy()
    valid["x1"] = valid["x1"] + 50.0  # valid statistics far from train's
    valid.loc[valid.index[:10], "cat"] = "only-in-valid"
    trained = fit_model(train, valid, SPEC, make_params(model))
    prep = trained.pipeline.named_steps["preprocess"]
    if model == "logistic":
        numeric = prep.named_transformers_["numeric"]
        imputer = numeric.named_steps["simpleimputer"]
        assert imputer.statistics_[0] == pytest.approx(train["x1"].median())
        assert numeric.named_steps["standardscaler"].mean_[0] == pytest.approx(train["x1"].mean())
        onehot = prep.named_transformers_["categorical"].named_steps["onehotencoder"]
    else:
        onehot = prep.named_transformers_["categorical"]
    assert [list(c) for c in onehot.categories_] == [["a", "b", "c"]]


@pytest.mark.parametrize(
    ("model", "task", "calibration"),
    [
        ("xgboost", "classification", "none"),
        ("xgboost", "classification", "isotonic"),
        ("hist_gradient_boosting", "classification", "sigmoid"),
        ("random_forest", "classification", "none"),
        ("logistic", "classification", "none"),
        ("xgboost", "regression", "none"),
        ("xgboost", "multiclass", "isotonic"),
    ],
)
def test_untrusted_types_match_skops_own_audit_of_a_dump(model: str, task: str, calibration: str) -> None:
    """`log_sklearn_model` trusts exactly the types skops' public audit of a dump names, without
    dumping: the served pipelines (threshold, calibration, class labels) of every model family."""
    import skops.io

    from reproml.decisions import decide
    from reproml.stores.mlflow.models import untrusted_types

    train, valid = split_frame("regression" if task == "regression" else "classification")
    classes = None
    if task == "multiclass":
        for frame in (train, valid):
            frame["y"] = np.where(frame["x1"] < -0.4, "low", np.where(frame["x1"] < 0.4, "mid", "high"))
        classes = ["high", "low", "mid"]
    params = make_params(model, task)
    trained = fit_model(train, valid, SPEC, params, classes)
    served, _ = decide(trained.pipeline, valid, SPEC.input_columns, "y", task, calibration=calibration)
    expected = skops.io.get_untrusted_types(data=skops.io.dumps(served))
    assert untrusted_types(served) == expected
    assert any(name.startswith("reproml.") for name in expected)  # the check sees our own types
