"""Data drift of the features and of the predictions, by Evidently, weighted by what the champion uses.

Evidently measures; this module chooses how and condenses:

- Methods are fixed to distances, not p-values: normed Wasserstein for numbers, Jensen-Shannon
  for categories, whatever the sample sizes (Evidently's automatic choice switches to p-value
  tests under 1,000 reference rows, and at tens of thousands of rows a p-value flags differences
  nobody cares about). A column drifts when its distance reaches `drift_effect_floor` - an effect
  size, the same rule Evidently's own test applies with that threshold - AND a two-sample test on
  the same rows (Kolmogorov-Smirnov for numbers, chi-square for categories; SciPy, milliseconds)
  gives p < `drift_alpha`. The test is the noise guard for small batches: at a thousand rows
  against a small reference, sampling noise alone reaches a distance of 0.1 now and then; at
  production sizes every distance above the floor is also significant, so the floor decides.
- Category columns are compared as the champion sees them, in the groups its fitted encoder
  makes (`reproml.features.category_levels`): each value with a code of its own; the rare
  training values it pools into one "infrequent" code, as "(other)", so a long tail of tail
  numbers cannot look like drift the model never feels; and values never seen in training,
  which the model takes as missing, as "(unseen)". They are not pooled with "(other)": the
  model treats them differently (missing, not infrequent), and a shift from rare known values to
  new ones changes what the model sees. They are not left missing either, because Evidently
  drops missing values before measuring: a flood of new values would read as "no drift". So the
  buckets are the model's own groups with missing split into "really missing" and "(unseen)": a
  finer split can only show more drift than the model's, never hide drift the model feels.
- The time column is not judged: calendar time moves by construction, so a production month
  always "drifts" from the training months; its effect shows up in the quality numbers instead.
- A column with fewer than `min_rows` present values in the batch is listed as not judged:
  distances on a handful of values are noise, and Evidently raises on an all-missing column.
- The weighted drift share is the share of the champion's permutation importance (negative
  importances count as zero) held by the drifted judged features. A shift in a feature the model
  ignores moves the plain drift share but not this one.
- Prediction drift (reported, never a trigger) is measured on the champion's output as it is
  used: P(positive) for binary classification and the predicted value for regression (numbers);
  for multiclass, the predicted class, as a category (Jensen-Shannon, chi-square). The class is
  what downstream acts on and one column keeps one headline number with the categories' own
  method and noise guard; the K probability columns sum to one, so K distances would largely
  repeat each other and need a multiple-testing rule for a number that triggers nothing. Each
  class's probability is still measured (Wasserstein, KS) and listed under `probabilities`, so a
  shift in confidence that leaves the predicted classes alone is visible in the record and report.

`measure` returns the numbers and the Evidently snapshot (for the HTML report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from reproml.features import CategoryLevels
from reproml.monitoring.quality import Schema
from reproml.monitoring.records import ColumnDriftRecord, DriftRecord
from reproml.monitoring.scores import PREDICTION, proba_columns

NUMERIC_METHOD, CATEGORICAL_METHOD = "wasserstein", "jensenshannon"
OTHER, UNSEEN = "(other)", "(unseen)"


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: str
    method: str | None
    score: float | None
    drifted: bool
    judged: bool
    importance: float  # the champion's permutation importance, as logged
    weight: float  # share of the judged features' (non-negative) importance
    present: int  # non-missing values in the batch sample
    p_value: float | None = None  # the noise guard's two-sample test
    note: str | None = None

    def to_dict(self) -> ColumnDriftRecord:
        return {
            "column": self.column,
            "kind": self.kind,
            "method": self.method,
            "score": self.score,
            "drifted": self.drifted,
            "judged": self.judged,
            "importance": self.importance,
            "weight": self.weight,
            "present": self.present,
            "p_value": self.p_value,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: ColumnDriftRecord) -> ColumnDrift:
        """A column's drift as a record holds it (`to_dict` read back)."""
        return cls(
            column=data["column"],
            kind=data["kind"],
            method=data["method"],
            score=data["score"],
            drifted=data["drifted"],
            judged=data["judged"],
            importance=data["importance"],
            weight=data["weight"],
            present=data["present"],
            p_value=data.get("p_value"),
            note=data.get("note"),
        )


@dataclass(frozen=True)
class DriftResult:
    effect_floor: float
    reference_rows: int
    batch_rows: int
    columns: list[ColumnDrift]
    prediction: ColumnDrift | None
    drift_share: float  # drifted / judged features, unweighted
    weighted_drift_share: float  # importance held by drifted features / importance of judged ones
    weighting: str  # "importance", or "uniform" when no judged feature has positive importance
    probabilities: list[ColumnDrift] = field(default_factory=list)  # multiclass: per class, reported
    snapshot: Any = field(default=None, repr=False)

    @property
    def drifted(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def to_dict(self) -> DriftRecord:
        return {
            "effect_floor": self.effect_floor,
            "reference_rows": self.reference_rows,
            "batch_rows": self.batch_rows,
            "columns": [c.to_dict() for c in self.columns],
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
            "drift_share": self.drift_share,
            "weighted_drift_share": self.weighted_drift_share,
            "weighting": self.weighting,
            "probabilities": [c.to_dict() for c in self.probabilities],
            "methods": {"numeric": NUMERIC_METHOD, "categorical": CATEGORICAL_METHOD},
            "drifted": self.drifted,
        }

    @classmethod
    def from_dict(cls, data: DriftRecord) -> DriftResult:
        """The drift a record holds (`to_dict` read back, without the Evidently snapshot): what the
        decision reads when a batch is judged again once its labels arrive."""
        prediction = data.get("prediction")
        return cls(
            effect_floor=data["effect_floor"],
            reference_rows=data["reference_rows"],
            batch_rows=data["batch_rows"],
            columns=[ColumnDrift.from_dict(c) for c in data["columns"]],
            prediction=None if prediction is None else ColumnDrift.from_dict(prediction),
            drift_share=data["drift_share"],
            weighted_drift_share=data["weighted_drift_share"],
            weighting=data["weighting"],
            probabilities=[ColumnDrift.from_dict(c) for c in data.get("probabilities", [])],
        )


def reference_levels(reference: pd.Series, max_categories: int) -> CategoryLevels:
    """The groups sklearn's encoders make with `max_categories` (the most frequent
    `max_categories - 1` values kept when there are more than `max_categories`), from the whole
    training column: for a champion whose encoder cannot be read (`category_levels` gave None)."""
    counts = reference.dropna().astype(str).value_counts(sort=True)
    if len(counts) <= max_categories:
        return CategoryLevels(frozenset(counts.index), frozenset())
    kept = max_categories - 1
    return CategoryLevels(frozenset(counts.index[:kept]), frozenset(counts.index[kept:]))


def bucket(values: pd.Series, levels: CategoryLevels) -> pd.Series:
    """Each value as the model groups it: itself, "(other)" (rare in training: the infrequent
    code) or "(unseen)" (never in training: missing to the model); missing stays missing."""
    as_text = values.astype(object).where(values.notna(), None)
    text = as_text.astype(str)
    grouped = as_text.where(text.isin(levels.kept), OTHER)
    grouped = grouped.where(text.isin(levels.kept) | text.isin(levels.pooled), UNSEEN)
    return grouped.where(as_text.notna(), None)


def p_value(reference: pd.Series, batch: pd.Series, kind: str) -> float:
    """Two-sample test of "same distribution": KS for numbers, chi-square of the category counts."""
    from scipy import stats

    ref, cur = reference.dropna(), batch.dropna()
    if kind == "numeric":
        return float(stats.ks_2samp(ref.to_numpy(float), cur.to_numpy(float), method="asymp").pvalue)
    counts = pd.concat([ref.value_counts(), cur.value_counts()], axis=1).fillna(0.0).to_numpy()
    counts = counts[counts.sum(axis=1) > 0]
    if len(counts) < 2:
        return 1.0
    return float(stats.chi2_contingency(counts.T, correction=False).pvalue)


def _scores(snapshot: Any) -> dict[str, tuple[float, str]]:
    """column -> (distance, Evidently's method name) from the snapshot's ValueDrift metrics."""
    out: dict[str, tuple[float, str]] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if str(config.get("type", "")).endswith(":ValueDrift"):
            out[str(config["column"])] = (float(metric["value"]), str(config.get("method")))
    return out


def measure(
    reference: pd.DataFrame,
    batch: pd.DataFrame,
    schema: Schema,
    importance: dict[str, float],
    levels: dict[str, CategoryLevels],
    effect_floor: float,
    alpha: float,
    min_present: int,
    *,
    when: datetime | None = None,
    name: str | None = None,
) -> DriftResult:
    """Drift of each feature and of the score columns (`reproml.monitoring.scores`: `prediction`, and
    for multiclass each `proba_<class>`) of both frames, batch against reference; category columns
    in the champion's groups `levels` (see `bucket`)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    judged, skipped = [], {}
    for column in schema.features:
        present = int(batch[column].notna().sum())
        if present < min_present:
            skipped[column] = f"{present} present values < {min_present}: not judged"
        elif reference[column].notna().sum() < min_present:
            skipped[column] = "too few present values in the reference: not judged"
        else:
            judged.append(column)
    numeric = [c for c in schema.numeric if c in judged]
    categorical = [c for c in schema.categorical if c in judged]
    by_class = schema.task == "multiclass"  # the predicted class is a category (module docstring)
    probas = proba_columns(schema.classes) if by_class else []
    outputs = [PREDICTION, *probas]
    ref, cur = reference[[*judged, *outputs]].copy(), batch[[*judged, *outputs]].copy()
    for column in categorical:
        ref[column], cur[column] = bucket(ref[column], levels[column]), bucket(cur[column], levels[column])
    if by_class:  # the class as text: Evidently's categories, whatever type the labels have
        ref[PREDICTION], cur[PREDICTION] = ref[PREDICTION].astype(str), cur[PREDICTION].astype(str)
    definition = DataDefinition(
        numerical_columns=[*numeric, *([] if by_class else [PREDICTION]), *probas],
        categorical_columns=[*categorical, *([PREDICTION] if by_class else [])],
    )
    preset = DataDriftPreset(
        columns=[*judged, *outputs],
        num_method=NUMERIC_METHOD,
        cat_method=CATEGORICAL_METHOD,
        threshold=effect_floor,
    )
    snapshot = Report([preset], include_tests=True).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
        timestamp=when,
        name=name,
    )
    scores = _scores(snapshot)

    positive = {c: max(float(importance.get(c, 0.0)), 0.0) for c in judged}
    total = sum(positive.values())
    weighting = "importance" if total > 0 else "uniform"
    weights = {c: (positive[c] / total if total > 0 else 1.0 / len(judged)) for c in judged} if judged else {}

    def column_drift(column: str, kind: str, frames: tuple[pd.DataFrame, pd.DataFrame]) -> ColumnDrift:
        present = int(batch[column].notna().sum())
        if column in skipped:
            weightless = float(importance.get(column, 0.0))
            return ColumnDrift(
                column, kind, None, None, False, False, weightless, 0.0, present, note=skipped[column]
            )
        score, method = scores[column]
        p = p_value(frames[0][column], frames[1][column], kind)
        return ColumnDrift(
            column,
            kind,
            method,
            score,
            bool(score >= effect_floor and p < alpha),
            True,
            float(importance.get(column, 0.0)),
            weights.get(column, 0.0),
            present,
            p,
        )

    columns = [column_drift(c, schema.kind(c), (ref, cur)) for c in schema.features]
    columns.sort(key=lambda c: (-c.weight, c.column))
    judged_drift = [c for c in columns if c.judged]
    drift_share = float(np.mean([c.drifted for c in judged_drift])) if judged_drift else 0.0
    weighted = float(sum(c.weight for c in judged_drift if c.drifted))
    prediction = column_drift(PREDICTION, "categorical" if by_class else "numeric", (ref, cur))
    return DriftResult(
        effect_floor=effect_floor,
        reference_rows=len(reference),
        batch_rows=len(batch),
        columns=columns,
        prediction=prediction,
        drift_share=drift_share,
        weighted_drift_share=weighted,
        weighting=weighting,
        probabilities=[column_drift(c, "numeric", (ref, cur)) for c in probas],
        snapshot=snapshot,
    )
