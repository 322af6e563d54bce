"""Estimated performance without labels (CBPE / DLE, `reproml.monitoring.estimate`), and labels
that arrive late (`reproml monitor --batch ID --labels FILE`, `reproml.monitoring.labels`).

The pure tests draw scores from a known, calibrated generator: P(y=1 | x) = sigmoid(2x), the score
is that probability. A batch of "harder inputs" draws x nearer 0 (covariate shift: the realised
ROC-AUC falls, and CBPE sees it in the scores); a batch whose labels are shuffled has the very same
scores (concept drift CBPE cannot see: its estimate does not move, only the realised value does).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from reproml.cli import app
from reproml.config import MonitorParams
from reproml.monitoring import decision, estimate, labels, store
from reproml.monitoring.labels import LabelsError, add_labels
from reproml.monitoring.records import EstimateReference
from reproml.stages.common import load
from tests.test_monitoring import batch, champion_project, monitor, project  # noqa: F401 (fixtures)
from tests.test_registry import NAME

REFERENCE: EstimateReference = {"source": "synthetic reference", "rows": 4000}


def draw(rows: int, seed: int, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and calibrated scores; `spread` < 1 draws harder inputs (scores nearer 0.5)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, spread, rows)
    p = 1.0 / (1.0 + np.exp(-2.0 * x))
    return (rng.random(rows) < p).astype(int), p


def cbpe(batch_scores: np.ndarray, seed: int = 0) -> estimate.Estimate:
    y, p = draw(4000, seed)
    return estimate.estimate("classification", "roc_auc", y, p, batch_scores, REFERENCE)


def test_shuffled_labels_leave_the_estimate_unchanged_only_the_realised_value_sees_them() -> None:
    y, p = draw(3000, seed=1)
    found = cbpe(p)
    true_auc = roc_auc_score(y, p)
    shuffled = np.random.default_rng(2).permutation(y)
    shuffled_auc = roc_auc_score(shuffled, p)
    assert shuffled_auc < 0.55 < true_auc - 0.2  # the shuffle destroyed the model's quality...
    again = cbpe(p)  # ...but CBPE reads the scores only: the very same estimate (README, known limit)
    assert again.value == found.value and (again.lower, again.upper) == (found.lower, found.upper)
    assert abs(found.value - true_auc) < 0.02 and found.lower <= true_auc <= found.upper
    assert found.method == estimate.CBPE and found.metric == "roc_auc"
    # what the labels, once arrived, say: the true batch is as estimated, the shuffled one is concept drift
    assert estimate.judge(found, true_auc, 0.02).shift == estimate.NO_SHIFT
    judged = estimate.judge(found, shuffled_auc, 0.02)
    assert judged.shift == estimate.CONCEPT_DRIFT
    assert judged.error == pytest.approx(shuffled_auc - found.value)


def test_scores_moved_towards_the_cut_show_the_expected_drop() -> None:
    reference = cbpe(draw(3000, seed=3)[1])
    y, p = draw(3000, seed=4, spread=0.35)  # harder inputs: the same world, less certain scores
    moved = cbpe(p)
    realised = roc_auc_score(y, p)
    assert reference.reference_value - realised > 0.1  # the model really got worse on these inputs
    assert abs(moved.value - realised) < 0.03  # ...and CBPE saw it from the scores alone
    assert moved.drop > 0.1 and moved.band_drop > 0
    assert estimate.judge(moved, None, 0.02).shift == estimate.COVARIATE_SHIFT
    assert estimate.judge(moved, realised, 0.02).shift == estimate.COVARIATE_SHIFT  # fell together


def test_dle_estimates_a_regression_batch_error() -> None:
    rng = np.random.default_rng(5)

    def frame(rows: int, noisy_share: float) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        x = rng.normal(size=rows)
        noisy = rng.random(rows) < noisy_share
        y = 3 * x + rng.normal(0, np.where(noisy, 3.0, 0.3))
        when = pd.date_range("2021-01-01", periods=rows, freq="h")  # a timestamp input, as the models read
        return pd.DataFrame({"x": x, "noisy": noisy.astype(int), "when": when}), y, 3 * x

    ref_x, ref_y, ref_pred = frame(3000, 0.5)
    cur_x, cur_y, cur_pred = frame(2000, 0.9)  # more of the hard rows: the error must go up
    found = estimate.estimate(
        "regression", None, ref_y, ref_pred, cur_pred, REFERENCE,
        reference_features=ref_x, batch_features=cur_x,
    )  # fmt: skip
    realised = float(np.sqrt(np.mean((cur_y - cur_pred) ** 2)))
    assert found.method == estimate.DLE and found.metric == "rmse" and not found.higher_is_better
    assert found.drop > 0.3 and abs(found.value - realised) < 0.25 * realised


def test_cbpe_estimates_a_multiclass_macro_roc_auc() -> None:
    rng = np.random.default_rng(8)

    def draw_classes(rows: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
        logits = rng.normal(0.0, spread, (rows, 3))
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        y = np.array([rng.choice(["a", "b", "c"], p=row) for row in p], dtype=object)
        return y, p

    ref_y, ref_p = draw_classes(3000, 1.5)
    y, p = draw_classes(2000, 0.6)  # harder inputs: flatter probabilities
    found = estimate.estimate("multiclass", None, ref_y, ref_p, p, REFERENCE, classes=["a", "b", "c"])
    realised = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert found.metric == "roc_auc_ovr" and found.method == estimate.CBPE
    assert found.drop > 0.05 and abs(found.value - realised) < 0.03


def test_a_reference_of_one_class_is_refused_clearly() -> None:
    with pytest.raises(estimate.EstimateError, match="one class only"):
        estimate.estimate("classification", "roc_auc", np.zeros(100), np.linspace(0, 1, 100),
                          np.linspace(0, 1, 50), REFERENCE)  # fmt: skip


def evidence(found: estimate.Estimate | None, labelled_rows: int = 0) -> decision.Evidence:
    return decision.Evidence(True, [], 5000, labelled_rows, estimate=found, batch_time=None, seq=1)


def test_without_labels_the_decision_uses_the_estimate_and_says_so() -> None:
    params = MonitorParams()
    moved = cbpe(draw(3000, seed=4, spread=0.35)[1])
    verdict = decision.decide(evidence(moved), params, [])
    assert verdict.verdict == decision.RETRAIN and verdict.triggers == {"estimated_quality_drop": True}
    assert "estimated roc_auc" in verdict.summary and any("estimated" in r for r in verdict.reasons)
    calm = decision.decide(evidence(cbpe(draw(3000, seed=6)[1])), params, [])
    assert calm.verdict == decision.OK and calm.triggers == {"estimated_quality_drop": False}
    nothing = decision.decide(evidence(None), params, [])  # no labels and no estimate: still a decision
    assert nothing.verdict == decision.OK and "no labels" in " ".join(nothing.reasons)


def test_an_estimate_survives_the_record_round_trip() -> None:
    found = estimate.judge(cbpe(draw(2000, seed=7)[1]), 0.7, 0.02)
    data = json.loads(json.dumps(store.jsonable(found.to_dict())))
    assert {"metric", "value", "lower", "upper", "method", "reference", "realised", "error"} <= set(data)
    assert estimate.from_dict(data) == found


# --- end to end: a real champion (tests/test_monitoring.py's tiny project) ---------------------------


@pytest.mark.integration
def test_an_unlabelled_batch_is_estimated_and_its_late_labels_complete_the_record(
    project: Path,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unlabelled = monitor(project, batch(seed=20, labelled=False), "july")
    found = unlabelled["estimate"]
    assert unlabelled["verdict"] in (decision.OK, decision.RETRAIN), unlabelled["reasons"]
    assert found["method"] == "cbpe" and found["lower"] <= found["value"] <= found["upper"]
    assert found["reference"]["source"] == "data/prepared/test.parquet" and found["realised"] is None
    assert any("no labels in the batch: quality judged on the estimate" in r for r in unlabelled["reasons"])
    run = MlflowClient().get_run(unlabelled["mlflow"]["run_id"])
    assert run.data.metrics["estimated_quality"] == pytest.approx(found["value"])
    assert run.data.tags["reproml.shift"] in ("none", "covariate_shift")

    monkeypatch.chdir(project)
    # the CLI points TMPDIR inside the project (reproml.env.keep_inside): undo that after the test
    monkeypatch.setenv("TMPDIR", os.environ.get("TMPDIR", tempfile.gettempdir()))
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    batch(seed=20).to_parquet(project / "data" / "july-labels.parquet", index=False)  # now labelled
    result = CliRunner().invoke(
        app, ["monitor", "--batch", unlabelled["batch_id"], "--labels", "data/july-labels.parquet"]
    )
    assert result.exit_code == 0, result.output
    assert "estimated" in result.output and "realised" in result.output
    record = json.loads((project / store.record_path(NAME, unlabelled["batch_id"])).read_text())
    late = record["estimate"]
    assert late["realised"] is not None and late["error"] == pytest.approx(late["realised"] - late["value"])
    assert abs(late["error"]) < 0.1 and late["shift"] in ("none", "covariate_shift", "concept_drift")
    assert record["labelled"] and (project / record["labelled"]).is_file()
    run = MlflowClient().get_run(unlabelled["mlflow"]["run_id"])
    assert run.data.metrics["estimate_error"] == pytest.approx(late["error"])
    assert run.data.tags["reproml.shift"] == late["shift"]
    assert run.info.status == "FINISHED"  # resumed to log the labels, finished again
    index = (project / store.index(NAME)).read_text()
    assert "realised" in index and late["shift"] in index

    # the next batch's estimate is fitted on those labelled rows, fresher than the test split
    later = monitor(project, batch(seed=21, day=3, labelled=False), "august")
    assert later["estimate"]["reference"]["batch_id"] == unlabelled["batch_id"]
    # ...while its drop is still measured from the test split, as the realised quality check's is
    assert later["estimate"]["baseline_source"] == "data/prepared/test.parquet"
    assert later["estimate"]["baseline"] == pytest.approx(found["reference_value"])


@pytest.mark.integration
def test_labels_that_are_not_the_batch_are_refused(project: Path) -> None:  # noqa: F811
    unlabelled = monitor(project, batch(seed=22, labelled=False), "september")
    wrong = project / "monitoring" / "incoming" / "short.parquet"
    wrong.parent.mkdir(parents=True, exist_ok=True)
    batch(seed=22).iloc[:10].to_parquet(wrong, index=False)
    with pytest.raises(LabelsError, match="10 rows, but the batch scored 1000"):
        add_labels(project, load(project), unlabelled["batch_id"], str(wrong))
    with pytest.raises(LabelsError, match="no monitored batch"):
        add_labels(project, load(project), "nope", str(wrong))


@pytest.mark.integration
def test_a_window_of_one_class_is_no_reference_and_a_failed_estimate_never_stops_the_verdict(
    project: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = monitor(project, batch(seed=23, labelled=False), "october")
    one_class = project / "monitoring" / "incoming" / "october-labels.parquet"
    one_class.parent.mkdir(parents=True, exist_ok=True)
    batch(seed=23).assign(y=0).to_parquet(one_class, index=False)  # every flight on time: one class
    add_labels(project, load(project), first["batch_id"], str(one_class))
    later = monitor(project, batch(seed=24, day=3, labelled=False), "november")
    assert later["estimate"]["reference"]["source"] == "data/prepared/test.parquet"  # CBPE can't calibrate

    def broken(*args: Any, **kwargs: Any) -> None:
        raise estimate.EstimateError("the reference cannot fit an estimator")

    monkeypatch.setattr(labels, "estimate_batch", broken)
    skipped = monitor(project, batch(seed=25, day=6, labelled=False), "december")
    assert skipped["estimate"] is None and "cannot fit" in skipped["estimate_skipped"]
    assert skipped["verdict"] in (decision.OK, decision.RETRAIN) and skipped["decision"]["triggers"]
    assert any("no labels in the batch: quality not judged" in r for r in skipped["reasons"])


@pytest.mark.integration
def test_unlabelled_draws_of_the_training_distribution_raise_no_estimated_alarm(
    project: Path,  # noqa: F811
) -> None:
    """8 fresh unlabelled draws, a day apart: the estimate's band keeps sampling noise from firing."""
    records = [monitor(project, batch(seed=300 + i, day=i, labelled=False), f"quiet-{i}") for i in range(8)]
    fired = [
        (r["batch_id"], r["summary"])
        for r in records
        if r["decision"]["triggers"].get("estimated_quality_drop")
    ]
    assert fired == []
    assert all(r["estimate"]["shift"] == estimate.NO_SHIFT for r in records)
