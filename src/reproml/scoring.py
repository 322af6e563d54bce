"""Scores, metrics, curves and the overfitting check, all from sklearn.metrics.

Everything here is pure: frames and arrays in, numbers and small frames out. `plots.py` draws the
frames; `stages/evaluate.py` writes them where DVC and MLflow look. Which metrics a task reports, and what
each means, is `reproml.metrics`' table; scores are shaped as it describes (binary: P(positive),
multiclass: one probability column per class in the model's `classes_` order).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from reproml import metrics


def predict_scores(model: Any, X: pd.DataFrame, task: str) -> np.ndarray:
    """Probability of the positive class for classification, every class's probability (columns in
    `model.classes_` order) for multiclass, the prediction for regression."""
    if task == "classification":
        return np.asarray(model.predict_proba(X)[:, 1], dtype="float64")
    if task == "multiclass":
        return np.asarray(model.predict_proba(X), dtype="float64")
    return np.asarray(model.predict(X), dtype="float64")


def compute_metrics(
    y: np.ndarray,
    scores: np.ndarray,
    task: str,
    threshold: float = metrics.THRESHOLD,
    labels: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Every metric of the task (`reproml.metrics.for_task`), NaN where one is undefined.

    Multiclass: `labels` is the class of each score column, the labels `y` holds.
    """
    return {
        m.name: metrics.score(m, y, scores, labels=labels, threshold=threshold)
        for m in metrics.for_task(task)
    }


class OverfitRecord(TypedDict):
    """`overfit_check`: metrics.json's `overfit`."""

    metric: str
    gap: float
    margin: float
    overfit: bool


def overfit_check(by_split: dict[str, dict[str, float]], task: str, margin: float) -> OverfitRecord:
    """Train-vs-validation gap on the primary metric; flagged when it exceeds `margin`.

    A metric where higher is better (ROC-AUC, binary or macro one-vs-rest) compares the absolute gap;
    one where lower is better (regression's RMSE) the gap relative to the training value, so the
    margin means the same thing whatever the target's units.
    """
    metric = metrics.PRIMARY[task]
    train, valid = by_split["train"][metric], by_split["valid"][metric]
    higher = metrics.METRICS[metric].higher_is_better
    gap = train - valid if higher else (valid - train) / max(train, 1e-12)
    return {"metric": metric, "gap": float(gap), "margin": margin, "overfit": bool(gap > margin)}


def predictions_digest(scores: np.ndarray) -> str:
    """sha256 of the predictions rounded to 12 decimals: equal digests mean equal predictions."""
    return hashlib.sha256(np.round(scores, 12).astype("<f8").tobytes()).hexdigest()


def roc_frame(y: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    fpr, tpr, _ = skm.roc_curve(y, scores, drop_intermediate=True)
    return _thin(pd.DataFrame({"fpr": fpr, "tpr": tpr}))


def precision_recall_frame(y: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    precision, recall, _ = skm.precision_recall_curve(y, scores, drop_intermediate=True)
    return _thin(pd.DataFrame({"recall": recall, "precision": precision}))


def calibration_frame(y: np.ndarray, scores: np.ndarray, bins: int = 10) -> pd.DataFrame:
    from sklearn.calibration import calibration_curve

    observed, predicted = calibration_curve(y, scores, n_bins=bins, strategy="quantile")
    return pd.DataFrame({"mean_predicted": predicted, "fraction_positive": observed})


def confusion_frame(
    y: np.ndarray,
    scores: np.ndarray,
    threshold: float = metrics.THRESHOLD,
    labels: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """One row per prediction (what DVC's confusion template counts): binary 0/1, multiclass the
    class labels (the most probable class predicted)."""
    if scores.ndim == 2:
        if labels is None:
            raise ValueError("a multiclass confusion frame needs the class labels of the score columns")
        names = np.asarray([str(v) for v in labels], dtype=object)
        return pd.DataFrame(
            {
                "actual": np.asarray([str(v) for v in y], dtype=object),
                "predicted": names[np.argmax(scores, axis=1)],
            }
        )
    return pd.DataFrame({"actual": y.astype(int), "predicted": (scores >= threshold).astype(int)})


def per_class_frame(y: np.ndarray, scores: np.ndarray, labels: Sequence[Any]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (`reproml.metrics.per_class`)."""
    return metrics.per_class(y, scores, labels)


def one_vs_rest_frames(y: np.ndarray, scores: np.ndarray, labels: Sequence[Any]) -> dict[str, pd.DataFrame]:
    """Each class's ROC and precision-recall curve against all other classes, stacked in long form
    with a `class` column (`roc_ovr`, `precision_recall_ovr`); a class absent from `y` has none."""
    codes = metrics.encode(y, labels)
    roc, pr = [], []
    for k, label in enumerate(labels):
        positive = (codes == k).astype(int)
        if positive.min() == positive.max():
            continue
        roc.append(roc_frame(positive, scores[:, k]).assign(**{"class": str(label)}))
        pr.append(precision_recall_frame(positive, scores[:, k]).assign(**{"class": str(label)}))
    empty = {"class": pd.Series(dtype=object)}
    return {
        "roc_ovr": pd.concat(roc, ignore_index=True) if roc else pd.DataFrame(empty),
        "precision_recall_ovr": pd.concat(pr, ignore_index=True) if pr else pd.DataFrame(empty),
    }


def residual_frame(y: np.ndarray, scores: np.ndarray, rows: int, seed: int) -> pd.DataFrame:
    frame = pd.DataFrame({"predicted": scores, "actual": y, "residual": y - scores})
    return frame.sample(n=min(rows, len(frame)), random_state=seed).reset_index(drop=True)


def learning_curve_frame(history: dict[str, list[float]]) -> pd.DataFrame:
    if not history:
        return pd.DataFrame({"round": [], "train": [], "valid": []})
    n = len(next(iter(history.values())))
    return pd.DataFrame({"round": np.arange(1, n + 1), **history})


def _thin(frame: pd.DataFrame, max_rows: int = 500) -> pd.DataFrame:
    """Keep curve files small enough to diff: evenly spaced points, ends always kept."""
    if len(frame) <= max_rows:
        return frame.reset_index(drop=True)
    idx = np.unique(np.linspace(0, len(frame) - 1, max_rows).round().astype(int))
    return frame.iloc[idx].reset_index(drop=True)


def permutation_importance_frame(
    model: Any, X: pd.DataFrame, y: np.ndarray, task: str, repeats: int, seed: int
) -> pd.DataFrame:
    """Drop in the primary metric when each raw input column is shuffled.

    Raw columns (not encoded ones) so the numbers mean the same for every model family, and so
    monitoring can weight drift by them.
    """
    from sklearn.inspection import permutation_importance

    spec = metrics.metric_spec(None, task)
    # sklearn's own scorer where the table names one (the same number), ours otherwise
    scoring: Any = metrics.METRICS[spec.name].sklearn_scorer or _scorer(spec, task)
    result = permutation_importance(
        _shuffled_column_only(model, X), X, y, scoring=scoring, n_repeats=repeats, random_state=seed, n_jobs=1
    )
    frame = pd.DataFrame(
        {
            "feature": list(X.columns),
            "importance": result.importances_mean,
            "std": result.importances_std,
        }
    )
    return frame.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)


def _scorer(spec: metrics.MetricSpec, task: str) -> Any:
    """A `scoring` callable for sklearn: the metric (multiclass: in the model's own class order),
    higher = better.

    sklearn's string scorers infer the classes from the `y` they are given, so a sample missing a
    rare class would fail; this one always scores against `model.classes_`.
    """

    def scorer(model: Any, X: pd.DataFrame, y: np.ndarray) -> float:
        labels = list(model.classes_) if task == "multiclass" else None
        value = metrics.score(spec, y, predict_scores(model, X, task), labels=labels)
        return value if spec.higher_is_better else -value

    return scorer


class _PreprocessedOnce:
    """A fitted `Pipeline([ColumnTransformer, estimator])` that preprocesses `X` once and, for a
    copy of `X` with some columns shuffled, redoes only the transformers that read those columns.

    Permutation importance shuffles one raw column at a time and scores the whole pipeline each
    time; without this, every unshuffled column is preprocessed again for every column and repeat
    (52 times for 17 columns and 3 repeats). Each transformer works row by row, so its output for
    unchanged input columns is the same array: the scores, and so the importances, are exactly
    those of the plain pipeline (`_shuffled_column_only` checks the stitched output is).
    sklearn's own `permutation_importance` still draws the shuffles and calls the scorer.
    """

    def __init__(self, pipeline: Any, X: pd.DataFrame, base: np.ndarray, parts: list[Any]) -> None:
        self._pipeline = pipeline
        self._final = pipeline.steps[-1][1]
        self._X = X
        self._base = base
        self._parts = parts
        if hasattr(pipeline, "classes_"):
            self.classes_ = pipeline.classes_
        for method in ("predict", "predict_proba", "decision_function"):
            if hasattr(pipeline, method):  # a scorer picks the method the pipeline has, so offer the same
                setattr(self, method, self._method(method))

    def __sklearn_tags__(self) -> Any:
        return self._pipeline.__sklearn_tags__()

    def fit(self, *args: Any, **kwargs: Any) -> None:  # sklearn checks an estimator has one
        raise NotImplementedError("a fitted pipeline, only scored here")

    def _transform(self, X: pd.DataFrame) -> np.ndarray:
        if X is self._X:
            return self._base
        out = self._base.copy()
        for transformer, columns, where in self._parts:
            if any(not X[c].equals(self._X[c]) for c in columns):
                out[:, where] = np.asarray(transformer.transform(X[columns]))
        return out

    def _method(self, name: str) -> Any:
        def call(X: pd.DataFrame) -> Any:
            return getattr(self._final, name)(self._transform(X))

        call.__name__ = name  # sklearn's scorers look the method up again by its name
        return call


def _shuffled_column_only(model: Any, X: pd.DataFrame) -> Any:
    """`_PreprocessedOnce(model)` when the model is a ColumnTransformer + estimator pipeline whose
    transformers, run one by one, give exactly its preprocessing of `X`; else `model` itself."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not (isinstance(model, Pipeline) and len(model.steps) == 2):
        return model
    prep = model.steps[0][1]
    if not isinstance(prep, ColumnTransformer) or prep.transformer_weights is not None:
        return model
    base = prep.transform(X)
    if not isinstance(base, np.ndarray) or base.ndim != 2 or base.dtype.kind not in "fiu":
        return model
    parts = []
    stitched = np.full(base.shape, np.nan, dtype=base.dtype)
    covered = np.zeros(base.shape[1], dtype=bool)
    for name, transformer, columns in prep.transformers_:
        where = prep.output_indices_[name]
        if transformer == "drop" or where.start == where.stop:
            continue
        if isinstance(transformer, str) or not isinstance(columns, list) or not columns:
            return model
        stitched[:, where] = np.asarray(transformer.transform(X[columns]))
        covered[where] = True
        parts.append((transformer, columns, where))
    if not covered.all() or not np.array_equal(stitched, base, equal_nan=True):
        return model
    return _PreprocessedOnce(model, X, base, parts)
