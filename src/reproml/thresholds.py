"""The binary decision: where to cut P(positive) into a label, chosen on the validation split.

`evaluate.threshold` names the rule (`reproml.config.EvaluateParams`):

- `f1`: the cut with the highest F1 (precision and recall of the positive class balanced);
- `cost`: the cut with the lowest total cost, `cost_fp` per false positive plus `cost_fn` per false
  negative (reported per row);
- a number: that cut, as given.

A row is predicted positive when its score is at least the threshold (`reproml.metrics` and
sklearn's `FixedThresholdClassifier` both cut this way). The candidates are every distinct score on
the validation split, plus one just above the highest ("predict nothing positive"), which is every
cut that gives different labels there: the objective is evaluated at all of them with sklearn's
`confusion_matrix_at_thresholds`, so the chosen cut is the exact optimum on validation, not a grid
point. Among equally good cuts the highest is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from reproml.errors import ReproError


class ThresholdRecord(TypedDict):
    """`ThresholdChoice.to_dict`, as models/history.json and metrics.json keep it."""

    threshold: float
    rule: str
    objective: str
    value: float
    cost_fp: float | None
    cost_fn: float | None
    rows: int


@dataclass(frozen=True)
class ThresholdChoice:
    """The cut and why: `rule` (f1 | cost | fixed), the objective it optimised and its value on the
    validation split (`f1`: F1; `cost`: mean cost per row; fixed: F1 at that cut, for reference)."""

    threshold: float
    rule: str
    objective: str
    value: float
    cost_fp: float | None = None
    cost_fn: float | None = None
    rows: int = 0

    def to_dict(self) -> ThresholdRecord:
        return {
            "threshold": self.threshold,
            "rule": self.rule,
            "objective": self.objective,
            "value": self.value,
            "cost_fp": self.cost_fp,
            "cost_fn": self.cost_fn,
            "rows": self.rows,
        }


def counts(y: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """False/true positives and negatives at every candidate cut, highest cut first: each distinct
    score, and the cut above them all (nothing predicted positive)."""
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    if len(y) == 0 or not np.all(np.isfinite(scores)):
        raise ReproError("a threshold needs finite scores on a non-empty validation split")
    if set(np.unique(y).tolist()) - {0, 1}:
        raise ReproError(f"a binary threshold needs labels 0/1, got {sorted(np.unique(y).tolist())[:5]}")
    tns, fps, fns, tps, cuts = skm.confusion_matrix_at_thresholds(y, scores, pos_label=1)
    positives, negatives = int((y == 1).sum()), int((y != 1).sum())
    above = float(np.nextafter(scores.max(), np.inf))
    return pd.DataFrame(
        {
            "threshold": np.concatenate([[above], cuts]),
            "tp": np.concatenate([[0], tps]).astype(np.int64),
            "fp": np.concatenate([[0], fps]).astype(np.int64),
            "fn": np.concatenate([[positives], fns]).astype(np.int64),
            "tn": np.concatenate([[negatives], tns]).astype(np.int64),
        }
    )


def curve(y: np.ndarray, scores: np.ndarray, cost_fp: float = 1.0, cost_fn: float = 1.0) -> pd.DataFrame:
    """Precision, recall, F1 and mean cost per row at every candidate cut (precision 0 where nothing
    is predicted positive, as the metrics' `zero_division=0`)."""
    table = counts(y, scores)
    tp, fp, fn = (table[c].to_numpy(dtype=np.float64) for c in ("tp", "fp", "fn"))
    predicted, actual = tp + fp, tp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    cost = (cost_fp * fp + cost_fn * fn) / len(np.asarray(y))
    return pd.DataFrame(
        {"threshold": table["threshold"], "precision": precision, "recall": recall, "f1": f1, "cost": cost}
    )


def choose(
    y: np.ndarray, scores: np.ndarray, rule: str | float, cost_fp: float = 1.0, cost_fn: float = 1.0
) -> ThresholdChoice:
    """The cut `rule` picks on (`y`, `scores`), the validation labels and P(positive)."""
    table = curve(y, scores, cost_fp, cost_fn)
    rows = len(np.asarray(y))
    costs = {"cost_fp": cost_fp, "cost_fn": cost_fn} if rule == "cost" else {}
    if not isinstance(rule, str):
        cut = float(rule)
        f1 = float(skm.f1_score(y, (np.asarray(scores) >= cut).astype(int), zero_division=0))
        return ThresholdChoice(cut, "fixed", "f1", f1, rows=rows)
    if rule == "f1":
        best = int(np.argmax(table["f1"].to_numpy()))  # first = highest cut among ties
        value = float(table["f1"].iloc[best])
    elif rule == "cost":
        best = int(np.argmin(table["cost"].to_numpy()))
        value = float(table["cost"].iloc[best])
    else:
        raise ValueError(f"unknown threshold rule {rule!r}: expected f1, cost or a number")
    return ThresholdChoice(float(table["threshold"].iloc[best]), rule, rule, value, rows=rows, **costs)


def thin(frame: pd.DataFrame, max_rows: int = 500) -> pd.DataFrame:
    """At most `max_rows` evenly spaced rows (ends kept), so a curve file stays small to diff."""
    if len(frame) <= max_rows:
        return frame.reset_index(drop=True)
    idx = np.unique(np.linspace(0, len(frame) - 1, max_rows).round().astype(int))
    return frame.iloc[idx].reset_index(drop=True)
