"""A user's own CSV/Parquet: every bad input stops `ingest` with a message and leaves nothing behind."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from reproml.errors import DataValidationError, ReproError
from reproml.stages.ingest import run_ingest
from reproml.stages.prepare import run_prepare
from tests.conftest import tiny_frame, user_data_params

MakeProject = Callable[..., Path]
# what ingest reports about data/raw/labelled/ when the training flow has added nothing there
NO_LABELLED_BATCHES = dict.fromkeys(
    ["labelled_batches", "rows_from_labelled_batches", "rows_replaced_by_labelled_batches"], 0
)


def _assert_nothing_written(root: Path) -> None:
    assert not (root / "data" / "ingested.parquet").exists()
    assert not (root / "data" / "schema.json").exists()
    assert not (root / "metrics").exists()
    assert list((root / "data").glob(".*.tmp")) == []
    assert list(root.rglob("*.tmp")) == []
    assert sorted(p.name for p in (root / "data").iterdir()) == ["raw"]


def _fails(root: Path, *patterns: str) -> str:
    """run_ingest must raise a DataValidationError matching every pattern and write nothing."""
    with pytest.raises(DataValidationError) as info:
        run_ingest(root)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    _assert_nothing_written(root)
    return message


def _project(make_project: MakeProject, rel: str, content: Any, **data: Any) -> Path:
    params = user_data_params(rel, time_column=data.pop("time_column", "when"))
    params["data"].update(data)
    return make_project(params, files={rel: content} if content is not None else {})


# --- 1. unreadable ------------------------------------------------------------------------------


def test_error_is_a_repro_error() -> None:
    assert issubclass(DataValidationError, ReproError)


def test_bytes_that_are_not_parquet(make_project: MakeProject) -> None:
    rel = "data/raw/broken.parquet"
    root = _project(make_project, rel, b"this is not a parquet file\n" * 10)
    _fails(root, re.escape(rel), r"cannot read as parquet")


def test_binary_garbage_csv(make_project: MakeProject) -> None:
    rel = "data/raw/garbage.csv"
    root = _project(make_project, rel, b"x1,y\n\xff\xfe\x00\x81,1\n")
    _fails(root, re.escape(rel), r"cannot read as csv")


def test_missing_data_path(make_project: MakeProject) -> None:
    rel = "data/raw/absent.csv"
    root = _project(make_project, rel, None)
    _fails(root, re.escape(rel), r"file not found", r"data\.path")


def test_unsupported_extension(make_project: MakeProject) -> None:
    rel = "data/raw/book.xlsx"
    root = _project(make_project, rel, b"PK\x03\x04 not really a workbook")
    _fails(root, re.escape(rel), r"unsupported file type '\.xlsx'", r"'\.csv'", r"'\.parquet'")


# --- 2. empty -----------------------------------------------------------------------------------


def test_zero_byte_csv(make_project: MakeProject) -> None:
    rel = "data/raw/empty.csv"
    root = _project(make_project, rel, b"")
    _fails(root, re.escape(rel), r"file is empty \(no header row\)")


def test_header_only_csv(make_project: MakeProject) -> None:
    rel = "data/raw/header.csv"
    root = _project(make_project, rel, "x1,x2,cat,when,y\n")
    _fails(root, re.escape(rel), r"has no rows")


def test_zero_row_parquet(make_project: MakeProject) -> None:
    rel = "data/raw/none.parquet"
    root = _project(make_project, rel, tiny_frame(20).iloc[:0])
    _fails(root, re.escape(rel), r"has no rows")


# --- 3. missing target --------------------------------------------------------------------------


@pytest.mark.parametrize("rel", ["data/raw/frame.csv", "data/raw/frame.parquet"])
def test_missing_target_column(make_project: MakeProject, rel: str) -> None:
    root = _project(make_project, rel, tiny_frame(40), target="label")
    _fails(root, re.escape(rel), r"target column 'label' \(data\.target\) not found", r"'x1'.*'y'")


# --- 4. one class -------------------------------------------------------------------------------


def test_target_with_one_class(make_project: MakeProject) -> None:
    rel = "data/raw/one_class.csv"
    frame = tiny_frame(40).assign(y=1)
    root = _project(make_project, rel, frame)
    _fails(root, re.escape(rel), r"target 'y' has one class \(\[[^\]]*1[^\]]*\]\)", r"at least two")


def test_target_with_one_labelled_class(make_project: MakeProject) -> None:
    """Unlabelled rows don't count as a class."""
    rel = "data/raw/one_labelled.csv"
    frame = tiny_frame(40).assign(y=1.0)
    frame.loc[::2, "y"] = np.nan
    root = _project(make_project, rel, frame)
    _fails(root, re.escape(rel), r"target 'y' has one class", r"at least two")


def test_multiclass_target_rejected(make_project: MakeProject) -> None:
    rel = "data/raw/three.csv"
    frame = tiny_frame(42).assign(y=[0, 1, 2] * 14)
    root = _project(make_project, rel, frame)
    _fails(root, re.escape(rel), r"target 'y' has 3 classes", r"binary")


def test_constant_regression_target(make_project: MakeProject) -> None:
    rel = "data/raw/flat.csv"
    frame = tiny_frame(40, task="regression").assign(y=3.5)
    root = _project(make_project, rel, frame, task="regression")
    _fails(root, re.escape(rel), r"regression target 'y' is constant")


# --- 5. entirely missing feature ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "column", "empty"),
    [
        ("data/raw/nan.csv", "x2", np.nan),
        ("data/raw/nan.parquet", "x2", np.nan),
        ("data/raw/none.parquet", "cat", None),
    ],
)
def test_feature_column_entirely_missing(
    make_project: MakeProject, rel: str, column: str, empty: Any
) -> None:
    frame = tiny_frame(40)
    frame[column] = pd.Series([empty] * len(frame), dtype=object if empty is None else "float64")
    root = _project(make_project, rel, frame)
    _fails(root, re.escape(rel), rf"feature columns \['{column}'\] are entirely missing")


# --- 6. duplicate columns ----------------------------------------------------------------------


def test_duplicate_csv_header(make_project: MakeProject) -> None:
    rel = "data/raw/dupes.csv"
    text = "x1,x1,when,y\n1.0,2.0,2021-01-01,0\n3.0,4.0,2021-01-02,1\n"
    root = _project(make_project, rel, text)
    _fails(root, re.escape(rel), r"duplicate column names \['x1'\]")


def test_duplicate_header_behind_a_byte_order_mark(make_project: MakeProject) -> None:
    rel = "data/raw/bom.csv"
    text = "\ufeffx1,x1,when,y\n1.0,2.0,2021-01-01,0\n3.0,4.0,2021-01-02,1\n"
    root = _project(make_project, rel, text.encode("utf-8"))
    _fails(root, re.escape(rel), r"duplicate column names \['x1'\]")


def test_rows_without_time_are_dropped_and_counted(make_project: MakeProject) -> None:
    rel = "data/raw/untimed.csv"
    frame = tiny_frame(400)
    frame.loc[[5, 50, 150], "when"] = pd.NaT
    root = _project(make_project, rel, frame)
    summary = run_ingest(root)
    assert summary["rows_without_time"] == 3
    assert summary["rows"] == 397
    prepared = run_prepare(root)
    assert sum(prepared[s]["rows"] for s in ("train", "valid", "test", "production")) == 397


# --- 7. non-numeric strings in a declared numeric column ---------------------------------------


def test_strings_in_declared_numeric_column(make_project: MakeProject) -> None:
    rel = "data/raw/strings.csv"
    frame = tiny_frame(40)
    x1 = frame["x1"].astype(object)
    x1[[3, 17]] = ["abc", "n/a?"]
    frame["x1"] = x1
    root = _project(make_project, rel, frame, numeric_columns=["x1"])
    _fails(root, re.escape(rel), r"column 'x1' is declared numeric", r"non-numeric strings", r"'abc'")


def test_declared_column_absent(make_project: MakeProject) -> None:
    rel = "data/raw/frame.csv"
    root = _project(make_project, rel, tiny_frame(40), categorical_columns=["colour"])
    _fails(root, re.escape(rel), r"\['colour'\] listed in data\.categorical_columns are not in the data")


def test_time_column_absent(make_project: MakeProject) -> None:
    rel = "data/raw/frame.csv"
    root = _project(make_project, rel, tiny_frame(40), time_column="timestamp")
    _fails(root, re.escape(rel), r"time column 'timestamp' \(data\.time_column\) not found")


@pytest.mark.filterwarnings("ignore:Could not infer format")
def test_time_column_not_dates(make_project: MakeProject) -> None:
    rel = "data/raw/frame.csv"
    frame = tiny_frame(40).assign(when="someday")
    root = _project(make_project, rel, frame)
    _fails(root, re.escape(rel), r"time column 'when' holds values that are not dates")


# --- good inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", ["data/raw/good.csv", "data/raw/good.parquet"])
def test_good_file_ingests_and_prepares(make_project: MakeProject, rel: str) -> None:
    frame = tiny_frame(400, seed=1)
    root = _project(make_project, rel, frame)

    summary = run_ingest(root)

    assert summary == {
        "rows": 400, "rows_read": 400, "rows_without_target": 0, "rows_without_time": 0, **NO_LABELLED_BATCHES
    }  # fmt: skip
    assert json.loads((root / "metrics" / "ingest.json").read_text()) == summary
    ingested = pd.read_parquet(root / "data" / "ingested.parquet")
    assert len(ingested) == 400
    assert pd.api.types.is_datetime64_any_dtype(ingested["when"])
    assert ingested["when"].is_monotonic_increasing
    assert sorted(ingested["y"].unique().tolist()) == [0, 1]
    assert int(ingested["y"].sum()) == int(frame["y"].sum())
    schema = json.loads((root / "data" / "schema.json").read_text())
    assert schema["source"] == rel
    assert schema["target"] == "y"
    assert schema["time_column"] == "when"
    assert sorted(schema["numeric"]) == ["x1", "x2"]
    assert schema["categorical"] == ["cat"]
    assert list((root / "data").glob(".*.tmp")) == []

    prepared = run_prepare(root)

    assert sum(part["rows"] for part in prepared.values()) == 400
    assert all(prepared[name]["rows"] > 0 for name in ("train", "valid", "test"))
    parts = {name: pd.read_parquet(root / "data" / "prepared" / f"{name}.parquet") for name in prepared}
    assert parts["train"]["when"].max() < pd.Timestamp("2021-03-01")
    assert parts["valid"]["when"].min() >= pd.Timestamp("2021-03-01")
    assert parts["valid"]["when"].max() < pd.Timestamp("2021-03-20")
    assert parts["test"]["when"].min() >= pd.Timestamp("2021-03-20")
    assert parts["test"]["when"].max() < pd.Timestamp("2021-04-10")
    assert (parts["production"]["when"] >= pd.Timestamp("2021-04-10")).all()
    assert json.loads((root / "metrics" / "prepare.json").read_text()) == prepared


def test_rows_without_target_are_dropped_and_counted(make_project: MakeProject) -> None:
    rel = "data/raw/partly_labelled.csv"
    frame = tiny_frame(400, seed=2)
    frame["y"] = frame["y"].astype("float64")
    unlabelled = [0, 5, 99, 200, 201, 350, 399]
    frame.loc[unlabelled, "y"] = np.nan
    root = _project(make_project, rel, frame)

    summary = run_ingest(root)

    assert summary == {
        "rows": 393, "rows_read": 400, "rows_without_target": 7, "rows_without_time": 0, **NO_LABELLED_BATCHES
    }  # fmt: skip
    assert json.loads((root / "metrics" / "ingest.json").read_text())["rows"] == 393
    ingested = pd.read_parquet(root / "data" / "ingested.parquet")
    assert len(ingested) == 393
    assert ingested["y"].notna().all()
    kept = frame.drop(index=unlabelled)["x1"].to_numpy()
    np.testing.assert_allclose(np.sort(ingested["x1"].to_numpy()), np.sort(kept))


def _random_split_rows(make_project: MakeProject, seed: int) -> dict[str, pd.DataFrame]:
    rel = "data/raw/untimed.parquet"
    frame = tiny_frame(200, seed=3).drop(columns="when")
    frame["row_id"] = np.arange(len(frame), dtype="float64")
    params = user_data_params(rel, time_column=None)
    params["seed"] = seed
    assert params["prepare"]["split"] == "random"
    root = make_project(params, files={rel: frame})
    run_ingest(root)
    run_prepare(root)
    return {
        name: pd.read_parquet(root / "data" / "prepared" / f"{name}.parquet")
        for name in ("train", "valid", "test", "production")
    }


def test_random_split_is_seeded(make_project: MakeProject) -> None:
    first = _random_split_rows(make_project, seed=11)
    again = _random_split_rows(make_project, seed=11)
    other = _random_split_rows(make_project, seed=12)

    ids = {name: sorted(part["row_id"].astype(int)) for name, part in first.items()}
    assert len(ids["test"]) == 30 and len(ids["valid"]) == 30 and len(ids["train"]) == 140
    assert ids["production"] == []
    assert sorted(ids["train"] + ids["valid"] + ids["test"]) == list(range(200))
    for name in first:
        pd.testing.assert_frame_equal(first[name], again[name])
    assert sorted(other["test"]["row_id"].astype(int)) != ids["test"]
    assert sorted(other["train"]["row_id"].astype(int)) != ids["train"]
