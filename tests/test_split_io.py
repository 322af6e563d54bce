"""Time and random splits, split validation, atomic writes and file digests."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from reproml.config import DataParams, PrepareParams
from reproml.data.split import SPLITS, random_split, split, time_split
from reproml.data.validate import validate_frame
from reproml.errors import DataValidationError, ReproError
from reproml.io import atomic_path, file_md5, read_json, write_json, write_parquet, write_text, write_with
from tests.conftest import tiny_frame

PREPARE = PrepareParams.model_validate(
    {"split": "time", "train_end": "2021-03-01", "valid_end": "2021-03-20", "test_end": "2021-04-10"}
)


def _with_id(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["row_id"] = np.arange(len(frame))
    return frame


def test_time_split_boundaries() -> None:
    when = pd.to_datetime(
        [
            "2021-02-28 23:59:59",  # one second before train_end -> train
            "2021-03-01 00:00:00",  # exactly train_end -> valid
            "2021-03-19 23:59:59",  # -> valid
            "2021-03-20 00:00:00",  # exactly valid_end -> test
            "2021-04-09 23:59:59",  # -> test
            "2021-04-10 00:00:00",  # exactly test_end -> production
            "2020-01-01 00:00:00",  # long before -> train
        ]
    )
    frame = pd.DataFrame({"when": when, "row_id": range(len(when))})
    parts = time_split(frame, "when", PREPARE)
    assert list(parts) == list(SPLITS)
    assert parts["train"]["row_id"].tolist() == [0, 6]
    assert parts["valid"]["row_id"].tolist() == [1, 2]
    assert parts["test"]["row_id"].tolist() == [3, 4]
    assert parts["production"]["row_id"].tolist() == [5]


def test_time_split_partitions_rows_and_keeps_order() -> None:
    frame = _with_id(tiny_frame(rows=600))  # 2021-01-01 .. 2021-05-30, every 6 h
    parts = time_split(frame, "when", PREPARE)
    ids = np.concatenate([parts[name]["row_id"].to_numpy() for name in SPLITS])
    assert len(ids) == len(frame)
    assert sorted(ids.tolist()) == list(range(len(frame)))
    assert all(len(parts[name]) > 0 for name in SPLITS)
    for name in SPLITS:
        assert list(parts[name].index) == list(range(len(parts[name])))
        assert parts[name]["row_id"].is_monotonic_increasing
    # no future row before a past one
    for earlier, later in itertools.pairwise(SPLITS):
        assert parts[earlier]["when"].max() < parts[later]["when"].min()
    assert parts["train"]["when"].max() < pd.Timestamp("2021-03-01") <= parts["valid"]["when"].min()
    # columns and values survive unchanged
    rebuilt = pd.concat([parts[name] for name in SPLITS]).sort_values("row_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(rebuilt, frame)


def test_timezone_aware_time_column_is_split_in_utc() -> None:
    """ISO strings ending in 'Z' are common in exports; cut-offs then apply to UTC times."""
    frame = _with_id(tiny_frame(rows=600))
    frame["when"] = frame["when"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    data = DataParams.model_validate({"path": "x.csv", "target": "y", "time_column": "when"})
    clean = validate_frame(frame, data, ["x1", "x2"], ["cat"], "x.csv")
    parts = time_split(clean, "when", PREPARE)
    assert sum(len(p) for p in parts.values()) == len(frame)
    assert parts["valid"]["when"].min() == pd.Timestamp("2021-03-01")


def _random_prepare(valid: float = 0.2, test: float = 0.1) -> PrepareParams:
    return PrepareParams.model_validate({"split": "random", "valid_fraction": valid, "test_fraction": test})


@pytest.mark.parametrize("rows", [101, 400, 57])
def test_random_split_fractions_and_partition(rows: int) -> None:
    frame = _with_id(tiny_frame(rows=rows))
    prepare = _random_prepare(valid=0.2, test=0.1)
    parts = random_split(frame, prepare, seed=3)
    assert set(parts) == set(SPLITS)
    assert len(parts["valid"]) == round(rows * 0.2)
    assert len(parts["test"]) == round(rows * 0.1)
    assert len(parts["train"]) == rows - round(rows * 0.2) - round(rows * 0.1)
    assert parts["production"].empty
    assert list(parts["production"].columns) == list(frame.columns)
    ids = np.concatenate([parts[name]["row_id"].to_numpy() for name in SPLITS])
    assert sorted(ids.tolist()) == list(range(rows))
    for name in SPLITS:
        assert parts[name]["row_id"].is_monotonic_increasing


def test_random_split_is_deterministic_per_seed() -> None:
    frame = _with_id(tiny_frame(rows=200))
    prepare = _random_prepare()
    first = random_split(frame, prepare, seed=1)
    again = random_split(frame, prepare, seed=1)
    other = random_split(frame, prepare, seed=2)
    for name in SPLITS:
        pd.testing.assert_frame_equal(first[name], again[name])
    assert first["valid"]["row_id"].tolist() != other["valid"]["row_id"].tolist()
    # actually shuffled, not the first rows
    assert first["test"]["row_id"].tolist() != list(range(len(first["test"])))


def test_split_dispatches_on_prepare_split() -> None:
    frame = tiny_frame(rows=600)
    by_time = split(frame, "when", PREPARE, seed=0)
    assert len(by_time["production"]) > 0
    by_random = split(frame, "when", _random_prepare(), seed=0)
    assert by_random["production"].empty
    random_no_time = split(frame.drop(columns="when"), None, _random_prepare(), seed=0)
    assert sum(len(p) for p in random_no_time.values()) == len(frame)


def test_split_rejects_empty_valid_split() -> None:
    # tiny_frame(200) spans 2021-01-01 .. 2021-02-19: everything lands in train
    frame = tiny_frame(rows=200)
    prepare = PrepareParams.model_validate(
        {"split": "time", "train_end": "2021-02-25", "valid_end": "2021-03-01", "test_end": "2021-03-05"}
    )
    with pytest.raises(DataValidationError, match=r"the valid split is empty") as info:
        split(frame, "when", prepare, seed=0)
    assert "'when'" in str(info.value)
    assert isinstance(info.value, ReproError)


def test_split_rejects_empty_test_split_naming_test() -> None:
    frame = tiny_frame(rows=300)  # up to 2021-03-16 18:00
    prepare = PrepareParams.model_validate(
        {"split": "time", "train_end": "2021-02-01", "valid_end": "2021-03-20", "test_end": "2021-04-01"}
    )
    with pytest.raises(DataValidationError, match=r"the test split is empty"):
        split(frame, "when", prepare, seed=0)


def test_split_rejects_random_split_too_small() -> None:
    frame = tiny_frame(rows=3)
    with pytest.raises(DataValidationError, match=r"the test split is empty; the data has only 3 rows"):
        split(frame, None, _random_prepare(valid=0.2, test=0.1), seed=0)


def test_split_time_without_time_column() -> None:
    with pytest.raises(DataValidationError, match=r"time_column is null"):
        split(tiny_frame(rows=50), None, PREPARE, seed=0)


# --- atomic writes -------------------------------------------------------------------------------


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_write_json_replaces_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "metrics.json"
    write_json(target, {"a": 1, "long": "x" * 1000})
    write_json(target, {"b": 2})
    assert read_json(target) == {"b": 2}
    assert target.read_text() == json.dumps({"b": 2}, indent=2, sort_keys=True) + "\n"
    assert _leftovers(target.parent, {"metrics.json"}) == []


def test_write_json_is_deterministic_and_serialises_odd_values(tmp_path: Path) -> None:
    first = tmp_path / "a.json"
    second = tmp_path / "b.json"
    write_json(first, {"z": 1, "a": pd.Timestamp("2021-01-01"), "p": Path("x/y")})
    write_json(second, {"p": Path("x/y"), "a": pd.Timestamp("2021-01-01"), "z": 1})
    assert first.read_bytes() == second.read_bytes()
    assert read_json(first) == {"a": "2021-01-01 00:00:00", "p": "x/y", "z": 1}


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old content")
    seen: list[Path] = []

    def broken_writer(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"half of the new con")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_with(target, broken_writer)
    assert target.read_bytes() == b"old content"
    assert not seen[0].exists()
    assert _leftovers(tmp_path, {"model.bin"}) == []


def test_failed_first_write_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "new.json"

    def broken_writer(tmp: Path) -> None:
        tmp.write_text("{")
        raise ValueError("bad payload")

    with pytest.raises(ValueError, match="bad payload"):
        write_with(target, broken_writer)
    assert not target.exists()
    assert _leftovers(target.parent, set()) == []


def test_failed_json_serialisation_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "params.json"
    write_json(target, {"ok": True})
    before = target.read_bytes()
    circular: dict[str, Any] = {}
    circular["self"] = circular
    with pytest.raises(ValueError):
        write_json(target, circular)
    assert target.read_bytes() == before
    assert _leftovers(tmp_path, {"params.json"}) == []


def test_atomic_path_renames_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert _leftovers(tmp_path, {"x.txt"}) == []


def test_write_text_and_parquet_round_trip(tmp_path: Path) -> None:
    assert write_text(tmp_path / "t.txt", "hello\n") == tmp_path / "t.txt"
    assert (tmp_path / "t.txt").read_text() == "hello\n"
    frame = tiny_frame(rows=20)
    write_parquet(tmp_path / "f.parquet", frame)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "f.parquet"), frame, check_dtype=False)
    assert _leftovers(tmp_path, {"t.txt", "f.parquet"}) == []


@pytest.mark.parametrize("size", [0, 5, (1 << 20) + 17])
def test_file_md5_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size=size, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_md5(path) == hashlib.md5(data).hexdigest()
    assert file_md5(str(path)) == file_md5(path)


def test_outputs_get_the_same_mode_as_a_plain_open(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = write_text(tmp_path / "atomic.txt", "x")
    assert (atomic.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)
