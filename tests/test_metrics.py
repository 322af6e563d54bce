"""The metric table: every consumer gets the same number and direction from `reproml.metrics`."""

from __future__ import annotations

import pytest

from reproml.metrics import (
    HEADLINE,
    METRICS,
    PRIMARY,
    TASKS,
    MetricSpec,
    UnknownMetricError,
    for_task,
    metric_spec,
    oriented,
    score,
    xgboost_eval_metrics,
)
from reproml.scoring import compute_metrics
from tests.test_gate import classification, regression


@pytest.mark.parametrize(
    ("task", "names"),
    [
        (
            "classification",
            ["accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss", "brier"],
        ),
        ("regression", ["mae", "mse", "rmse", "r2"]),
    ],
)
def test_score_agrees_with_evaluate(task: str, names: list[str]) -> None:
    y, good, _ = classification(200) if task == "classification" else regression(200)
    reported = compute_metrics(y, good, task)
    for name in names:
        assert score(metric_spec(name, task), y, good) == pytest.approx(reported[name]), name


def test_metric_spec_defaults_and_unknown() -> None:
    assert metric_spec(None, "classification") == MetricSpec("roc_auc", True)
    assert metric_spec(None, "regression") == MetricSpec("rmse", False)
    assert metric_spec("log_loss", "classification") == MetricSpec("log_loss", False)
    assert metric_spec("r2", "regression") == MetricSpec("r2", True)
    with pytest.raises(ValueError, match=r"unknown metric 'auc'.*roc_auc") as caught:
        metric_spec("auc", "classification")
    assert isinstance(caught.value, UnknownMetricError)
    with pytest.raises(ValueError, match="mae, mse, rmse, r2"):
        metric_spec("roc_auc", "regression")
    with pytest.raises(ValueError, match="unknown task"):
        metric_spec(None, "ranking")


def test_directions_and_task_tables_come_from_the_table() -> None:
    assert metric_spec(None, "classification").direction == "maximize"
    assert metric_spec(None, "regression").direction == "minimize"
    assert oriented(metric_spec("rmse", "regression"), 1.0, 3.0) == 2.0  # lower is better
    assert oriented(metric_spec("roc_auc", "classification"), 0.8, 0.7) == pytest.approx(0.1)
    for task in TASKS:
        names = [m.name for m in for_task(task)]
        assert HEADLINE[task][0] == PRIMARY[task] and set(HEADLINE[task]) <= set(names)
    assert METRICS["roc_auc"].floor == METRICS["roc_auc_ovr"].floor == 0.70
    assert METRICS["rmse"].floor is None
    assert xgboost_eval_metrics("classification") == ["logloss", "auc"]
    assert xgboost_eval_metrics("multiclass") == ["mlogloss"]
    assert xgboost_eval_metrics("regression") == ["rmse"]
