"""The pure parts of the monitor -> retrain loop: window sliding, params edits, labelled batches
joining the data, period arithmetic, the simulation page, and how command failures are classed."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import cast

import pandas as pd
import pytest
import yaml

from reproml import paths, retrain, simulation
from reproml.config import load_params
from reproml.data import labelled
from reproml.errors import ConfigError, DataValidationError
from reproml.monitoring import batches
from reproml.monitoring.records import BatchSummary
from reproml.orchestration.commands import CommandError, TransientError, run
from tests.conftest import REPO

D = dt.date


def test_the_window_slides_so_the_batch_is_the_test_split() -> None:
    current = retrain.Window(D(2013, 5, 1), D(2013, 6, 1), D(2013, 7, 1))
    july = retrain.slide(current, D(2013, 7, 1), D(2013, 8, 1))
    assert july == retrain.Window(D(2013, 6, 1), D(2013, 7, 1), D(2013, 8, 1))
    # calendar months, not 31 days: validation stays "one month" through February
    march = retrain.slide(
        retrain.Window(D(2013, 1, 1), D(2013, 2, 1), D(2013, 3, 1)), D(2013, 3, 1), D(2013, 4, 1)
    )
    assert march.train_end == D(2013, 2, 1)
    # a week after a monthly window: the validation span keeps its length in days
    week = retrain.slide(july, D(2013, 8, 5), D(2013, 8, 12))
    assert (week.valid_end, week.test_end) == (D(2013, 8, 5), D(2013, 8, 12))
    assert week.valid_end - week.train_end == july.valid_end - july.train_end


def test_a_batch_inside_the_window_is_refused() -> None:
    current = retrain.Window(D(2013, 5, 1), D(2013, 6, 1), D(2013, 7, 1))
    with pytest.raises(ConfigError, match=r"before prepare\.test_end 2013-07-01"):
        retrain.slide(current, D(2013, 6, 15), D(2013, 7, 15))


def test_batch_span_is_whole_days() -> None:
    times = pd.Series(pd.to_datetime(["2013-07-01 05:00", "2013-07-31 23:00"]))
    assert retrain.batch_span(times) == (D(2013, 7, 1), D(2013, 8, 1))
    with pytest.raises(ConfigError, match="no time values"):
        retrain.batch_span(pd.Series([], dtype="datetime64[ns]"))


def test_params_edit_keeps_comments_and_validates() -> None:
    text = (REPO / "params.yaml").read_text()
    window = retrain.Window(D(2013, 6, 1), D(2013, 7, 1), D(2013, 8, 1))
    new_text, params = retrain.edit_params(text, window, tune_trials=3)
    assert params.prepare.test_end == D(2013, 8, 1) and params.tune.n_trials == 3
    assert "# read by `ingest`" in new_text  # people's comments survive
    assert "study_name: null" in new_text  # and nulls stay written as null
    before, after = yaml.safe_load(text), yaml.safe_load(new_text)
    changed = {s for s in before if before[s] != after[s]}
    assert changed == {"prepare", "tune"}
    assert {k for k in before["tune"] if before["tune"][k] != after["tune"][k]} == {"n_trials"}


def test_a_refit_turns_tuning_off_and_trains_the_champions_values() -> None:
    run_params = {
        "train.model": "xgboost",
        "train.xgboost.max_depth": "7",
        "train.xgboost.learning_rate": "0.0612",
        "train.random_forest.max_depth": "3",
        "tune.n_trials": "40",
    }
    values = retrain.champion_values(run_params, "xgboost")
    assert values == {"max_depth": 7, "learning_rate": 0.0612}
    assert retrain.champion_values(run_params, "random_forest") == {}  # the champion is another model
    window = retrain.Window(D(2013, 6, 1), D(2013, 7, 1), D(2013, 8, 1))
    _, params = retrain.edit_params((REPO / "params.yaml").read_text(), window, 0, values)
    assert params.tune.enabled is False
    assert params.train.xgboost.max_depth == 7 and params.train.xgboost.learning_rate == 0.0612
    assert params.train.xgboost.subsample == load_params(REPO / "params.yaml").train.xgboost.subsample


def test_params_edit_refuses_a_random_split() -> None:
    text = (REPO / "params.yaml").read_text().replace("split: time ", "split: random")
    with pytest.raises(ConfigError, match="not `time`"):
        retrain.edit_params(text, retrain.Window(D(2013, 6, 1), D(2013, 7, 1), D(2013, 8, 1)), 3)


def _frame(start: str, hours: int, value: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "when": pd.date_range(start, periods=hours, freq="h"),
            "x": [value] * hours,
            "y": pd.Series([0, 1] * (hours // 2), dtype="int8"),
        }
    )


def test_a_labelled_batch_replaces_the_source_rows_of_its_span_and_appends_the_rest() -> None:
    source = _frame("2013-01-01", 48, 1.0)
    inside = _frame("2013-01-02", 10, 2.0)  # already in the source (the bundled replay)
    later = _frame("2013-01-05", 6, 3.0)  # new rows (a user's history plus the months since)
    out = labelled.append(source, [("a.parquet", inside), ("b.parquet", later)], "when", "y")
    assert out.rows_added == 16 and out.rows_replaced == 10
    assert len(out.frame) == 48 - 10 + 16
    assert out.frame["when"].is_monotonic_increasing
    assert (out.frame.loc[out.frame["when"].between("2013-01-02", "2013-01-02 09:00"), "x"] == 2.0).all()
    assert out.frame["y"].dtype == source["y"].dtype


def test_a_labelled_batch_missing_a_column_is_refused_by_name(tmp_path: Path) -> None:
    bad = _frame("2013-01-02", 4, 2.0).drop(columns="x")
    with pytest.raises(DataValidationError, match=r"b.parquet: labelled batch lacks columns \['x'\]"):
        labelled.append(_frame("2013-01-01", 8, 1.0), [("b.parquet", bad)], "when", "y")
    assert labelled.read_batches(tmp_path / "absent") == []
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(DataValidationError, match=r"broken\.parquet: cannot read"):
        labelled.read_batches(tmp_path)


def test_periods_and_the_next_batch() -> None:
    assert [p.label for p in batches.periods("2013-07", "2013-12", "month")] == [
        "2013-07", "2013-08", "2013-09", "2013-10", "2013-11", "2013-12",
    ]  # fmt: skip
    weeks = batches.periods("2013-W27", "2013-W30", "week")
    assert [p.label for p in weeks] == ["2013-W27", "2013-W28", "2013-W29", "2013-W30"]
    first, last = pd.Timestamp("2013-07-01 05:00"), pd.Timestamp("2013-12-31 23:00")
    assert batches.next_period(None, first, last, "month") == "2013-07"
    assert batches.next_period(pd.Timestamp("2013-07-31 23:00"), first, last, "month") == "2013-08"
    assert batches.next_period(last, first, last, "month") is None
    assert batches.next_period(pd.Timestamp("2013-07-07 20:00"), first, last, "week") == "2013-W28"
    with pytest.raises(batches.BatchError, match="'month' or 'week'"):
        batches.period_label(first, "day")


def test_the_workspace_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reproml.stores.mlflow import connection

    monkeypatch.delenv(paths.WORKSPACE_ENV, raising=False)
    assert paths.workspace(tmp_path / "tree") == tmp_path / "tree"
    monkeypatch.setenv(paths.WORKSPACE_ENV, str(tmp_path / "home"))
    assert paths.workspace(tmp_path / "tree") == tmp_path / "home"
    assert (
        connection.tracking_uri(tmp_path / "tree")
        == f"sqlite:///{(tmp_path / 'home' / 'mlflow.db').resolve()}"
    )


def test_the_simulation_page_has_the_plot_and_every_batch(tmp_path: Path) -> None:
    outcome: BatchSummary = {
        "batch": "2013-07",
        "rows": 28000,
        "weighted_drift_share": 0.45,
        "drift_share": 0.6,
        "quality": 0.70,
        "metric": "roc_auc",
        "verdict": "retrain",
        "reasons": ["weighted feature drift 0.45 >= 0.4"],
        "champion": {"name": "m", "version": 1, "run_id": "r", "uri": "models:/m@champion"},
        "retrain": cast(  # only the parts `row` reads
            retrain.TrainingSummary,
            {
                "promotion": {"action": "promote"},
                "challenger": {"version": 2},
                "added": {"md5": "0123456789abcdef.dir"},
            },
        ),
    }
    rows = [
        simulation.row(outcome, 0.69, 2),
        simulation.row({**outcome, "batch": "2013-08", "verdict": "ok", "retrain": None}, float("nan"), 2),
    ]
    assert rows[0]["retrain"] == "promote v2" and rows[0]["data_version"] == "0123456789"
    assert rows[1]["baseline"] is None and rows[1]["retrain"] == "-"
    page = simulation.write(tmp_path, rows, "roc_auc", 1, "replay")
    text = page.read_text()
    assert "<svg" in text and "never retrained (v1)" in text
    assert text.count("<tr>") == 3 and "2013-08" in text and "0.6900" in text
    assert (tmp_path / simulation.JSON_NAME).is_file()


def test_busy_locks_are_transient_and_other_failures_are_not(tmp_path: Path) -> None:
    with pytest.raises(TransientError, match="database is locked"):
        run([sys.executable, "-c", "print('database is locked'); raise SystemExit(1)"], tmp_path, quiet=True)
    with pytest.raises(CommandError) as failure:
        run([sys.executable, "-c", "raise SystemExit('bad params')"], tmp_path, quiet=True)
    assert not isinstance(failure.value, TransientError)
    assert "bad params" in str(failure.value)
    assert run([sys.executable, "-c", "print('fine')"], tmp_path, quiet=True).strip() == "fine"


def test_the_committed_params_have_a_retrain_section() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.retrain.branch == "reproml/flights-late/retrain" and params.retrain.tune_trials >= 0
