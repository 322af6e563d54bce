"""The promotion gate: does a challenger model replace the champion?

The registry scores both models on the same rows (the frozen test split, plus the newest labelled
production window when there is one) and hands the arrays here; this module only decides. Rules,
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
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm

from reproml.config import PromoteParams
from reproml.errors import ConfigError
from reproml.evaluate import PRIMARY_METRIC

# metric -> higher is better, per task; the names are those `evaluate.compute_metrics` reports.
_METRICS: dict[str, dict[str, bool]] = {
    "classification": {
        "accuracy": True,
        "precision": True,
        "recall": True,
        "f1": True,
        "roc_auc": True,
        "pr_auc": True,
        "log_loss": False,
    },
    "regression": {"mae": False, "mse": False, "rmse": False, "r2": True},
}
_THRESHOLD = 0.5  # the same cut `evaluate.compute_metrics` uses for the label metrics
_RANKING = frozenset({"roc_auc", "pr_auc"})


class UnknownMetricError(ConfigError, ValueError):
    """`promote.metric` names no metric of the task: a ConfigError (the CLI prints it plainly) that
    is also a ValueError (what a caller passing a bad name programmatically expects)."""


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool


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

    def to_dict(self) -> dict[str, Any]:
        """The decision record: plain JSON types, NaN and infinities as None (JSON has neither)."""
        return _jsonable(dataclasses.asdict(self))


def metric_spec(name: str | None, task: str) -> MetricSpec:
    """Resolve `promote.metric`; None means the project's primary metric for the task."""
    if task not in _METRICS:
        raise ValueError(f"unknown task {task!r}: expected one of {sorted(_METRICS)}")
    if name is None:
        name = PRIMARY_METRIC[task]
    directions = _METRICS[task]
    if name not in directions:
        raise UnknownMetricError(
            f"unknown metric {name!r} for {task} (promote.metric): expected one of {', '.join(directions)}"
        )
    return MetricSpec(name=name, higher_is_better=directions[name])


def score(
    spec: MetricSpec, y: np.ndarray, scores: np.ndarray, sample_weight: np.ndarray | None = None
) -> float:
    """The metric of `scores` against `y`, or NaN where it is undefined.

    Scores are P(positive) for classification (cut at 0.5 for the label metrics, as in
    `evaluate.compute_metrics`) and predictions for regression. Undefined cases (no rows, NaN or
    infinite inputs, a ranking metric with one class present, R2 of a constant target) give NaN
    instead of raising, because the gate must turn them into a clear rejection, not a traceback.
    Mismatched lengths still raise: that is a caller's bug, not an undefined metric.
    """
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    _check_same_length(y, scores, weight)
    if len(y) == 0 or (weight is not None and not weight.sum() > 0):
        return math.nan
    if not (np.all(np.isfinite(scores)) and _all_finite(y)):
        return math.nan
    name = spec.name
    if name in _RANKING:
        present = (y == 1) if weight is None else (y == 1) & (weight > 0)
        absent = (y != 1) if weight is None else (y != 1) & (weight > 0)
        if not (present.any() and absent.any()):
            return math.nan  # no ranking to judge with one class (AP would be a meaningless 0 or 1)
        if name == "roc_auc":
            return float(skm.roc_auc_score(y, scores, sample_weight=weight))
        return float(skm.average_precision_score(y, scores, sample_weight=weight))
    labels = (scores >= _THRESHOLD).astype(int)
    value: float
    if name == "accuracy":
        value = skm.accuracy_score(y, labels, sample_weight=weight)
    elif name == "precision":
        value = skm.precision_score(y, labels, sample_weight=weight, zero_division=0)
    elif name == "recall":
        value = skm.recall_score(y, labels, sample_weight=weight, zero_division=0)
    elif name == "f1":
        value = skm.f1_score(y, labels, sample_weight=weight, zero_division=0)
    elif name == "log_loss":
        value = skm.log_loss(y, np.clip(scores, 1e-15, 1 - 1e-15), sample_weight=weight, labels=[0, 1])
    elif name == "mae":
        value = skm.mean_absolute_error(y, scores, sample_weight=weight)
    elif name == "mse":
        value = skm.mean_squared_error(y, scores, sample_weight=weight)
    elif name == "rmse":
        value = skm.root_mean_squared_error(y, scores, sample_weight=weight)
    elif name == "r2":
        if len(y) < 2:
            return math.nan
        value = skm.r2_score(y, scores, sample_weight=weight, force_finite=False)
    else:  # pragma: no cover - metric_spec only builds known names
        raise ValueError(f"unknown metric {name!r}")
    value = float(value)
    return value if math.isfinite(value) else math.nan


def paired_bootstrap(
    spec: MetricSpec,
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    samples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float, float]:
    """(improvement, low, high): the oriented improvement on all rows and its percentile interval.

    Each resample draws rows with replacement once and scores BOTH models on those rows, so the
    interval is of the paired difference: the row-to-row noise both models share cancels, which is
    what makes a small real improvement detectable. A resample is drawn as per-row counts used as
    sample weights, which is the same as materialising the resampled rows but cheaper. Resamples on
    which the metric is undefined (e.g. one class drawn) are dropped; if none is left the interval
    is NaN, which the gate rejects. Deterministic for a seed.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    y = np.asarray(y)
    challenger = np.asarray(challenger, dtype=np.float64)
    champion = np.asarray(champion, dtype=np.float64)
    _check_same_length(y, challenger, champion)
    improvement = _oriented(spec, score(spec, y, challenger), score(spec, y, champion))
    n = len(y)
    if n == 0 or not math.isfinite(improvement):
        return improvement, math.nan, math.nan
    challenger_at = _weighted_scorer(spec, y, challenger)
    champion_at = _weighted_scorer(spec, y, champion)
    rng = np.random.default_rng(seed)
    diffs = np.empty(samples, dtype=np.float64)
    for i in range(samples):
        counts = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)
        diffs[i] = _oriented(spec, challenger_at(counts), champion_at(counts))
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return improvement, math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return improvement, float(low), float(high)


def decide(
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    params: PromoteParams,
    task: str,
    slices: np.ndarray | None = None,
    seed: int = 0,
) -> GateResult:
    """Apply the promotion rules (module docstring) in order; the first that fails gives the reason.

    Every field is filled with what can be computed, even when an early rule rejects, so the
    decision record always shows the numbers behind the verdict. `slices` holds the slice column's
    value per row (compared as `str`); it is only judged when `params.slice_column` is set.
    """
    spec = metric_spec(params.metric, task)
    y = np.asarray(y)
    challenger = np.asarray(challenger, dtype=np.float64)
    champion = None if champion is None else np.asarray(champion, dtype=np.float64)
    slices = None if slices is None else np.asarray(slices, dtype=object)
    _check_same_length(y, challenger, champion, slices)
    name, rows = spec.name, len(y)

    def result(promote: bool, reason: str, **numbers: Any) -> GateResult:
        fields: dict[str, Any] = {
            "challenger_value": math.nan,
            "champion_value": None,
            "improvement": None,
            "interval": None,
            "slices": [],
            **numbers,
        }
        return GateResult(
            promote=promote,
            reason=reason,
            metric=name,
            higher_is_better=spec.higher_is_better,
            margin=params.margin,
            confidence=params.confidence,
            rows=rows,
            **fields,
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
    known: dict[str, Any] = {"challenger_value": ours, "champion_value": theirs, "slices": per_slice}

    if math.isnan(ours):
        return result(False, f"challenger {name} is NaN on {rows} rows: a missing metric rejects", **known)
    if theirs is not None and math.isnan(theirs):
        return result(
            False,
            f"champion {name} is NaN on {rows} rows: a comparison with NaN proves nothing, so it rejects",
            **known,
        )

    if champion is None or theirs is None:
        return _first_model(spec, ours, params.floor, result, known)

    improvement, low, high = paired_bootstrap(
        spec, y, challenger, champion, params.bootstrap_samples, params.confidence, seed
    )
    known.update(improvement=improvement, interval=(low, high))
    versus = f"challenger {name} {_fmt(ours)} vs champion {_fmt(theirs)}"
    gain, margin = _signed(improvement), f"margin {_fmt(params.margin)}"
    level = f"{round(params.confidence * 100, 6):g}%"
    interval_text = f"{level} interval [{_fmt(low)}, {_fmt(high)}]"

    if improvement == 0.0:
        return result(False, f"{versus}: a tie (improvement 0); ties never promote", **known)
    if improvement < 0.0:
        return result(False, f"{versus}: challenger is worse by {_fmt(-improvement)} ({margin})", **known)
    if improvement <= params.margin:
        return result(False, f"{versus}: {gain} does not exceed {margin}", **known)
    if math.isnan(low) or math.isnan(high):
        return result(False, f"{versus}: {gain} > {margin} but the {level} interval is undefined", **known)
    if low <= 0.0:
        return result(False, f"{versus}: {gain} > {margin} but {interval_text} includes 0", **known)

    tolerance = _fmt(params.slice_tolerance)
    failing = [s for s in per_slice if s.judged and s.improvement < -params.slice_tolerance]
    if failing:
        worst = min(failing, key=lambda s: s.improvement)
        where = f"{params.slice_column}={worst.value} ({worst.rows} rows)"
        return result(
            False,
            f"{versus} overall, but on {where} the challenger {name} is {_fmt(worst.challenger)} vs "
            f"{_fmt(worst.champion)}: worse by {_fmt(-worst.improvement)} > slice tolerance {tolerance}",
            **known,
        )

    judged = sum(s.judged for s in per_slice)
    slices_ok = f", none of {judged} judged {params.slice_column} slices worse by more than {tolerance}"
    return result(
        True,
        f"{versus}: {gain} > {margin}, {interval_text} excludes 0" + (slices_ok if per_slice else ""),
        **known,
    )


def _first_model(
    spec: MetricSpec,
    value: float,
    floor: float,
    result: Callable[..., GateResult],
    known: dict[str, Any],
) -> GateResult:
    """No champion yet: an absolute floor stops a broken first model from becoming the baseline."""
    meets = value >= floor if spec.higher_is_better else value <= floor
    needs = "at least" if spec.higher_is_better else "at most"
    verdict = "meets" if meets else "misses"
    return result(
        meets,
        f"first model: challenger {spec.name} {_fmt(value)} {verdict} the floor ({needs} {_fmt(floor)})",
        **known,
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
        improvement = _oriented(spec, ours, theirs)
        judged = size >= min_rows and math.isfinite(improvement)
        out.append(SliceResult(str(value), size, ours, theirs, improvement, judged))
    return out


def weighted_scorer(spec: MetricSpec, y: np.ndarray, scores: np.ndarray) -> Callable[[np.ndarray], float]:
    """`row weights -> metric` for bootstrap resamples drawn as per-row counts (see `paired_bootstrap`).

    Public for monitoring, whose quality interval resamples the same way and needs the same fast
    ROC-AUC path to stay within its time budget.
    """
    return _weighted_scorer(spec, y, scores)


def _weighted_scorer(spec: MetricSpec, y: np.ndarray, scores: np.ndarray) -> Callable[[np.ndarray], float]:
    """`weights -> metric`, precomputing what does not change between resamples.

    ROC-AUC gets a dedicated path: sklearn re-sorts the scores on every call (~12 ms at 27k rows,
    so ~12 s for 500 paired resamples), while the scores' order never changes between resamples.
    Grouping the rows by distinct score once makes each resample two `bincount`s and a `cumsum`.
    tests/test_gate.py checks it against `sklearn.metrics.roc_auc_score(sample_weight=...)`.
    """
    if spec.name == "roc_auc" and np.all(np.isfinite(scores)) and _all_finite(y):
        return _presorted_auc(y, scores)
    return lambda weight: score(spec, y, scores, sample_weight=weight)


def _presorted_auc(y: np.ndarray, scores: np.ndarray) -> Callable[[np.ndarray], float]:
    """Weighted ROC-AUC = P(score of a positive > score of a negative) + half the ties, weights as
    row multiplicities: exactly the trapezoidal area sklearn computes."""
    _, group = np.unique(scores, return_inverse=True)  # groups in ascending score order
    group = group.ravel()
    groups = int(group.max()) + 1 if group.size else 0
    positive = (np.asarray(y) == 1).astype(np.float64)

    def auc(weight: np.ndarray) -> float:
        pos = np.bincount(group, weights=weight * positive, minlength=groups)
        neg = np.bincount(group, weights=weight, minlength=groups) - pos
        total_pos, total_neg = float(pos.sum()), float(neg.sum())
        if total_pos <= 0.0 or total_neg <= 0.0:
            return math.nan
        negatives_below = np.cumsum(neg) - neg
        # np.sum of a product, not `@`: BLAS dot spins up threads that stall on a busy 2-core machine
        return float(np.sum(pos * (negatives_below + 0.5 * neg))) / (total_pos * total_neg)

    return auc


def _oriented(spec: MetricSpec, challenger: float, champion: float) -> float:
    """Positive means the challenger is better, whichever way the metric points."""
    return challenger - champion if spec.higher_is_better else champion - challenger


def _check_same_length(*arrays: np.ndarray | None) -> None:
    lengths = {len(a) for a in arrays if a is not None}
    if len(lengths) > 1:
        raise ValueError(f"arrays must have one value per row; got lengths {sorted(lengths)}")


def _all_finite(values: np.ndarray) -> bool:
    """True unless a numeric array holds NaN/inf (labels of other dtypes cannot)."""
    return not np.issubdtype(values.dtype, np.number) or bool(np.all(np.isfinite(values)))


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


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
