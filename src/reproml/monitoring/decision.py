"""The retrain decision: pure, numbers in, a verdict with its reasons out.

Verdicts, the first that applies:

1. `quarantined`: the batch failed the data-quality gate; nothing measured on it counts.
2. `out_of_order`: the batch is back-dated, its newest row older than the newest row of a batch
   already monitored (unless monitored as a backfill on purpose). Judging it as if it were the
   latest news would start a retrain on stale data, and its batch time would sit behind retrains
   already counted; it is recorded, naming both periods, and not measured.
3. `insufficient_data`: fewer than `min_rows` rows; distances and metrics on a few dozen rows are
   noise (Evidently flags drift on most 30-row samples of the very data it was trained on).
4. `retrain` when either trigger fires:
   - quality: the metric is worse than on the champion's test split by more than
     `quality_margin`, and the bootstrap interval of the drop excludes zero;
   - drift: the drifted features (distance >= `drift_effect_floor`) hold at least
     `drift_threshold` of the champion's feature importance;
   - estimated quality, only when the batch has too few labels for the quality trigger: the
     metric estimated from the scores alone (CBPE / DLE) is worse than realised on the estimate's
     reference by more than `quality_margin`, and so is the better edge of its band (the reasons
     say "estimated"). A batch with labels is judged on its realised quality; its estimate is
     reported, with the shift it shows (concept drift or covariate shift);
   ...unless the loop guard holds it (`retrain_held`): another retrain verdict less than
   `cooldown` before this batch, or already `max_retrains` within the last `retrain_period`.
   Both are measured in the batches' own time (days of their time column) or in batches,
   per `cooldown_unit`, over earlier records, so replaying past data decides as it would have;
   `out_of_order` records are no batches for this count.
5. `ok`.

Every number a rule looked at, and every threshold, goes into the record, whatever the verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from reproml.config import MonitorParams
from reproml.monitoring.concept import QualityChange
from reproml.monitoring.drift import DriftResult
from reproml.monitoring.estimate import Estimate, describe
from reproml.monitoring.records import BatchDecision, BatchRecord, LoopGuardRecord, Thresholds

RETRAIN, HELD, OK = "retrain", "retrain_held", "ok"
INSUFFICIENT, QUARANTINED, OUT_OF_ORDER = "insufficient_data", "quarantined", "out_of_order"
VERDICTS = (RETRAIN, HELD, OK, INSUFFICIENT, QUARANTINED, OUT_OF_ORDER)
MEASURED = (RETRAIN, HELD, OK)  # the verdicts of a batch whose drift (and quality) were measured


@dataclass(frozen=True)
class Evidence:
    """What one batch showed; `drift` and `change` are None where they were not measured."""

    quality_passed: bool
    problems: list[str]
    rows: int
    labelled_rows: int
    drift: DriftResult | None = None
    change: QualityChange | None = None
    batch_time: pd.Timestamp | None = None  # the batch's last timestamp
    seq: int = 0  # the batch's position among monitored batches
    out_of_order: str | None = None  # why the batch is back-dated (see `back_dated`); None if not
    estimate: Estimate | None = None  # the quality estimated without labels (CBPE / DLE)


@dataclass(frozen=True)
class Decision:
    verdict: str
    summary: str  # one line: what fired (or why nothing did); the reasons hold the numbers
    reasons: list[str]
    triggers: dict[str, bool]
    thresholds: Thresholds
    loop_guard: LoopGuardRecord = field(default_factory=LoopGuardRecord)

    def to_dict(self) -> BatchDecision:
        return {
            "verdict": self.verdict,
            "summary": self.summary,
            "reasons": list(self.reasons),
            "triggers": dict(self.triggers),
            "thresholds": dict(self.thresholds),
            "loop_guard": LoopGuardRecord(**self.loop_guard),
        }


def thresholds(params: MonitorParams) -> Thresholds:
    return params.model_dump(mode="json")


def _f(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _drift_reason(drift: DriftResult, params: MonitorParams) -> tuple[bool, str]:
    fired = drift.weighted_drift_share >= params.drift_threshold
    top = [c for c in drift.columns if c.drifted][:5]
    named = ", ".join(f"{c.column} (weight {c.weight:.2f}, distance {c.score:.3f})" for c in top) or "none"
    skipped = [c.column for c in drift.columns if not c.judged]
    text = (
        f"weighted feature drift {drift.weighted_drift_share:.3f} "
        f"{'>=' if fired else '<'} monitor.drift_threshold {params.drift_threshold} "
        f"({drift.weighting} weights; drifted = distance >= {params.drift_effect_floor} and "
        f"p < {params.drift_alpha}: {named}; "
        f"unweighted share {drift.drift_share:.3f})"
    )
    if skipped:
        text += f"; not judged (too few values): {skipped}"
    return fired, text


def _quality_reason(change: QualityChange, params: MonitorParams) -> tuple[bool, str]:
    low, high = change.interval
    level = f"{round(change.confidence * 100, 6):g}%"
    head = (
        f"{change.metric} {_f(change.batch_value)} on the batch vs {_f(change.reference_value)} on the "
        f"champion's test split: drop {_f(change.drop)}, {level} interval [{_f(low)}, {_f(high)}]"
    )
    if not (math.isfinite(change.drop) and math.isfinite(low)):
        why = f" ({change.note})" if change.note else ""
        return False, f"{head}: undefined{why}, quality not judged"
    if change.drop <= params.quality_margin:
        return False, f"{head}: within monitor.quality_margin {params.quality_margin}"
    if low <= 0.0:
        return False, f"{head}: beyond the margin but the interval includes 0"
    return True, f"{head}: beyond monitor.quality_margin {params.quality_margin}, interval excludes 0"


def _estimate_reason(found: Estimate, params: MonitorParams) -> tuple[bool, str]:
    head = describe(found)
    if not (math.isfinite(found.drop) and math.isfinite(found.band_drop)):
        return False, f"{head}: undefined, estimated quality not judged"
    if found.drop <= params.quality_margin:
        return False, f"{head}: within monitor.quality_margin {params.quality_margin}"
    if found.band_drop <= 0.0:
        return False, f"{head}: beyond the margin but the estimate's band reaches the reference"
    return True, (
        f"{head}: beyond monitor.quality_margin {params.quality_margin}, band clear of the reference "
        f"(shift: {found.shift})"
    )


def newest_monitored(past: list[BatchRecord]) -> BatchRecord | None:
    """The earlier record with the latest batch time (its newest row), if any has one."""
    dated = [(pd.Timestamp(stamp), r) for r in past if (stamp := r.get("batch_time"))]
    return max(dated, key=lambda pair: pair[0])[1] if dated else None


def back_dated(
    past: list[BatchRecord], batch_start: pd.Timestamp | None, batch_time: pd.Timestamp | None
) -> str | None:
    """Why a batch is out of order - its newest row is older than the newest row of a batch already
    monitored - naming both periods; None when it is not (or has no time to compare)."""
    newest = newest_monitored(past)
    newest_time = None if newest is None else newest.get("batch_time")
    if newest is None or newest_time is None or batch_time is None or batch_time >= pd.Timestamp(newest_time):
        return None
    start = "?" if batch_start is None else f"{batch_start:%Y-%m-%d %H:%M}"
    other_start = newest.get("batch_start")
    other = f"{pd.Timestamp(other_start):%Y-%m-%d %H:%M}" if other_start else "?"
    return (
        f"back-dated: this batch covers {start} to {batch_time:%Y-%m-%d %H:%M}, older than batch "
        f"{newest.get('batch_id')} already monitored ({other} to "
        f"{pd.Timestamp(newest_time):%Y-%m-%d %H:%M}); not measured and never a retrain. "
        "To monitor a late batch on purpose: `reproml monitor --batch ... --backfill` "
        "(monitoring flow: backfill=True)"
    )


def loop_guard(
    past: list[BatchRecord], batch_time: pd.Timestamp | None, seq: int, params: MonitorParams
) -> tuple[str | None, LoopGuardRecord]:
    """Why a retrain verdict must be held (cooldown or max per period), or None; plus the numbers.

    Only earlier retrain verdicts count: a held verdict did not start a retrain, and neither did
    one the hand-off could not act on (`retrain_skipped`: no labels, none arrived). A batch judged
    again when its labels arrived (`labels_decision`) counts its retrain verdict on them too, at the
    batch's own time: a batch may so count twice (its estimate retrained on older rows, its labels
    on its own). In `days`, a
    batch without a time column falls back to its position (`batches`), said in the numbers.
    In `batches`, a position counts the batches monitored before it, `out_of_order` ones excluded:
    a late batch that was turned away must not shorten a cooldown.
    """
    unit = params.cooldown_unit if batch_time is not None else "batches"
    retrains = [r for r in past if r.get("verdict") == RETRAIN and not r.get("retrain_skipped")]
    retrains += [r for r in past if (again := r.get("labels_decision")) and again["verdict"] == RETRAIN]
    turned_away = [int(r.get("seq", 0)) for r in past if r.get("verdict") == OUT_OF_ORDER]

    def ordinal(at: int) -> float:
        """Sequence number `at`, less the out-of-order batches before it."""
        return float(at - sum(1 for s in turned_away if s < at))

    def position(record: BatchRecord) -> float | None:
        if unit == "batches":
            return ordinal(int(record.get("seq", 0)))
        stamp = record.get("batch_time")
        return None if stamp is None else pd.Timestamp(stamp).value / 86_400e9

    now = ordinal(seq) if unit == "batches" else batch_time.value / 86_400e9  # type: ignore[union-attr]
    earlier = [(p, r) for r in retrains if (p := position(r)) is not None and p <= now]
    numbers: LoopGuardRecord = {"unit": unit, "retrains_before": len(earlier)}
    if not earlier:
        return None, numbers
    last_at, last = max(earlier, key=lambda pair: pair[0])
    since = now - last_at - (1 if unit == "batches" else 0)  # batches strictly between the two
    in_period = [r for p, r in earlier if now - p < params.retrain_period]
    numbers |= {
        "last_retrain_batch": last.get("batch_id"),
        "since_last_retrain": since,
        "retrains_in_period": len(in_period),
    }
    if since < params.cooldown:
        return (
            f"held by the cooldown: batch {last.get('batch_id')} got a retrain verdict {since:g} {unit} "
            f"earlier (monitor.cooldown {params.cooldown} {unit})",
            numbers,
        )
    if len(in_period) >= params.max_retrains:
        return (
            f"held by the retrain limit: {len(in_period)} retrain verdicts within {params.retrain_period} "
            f"{unit} (monitor.max_retrains {params.max_retrains})",
            numbers,
        )
    return None, numbers


def decide(evidence: Evidence, params: MonitorParams, past: list[BatchRecord]) -> Decision:
    limits = thresholds(params)
    if not evidence.quality_passed:
        problems = evidence.problems or ["failed"]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return Decision(
            QUARANTINED,
            f"quality gate: {problems[0]}{more}",
            [f"quality gate: {p}" for p in problems],
            {},
            limits,
        )
    if evidence.out_of_order:
        return Decision(
            OUT_OF_ORDER, evidence.out_of_order.split(";")[0], [evidence.out_of_order], {}, limits
        )
    if evidence.rows < params.min_rows:
        reason = (
            f"{evidence.rows} rows < monitor.min_rows {params.min_rows}: drift and quality measured on so "
            "few rows are noise, not evidence"
        )
        return Decision(
            INSUFFICIENT, f"{evidence.rows} rows < min_rows {params.min_rows}", [reason], {}, limits
        )

    reasons: list[str] = []
    triggers: dict[str, bool] = {}
    if evidence.drift is not None:
        triggers["feature_drift"], text = _drift_reason(evidence.drift, params)
        reasons.append(text)
        predicted = evidence.drift.prediction
        if predicted is not None and predicted.score is not None:
            what = "predicted-class drift" if predicted.kind == "categorical" else "prediction drift"
            reasons.append(
                f"{what} distance {predicted.score:.3f} ({predicted.method}; reported, not a trigger)"
            )
    if evidence.change is not None:
        triggers["quality_drop"], text = _quality_reason(evidence.change, params)
        reasons.append(text)
    elif evidence.estimate is not None:
        triggers["estimated_quality_drop"], text = _estimate_reason(evidence.estimate, params)
        having = "no labels" if evidence.labelled_rows == 0 else f"{evidence.labelled_rows} labelled rows"
        reasons.append(f"{having} in the batch: quality judged on the estimate; {text}")
    elif evidence.labelled_rows == 0:
        reasons.append("no labels in the batch: quality not judged")
    else:
        reasons.append(
            f"{evidence.labelled_rows} labelled rows < monitor.min_rows {params.min_rows}: quality not judged"
        )
    if evidence.change is not None and evidence.estimate is not None:
        found = evidence.estimate
        reasons.append(
            f"{describe(found)}; realised {_f(found.realised)}, shift: {found.shift} "
            "(reported, not a trigger)"
        )

    fired = " and ".join(_trigger_text(name, evidence, params) for name, on in triggers.items() if on)
    if not fired:
        quiet = "; ".join(_trigger_text(name, evidence, params) for name in triggers) or "nothing measured"
        return Decision(OK, f"no trigger: {quiet}", reasons, triggers, limits)
    held, numbers = loop_guard(past, evidence.batch_time, evidence.seq, params)
    if held:
        return Decision(HELD, f"{fired}; {held.split(':')[0]}", [*reasons, held], triggers, limits, numbers)
    return Decision(RETRAIN, fired, reasons, triggers, limits, numbers)


def _trigger_text(name: str, evidence: Evidence, params: MonitorParams) -> str:
    """A trigger in a few words, with its number and threshold."""
    if name == "feature_drift" and evidence.drift is not None:
        share = evidence.drift.weighted_drift_share
        sign = ">=" if share >= params.drift_threshold else "<"
        return f"weighted feature drift {share:.3f} {sign} {params.drift_threshold}"
    if name == "estimated_quality_drop" and evidence.estimate is not None:
        found = evidence.estimate
        sign = ">" if found.drop > params.quality_margin else "<="
        return f"estimated {found.metric} drop {found.drop:.4f} {sign} {params.quality_margin}"
    change = evidence.change
    if change is None or not math.isfinite(change.drop) or not math.isfinite(change.interval[0]):
        return f"{name}: undefined"
    low = change.interval[0]
    if change.drop > params.quality_margin and low > 0:
        return (
            f"{change.metric} drop {change.drop:.4f} > {params.quality_margin} (interval low {low:.4f} > 0)"
        )
    return f"{change.metric} drop {change.drop:.4f} (margin {params.quality_margin}, interval low {low:.4f})"
