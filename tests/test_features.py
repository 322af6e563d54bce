"""Preprocessing: fit on train only, unseen categories, date parts, the categorical mask."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer

from reproml.features import TREE_MODELS, DateParts, FeatureSpec, build_preprocessor
from tests.conftest import tiny_frame

DATE_PARTS = ["dayofweek", "hour", "month"]
SPEC = FeatureSpec(numeric=["x1", "x2"], categorical=["cat"], time_column="when", date_parts=DATE_PARTS)


def _train_valid() -> tuple[pd.DataFrame, pd.DataFrame]:
    train = tiny_frame(rows=200, seed=1)
    valid = tiny_frame(rows=50, seed=2)
    valid["cat"] = "zzz-never-seen"
    valid["x1"] = valid["x1"] * 100.0 + 1000.0  # a very different distribution
    return train, valid


def _fit(model: str, train: pd.DataFrame, max_categories: int = 64) -> ColumnTransformer:
    prep = build_preprocessor(SPEC, model, max_categories)
    prep.fit(train[SPEC.input_columns])
    return prep


@pytest.mark.parametrize("model", sorted(TREE_MODELS))
def test_tree_preprocessor_codes_unseen_category_as_nan(model: str) -> None:
    train, valid = _train_valid()
    prep = _fit(model, train)
    names = list(prep.get_feature_names_out())
    cat_idx = names.index("cat")

    out_train = prep.transform(train[SPEC.input_columns])
    assert not np.isnan(out_train[:, cat_idx]).any()
    assert set(out_train[:, cat_idx]) == {0.0, 1.0, 2.0}

    out_valid = prep.transform(valid[SPEC.input_columns])
    assert np.isnan(out_valid[:, cat_idx]).all()
    # numerics pass through untouched (trees need no scaling, and keep the raw values)
    np.testing.assert_array_equal(out_valid[:, names.index("x1")], valid["x1"].to_numpy())


def test_tree_preprocessor_keeps_missing_numeric_and_category_as_nan() -> None:
    train, _ = _train_valid()
    prep = _fit("xgboost", train)
    names = list(prep.get_feature_names_out())
    frame = train.head(3).copy()
    frame.loc[0, "x1"] = np.nan
    frame.loc[1, "cat"] = None
    out = prep.transform(frame[SPEC.input_columns])
    assert np.isnan(out[0, names.index("x1")])
    assert np.isnan(out[1, names.index("cat")])
    assert not np.isnan(out[2]).any()


def test_linear_preprocessor_learns_train_median_only() -> None:
    train, valid = _train_valid()
    prep = _fit("logistic", train)
    imputer = prep.named_transformers_["numeric"].named_steps["simpleimputer"]
    np.testing.assert_allclose(
        imputer.statistics_, [train["x1"].median(), train["x2"].median()], rtol=0, atol=1e-12
    )
    assert imputer.statistics_[0] != pytest.approx(pd.concat([train, valid])["x1"].median())
    scaler = prep.named_transformers_["numeric"].named_steps["standardscaler"]
    np.testing.assert_allclose(scaler.mean_[0], train["x1"].mean())

    # a missing x1 in valid is filled with the TRAIN median, i.e. scales to (median - mean) / std
    names = list(prep.get_feature_names_out())
    row = valid.head(1).copy()
    row.loc[row.index[0], "x1"] = np.nan
    out = prep.transform(row[SPEC.input_columns])
    expected = (train["x1"].median() - scaler.mean_[0]) / scaler.scale_[0]
    assert out[0, names.index("x1")] == pytest.approx(expected)


def test_linear_preprocessor_one_hot_unseen_category_is_all_zeros() -> None:
    """handle_unknown='infrequent_if_exist' with no infrequent category: an all-zero one-hot row."""
    train, valid = _train_valid()
    prep = _fit("logistic", train)
    names = list(prep.get_feature_names_out())
    cat_cols = [i for i, n in enumerate(names) if n.startswith("cat_")]
    assert [names[i] for i in cat_cols] == ["cat_a", "cat_b", "cat_c"]

    out_train = prep.transform(train[SPEC.input_columns])
    np.testing.assert_array_equal(out_train[:, cat_cols].sum(axis=1), 1.0)
    out_valid = prep.transform(valid[SPEC.input_columns])
    np.testing.assert_array_equal(out_valid[:, cat_cols], 0.0)


def test_linear_preprocessor_unseen_category_goes_to_infrequent_when_it_exists() -> None:
    train, valid = _train_valid()
    prep = _fit("logistic", train, max_categories=2)
    names = list(prep.get_feature_names_out())
    cat_cols = [i for i, n in enumerate(names) if n.startswith("cat_")]
    assert len(cat_cols) == 2
    infrequent = names.index("cat_infrequent_sklearn")
    out_valid = prep.transform(valid[SPEC.input_columns])
    np.testing.assert_array_equal(out_valid[:, infrequent], 1.0)
    np.testing.assert_array_equal(out_valid[:, cat_cols].sum(axis=1), 1.0)


def test_date_parts_known_timestamps() -> None:
    frame = pd.DataFrame({"ts": pd.to_datetime(["2021-01-04 13:00", "2021-07-11 00:30", "2021-12-31 23:59"])})
    parts = DateParts(("dayofweek", "hour", "month"))
    out = parts.fit(frame).transform(frame)
    # Monday 13:00 January; Sunday 00:30 July; Friday 23:59 December
    np.testing.assert_array_equal(out, [[0, 13, 1], [6, 0, 7], [4, 23, 12]])
    assert out.dtype == np.float64
    assert list(parts.get_feature_names_out()) == ["ts_dayofweek", "ts_hour", "ts_month"]


def test_date_parts_parses_strings_and_keeps_missing_as_nan() -> None:
    frame = pd.DataFrame({"ts": ["2021-01-04 13:00", None]})
    out = DateParts(("dayofweek", "hour")).fit(frame).transform(frame)
    np.testing.assert_array_equal(out[0], [0.0, 13.0])
    assert np.isnan(out[1]).all()


def test_calendar_parts_day_of_month_hour_bucket_and_holidays() -> None:
    stamps = [
        "2013-07-03 23:00",
        "2013-07-04 05:00",
        "2013-07-05 12:00",
        "2013-05-27 18:00",
        "2013-01-01 00:00",
    ]
    frame = pd.DataFrame({"ts": pd.to_datetime(stamps)})
    parts = ("dayofmonth", "hour_bucket", "days_to_holiday", "days_from_holiday")
    out = DateParts(parts).fit(frame).transform(frame)
    # US federal holidays nearby: 2012-12-25, 2013-01-01, 2013-05-27 (Memorial Day), 2013-07-04,
    # 2013-09-02 (Labor Day)
    np.testing.assert_array_equal(
        out,
        [
            [3, 3, 1, 37],  # evening of July 3rd: the holiday is tomorrow, Memorial Day 37 days ago
            [4, 0, 0, 0],  # on the holiday itself, both distances are 0; 05:00 is night
            [5, 2, 59, 1],  # Labor Day (September 2nd) is 59 days ahead
            [27, 3, 0, 0],
            [1, 0, 0, 0],
        ],
    )
    assert list(DateParts(parts).fit(frame).get_feature_names_out()) == [f"ts_{p}" for p in parts]


def test_holiday_distances_across_years_and_missing_timestamps() -> None:
    frame = pd.DataFrame({"ts": pd.to_datetime(pd.Series(["2012-12-31 08:00", None, "2014-12-26 08:00"]))})
    out = DateParts(("days_to_holiday", "days_from_holiday")).fit(frame).transform(frame)
    np.testing.assert_array_equal(out[0], [1, 6])  # New Year's Day ahead, Christmas 2012 behind
    assert np.isnan(out[1]).all()
    np.testing.assert_array_equal(out[2], [6, 1])  # observed New Year's Day 2015 is Thursday January 1st
    everything_missing = pd.DataFrame({"ts": pd.Series([pd.NaT, pd.NaT], dtype="datetime64[ns]")})
    assert np.isnan(
        DateParts(("days_to_holiday",)).fit(everything_missing).transform(everything_missing)
    ).all()


@pytest.mark.parametrize("model", [*sorted(TREE_MODELS), "logistic", "linear"])
def test_date_parts_inside_preprocessor_named_by_column(model: str) -> None:
    train, _ = _train_valid()
    names = list(_fit(model, train).get_feature_names_out())
    assert [n for n in names if n.startswith("when_")] == [f"when_{p}" for p in DATE_PARTS]


def test_input_columns() -> None:
    assert SPEC.input_columns == ["x1", "x2", "cat", "when"]
    no_parts = FeatureSpec(numeric=["x1"], categorical=["cat"], time_column="when", date_parts=[])
    assert no_parts.input_columns == ["x1", "cat"]
    no_time = FeatureSpec(numeric=["x1"], categorical=[], time_column=None, date_parts=DATE_PARTS)
    assert no_time.input_columns == ["x1"]


@pytest.mark.parametrize("model", ["logistic", "linear"])
def test_categorical_mask_empty_for_linear_models(model: str) -> None:
    assert SPEC.categorical_mask(model) == []


@pytest.mark.parametrize("model", sorted(TREE_MODELS))
@pytest.mark.parametrize(
    "spec",
    [
        SPEC,
        FeatureSpec(numeric=["x1"], categorical=["cat"], time_column=None, date_parts=DATE_PARTS),
        FeatureSpec(numeric=["x1", "x2"], categorical=["cat"], time_column="when", date_parts=[]),
        FeatureSpec(numeric=[], categorical=["cat"], time_column="when", date_parts=["hour"]),
    ],
    ids=["full", "no-time", "no-parts", "no-numeric"],
)
def test_categorical_mask_marks_exactly_the_category_columns(model: str, spec: FeatureSpec) -> None:
    train = tiny_frame(rows=60, seed=3)
    prep = build_preprocessor(spec, model, 64)
    out = prep.fit_transform(train[spec.input_columns])
    mask = spec.categorical_mask(model)
    assert len(mask) == out.shape[1]
    names = list(prep.get_feature_names_out())
    assert [n for n, is_cat in zip(names, mask, strict=True) if is_cat] == spec.categorical


def test_max_categories_caps_ordinal_codes() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=500), "many": [f"v{i % 100}" for i in range(500)]})
    spec = FeatureSpec(numeric=["x1"], categorical=["many"], time_column=None, date_parts=[])
    capped = build_preprocessor(spec, "xgboost", max_categories=5).fit_transform(frame[spec.input_columns])
    codes = np.unique(capped[:, 1])
    assert len(codes) <= 5
    assert not np.isnan(codes).any()
    assert codes.max() < 5

    uncapped = build_preprocessor(spec, "xgboost", max_categories=254).fit_transform(
        frame[spec.input_columns]
    )
    assert len(np.unique(uncapped[:, 1])) == 100


def test_max_categories_caps_one_hot_width() -> None:
    frame = pd.DataFrame({"x1": np.arange(500.0), "many": [f"v{i % 100}" for i in range(500)]})
    spec = FeatureSpec(numeric=["x1"], categorical=["many"], time_column=None, date_parts=[])
    out = build_preprocessor(spec, "logistic", max_categories=5).fit_transform(frame[spec.input_columns])
    assert out.shape[1] == 1 + 5
