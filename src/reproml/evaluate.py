"""Scores, metrics, curves and the overfitting check, all from sklearn.metrics.

Everything here is pure: frames and arrays in, numbers and small frames out. `plots.py` draws the
frames; `stages.py` writes them where DVC and MLflow look.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

PRIMARY_METRIC = {"classification": "roc_auc", "regression": "rmse"}


def predict_scores(model: Any, X: pd.DataFrame, task: str) -> np.ndarray:
    """Probability of the positive class for classification, the prediction for regression."""
    if task == "classification":
        return np.asarray(model.predict_proba(X)[:, 1], dtype="float64")
    return np.asarray(model.predict(X), dtype="float64")


def compute_metrics(y: np.ndarray, scores: np.ndarray, task: str, threshold: float = 0.5) -> dict[str, float]:
    if task == "classification":
        labels = (scores >= threshold).astype(int)
        return {
            "accuracy": skm.accuracy_score(y, labels),
            "precision": skm.precision_score(y, labels, zero_division=0),
            "recall": skm.recall_score(y, labels, zero_division=0),
            "f1": skm.f1_score(y, labels, zero_division=0),
            "roc_auc": skm.roc_auc_score(y, scores),
            "pr_auc": skm.average_precision_score(y, scores),
            "log_loss": skm.log_loss(y, np.clip(scores, 1e-15, 1 - 1e-15), labels=[0, 1]),
        }
    mse = skm.mean_squared_error(y, scores)
    return {
        "mae": skm.mean_absolute_error(y, scores),
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "r2": skm.r2_score(y, scores),
    }


def overfit_check(by_split: dict[str, dict[str, float]], task: str, margin: float) -> dict[str, Any]:
    """Train-vs-validation gap on the primary metric; flagged when it exceeds `margin`.

    Classification compares ROC-AUC (absolute gap); regression compares RMSE relative to the
    training RMSE, so the margin means the same thing whatever the target's units.
    """
    metric = PRIMARY_METRIC[task]
    train, valid = by_split["train"][metric], by_split["valid"][metric]
    gap = train - valid if task == "classification" else (valid - train) / max(train, 1e-12)
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


def confusion_frame(y: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> pd.DataFrame:
    """One row per prediction (what DVC's confusion template counts)."""
    return pd.DataFrame({"actual": y.astype(int), "predicted": (scores >= threshold).astype(int)})


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

    scoring = "roc_auc" if task == "classification" else "neg_root_mean_squared_error"
    result = permutation_importance(
        model, X, y, scoring=scoring, n_repeats=repeats, random_state=seed, n_jobs=1
    )
    frame = pd.DataFrame(
        {
            "feature": list(X.columns),
            "importance": result.importances_mean,
            "std": result.importances_std,
        }
    )
    return frame.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)
