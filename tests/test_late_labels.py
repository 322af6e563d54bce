"""Labels that come one period late (issue 17): `reproml simulate --labels late`.

Each period is judged without its labels (on the estimate), the labels of the period before arrive
first (`labels.add_labels`, the path `reproml monitor --batch ID --labels FILE` takes), and a retrain
verdict on a batch without labels retrains on the newest labelled window that has arrived after
what the champion learned, never on the batch's own rows. When its labels arrive the batch is
judged again on them (`labels_decision`), and a retrain verdict then learns its own window.

The first tests use a tiny dated project (no git, DVC or Prefect: the stages and the monitor called
in-process); the replay itself (`slow`) runs `reproml simulate --labels late --policies always` on
a user's dated CSV, with real git, DVC, MLflow and a Prefect server, and checks what each retrain
learned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn import metrics as skm

from reproml.config import MonitorParams
from reproml.monitoring import decision, drift, scores, store
from reproml.monitoring.labels import retrain_window, skip_retrain
from reproml.monitoring.records import BatchSummary
from reproml.orchestration import monitoring as steps
from reproml.orchestration import replay
from reproml.stages.common import load
from reproml.stages.monitor import run_monitor
from reproml.stages.register import run_promote
from tests.conftest import tiny_frame
from tests.project import Project
from tests.test_loop_multiclass_regression import _start, load_frame, loop_params
from tests.test_registry import pipeline, project_params

NAME = "late-labels"


def dated_frame() -> pd.DataFrame:
    """tiny_frame's rows every 3 hours from 2021-01-01 to mid-May 2022 (~240 a month)."""
    frame = tiny_frame(4000, seed=1)
    frame["when"] = pd.date_range("2021-01-01", periods=len(frame), freq="3h")
    return frame


@pytest.fixture(scope="module")
def dated_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A champion trained before 2022-02; February-May 2022 are production periods."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("late") / "project"
        (root / "data" / "raw").mkdir(parents=True)
        params = project_params()
        params["prepare"].update(
            {"train_end": "2021-09-01", "valid_end": "2021-11-01", "test_end": "2022-02-01"}
        )
        params["register"] = {"model_name": NAME}
        params["monitor"].update({"min_rows": 150, "bootstrap_samples": 200})
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        dated_frame().to_parquet(root / "data" / "raw" / "frame.parquet", index=False)
        pipeline(root)
        assert run_promote(root)["action"] == "promote"
        yield root


@pytest.mark.integration
def test_a_period_judged_without_labels_gets_them_late_and_a_retrain_learns_the_window_before(
    dated_project: Path,
) -> None:
    root, params = dated_project, load(dated_project)
    february = run_monitor(root, "2022-02", withhold_labels=True)
    assert february["labels_withheld"] and february["labelled_rows"] == 0
    assert february["quality"] is None and february["labelled"] is None
    assert february["estimate"] is not None and february["estimate"]["realised"] is None
    assert any("quality judged on the estimate" in r for r in february["reasons"]), february["reasons"]
    stored = pd.read_parquet(root / str(february["predictions"]))
    assert "y" not in stored.columns  # the labels never reached what was judged
    # no labelled window has arrived yet: a retrain verdict has nothing to learn, and says so
    path, why = retrain_window(root, february, params)
    assert path is None and "nothing to retrain on" in why
    skip_retrain(root, february, why)  # what the hand-off does then: the record says so
    kept = json.loads((root / store.record_path(NAME, "2022-02")).read_text())
    assert kept["retrain_skipped"] == why and kept["labels_withheld"]

    arrived = replay.arrive_labels(root, "2022-02")
    assert arrived is not None and arrived["labels"]["labelled_rows"] == len(stored)
    truth = dated_frame().set_index("when").loc["2022-02-01":"2022-02-28 23:59", "y"].to_numpy()
    realised = arrived["realised"]
    assert realised["metric"] == "roc_auc" and realised["rows"] == len(truth)
    assert realised["value"] == pytest.approx(skm.roc_auc_score(truth, stored[scores.PREDICTION]))
    judged = arrived.get("estimate")
    assert judged is not None and judged["realised"] == pytest.approx(realised["value"])
    window = pd.read_parquet(root / str(arrived["labelled"]))
    assert window["when"].max() < pd.Timestamp("2022-03-01")
    # ...and February is judged again on them: the realised change against the test split, the
    # same rules, the same drift; the verdict it had when it came stays what was done then
    again = arrived["labels_decision"]
    assert arrived["verdict"] == february["verdict"] and again["verdict"] in decision.MEASURED
    assert arrived["quality"] is not None and "quality_drop" in again["triggers"]
    assert arrived["quality"]["batch_value"] == pytest.approx(realised["value"])  # every row: < sample_rows
    assert arrived["drift"] == february["drift"] and "feature_drift" in again["triggers"]
    assert (root / arrived["reports"]["quality"]).is_file()

    march = run_monitor(root, "2022-03", withhold_labels=True)
    path, why = retrain_window(root, march, params)
    assert path == arrived["labelled"] and "_2022-02" in str(path), why
    assert not list((root / store.labelled(NAME)).glob("*_2022-03.parquet"))  # March's are still to come
    assert pd.read_parquet(root / str(path))["when"].max() < pd.Timestamp("2022-03-01")
    # the replay's table reads the realised value once March's labels arrived too
    summary: BatchSummary = steps.summary(march)
    assert summary["quality"] is None and summary["labels_withheld"]
    replay.arrive_labels(root, "2022-03")
    done = replay.with_realised(root, summary)
    record = json.loads((root / store.record_path(NAME, "2022-03")).read_text())
    assert done["quality"] == pytest.approx(record["realised"]["value"]) and done["quality"] is not None
    assert done["labelled"] == record["labelled"] and "_2022-03" in str(done["labelled"])


@pytest.mark.integration
def test_labels_now_and_labels_late_give_a_period_the_same_quality(
    dated_project: Path, tmp_path: Path
) -> None:
    """The table's quality in both modes: the champion's metric on the period's labelled rows."""
    import shutil

    now = Path(shutil.copytree(dated_project, tmp_path / "now"))
    late = Path(shutil.copytree(dated_project, tmp_path / "late"))
    for root in (now, late):  # each copy's history starts empty
        shutil.rmtree(root / "monitoring", ignore_errors=True)
    with_labels = run_monitor(now, "2022-04")
    without = run_monitor(late, "2022-04", withhold_labels=True)
    replay.arrive_labels(late, "2022-04")
    quality = steps.summary(with_labels)["quality"]
    realised = replay.with_realised(late, steps.summary(without))["quality"]
    assert quality is not None and realised == pytest.approx(quality, abs=1e-9)


@pytest.mark.integration
def test_labels_that_show_the_model_wrong_turn_a_batch_into_a_retrain_when_they_arrive(
    dated_project: Path, tmp_path: Path
) -> None:
    """April judged on its estimate, then its labels arrive shuffled against its rows (the model is
    now no better than chance on them): judged again, the realised drop fires; the flow hands that
    verdict on (`labels_decision`) and the monitoring run carries it as a tag."""
    import shutil

    import mlflow

    from reproml.monitoring.labels import add_labels

    root = Path(shutil.copytree(dated_project, tmp_path / "shuffled"))
    shutil.rmtree(root / "monitoring", ignore_errors=True)
    params = load(root)
    april = run_monitor(root, "2022-04", withhold_labels=True)
    assert april["quality"] is None and "quality_drop" not in april["decision"]["triggers"]
    rows = dated_frame().set_index("when").loc["2022-04-01":"2022-04-30 23:59"].reset_index()
    rows["y"] = rows["y"].sample(frac=1.0, random_state=7).to_numpy()
    (root / "data" / "april-labels.parquet").parent.mkdir(exist_ok=True)
    rows.to_parquet(root / "data" / "april-labels.parquet", index=False)
    arrived = add_labels(root, params, "2022-04", "data/april-labels.parquet")
    again = arrived["labels_decision"]
    assert again["verdict"] == decision.RETRAIN and again["triggers"]["quality_drop"], again["reasons"]
    change = arrived["quality"]
    assert arrived["verdict"] == april["verdict"] and change is not None and (change["drop"] or 0) > 0.05
    run = mlflow.get_run(arrived["mlflow"]["run_id"])
    assert run.data.tags["reproml.verdict_on_labels"] == decision.RETRAIN
    # the same labels again: judged once, not a second time
    twice = add_labels(root, params, "2022-04", "data/april-labels.parquet")
    assert twice["labels_decision"] == again


def test_a_retrain_verdict_on_arrived_labels_holds_the_next_one_like_any_retrain() -> None:
    watch = MonitorParams(cooldown_unit="batches", cooldown=1, retrain_period=10, max_retrains=2)
    drifted = drift.DriftResult(0.9, 1000, 1000, [], None, 1.0, 1.0, "importance")
    now = decision.Evidence(True, [], 1000, 0, drifted, None, pd.Timestamp("2013-08-31"), 2)
    before = {"verdict": decision.OK, "seq": 1, "batch_id": "2013-07", "batch_time": "2013-07-31T23:00:00"}
    assert decision.decide(now, watch, [before]).verdict == decision.RETRAIN  # type: ignore[list-item]
    on_labels = {**before, "labels_decision": {"verdict": decision.RETRAIN}}
    assert decision.decide(now, watch, [on_labels]).verdict == decision.HELD  # type: ignore[list-item]


def test_a_records_drift_read_back_is_the_drift_that_was_measured() -> None:
    column = drift.ColumnDrift("x1", "numeric", "wasserstein", 0.4, True, True, 0.3, 0.75, 900, 1e-9)
    other = drift.ColumnDrift(
        "c", "categorical", "jensenshannon", None, False, False, 0.1, 0.25, 3, None, "few"
    )
    made = drift.DriftResult(0.1, 1000, 900, [column, other], other, 0.5, 0.75, "importance", [column])
    back = drift.DriftResult.from_dict(json.loads(json.dumps(made.to_dict())))
    assert back == made and back.drifted == ["x1"]


def test_a_retrain_verdict_that_started_no_retrain_starts_no_cooldown() -> None:
    watch = MonitorParams(cooldown_unit="batches", cooldown=1, retrain_period=10, max_retrains=2)
    drifted = drift.DriftResult(0.9, 1000, 1000, [], None, 1.0, 1.0, "importance")
    now = decision.Evidence(True, [], 1000, 0, drifted, None, pd.Timestamp("2013-08-31"), 2)
    before = {
        "verdict": decision.RETRAIN,
        "seq": 1,
        "batch_id": "2013-07",
        "batch_time": "2013-07-31T23:00:00",
    }
    held = decision.decide(now, watch, [before])  # type: ignore[list-item]
    assert held.verdict == decision.HELD, held.reasons
    skipped = {**before, "retrain_skipped": "no labels in batch 2013-07 ...: nothing to retrain on"}
    assert decision.decide(now, watch, [skipped]).verdict == decision.RETRAIN  # type: ignore[list-item]


# --- the replay: `reproml simulate --labels late` on a user's dated CSV (slow) ---------------------


@pytest.fixture(scope="module")
def regression_loop(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Iterator[Project]:
    params = loop_params("data/raw/load.csv", "load", "regression", "load-late")
    yield _start(tmp_path_factory.mktemp("load-late"), prefect_api, "data/raw/load.csv", load_frame(), params)


@pytest.mark.slow  # a training flow per period (policy `always`): 323 s + 135 s setup measured (2 busy cores)
@pytest.mark.integration
def test_the_late_labels_replay_never_learns_a_periods_own_labels(regression_loop: Project) -> None:
    p = regression_loop
    done = p.run(
        "env", "COLUMNS=250", "reproml", "simulate", "--labels", "late", "--policies", "always", timeout=1500
    )
    assert "labels late" in done.stdout, done.stdout
    history = p.root / "monitoring" / "load-late"
    result = json.loads((history / "reports" / "simulation.json").read_text())
    assert result["labels"] == "late"
    rows = {r["batch"]: r for r in result["rows"]}
    assert list(rows) == ["2021-06", "2021-07", "2021-08"]
    for batch, row in rows.items():
        record = json.loads((history / "records" / f"{batch}.json").read_text())
        assert record["labels_withheld"] and record["realised"]["value"] is not None
        assert row["quality"] == pytest.approx(record["realised"]["value"])
        assert row["baseline"] is not None
        # judged without its labels: nothing newer than what the champion learned had arrived
        # (each window went to training when its labels came), so its own verdict retrained nothing
        assert any("nothing to retrain on" in r for r in row["reasons"]), row["reasons"]
        # ...then judged again when they came, and that verdict learned its window, after it was judged
        assert record["labels_decision"]["verdict"] in ("ok", "retrain", "retrain_held")
        assert record["labels_retrained"]["window"].endswith(f"_{batch}.parquet")
        assert row["retrained_on"] is not None and row["retrained_on"].endswith(f"_{batch}.parquet"), row
        learned = re.search(r"on labels: \w+ v(\d+)", row["retrain"])
        assert learned is not None and int(learned.group(1)) > record["champion"]["version"], row["retrain"]
    assert sum(r["retrains"] for r in rows.values()) == 3
