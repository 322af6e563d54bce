"""The stages called in-process (as flows and tests do) for regression on the real flights data."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from reproml.stages.evaluate import run_evaluate
from reproml.stages.ingest import run_ingest
from reproml.stages.prepare import run_prepare
from reproml.stages.train import run_train
from tests.conftest import default_params

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "model",
    [
        # suite time (issue 15): `make test-slow` runs it; the linear case covers the stages
        pytest.param("hist_gradient_boosting", marks=pytest.mark.slow),
        "linear",
    ],
)
def test_bundled_arrival_delay_regression(make_project, model: str) -> None:
    params = default_params()
    params["data"].update({"target": "arr_delay", "task": "regression", "sample_rows": 5000})
    params["train"]["model"] = model
    params["evaluate"]["importance_rows"] = 500
    root = make_project(params)
    run_ingest(root)
    run_prepare(root)
    trained = run_train(root)
    result = run_evaluate(root)
    assert result["run_id"] == trained["run_id"]
    metrics = json.loads((root / "metrics" / "metrics.json").read_text())
    assert set(metrics["test"]) == {"mae", "mse", "rmse", "r2"}
    assert metrics["test"]["rmse"] == pytest.approx(metrics["test"]["mse"] ** 0.5)
    assert metrics["overfit"]["metric"] == "rmse"
    assert (root / "plots" / "images" / "residuals.png").stat().st_size > 0
    assert not (root / "plots" / "roc.csv").exists()
    predictions = pd.read_parquet(root / "predictions" / "test.parquet")
    assert predictions["prediction"].std() > 0, "a constant model would not be learning anything"
    schema = json.loads((root / "data" / "schema.json").read_text())
    assert (
        "late" not in schema["numeric"] + schema["categorical"]
        or "late" in params["prepare"]["exclude_columns"]
    )
