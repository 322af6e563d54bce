"""`reproml monitor` end to end: a real champion in a real MLflow store, real Evidently runs.

One champion is trained per module (tests/test_registry.py's tiny project: the target follows `x1`
and `cat == 'a'`; `x2` is noise the model learns to ignore) and every test monitors batches in its
own copy of that project. Batches are fresh draws of the same generator, dated after the test
split; a "shift" moves a column by two of its training standard deviations.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from reproml import registry
from reproml.cli import app
from reproml.errors import ReproError
from reproml.monitoring import store
from reproml.stages.monitor import run_monitor
from reproml.stages.register import run_promote
from reproml.stores.mlflow import connection
from tests.conftest import open_in_chromium, tiny_frame
from tests.test_registry import NAME, pipeline, project_params

pytestmark = pytest.mark.integration
MONITORING_EXPERIMENT = "reproml-monitoring"


def monitored_params() -> dict[str, Any]:
    params = project_params()
    params["monitor"].update({"min_rows": 200, "bootstrap_samples": 200})
    return params


@pytest.fixture(scope="module")
def champion_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project whose champion is v1, trained on tiny_frame(2000, seed=1)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("monitoring") / "project"
        (root / "data" / "raw").mkdir(parents=True)
        (root / "params.yaml").write_text(yaml.safe_dump(monitored_params(), sort_keys=False))
        tiny_frame(2000, seed=1).to_parquet(root / "data" / "raw" / "frame.parquet", index=False)
        pipeline(root)
        assert run_promote(root)["action"] == "promote"
        yield root


@pytest.fixture
def project(champion_project: Path, tmp_path: Path) -> Path:
    """This test's own copy: its records, cooldown and MLflow runs start empty."""
    return Path(shutil.copytree(champion_project, tmp_path / "project"))


def batch(
    rows: int = 1000, seed: int = 10, day: int = 0, labelled: bool = True, **shift: float
) -> pd.DataFrame:
    """A fresh draw of the champion's data, one batch per day from 2022-07-01 (after the test split)."""
    frame = tiny_frame(rows, seed=seed)
    frame["when"] = pd.date_range(
        pd.Timestamp("2022-07-01") + pd.Timedelta(days=day), periods=rows, freq="min"
    )
    for column, sds in shift.items():
        frame[column] = frame[column] + sds * float(tiny_frame(2000, seed=1)[column].std())
    return frame if labelled else frame.drop(columns=["y"])


def monitor(root: Path, frame: pd.DataFrame, name: str, suffix: str = ".parquet") -> dict[str, Any]:
    """The batch's record, loosely typed: the assertions index deep into its optional parts."""
    path = root / "incoming" / f"{name}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return cast(dict[str, Any], run_monitor(root, f"incoming/{name}{suffix}"))


def mlflow_run(record: dict[str, Any]) -> Any:
    return MlflowClient().get_run(record["mlflow"]["run_id"])


def champion_run_id() -> str:
    version = registry.alias_version(NAME, "champion")
    assert version is not None and version.run_id is not None
    return str(version.run_id)


def test_a_batch_like_training_is_ok_and_leaves_every_output(project: Path) -> None:
    record = monitor(project, batch(), "same")
    assert record["verdict"] == "ok", record["reasons"]
    assert record["drift"]["weighted_drift_share"] < 0.4
    assert record["quality"]["metric"] == "roc_auc" and record["quality"]["drop"] < 0.05
    # the reference is the champion's own training split, by the md5 recorded on its run
    run_id = champion_run_id()
    tags = MlflowClient().get_run(run_id).data.tags
    assert record["reference"]["train"]["md5"] == tags["reproml.data.data/prepared/train.parquet"]
    learned = record["champion"].pop("learned")
    assert record["champion"] == {
        "name": NAME,
        "version": 1,
        "run_id": run_id,
        "uri": f"models:/{NAME}@champion",
        # the cut its predict applies, chosen on its validation split: monitoring's F1 uses it
        "threshold": MlflowClient().get_run(run_id).data.metrics["threshold"],
    }
    # what it learned: its train split, by md5; drift is measured against the newest 60 days of it
    assert learned["kind"] == "train split" and learned["rows"] == record["reference"]["train"]["rows"]
    assert learned["splits"] == {"data/prepared/train.parquet": record["reference"]["train"]["md5"]}
    window = record["reference"]["drift_window"]
    assert window["days"] == 60 and window["last"] == learned["last"] and window["rows"] < learned["rows"]
    predictions = pd.read_parquet(project / record["predictions"])
    assert len(predictions) == 1000 and predictions["prediction"].between(0, 1).all()
    for report in ("drift", "quality"):
        html = (project / record["reports"][report]).read_text()
        assert html.lstrip().startswith("<!DOCTYPE html>") and len(html) > 100_000  # self-contained
    index = (project / store.index(NAME)).read_text()
    assert record["batch_id"] in index and "<svg" in index
    assert json.loads((project / store.record_path(NAME, record["batch_id"])).read_text())["verdict"] == "ok"
    # the promotion gate now evaluates on this labelled window too
    assert record["labelled"] in registry.eval_data(project, NAME).sources
    run = mlflow_run(record)
    assert run.info.status == "FINISHED"
    assert MlflowClient().get_experiment(run.info.experiment_id).name == MONITORING_EXPERIMENT
    assert run.data.tags["reproml.verdict"] == "ok"
    assert run.data.tags["reproml.champion_version"] == "1"
    assert run.data.tags["reproml.batch_id"] == record["batch_id"]
    assert run.data.metrics["rows"] == 1000
    artifacts = {
        a.path
        for folder in ("record", "reports")
        for a in MlflowClient().list_artifacts(run.info.run_id, folder)
    }
    assert {f"record/{record['batch_id']}.json", "reports/drift.html", "reports/quality.html"} <= artifacts


def test_a_shift_in_an_important_feature_triggers_retrain(project: Path) -> None:
    record = monitor(project, batch(labelled=False, x1=2.0), "x1-shifted")
    assert record["verdict"] == "retrain", record["reasons"]
    # no labels: quality is judged on the estimate (tests/test_estimate.py), drift fired regardless
    assert record["decision"]["triggers"]["feature_drift"] is True
    assert set(record["decision"]["triggers"]) == {"feature_drift", "estimated_quality_drop"}
    assert "x1" in record["drift"]["drifted"]
    assert record["drift"]["weighted_drift_share"] >= record["decision"]["thresholds"]["drift_threshold"]
    assert record["quality"] is None and "no labels" in record["reasons"][-1]


def test_the_same_shift_in_an_unimportant_feature_does_not(project: Path) -> None:
    record = monitor(project, batch(labelled=False, x2=2.0), "x2-shifted")
    assert record["verdict"] == "ok", record["reasons"]
    assert record["drift"]["drifted"] == ["x2"]  # Evidently sees it...
    x2 = next(c for c in record["drift"]["columns"] if c["column"] == "x2")
    assert x2["score"] > 1.0 and x2["weight"] < 0.1  # ...but the champion barely uses x2
    assert record["drift"]["drift_share"] > 0 and record["drift"]["weighted_drift_share"] < 0.1


def test_a_quality_drop_triggers_retrain(project: Path) -> None:
    frame = batch(seed=11)
    flip = np.random.default_rng(0).random(len(frame)) < 0.35
    frame.loc[flip, "y"] = 1 - frame.loc[flip, "y"]  # the world changed: x1 predicts late less well
    record = monitor(project, frame, "labels-changed")
    assert record["verdict"] == "retrain", record["reasons"]
    assert record["decision"]["triggers"] == {"feature_drift": False, "quality_drop": True}
    low, _ = record["quality"]["interval"]
    assert record["quality"]["drop"] > 0.1 and low > 0
    assert record["quality"]["evidently"]["RocAuc"] == pytest.approx(
        record["quality"]["batch_value"], abs=1e-6
    )


def _strings_in_x1(frame: pd.DataFrame) -> pd.DataFrame:
    """A decimal comma in a third of the rows, as a spreadsheet export in another locale writes it."""
    return frame.assign(x1=frame["x1"].astype(object).where(frame.index % 3 != 0, "1,5"))


@pytest.mark.parametrize(
    ("name", "change", "suffix", "expected"),
    [
        ("empty", lambda f: f.iloc[:0], ".csv", "the batch has no rows"),
        ("all-missing", lambda f: f.assign(x1=np.nan), ".parquet", "column 'x1': all values are missing"),
        ("strings", _strings_in_x1, ".csv", "column 'x1' is numeric but holds strings such as ['1,5']"),
        ("no-x2", lambda f: f.drop(columns=["x2"]), ".parquet", "columns ['x2'] are missing"),
        (
            "mostly-missing",
            lambda f: f.assign(x1=f["x1"].where(f.index % 10 == 0)),
            ".parquet",
            "column 'x1': 90.0% of values are missing",
        ),
    ],
)
def test_a_broken_batch_is_quarantined_with_its_reason(
    project: Path, name: str, change: Any, suffix: str, expected: str
) -> None:
    record = monitor(project, change(batch()), name, suffix)
    assert record["verdict"] == "quarantined"
    assert any(expected in reason for reason in record["reasons"]), record["reasons"]
    assert record["drift"] is None and record["quality"] is None and record["predictions"] is None
    kept = project / record["quarantine"]["batch"]
    assert kept.is_file() and kept.suffix == suffix
    reason = json.loads((project / record["quarantine"]["reason"]).read_text())
    assert any(expected in p for p in reason["problems"])
    assert not (project / store.labelled(NAME)).exists()  # never used for retraining
    assert mlflow_run(record).data.tags["reproml.verdict"] == "quarantined"
    assert "quarantined" in (project / store.index(NAME)).read_text()


def test_thirty_rows_are_insufficient_data_not_drift(project: Path) -> None:
    record = monitor(project, batch(rows=30, x1=2.0), "thirty")
    assert record["verdict"] == "insufficient_data"
    assert "30 rows < monitor.min_rows 200" in record["reasons"][0]
    assert record["drift"] is None and record["reports"] == {}
    assert len(pd.read_parquet(project / record["predictions"])) == 30  # still scored and stored
    assert record["labelled"] is None


def test_the_reference_follows_the_champion(project: Path) -> None:
    first = monitor(project, batch(), "before")
    pipeline(project, **{"prepare.train_end": "2021-08-01"})  # another training split: another md5
    run_promote(project, version=2, reason="test: a new champion")
    second = monitor(project, batch(), "after")
    assert second["champion"]["version"] == 2
    assert second["reference"]["train"]["md5"] != first["reference"]["train"]["md5"]
    tags = MlflowClient().get_run(champion_run_id()).data.tags
    assert second["reference"]["train"]["md5"] == tags["reproml.data.data/prepared/train.parquet"]
    assert second["reference"]["train"]["rows"] < first["reference"]["train"]["rows"]


def test_the_reference_profile_is_computed_once_per_champion_and_changes_no_number(project: Path) -> None:
    first = monitor(project, batch(), "one")
    kept = project / store.home(NAME) / "reference" / first["reference"]["profile"]["key"]
    assert first["reference"]["profile"]["computed"] and (kept / "profile.json").is_file()
    assert first["reference"]["profile"]["key"].startswith(champion_run_id())

    def numbers(record: dict[str, Any]) -> Any:
        q = record["quality"]
        return record["drift"]["columns"], record["drift"]["prediction"], q["reference_value"], q["interval"]

    again = monitor(project, batch(), "two")  # the same rows: read back, the same numbers
    assert again["reference"]["profile"] == {"key": first["reference"]["profile"]["key"], "computed": False}
    assert numbers(again) == numbers(first) and again["reference"] == {
        **first["reference"],
        "profile": again["reference"]["profile"],
    }
    (kept / "drift_reference.parquet").write_bytes(b"not the profile")  # altered: computed again
    third = monitor(project, batch(), "three")
    assert third["reference"]["profile"]["computed"] and numbers(third) == numbers(first)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["monitor"]["reference_days"] = 30  # another drift window: a profile of its own
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fourth = monitor(project, batch(), "four")
    assert fourth["reference"]["profile"]["computed"]
    assert fourth["reference"]["profile"]["key"] != first["reference"]["profile"]["key"]
    assert fourth["reference"]["drift_window"]["rows"] < first["reference"]["drift_window"]["rows"]


def test_no_champion_is_a_clear_error(project: Path) -> None:
    connection.setup(project, "reproml")
    MlflowClient().delete_registered_model_alias(NAME, "champion")
    with pytest.raises(ReproError, match=f"model '{NAME}' has no 'champion' version"):
        monitor(project, batch(), "orphan")


def test_cli_prints_the_verdict_and_lists_batches(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    # the CLI points TMPDIR inside the project (reproml.env.keep_inside): undo that after the test
    monkeypatch.setenv("TMPDIR", os.environ.get("TMPDIR", tempfile.gettempdir()))
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    runner = CliRunner()
    missing = runner.invoke(app, ["monitor", "--batch", "2013-02-30"])
    assert missing.exit_code == 2 and "reproml monitor failed" in missing.output
    assert "Traceback" not in missing.output
    batch(rows=30).to_csv(project / "data" / "small.csv", index=False)  # files only from data/
    done = runner.invoke(app, ["monitor", "--batch", "data/small.csv"])
    assert done.exit_code == 0, done.output
    assert "insufficient_data" in done.output and f"monitoring/{NAME}/records/small-" in done.output
    listed = runner.invoke(app, ["monitoring"])
    assert listed.exit_code == 0 and "small-" in listed.output and "insufficient_data" in listed.output


@pytest.mark.slow
def test_the_cooldown_holds_against_ten_drifted_batches_in_a_row(project: Path) -> None:
    verdicts = [
        monitor(project, batch(seed=100 + day, day=day, labelled=False, x1=2.0), f"day-{day}")["verdict"]
        for day in range(10)
    ]
    assert verdicts == ["retrain"] + ["retrain_held"] * 9
    last = json.loads((project / store.records(NAME)).glob("day-9-*.json").__next__().read_text())
    assert "held by the cooldown" in last["reasons"][-1]
    assert last["decision"]["loop_guard"]["last_retrain_batch"].startswith("day-0-")


@pytest.mark.slow
def test_same_distribution_batches_raise_no_false_alarm(project: Path) -> None:
    """20 fresh draws of the training distribution, each a day apart: no retrain verdict at all."""
    records = [monitor(project, batch(seed=200 + i, day=i), f"draw-{i}") for i in range(20)]
    verdicts = [r["verdict"] for r in records]
    assert verdicts.count("ok") == 20, [
        (r["batch_id"], r["reasons"]) for r in records if r["verdict"] != "ok"
    ]


# --- the pages in a real browser -----------------------------------------------------------------


def not_blank(png: Path) -> bool:
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
    return bool(pixels.std() > 10 and (pixels < 128).mean() > 0.005)


def test_index_and_drift_report_render_in_chromium_without_console_errors(
    project: Path, tmp_path: Path, chromium: str
) -> None:
    monitor(project, batch(), "same")
    record = monitor(project, batch(labelled=False, x1=2.0), "shifted")
    for page in (project / store.index(NAME), project / record["reports"]["drift"]):
        shot = tmp_path / f"{page.parent.name}-{page.stem}.png"
        opened = open_in_chromium(chromium, page, screenshot=shot)
        assert opened.console == [], f"console messages from {page}"
        assert not_blank(shot), f"{page} rendered blank"
