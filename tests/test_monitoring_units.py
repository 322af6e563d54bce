"""Monitoring's pure parts on tiny frames: batch periods, the quality gate, the decision and its loop
guard, the quality interval, the index page. No MLflow, no Evidently: these run in about a second."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from reproml.config import MonitorParams
from reproml.errors import ReproError
from reproml.io import file_md5
from reproml.metrics import metric_spec
from reproml.monitoring import batches, champion, concept, decision, quality, reports, store
from reproml.monitoring.drift import ColumnDrift, DriftResult, bucket, reference_levels
from reproml.monitoring.records import BatchRecord, DriftRecord, QualityChangeRecord

# --- batches -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "start", "end", "batch_id"),
    [
        ("2013-08", "2013-08-01", "2013-09-01", "2013-08"),
        ("2013-12", "2013-12-01", "2014-01-01", "2013-12"),
        ("2013-W33", "2013-08-12", "2013-08-19", "2013-W33"),
        ("2013-08-05", "2013-08-05", "2013-08-06", "2013-08-05"),
        ("2013-08-01..2013-08-14", "2013-08-01", "2013-08-15", "2013-08-01_2013-08-14"),
    ],
)
def test_periods(spec: str, start: str, end: str, batch_id: str) -> None:
    period = batches.parse_period(spec)
    assert period is not None
    assert (period.start, period.end) == (pd.Timestamp(start), pd.Timestamp(end))
    assert period.batch_id == batch_id


@pytest.mark.parametrize("spec", ["2013-13", "2013-W60", "2013-08-14..2013-08-01", "2013-02-30"])
def test_impossible_periods_say_why(spec: str) -> None:
    with pytest.raises(ReproError, match=spec.replace(".", r"\.")):
        batches.parse_period(spec)


def test_neither_file_nor_period(tmp_path: Path) -> None:
    with pytest.raises(ReproError, match=r"neither a file .* nor a period \(YYYY-MM"):
        batches.resolve(tmp_path, "august.csv", "when")


def production(root: Path) -> None:
    frame = pd.DataFrame(
        {"when": pd.date_range("2013-07-01", "2013-08-31 23:00", freq="h"), "x": 1.0, "y": 0}
    )
    (root / "data" / "prepared").mkdir(parents=True)
    frame.to_parquet(root / batches.PRODUCTION, index=False)


def test_period_of_the_production_split(tmp_path: Path) -> None:
    production(tmp_path)
    batch = batches.resolve(tmp_path, "2013-W31", "when")
    assert batch.id == "2013-W31"
    assert len(batch.frame) == 7 * 24
    assert batch.frame["when"].min() == pd.Timestamp("2013-07-29")
    assert "production.parquet [2013-W31]" in batch.source
    with pytest.raises(
        ReproError, match=r"outside data/prepared/production\.parquet, which covers 2013-07-01"
    ):
        batches.resolve(tmp_path, "2013-02", "when")


def test_file_batches_are_named_by_stem_and_content(tmp_path: Path) -> None:
    path = tmp_path / "week one.csv"
    pd.DataFrame({"x": [1, 2]}).to_csv(path, index=False)
    batch = batches.resolve(tmp_path, "week one.csv", "when")
    assert batch.id == f"week-one-{file_md5(path)[:8]}"
    assert batch.read_error is None and len(batch.frame) == 2
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    unreadable = batches.resolve(tmp_path, str(broken), "when")
    assert unreadable.frame.empty and "broken.parquet could not be read" in str(unreadable.read_error)
    with pytest.raises(ReproError, match=r"expected a \.csv or \.parquet file"):
        (tmp_path / "x.json").write_text("{}")
        batches.resolve(tmp_path, "x.json", "when")


# --- the quality gate ----------------------------------------------------------------------------

SCHEMA = quality.Schema(["x1", "x2", "gust"], ["cat"], "when", "y", "classification")
LIMITS = MonitorParams(max_missing_share=0.5, max_inf_share=0.0, max_unseen_category_share=0.2)


def reference_frame(rows: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    gust = rng.normal(size=rows)
    gust[: int(rows * 0.8)] = np.nan  # mostly missing in training, like wind_gust
    return pd.DataFrame(
        {
            "x1": rng.normal(size=rows),
            "x2": rng.uniform(size=rows),
            "gust": gust,
            "cat": rng.choice(["a", "b", "c"], size=rows),
            "when": pd.date_range("2021-01-01", periods=rows, freq="h"),
            "y": rng.integers(0, 2, size=rows),
        }
    )


def gate(frame: pd.DataFrame, **limits: Any) -> quality.QualityResult:
    params = LIMITS.model_copy(update=limits)
    return quality.check(frame, reference_frame(), SCHEMA, params)


def test_a_clean_batch_passes_and_is_typed() -> None:
    frame = reference_frame(100).astype({"x1": str})  # numbers that arrived as text still parse
    result = gate(frame)
    assert result.passed, result.problems
    assert result.frame["x1"].dtype == "float64"
    assert result.labelled_rows == 100
    assert result.columns["gust"]["reference_missing_share"] == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda f: f.iloc[:0], "no rows"),
        (lambda f: f.drop(columns=["x2"]), r"columns \['x2'\] are missing"),
        (lambda f: f.assign(x1=np.nan), "column 'x1': all values are missing"),
        (
            lambda f: f.assign(x1=f["x1"].where(f.index % 10 == 0)),
            r"column 'x1': 90\.0% of values are missing",
        ),
        (
            lambda f: f.assign(x2=f["x2"].astype(object).where(f.index % 2 == 0, "n/a")),
            r"column 'x2' is numeric but holds strings such as \['n/a'\]",
        ),
        (
            lambda f: f.assign(x1=f["x1"].where(f.index != 3, np.inf)),
            "column 'x1': 1.0% of values are infinite",
        ),
        (lambda f: f.assign(cat="zzz"), r"column 'cat': 100\.0% of rows hold categories never seen"),
        (lambda f: f.assign(when="not a date"), "time column 'when' holds values that are not dates"),
        (lambda f: f.assign(y=2), r"target 'y' holds \[2\]"),
    ],
)
def test_each_broken_batch_is_refused_with_the_column_named(change: Any, expected: str) -> None:
    result = gate(change(reference_frame(100)))
    assert not result.passed
    assert any(re.search(expected, p) for p in result.problems), result.problems


def test_a_feature_mostly_missing_in_training_may_be_missing_entirely() -> None:
    """wind_gust is missing in most hours; a calm week with no gust at all is not broken data."""
    assert gate(reference_frame(100).assign(gust=np.nan)).passed


def test_unlabelled_rows_are_fine() -> None:
    result = gate(reference_frame(100).assign(y=np.nan))
    assert result.passed and result.labelled_rows == 0


# --- drift helpers -------------------------------------------------------------------------------


def test_rare_categories_are_pooled_as_the_model_sees_them() -> None:
    reference = pd.Series(["a"] * 5 + ["b"] * 3 + ["c"] + ["d"])
    levels = reference_levels(reference, 3)
    assert levels.kept == {"a", "b"} and levels.pooled == {"c", "d"}
    grouped = bucket(pd.Series(["a", "c", None, "new"]), levels)
    assert grouped.tolist() == ["a", "(other)", None, "(unseen)"]  # never seen: missing to the model
    assert reference_levels(reference, 4).pooled == set()  # no more values than max_categories


# --- the quality change --------------------------------------------------------------------------


def scores_for(y: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(scale=noise, size=len(y)))))


def test_quality_change_sees_a_real_drop_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    y_ref, y_same, y_bad = (rng.integers(0, 2, size=3000) for _ in range(3))
    spec = metric_spec(None, "classification")
    same = concept.quality_change(
        spec, y_ref, scores_for(y_ref, 1.0, 1), y_same, scores_for(y_same, 1.0, 2), 200, 0.95, 0
    )
    low, high = same.interval
    assert low < 0 < high
    worse = concept.quality_change(
        spec, y_ref, scores_for(y_ref, 1.0, 1), y_bad, scores_for(y_bad, 3.0, 3), 200, 0.95, 0
    )
    assert worse.drop > 0.1 and worse.interval[0] > 0
    b_low, b_high = worse.batch_interval
    assert b_low < worse.batch_value < b_high


def test_quality_change_of_a_one_class_batch_is_undefined() -> None:
    y = np.array([0, 1] * 50)
    change = concept.quality_change(
        metric_spec(None, "classification"),
        y,
        scores_for(y, 1, 0),
        np.ones(50),
        np.full(50, 0.7),
        100,
        0.95,
        0,
    )
    assert math.isnan(change.drop) and all(math.isnan(v) for v in change.interval)


def test_rmse_drop_is_positive_when_errors_grow() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=2000)
    change = concept.quality_change(
        metric_spec(None, "regression"), y, y + rng.normal(scale=0.1, size=2000),
        y, y + rng.normal(scale=1.0, size=2000), 100, 0.95, 0,
    )  # fmt: skip
    assert change.metric == "rmse" and not change.higher_is_better
    assert change.drop > 0.5 and change.interval[0] > 0


# --- the decision --------------------------------------------------------------------------------

WATCH = MonitorParams(min_rows=100, drift_threshold=0.4, quality_margin=0.02, cooldown=28, max_retrains=2,
                      retrain_period=90)  # fmt: skip


def drift_result(weighted: float) -> DriftResult:
    column = ColumnDrift("x1", "numeric", "wasserstein", 0.5, weighted > 0, True, 0.1, weighted, 500)
    return DriftResult(0.1, 1000, 500, [column], None, float(weighted > 0), weighted, "importance")


def change(drop: float, low: float, high: float) -> concept.QualityChange:
    return concept.QualityChange(
        "roc_auc", True, 0.8, 0.8 - drop, drop, (low, high), (0.7, 0.8), 0.95, 200, 1000, 500
    )


def evidence(weighted: float = 0.0, quality: concept.QualityChange | None = None, day: str = "2013-08-01",
             seq: int = 1, rows: int = 500) -> decision.Evidence:  # fmt: skip
    return decision.Evidence(True, [], rows, 500 if quality else 0, drift_result(weighted), quality,
                             pd.Timestamp(day), seq)  # fmt: skip


def test_verdicts_in_order() -> None:
    broken = decision.Evidence(False, ["column 'x1': all values are missing"], 500, 0)
    quarantined = decision.decide(broken, WATCH, [])
    assert quarantined.verdict == decision.QUARANTINED
    assert quarantined.summary == "quality gate: column 'x1': all values are missing"
    assert decision.decide(evidence(rows=30), WATCH, []).verdict == decision.INSUFFICIENT
    quiet = decision.decide(evidence(0.1), WATCH, [])
    assert quiet.verdict == decision.OK and quiet.summary == "no trigger: weighted feature drift 0.100 < 0.4"
    assert decision.decide(evidence(0.5), WATCH, []).verdict == decision.RETRAIN
    assert decision.decide(evidence(quality=change(0.05, 0.03, 0.07)), WATCH, []).verdict == decision.RETRAIN


def test_quality_drop_needs_margin_and_an_interval_clear_of_zero() -> None:
    within = decision.decide(evidence(quality=change(0.015, 0.01, 0.02)), WATCH, [])
    assert within.verdict == decision.OK and "within monitor.quality_margin" in within.reasons[-1]
    unsure = decision.decide(evidence(quality=change(0.05, -0.01, 0.1)), WATCH, [])
    assert unsure.verdict == decision.OK and "interval includes 0" in unsure.reasons[-1]
    gain = decision.decide(evidence(quality=change(-0.05, -0.07, -0.03)), WATCH, [])
    assert gain.verdict == decision.OK


def test_the_record_holds_every_threshold() -> None:
    made = decision.decide(evidence(0.5), WATCH, [])
    assert made.thresholds == WATCH.model_dump(mode="json")
    assert made.triggers == {"feature_drift": True}


def past(verdict: str, day: str, seq: int, batch_id: str = "b") -> BatchRecord:
    return {"verdict": verdict, "batch_time": f"{day}T00:00:00", "seq": seq, "batch_id": batch_id}


def test_cooldown_in_batch_days_not_wall_time() -> None:
    history = [past(decision.RETRAIN, "2013-08-01", 1, "first")]
    held = decision.decide(evidence(0.5, day="2013-08-20", seq=2), WATCH, history)
    assert held.verdict == decision.HELD
    assert "cooldown: batch first got a retrain verdict 19 days earlier" in held.reasons[-1]
    assert held.summary == "weighted feature drift 0.500 >= 0.4; held by the cooldown"
    assert decision.decide(evidence(0.5, day="2013-08-29", seq=2), WATCH, history).verdict == decision.RETRAIN
    # a batch from before the last retrain (replayed out of order) is not held by a future verdict
    assert decision.decide(evidence(0.5, day="2013-07-01", seq=2), WATCH, history).verdict == decision.RETRAIN


def test_max_retrains_per_period() -> None:
    history = [past(decision.RETRAIN, "2013-07-01", 1), past(decision.RETRAIN, "2013-08-01", 2)]
    held = decision.decide(evidence(0.5, day="2013-09-15", seq=3), WATCH, history)
    assert (
        held.verdict == decision.HELD
        and "retrain limit: 2 retrain verdicts within 90 days" in held.reasons[-1]
    )
    assert decision.decide(evidence(0.5, day="2013-10-15", seq=3), WATCH, history).verdict == decision.RETRAIN


def test_held_verdicts_do_not_restart_the_cooldown_and_batches_count_in_batches() -> None:
    watch = WATCH.model_copy(update={"cooldown_unit": "batches", "cooldown": 3, "retrain_period": 10})
    history = [past(decision.RETRAIN, "2013-08-01", 1)] + [
        past(decision.HELD, "2013-08-02", s) for s in (2, 3)
    ]
    assert decision.decide(evidence(0.5, seq=4), watch, history).verdict == decision.HELD  # 2 between
    assert decision.decide(evidence(0.5, seq=5), watch, history).verdict == decision.RETRAIN  # 3 between


def test_ten_drifted_batches_in_a_row_give_one_retrain() -> None:
    history: list[BatchRecord] = []
    for day in range(10):
        made = decision.decide(evidence(0.9, day=f"2013-08-{day + 1:02d}", seq=day + 1), WATCH, history)
        history.append({**past(made.verdict, f"2013-08-{day + 1:02d}", day + 1)})
    assert [r["verdict"] for r in history] == [decision.RETRAIN] + [decision.HELD] * 9


# --- store and index -----------------------------------------------------------------------------


def test_labelled_windows_sort_by_batch_time_for_the_promotion_gate() -> None:
    names = [
        store.labelled_path("m", "zeta-file", pd.Timestamp("2013-07-31 23:00")).name,
        store.labelled_path("m", "2013-08", pd.Timestamp("2013-08-31 23:00")).name,
        store.labelled_path("m", "2013-W32", pd.Timestamp("2013-08-11 23:00")).name,
    ]
    assert sorted(names)[-1] == names[1]


def record(batch_id: str, verdict: str, seq: int, value: float | None) -> BatchRecord:
    quality_part: QualityChangeRecord | None = None
    if value is not None:
        quality_part = {
            "metric": "roc_auc",
            "higher_is_better": True,
            "batch_value": value,
            "reference_value": 0.74,
            "drop": 0.74 - value,
            "interval": [0.01, 0.05],
            "batch_interval": [value - 0.01, value + 0.01],
            "confidence": 0.95,
            "samples": 500,
            "reference_rows": 100,
            "batch_rows": 100,
            "evidently": {},
            "batch_metrics": {},
            "per_class": {},
            "note": None,
        }
    shares: DriftRecord = {
        "effect_floor": 0.1,
        "reference_rows": 100,
        "batch_rows": 100,
        "columns": [],
        "prediction": None,
        "drift_share": 0.5,
        "weighted_drift_share": 0.25,
        "weighting": "importance",
        "probabilities": [],
        "methods": {"numeric": "wasserstein", "categorical": "jensenshannon"},
        "drifted": [],
    }
    return {
        "batch_id": batch_id,
        "seq": seq,
        "verdict": verdict,
        "rows": 100,
        "batch_time": f"2013-0{seq + 6}-28T00:00:00",
        "batch_start": f"2013-0{seq + 6}-01T00:00:00",
        "champion": {
            "name": "flights-late",
            "version": 1,
            "run_id": "r",
            "uri": "models:/flights-late@champion",
        },
        "reasons": ["because <b>"],
        "drift": shares,
        "quality": quality_part,
        "reports": {"drift": f"monitoring/flights-late/reports/{batch_id}/drift.html"},
        "decision": {
            "verdict": verdict,
            "summary": "",
            "reasons": ["because <b>"],
            "triggers": {},
            "thresholds": {"quality_margin": 0.02},
            "loop_guard": {},
        },
    }


def test_index_lists_every_batch_escaped_with_links_and_a_plot() -> None:
    page = reports.index_html(
        "flights-late",
        [
            record("2013-08", "retrain", 2, 0.70),
            record("2013-07", "ok", 1, 0.73),
            record("q", "quarantined", 3, None),
        ],
    )
    assert page.index("2013-07") < page.index("2013-08")  # batch time order
    assert '<a href="2013-08/drift.html">drift</a>' in page
    assert 'href="../records/2013-08.json"' in page
    assert "because &lt;b&gt;" in page and "because <b>" not in page
    assert page.count("<circle") == 2 and "<script" not in page


def test_index_without_labels_says_so() -> None:
    page = reports.index_html("flights-late", [record("x", "ok", 1, None)])
    assert "No labelled or estimated batch yet" in page


# --- the reference data --------------------------------------------------------------------------


def test_the_reference_comes_from_the_cache_or_an_unchanged_working_file(tmp_path: Path) -> None:
    split = tmp_path / "data" / "prepared" / "train.parquet"
    split.parent.mkdir(parents=True)
    pd.DataFrame({"x": [1.0, 2.0]}).to_parquet(split)
    md5 = file_md5(split)
    assert champion.load_split(tmp_path, "data/prepared/train.parquet", md5, "v1")["x"].tolist() == [1.0, 2.0]
    cached = tmp_path / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(split.read_bytes())
    pd.DataFrame({"x": [9.0]}).to_parquet(split)  # the working file moved on; the cache still has it
    assert champion.load_split(tmp_path, "data/prepared/train.parquet", md5, "v1")["x"].tolist() == [1.0, 2.0]
    cached.unlink()
    with pytest.raises(ReproError, match=rf"v1 was trained on data/prepared/train.parquet with md5 {md5}"):
        champion.load_split(tmp_path, "data/prepared/train.parquet", md5, "v1")


def test_importance_table_must_have_feature_and_importance() -> None:
    table = {"columns": ["feature", "importance", "std"], "data": [["x1", 0.3, 0.01], ["x2", -0.01, 0.02]]}
    assert champion.importance_of(table, "r") == {"x1": 0.3, "x2": -0.01}
    with pytest.raises(ReproError, match="not a feature/importance table"):
        champion.importance_of({"columns": ["a"], "data": [[1]]}, "r")


def test_evidently_is_imported_only_when_a_check_runs() -> None:
    """`reproml --help` and the monitoring modules themselves must not pay Evidently's ~3-5 s import."""
    import subprocess
    import sys

    probe = (
        "import sys; from typer.testing import CliRunner; from reproml.cli import app; "
        "CliRunner().invoke(app, ['--help']); import reproml.monitoring.run, reproml.stages.monitor; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('evidently', 'mlflow')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_check_runs_the_garbage_collector_less_often_and_restores_it_even_when_it_fails() -> None:
    import gc

    from reproml.stages.monitor import GC_THRESHOLD, fewer_collections

    before = gc.get_threshold()
    with fewer_collections():
        assert gc.get_threshold() == (GC_THRESHOLD, *before[1:])
        assert gc.isenabled()  # still collecting, only less often
    assert gc.get_threshold() == before
    with pytest.raises(RuntimeError), fewer_collections(5_000):
        assert gc.get_threshold()[0] == 5_000
        raise RuntimeError("a check that fails")
    assert gc.get_threshold() == before
