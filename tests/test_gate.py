"""The promotion gate: worse/tied/NaN/marginal/uncertain challengers and slice regressions reject,
a clearly better one promotes, the first model meets a floor, and both metric directions work."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import pytest

from reproml.config import PromoteParams
from reproml.gate import GateResult, decide
from reproml.metrics import MetricSpec, score

AUC = MetricSpec("roc_auc", higher_is_better=True)
RMSE = MetricSpec("rmse", higher_is_better=False)


def params(**overrides: Any) -> PromoteParams:
    base: dict[str, Any] = {"bootstrap_samples": 200, "margin": 0.002, "floor": 0.7}
    return PromoteParams.model_validate({**base, **overrides})


def classification(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, good, poor): `good` ranks well, `poor` is the same signal drowned in extra noise."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=rows)
    y = (signal + rng.normal(scale=0.5, size=rows) > 0).astype(int)
    good = 1 / (1 + np.exp(-signal))
    poor = 1 / (1 + np.exp(-(signal + rng.normal(scale=1.5, size=rows))))
    return y, good, poor


def regression(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, good, poor) predictions: `good` has a third of `poor`'s error."""
    rng = np.random.default_rng(seed)
    y = rng.normal(scale=10.0, size=rows)
    return y, y + rng.normal(scale=1.0, size=rows), y + rng.normal(scale=3.0, size=rows)


# --- worse, better, tie, margin, interval -------------------------------------------------------


def test_worse_challenger_rejected_higher_is_better() -> None:
    y, good, poor = classification(600)
    result = decide(y, poor, good, params(), "classification")
    assert not result.promote
    assert result.metric == "roc_auc" and result.higher_is_better
    assert result.challenger_value < result.champion_value  # type: ignore[operator]
    assert result.improvement is not None and result.improvement < 0
    assert "roc_auc" in result.reason and "worse" in result.reason


def test_worse_challenger_rejected_lower_is_better() -> None:
    y, good, poor = regression(600)
    result = decide(y, poor, good, params(floor=0.0), "regression")
    assert not result.promote
    assert result.metric == "rmse" and not result.higher_is_better
    assert result.challenger_value > result.champion_value  # type: ignore[operator]  # higher rmse: worse
    assert result.improvement is not None and result.improvement < 0
    assert "rmse" in result.reason and "worse" in result.reason


@pytest.mark.parametrize(("task", "data"), [("classification", classification), ("regression", regression)])
def test_clearly_better_challenger_promoted(task: str, data: Any) -> None:
    y, good, poor = data(600)
    result = decide(y, good, poor, params(floor=0.0), task)
    assert result.promote, result.reason
    assert result.improvement is not None and result.improvement > result.margin
    assert result.interval is not None and 0 < result.interval[0] <= result.improvement <= result.interval[1]
    assert "excludes 0" in result.reason and result.metric in result.reason
    assert result.rows == 600 and result.confidence == 0.95


@pytest.mark.parametrize("margin", [0.0, 0.002])
def test_tie_rejected_even_with_zero_margin(margin: float) -> None:
    y, good, _ = classification(400)
    same = decide(y, good.copy(), good, params(margin=margin), "classification")
    # a monotone transform ranks identically: the same ROC-AUC, so also a tie
    ranked = decide(y, good**3, good, params(margin=margin), "classification")
    for result in (same, ranked):
        assert not result.promote
        assert result.improvement == 0.0
        assert "tie" in result.reason


def test_better_by_less_than_margin_rejected() -> None:
    y, good, poor = classification(600)
    gain = decide(y, good, poor, params(), "classification").improvement
    assert gain is not None and gain > 0
    above = decide(y, good, poor, params(margin=gain + 0.01), "classification")
    assert not above.promote
    assert f"margin {gain + 0.01:.4f}" in above.reason and "does not exceed" in above.reason
    assert decide(y, good, poor, params(margin=gain * 0.5), "classification").promote


def test_better_on_average_but_interval_includes_zero_rejected() -> None:
    # 60 rows ranked perfectly by the challenger; the champion swaps the scores of the lowest-scored
    # positive and the highest-scored negative, so it misorders exactly one pair. The challenger's
    # AUC is higher by 1/(P*N), but many resamples miss one of those two rows and see no difference.
    y = np.array([0, 1] * 30)
    challenger = np.where(y == 1, 0.5, 0.0) + np.linspace(0.0, 0.4, 60)
    champion = challenger.copy()
    pos = int(np.flatnonzero(y == 1)[0])
    neg = int(np.flatnonzero(y == 0)[-1])
    champion[[pos, neg]] = champion[[neg, pos]]
    assert score(AUC, y, challenger) == 1.0
    assert score(AUC, y, champion) == pytest.approx(1 - 1 / 900)
    result = decide(y, challenger, champion, params(margin=0.0), "classification")
    assert result.improvement is not None and result.improvement > 0
    assert result.interval is not None and result.interval[0] <= 0
    assert not result.promote
    assert "interval" in result.reason and "includes 0" in result.reason


# --- NaN and empty -------------------------------------------------------------------------------


def test_nan_challenger_scores_rejected() -> None:
    y, good, poor = classification(300)
    broken = good.copy()
    broken[7] = np.nan
    result = decide(y, broken, poor, params(), "classification")
    assert not result.promote
    assert math.isnan(result.challenger_value)
    assert "challenger roc_auc is NaN" in result.reason


def test_undefined_metric_rejected_one_class() -> None:
    y = np.ones(50, dtype=int)  # ROC-AUC is undefined with one class
    scores = np.linspace(0, 1, 50)
    assert math.isnan(score(AUC, y, scores))
    first = decide(y, scores, None, params(), "classification")
    against = decide(y, scores, scores[::-1].copy(), params(), "classification")
    for result in (first, against):
        assert not result.promote and "NaN" in result.reason


def test_nan_champion_rejected() -> None:
    y, good, poor = regression(300)
    broken = poor.copy()
    broken[0] = np.inf
    result = decide(y, good, broken, params(), "regression")
    assert not result.promote
    assert result.champion_value is not None and math.isnan(result.champion_value)
    assert "champion rmse is NaN" in result.reason


def test_no_rows_rejected() -> None:
    empty = np.array([], dtype=float)
    result = decide(empty, empty, empty, params(), "classification")
    assert not result.promote and result.rows == 0 and "no rows" in result.reason


# --- first model --------------------------------------------------------------------------------


def test_first_model_floor_higher_is_better() -> None:
    y, good, _ = classification(500)
    auc = score(AUC, y, good)
    assert 0.8 < auc < 1.0
    meets = decide(y, good, None, params(floor=auc - 0.05), "classification")
    exact = decide(y, good, None, params(floor=auc), "classification")
    misses = decide(y, good, None, params(floor=auc + 0.01), "classification")
    assert meets.promote and exact.promote
    assert not misses.promote
    assert "floor" in misses.reason and f"{auc + 0.01:.4f}" in misses.reason
    assert misses.champion_value is None and misses.improvement is None and misses.interval is None


def test_first_model_floor_lower_is_better() -> None:
    y, good, _ = regression(500)
    rmse = score(RMSE, y, good)
    assert 0.5 < rmse < 1.5
    # for rmse the floor is a ceiling: below it promotes, above it rejects
    assert decide(y, good, None, params(floor=rmse + 0.5), "regression").promote
    misses = decide(y, good, None, params(floor=rmse - 0.5), "regression")
    assert not misses.promote
    assert "floor" in misses.reason and "at most" in misses.reason


# --- slices -------------------------------------------------------------------------------------


def sliced(small: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Origins EWR and JFK (500 rows each) where the challenger is much better, and LGA (`small`
    rows) where it is much worse."""
    ys, challengers, champions, origins = [], [], [], []
    for index, (origin, rows) in enumerate([("EWR", 500), ("JFK", 500), ("LGA", small)]):
        y, good, poor = classification(rows, seed=index + 1)
        ys.append(y)
        challengers.append(poor if origin == "LGA" else good)
        champions.append(good if origin == "LGA" else poor)
        origins.append(np.full(rows, origin, dtype=object))
    return np.concatenate(ys), np.concatenate(challengers), np.concatenate(champions), np.concatenate(origins)


def test_slice_regression_rejected() -> None:
    y, challenger, champion, origins = sliced(small=300)
    overall = decide(y, challenger, champion, params(), "classification")  # no slices passed
    assert overall.promote, overall.reason
    result = decide(y, challenger, champion, params(min_slice_rows=200), "classification", slices=origins)
    assert not result.promote
    assert "origin=LGA" in result.reason and "slice tolerance" in result.reason
    by_value = {s.value: s for s in result.slices}
    assert sorted(by_value) == ["EWR", "JFK", "LGA"]
    assert by_value["LGA"].judged and by_value["LGA"].rows == 300
    assert by_value["LGA"].improvement < -0.01 < 0 < by_value["EWR"].improvement
    assert by_value["LGA"].challenger < by_value["LGA"].champion


def test_slice_regression_within_tolerance_or_unconfigured_promotes() -> None:
    y, challenger, champion, origins = sliced(small=300)
    lenient = decide(y, challenger, champion, params(slice_tolerance=0.5), "classification", slices=origins)
    assert lenient.promote, lenient.reason
    off = decide(y, challenger, champion, params(slice_column=None), "classification", slices=origins)
    assert off.promote and off.slices == []


def test_small_slice_reported_not_judged() -> None:
    y, challenger, champion, origins = sliced(small=100)
    result = decide(y, challenger, champion, params(min_slice_rows=200), "classification", slices=origins)
    assert result.promote, result.reason
    small = next(s for s in result.slices if s.value == "LGA")
    assert small.rows == 100 and not small.judged
    assert small.improvement < -0.01  # it is worse, but too small to judge
    assert all(s.judged for s in result.slices if s.value != "LGA")


def test_slice_with_one_class_not_judged() -> None:
    y, challenger, champion, origins = sliced(small=300)
    y = y.copy()
    y[origins == "LGA"] = 0
    result = decide(y, challenger, champion, params(min_slice_rows=200), "classification", slices=origins)
    lga = next(s for s in result.slices if s.value == "LGA")
    assert not lga.judged and math.isnan(lga.challenger)


# --- record -----------------------------------------------------------------


def test_to_dict_is_json_with_nan_as_none() -> None:
    y, challenger, champion, origins = sliced(small=300)
    broken = challenger.copy()
    broken[0] = np.nan
    rejected = decide(y, broken, champion, params(), "classification", slices=origins)
    record = json.loads(json.dumps(rejected.to_dict(), allow_nan=False))
    assert record["challenger_value"] is None and record["promote"] is False
    assert {s["value"] for s in record["slices"]} == {"EWR", "JFK", "LGA"}
    promoted = decide(y, challenger, champion, params(slice_tolerance=0.5), "classification", slices=origins)
    record = json.loads(json.dumps(promoted.to_dict(), allow_nan=False))
    assert record["promote"] is True and len(record["interval"]) == 2
    assert set(record) == {f.name for f in GateResult.__dataclass_fields__.values()}


def test_decide_speed_on_test_split_size() -> None:
    y, good, poor = classification(27_000, seed=5)
    origins = np.random.default_rng(5).choice(["EWR", "JFK", "LGA"], size=27_000)
    started = time.perf_counter()
    result = decide(y, good, poor, params(bootstrap_samples=500), "classification", slices=origins)
    elapsed = time.perf_counter() - started
    print(f"decide: 27,000 rows x 500 roc_auc resamples in {elapsed:.2f}s")
    assert result.promote and result.interval is not None
