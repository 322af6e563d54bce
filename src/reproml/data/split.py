"""Train/validation/test/production splits that never let the future leak into the past.

With a time column, rows are split by calendar cut-offs (train < train_end <= valid < valid_end <=
test < test_end <= production). Without one, a seeded shuffle: the same seed gives the same rows on
every run and every machine, so metric differences come from the model, not the split.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from reproml.config import PrepareParams
from reproml.errors import DataValidationError

SPLITS = ("train", "valid", "test", "production")


def _stamp(day: dt.date) -> pd.Timestamp:
    return pd.Timestamp(day)


def time_split(frame: pd.DataFrame, time_column: str, prepare: PrepareParams) -> dict[str, pd.DataFrame]:
    when = frame[time_column]
    cuts = [_stamp(prepare.train_end), _stamp(prepare.valid_end), _stamp(prepare.test_end)]
    masks = {
        "train": when < cuts[0],
        "valid": (when >= cuts[0]) & (when < cuts[1]),
        "test": (when >= cuts[1]) & (when < cuts[2]),
        "production": when >= cuts[2],
    }
    return {name: frame.loc[mask].reset_index(drop=True) for name, mask in masks.items()}


def random_split(frame: pd.DataFrame, prepare: PrepareParams, seed: int) -> dict[str, pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(frame))
    n_test = round(len(frame) * prepare.test_fraction)
    n_valid = round(len(frame) * prepare.valid_fraction)
    parts = {
        "test": order[:n_test],
        "valid": order[n_test : n_test + n_valid],
        "train": order[n_test + n_valid :],
        "production": order[:0],
    }
    return {name: frame.iloc[np.sort(idx)].reset_index(drop=True) for name, idx in parts.items()}


def split(
    frame: pd.DataFrame, time_column: str | None, prepare: PrepareParams, seed: int
) -> dict[str, pd.DataFrame]:
    if prepare.split == "time":
        if not time_column:
            raise DataValidationError(
                "prepare.split is 'time' but data.time_column is null; use prepare.split: random"
            )
        parts = time_split(frame, time_column, prepare)
    else:
        parts = random_split(frame, prepare, seed)
    for name in ("train", "valid", "test"):
        if parts[name].empty:
            raise DataValidationError(
                f"the {name} split is empty; check prepare.train_end/valid_end/test_end against "
                f"the data's {time_column!r} range"
                if prepare.split == "time"
                else f"the {name} split is empty; the data has only {len(frame)} rows"
            )
    return parts


def check_classes_in_train(parts: dict[str, pd.DataFrame], target: str) -> None:
    """Every class of a multiclass target must have training rows: a model cannot learn a class it
    never saw (and XGBoost refuses one). Valid and test may lack a rare class; their macro metrics
    are then undefined (NaN), which the gate rejects with that reason."""
    seen = set(parts["train"][target].tolist())
    everywhere = set().union(*(set(part[target].tolist()) for part in parts.values()))
    missing = sorted(str(c) for c in everywhere - seen)
    if missing:
        raise DataValidationError(
            f"classes {missing} of target {target!r} have no rows in the train split; move "
            "prepare.train_end later (time split), or drop or merge those classes in the data"
        )
