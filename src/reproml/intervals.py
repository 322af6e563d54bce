"""Regression prediction intervals: split conformal (MAPIE's `SplitConformalRegressor`).

The fitted model is conformalized on the validation split (absolute residuals), then gives each
test row an interval `prediction +- q` meant to hold the truth in `level` of the rows. The test
coverage is measured against that nominal level: conformal guarantees it when the validation and
test rows are exchangeable, which a time split and early stopping on the same validation rows
both weaken, so the number to read is the measured one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import pandas as pd


class IntervalSummary(TypedDict):
    """`Intervals.summary`: metrics.json's `intervals` (regression)."""

    level: float
    coverage: float
    mean_width: float
    half_width: float
    calibration_rows: int
    test_rows: int
    coverage_gap: float  # negative: fewer rows covered than promised


@dataclass(frozen=True)
class Intervals:
    level: float  # nominal coverage
    coverage: float  # share of test rows inside their interval
    mean_width: float
    half_width: float  # q: the interval is prediction +- q for every row
    calibration_rows: int
    test_rows: int
    lower: np.ndarray
    upper: np.ndarray

    def summary(self) -> IntervalSummary:
        return {
            "level": self.level,
            "coverage": self.coverage,
            "mean_width": self.mean_width,
            "half_width": self.half_width,
            "calibration_rows": self.calibration_rows,
            "test_rows": self.test_rows,
            "coverage_gap": self.coverage - self.level,
        }


def conformal(
    model: Any,
    X_valid: pd.DataFrame,
    y_valid: np.ndarray,
    X_test: pd.DataFrame,
    y_test: np.ndarray,
    level: float,
) -> Intervals:
    """Intervals for the test rows from the residuals on the validation rows, and their coverage."""
    from mapie.regression import SplitConformalRegressor

    conformal = SplitConformalRegressor(estimator=model, confidence_level=level, prefit=True)
    conformal.conformalize(X_valid, np.asarray(y_valid, dtype=np.float64))
    _, bounds = conformal.predict_interval(X_test)
    lower, upper = bounds[:, 0, 0].astype(np.float64), bounds[:, 1, 0].astype(np.float64)
    y = np.asarray(y_test, dtype=np.float64)
    covered = float(np.mean((lower <= y) & (y <= upper))) if len(y) else math.nan
    width = upper - lower
    return Intervals(
        level=level,
        coverage=covered,
        mean_width=float(width.mean()) if len(width) else math.nan,
        half_width=float(np.median(width) / 2) if len(width) else math.nan,
        calibration_rows=len(y_valid),
        test_rows=len(y),
        lower=lower,
        upper=upper,
    )
