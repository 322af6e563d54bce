"""The champion's scores as columns of a frame, for every task.

Monitoring samples batches and reference splits and hands them to Evidently; the scores travel as
columns of the same frame so a sample can never pair a row with another row's score.

- binary `classification`: `prediction` is P(positive), as `reproml.metrics` scores it;
- `regression`: `prediction` is the predicted value;
- `multiclass`: `prediction` is the most probable class (the label as the data writes it) and
  `proba_<class>` holds each class's probability, in the champion's class order: the layout of
  the evaluate stage's predictions/test.parquet, so a stored batch reads like the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

PREDICTION = "prediction"
PROBA_PREFIX = "proba_"


def proba_column(label: Any) -> str:
    return f"{PROBA_PREFIX}{label}"


def proba_columns(classes: Sequence[Any] | None) -> list[str]:
    return [proba_column(c) for c in classes or ()]


def columns(scores: np.ndarray, classes: Sequence[Any] | None) -> pd.DataFrame:
    """`scores` (1-D, or 2-D with one column per class of `classes`) as the frame's score columns."""
    if scores.ndim == 1:
        return pd.DataFrame({PREDICTION: scores})
    if classes is None or len(classes) != scores.shape[1]:
        raise ValueError(f"{scores.shape[1]} probability columns need as many class labels, got {classes}")
    labels = np.empty(len(classes), dtype=object)
    labels[:] = list(classes)
    frame = pd.DataFrame({PREDICTION: labels[np.argmax(scores, axis=1)]})
    for k, label in enumerate(classes):
        frame[proba_column(label)] = scores[:, k]
    return frame


def with_scores(frame: pd.DataFrame, scores: np.ndarray, classes: Sequence[Any] | None) -> pd.DataFrame:
    """`frame` with its rows' score columns added (replacing any of the same name)."""
    added = columns(scores, classes)
    added.index = frame.index
    return pd.concat([frame.drop(columns=[c for c in added.columns if c in frame.columns]), added], axis=1)


def scores_of(frame: pd.DataFrame, classes: Sequence[Any] | None) -> np.ndarray:
    """The scores `with_scores` stored: the probability matrix for multiclass, else `prediction`."""
    if classes:
        return frame[proba_columns(classes)].to_numpy(dtype=np.float64)
    return frame[PREDICTION].to_numpy(dtype=np.float64)
