"""The promotion gate: does a challenger model replace the champion?

The registry scores both models on the same rows (the frozen test split, plus the newest labelled
production window when there is one; or, on production evidence, the labelled batches both scored
while the challenger ran as a shadow, `monitoring.shadow`) and hands the arrays here; this module
only decides. Rules,
in order, each with a sentence that says why:

1. no rows -> reject;
2. a NaN metric for either model -> reject (a NaN comparison proves nothing);
3. no champion (the first model ever) -> promote only if the metric reaches `floor`;
4. the challenger must be better by more than `margin` (ties never promote, even with margin 0);
5. the paired bootstrap interval of the improvement must exclude zero;
6. no slice (e.g. origin airport) with at least `min_slice_rows` rows may be worse by more than
   `slice_tolerance`;
7. otherwise promote.

"Improvement" is always oriented so that positive means the challenger is better, whichever way
the metric points, so the rules read the same for ROC-AUC and RMSE. Everything is pure: arrays in,
a frozen `GateResult` out, whose `to_dict()` is the decision record.

Scores are those of `reproml.metrics`: P(positive) for binary classification, predictions for
regression, and for multiclass one probability column per class, both models' columns in the order
of `labels` (the class labels `y` holds), judged on a macro metric (default: macro one-vs-rest
ROC-AUC) with the same paired bootstrap.

What a metric is and which way is better lives in `reproml.metrics`; the bootstrap interval in
`reproml.bootstrap`. This module holds the rules only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np

from reproml.bootstrap import paired_bootstrap
from reproml.config import PromoteParams
from reproml.metrics import METRICS, MetricSpec, check_same_length, class_codes, metric_spec, oriented, score


class SliceRecord(TypedDict):
    """`SliceResult` as JSON (NaN as null)."""

    value: str
    rows: int
    challenger: float | None
    champion: float | None
    improvement: float | None
    judged: bool


class GateRecord(TypedDict):
    """`GateResult.to_dict`: the gate's verdict and every number behind it, as the registry's
    decision records keep it (NaN and infinities as null)."""

    promote: bool
    reason: str
    metric: str
    higher_is_better: bool
    challenger_value: float | None
    champion_value: float | None
    improvement: float | None
    interval: list[float | None] | None
    margin: float | None
    confidence: float | None
    rows: int
    slices: list[SliceRecord]


class _Numbers(TypedDict, total=False):
    """What the gate has measured so far (a rule may reject before the rest is known)."""

    challenger_value: float
    champion_value: float | None
    improvement: float | None
    interval: tuple[float, float] | None
    slices: list[SliceResult]


def _finite(value: float | None) -> float | None:
    """JSON has neither NaN nor infinities: None."""
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class SliceResult:
    """One value of the slice column. `improvement` is oriented (positive = challenger better);
    `judged` is False when the slice is too small or its metric is undefined for either model."""

    value: str
    rows: int
    challenger: float
    champion: float
    improvement: float
    judged: bool

    def to_dict(self) -> SliceRecord:
        return {
            "value": self.value,
            "rows": int(self.rows),
            "challenger": _finite(self.challenger),
            "champion": _finite(self.champion),
            "improvement": _finite(self.improvement),
            "judged": bool(self.judged),
        }


@dataclass(frozen=True)
class GateResult:
    promote: bool
    reason: str
    metric: str
    higher_is_better: bool
    challenger_value: float
    champion_value: float | None
    improvement: float | None
    interval: tuple[float, float] | None
    margin: float
    confidence: float
    rows: int
    slices: list[SliceResult]

    def to_dict(self) -> GateRecord:
        """The decision record: plain JSON types, NaN and infinities as None (JSON has neither)."""
        return {
            "promote": bool(self.promote),
            "reason": self.reason,
            "metric": self.metric,
            "higher_is_better": bool(self.higher_is_better),
            "challenger_value": _finite(self.challenger_value),
            "champion_value": _finite(self.champion_value),
            "improvement": _finite(self.improvement),
            "interval": None if self.interval is None else [_finite(v) for v in self.interval],
            "margin": _finite(self.margin),
            "confidence": _finite(self.confidence),
            "rows": int(self.rows),
            "slices": [s.to_dict() for s in self.slices],
        }


def decide(
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    params: PromoteParams,
    task: str,
    slices: np.ndarray | None = None,
    seed: int = 0,
    labels: Sequence[Any] | None = None,
) -> GateResult:
    """Apply the promotion rules (module docstring) in order; the first that fails gives the reason.

    Every field is filled with what can be computed, even when an early rule rejects, so the
    decision record always shows the numbers behind the verdict. `slices` holds the slice column's
    value per row (compared as `str`); it is only judged when `params.slice_column` is set.
    Multiclass scores are 2-D with columns in `labels` order, the labels `y` holds.
    """
    spec = metric_spec(params.metric, task)
    y = np.asarray(y)
    challenger = np.asarray(challenger, dtype=np.float64)
    champion = None if champion is None else np.asarray(champion, dtype=np.float64)
    slices = None if slices is None else np.asarray(slices, dtype=object)
    check_same_length(y, challenger, champion, slices)
    y = class_codes(y, challenger, labels)
    name, rows = spec.name, len(y)

    def result(promote: bool, reason: str, numbers: _Numbers | None = None) -> GateResult:
        known = numbers or {}
        return GateResult(
            promote=promote,
            reason=reason,
            metric=name,
            higher_is_better=spec.higher_is_better,
            challenger_value=known.get("challenger_value", math.nan),
            champion_value=known.get("champion_value"),
            improvement=known.get("improvement"),
            interval=known.get("interval"),
            margin=params.margin,
            confidence=params.confidence,
            rows=rows,
            slices=known.get("slices", []),
        )

    if rows == 0:
        return result(False, "no rows to score: nothing can justify a promotion")

    ours = score(spec, y, challenger)
    theirs = None if champion is None else score(spec, y, champion)
    per_slice = (
        _slice_results(spec, y, challenger, champion, slices, params.min_slice_rows)
        if slices is not None and params.slice_column is not None
        else []
    )
    known: _Numbers = {"challenger_value": ours, "champion_value": theirs, "slices": per_slice}

    if math.isnan(ours):
        return result(False, f"challenger {name} is NaN on {rows} rows: a missing metric rejects", known)
    if theirs is not None and math.isnan(theirs):
        return result(
            False,
            f"champion {name} is NaN on {rows} rows: a comparison with NaN proves nothing, so it rejects",
            known,
        )

    if champion is None or theirs is None:
        floor, what = first_model_floor(spec, y, challenger, params.floor)
        return _first_model(spec, ours, floor, what, result, known)

    improvement, low, high = paired_bootstrap(
        spec, y, challenger, champion, params.bootstrap_samples, params.confidence, seed
    )
    known["improvement"], known["interval"] = improvement, (low, high)
    versus = f"challenger {name} {_fmt(ours)} vs champion {_fmt(theirs)}"
    gain, margin = _signed(improvement), f"margin {_fmt(params.margin)}"
    level = f"{round(params.confidence * 100, 6):g}%"
    interval_text = f"{level} interval [{_fmt(low)}, {_fmt(high)}]"

    if improvement == 0.0:
        return result(False, f"{versus}: a tie (improvement 0); ties never promote", known)
    if improvement < 0.0:
        return result(False, f"{versus}: challenger is worse by {_fmt(-improvement)} ({margin})", known)
    if improvement <= params.margin:
        return result(False, f"{versus}: {gain} does not exceed {margin}", known)
    if math.isnan(low) or math.isnan(high):
        return result(False, f"{versus}: {gain} > {margin} but the {level} interval is undefined", known)
    if low <= 0.0:
        return result(False, f"{versus}: {gain} > {margin} but {interval_text} includes 0", known)

    tolerance = _fmt(params.slice_tolerance)
    failing = [s for s in per_slice if s.judged and s.improvement < -params.slice_tolerance]
    if failing:
        worst = min(failing, key=lambda s: s.improvement)
        where = f"{params.slice_column}={worst.value} ({worst.rows} rows)"
        return result(
            False,
            f"{versus} overall, but on {where} the challenger {name} is {_fmt(worst.challenger)} vs "
            f"{_fmt(worst.champion)}: worse by {_fmt(-worst.improvement)} > slice tolerance {tolerance}",
            known,
        )

    judged = sum(s.judged for s in per_slice)
    slices_ok = f", none of {judged} judged {params.slice_column} slices worse by more than {tolerance}"
    return result(
        True,
        f"{versus}: {gain} > {margin}, {interval_text} excludes 0" + (slices_ok if per_slice else ""),
        known,
    )


def first_model_floor(
    spec: MetricSpec, y: np.ndarray, challenger: np.ndarray, floor: float | None
) -> tuple[float, str]:
    """The floor a first model must reach, and where it comes from: `promote.floor` when set;
    else the metric's own floor in `reproml.metrics` (0.70 for ROC-AUC, binary or macro one-vs-rest),
    and for any other metric the value of a
    constant prediction on the same rows (the mean for regression and P(positive), the class
    shares for multiclass), which the first model must beat: a floor in the data's own units, so
    an RMSE of 40 minutes is not held to 0.70."""
    if floor is not None:
        return floor, ""
    fixed = METRICS[spec.name].floor
    if fixed is not None:
        return fixed, ""
    values = np.asarray(y, dtype=np.float64)
    if challenger.ndim == 2:  # multiclass: y holds column positions (class codes)
        shares = np.bincount(values.astype(np.int64), minlength=challenger.shape[1]) / max(len(values), 1)
        constant = np.tile(shares, (len(values), 1))
    else:
        constant = np.full(len(values), values.mean() if len(values) else math.nan)
    value = score(spec, y, constant)
    # "beat": a first model that only ties the constant is no model
    step = math.ulp(value) if math.isfinite(value) else 0.0
    return (value + step if spec.higher_is_better else value - step), " of a constant prediction"


def _first_model(
    spec: MetricSpec,
    value: float,
    floor: float,
    what: str,
    result: Callable[..., GateResult],
    known: _Numbers,
) -> GateResult:
    """No champion yet: a floor stops a broken first model from becoming the baseline."""
    meets = value >= floor if spec.higher_is_better else value <= floor
    needs = "at least" if spec.higher_is_better else "at most"
    verdict = "meets" if meets else "misses"
    return result(
        meets,
        f"first model: challenger {spec.name} {_fmt(value)} {verdict} the floor ({needs} "
        f"{_fmt(floor)}{what})",
        known,
    )


def _slice_results(
    spec: MetricSpec,
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    slices: np.ndarray,
    min_rows: int,
) -> list[SliceResult]:
    """Both models' metric per slice value, sorted by value; small or undefined slices are not judged
    (a few rows, or one class, would make any verdict noise)."""
    keys = np.array([str(v) for v in slices], dtype=object)
    out = []
    for value in sorted(set(keys.tolist())):
        mask = keys == value
        size = int(mask.sum())
        ours = score(spec, y[mask], challenger[mask])
        theirs = math.nan if champion is None else score(spec, y[mask], champion[mask])
        improvement = oriented(spec, ours, theirs)
        judged = size >= min_rows and math.isfinite(improvement)
        out.append(SliceResult(str(value), size, ours, theirs, improvement, judged))
    return out


def _fmt(value: float) -> str:
    """Four decimals, which suits AUCs and RMSEs alike, switching to significant digits for tiny values
    so a margin of 0.00005 does not print as 0.0000."""
    if math.isnan(value):
        return "nan"
    if value != 0.0 and abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4f}"


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "") + _fmt(value)
