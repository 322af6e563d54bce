"""`evaluate`: metrics on every split, overfitting check, plots, logged into the training run."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import numpy as np
import pandas as pd

from reproml import paths
from reproml.errors import ReproError
from reproml.io import read_json, write_json, write_parquet, write_with
from reproml.stages.common import classes_of, feature_spec, load

if TYPE_CHECKING:
    from reproml.fitting import HistoryRecord
    from reproml.intervals import IntervalSummary
    from reproml.scoring import OverfitRecord
    from reproml.thresholds import ThresholdRecord


class Brier(TypedDict):
    before: float  # the estimator's probabilities, before calibration
    after: float  # the served model's


class DecisionSummary(TypedDict, total=False):
    """metrics.json's `decision` (classification only; `threshold*` binary only)."""

    calibration: str
    brier: dict[str, Brier]  # valid, test
    threshold: float
    threshold_choice: ThresholdRecord | None


class EvaluateSummary(TypedDict):
    """What `reproml evaluate` returns: the run it logged into and the headline numbers."""

    run_id: str
    test: dict[str, float]
    overfit: OverfitRecord
    predictions_sha256: str
    decision: NotRequired[DecisionSummary]
    intervals: NotRequired[IntervalSummary]


def curve_frames(
    task: str,
    y: np.ndarray,
    scores: np.ndarray,
    curves: dict[str, list[float]],
    importance: pd.DataFrame,
    seed: int,
    classes: list[Any] | None = None,
    threshold: float = 0.5,
) -> dict[str, pd.DataFrame]:
    """Every plot's data, keyed by the file stem dvc.yaml's `plots:` section names.

    Multiclass has no single ROC, precision-recall, calibration or residual curve: it gets the
    confusion matrix of its labels, per-class precision/recall/F1, and each class's one-vs-rest ROC
    and precision-recall curves (long form, a `class` column; drawn as PNGs for the MLflow UI).
    """
    from reproml import scoring as ev

    frames = {
        "importance": importance,
        "learning_curve": ev.learning_curve_frame(curves),
    }
    if task == "multiclass":
        labels = list(classes or [])
        frames["confusion"] = ev.confusion_frame(y, scores, labels=labels)
        frames["per_class"] = ev.per_class_frame(y, scores, labels)
        return frames | ev.one_vs_rest_frames(y, scores, labels)
    frames["residuals"] = ev.residual_frame(y, scores, rows=2000, seed=seed)
    if task == "classification":
        frames["roc"] = ev.roc_frame(y, scores)
        frames["precision_recall"] = ev.precision_recall_frame(y, scores)
        frames["calibration"] = ev.calibration_frame(y, scores)
        frames["confusion"] = ev.confusion_frame(y, scores, threshold=threshold)
    return frames


def decision_frames(
    task: str,
    y: dict[str, np.ndarray],
    scores: dict[str, np.ndarray],
    raw_scores: dict[str, np.ndarray],
    cost_fp: float,
    cost_fn: float,
) -> dict[str, pd.DataFrame]:
    """Binary only: precision, recall, F1 and cost per row at every threshold on the validation
    split, where the threshold was chosen (`threshold`), and the test reliability curve of the
    estimator before calibration (`calibration_uncalibrated`; the served model's is `calibration`)."""
    from reproml import scoring as ev
    from reproml import thresholds

    if task != "classification":
        return {}
    curve = thresholds.curve(y["valid"], scores["valid"], cost_fp, cost_fn)
    return {
        "threshold": thresholds.thin(curve.iloc[::-1]),
        "calibration_uncalibrated": ev.calibration_frame(y["test"], raw_scores["test"]),
    }


def decision_summary(
    task: str,
    history: HistoryRecord,
    threshold: float,
    y: dict[str, np.ndarray],
    scores: dict[str, np.ndarray],
    raw_scores: dict[str, np.ndarray],
    labels: list[Any] | None,
) -> DecisionSummary:
    """metrics.json's `decision`: the threshold the model applies and how it was chosen, and the
    Brier score of the probabilities before/after calibration on validation and test."""
    from reproml.metrics import METRICS, score

    if task == "regression":
        return {}
    decided = history.get("decision")
    brier: dict[str, Brier] = {
        split: {
            "before": score(METRICS["brier"], y[split], raw_scores[split], labels=labels),
            "after": score(METRICS["brier"], y[split], scores[split], labels=labels),
        }
        for split in ("valid", "test")
    }
    calibration = "none" if decided is None else decided.get("calibration", "none")
    out: DecisionSummary = {"calibration": calibration, "brier": brier}
    if task == "classification":
        out["threshold"] = threshold
        out["threshold_choice"] = None if decided is None else decided.get("threshold")
    return out


def decision_metrics(summary: DecisionSummary) -> dict[str, float]:
    """The MLflow metrics of `decision_summary`, `<split>_brier_uncalibrated` (`<split>_brier` is the
    served model's; the threshold is logged by `train`, which chose it)."""
    return {f"{split}_brier_uncalibrated": b["before"] for split, b in summary.get("brier", {}).items()}


def draw(frames: dict[str, pd.DataFrame], metric: str, images: Path) -> None:
    """PNG versions of the frames for the MLflow UI."""
    from reproml import plots

    plots.bars(frames["importance"], "feature", "importance", images / "importance.png",
               "Permutation importance (validation)")  # fmt: skip
    curve = frames["learning_curve"]
    if len(curve):
        columns = [c for c in ("train", "valid") if c in curve]
        plots.line(curve, "round", columns, images / "learning_curve.png", f"Learning curve ({metric})")
    if "residuals" in frames:
        plots.scatter(
            frames["residuals"], "predicted", "residual", images / "residuals.png", "Residuals (test)"
        )
    if "per_class" in frames:
        _draw_multiclass(frames, images)
    if "roc" in frames:
        plots.line(frames["roc"], "fpr", ["tpr"], images / "roc.png", "ROC (test)", diagonal=True)
        plots.line(frames["precision_recall"], "recall", ["precision"], images / "precision_recall.png",
                   "Precision-recall (test)")  # fmt: skip
        plots.confusion(frames["confusion"], images / "confusion.png", "Confusion matrix (test)")
    if "threshold" in frames:
        plots.line(frames["threshold"], "threshold", ["precision", "recall", "f1"], images / "threshold.png",
                   "Precision, recall, F1 by threshold (validation)")  # fmt: skip
        both = pd.concat(
            [
                frames["calibration"].assign(model="served"),
                frames["calibration_uncalibrated"].assign(model="uncalibrated"),
            ]
        )
        plots.lines_by(both, "mean_predicted", "fraction_positive", "model", images / "calibration.png",
                       "Reliability (test)", diagonal=True)  # fmt: skip


def _draw_multiclass(frames: dict[str, pd.DataFrame], images: Path) -> None:
    from reproml import plots

    classes = frames["per_class"]["class"].tolist()
    title = "Confusion matrix (test, most probable class)"
    plots.confusion(frames["confusion"], images / "confusion.png", title, labels=classes)
    plots.grouped_bars(frames["per_class"], "class", ["precision", "recall", "f1"], images / "per_class.png",
                       "Per-class precision, recall, F1 (test)")  # fmt: skip
    plots.lines_by(frames["roc_ovr"], "fpr", "tpr", "class", images / "roc.png", "ROC, one vs rest (test)",
                   diagonal=True)  # fmt: skip
    plots.lines_by(frames["precision_recall_ovr"], "recall", "precision", "class",
                   images / "precision_recall.png", "Precision-recall, one vs rest (test)")  # fmt: skip


def _predictions(
    scores: np.ndarray, y: np.ndarray, target: str, classes: list[Any] | None, bounds: Any = None
) -> pd.DataFrame:
    """The test predictions: P(positive) or the prediction (regression: with its conformal interval,
    `lower` and `upper`); multiclass the predicted label and one `proba_<class>` column per class, in
    the model's class order."""
    if classes is None:
        if bounds is not None:
            return pd.DataFrame(
                {"prediction": scores, "lower": bounds.lower, "upper": bounds.upper, target: y}
            )
        return pd.DataFrame({"prediction": scores, target: y})
    predicted = np.asarray(classes, dtype=object)[np.argmax(scores, axis=1)]
    probabilities = {f"proba_{c}": scores[:, k] for k, c in enumerate(classes)}
    return pd.DataFrame({"prediction": predicted, **probabilities, target: y})


def _per_class(frames: dict[str, pd.DataFrame]) -> dict[str, dict[str, float]]:
    """metrics.json's `per_class` (multiclass): each class's test precision, recall, F1, support;
    empty for the other tasks."""
    if "per_class" not in frames:
        return {}
    rows = frames["per_class"].set_index("class")
    return {str(c): {str(k): float(v) for k, v in row.items()} for c, row in rows.iterrows()}


def _per_class_metrics(per_class: dict[str, dict[str, float]]) -> dict[str, float]:
    """MLflow metrics `test_<precision|recall|f1>.<class>`; characters MLflow refuses in a name
    become `_`."""
    out: dict[str, float] = {}
    for label, values in per_class.items():
        safe = re.sub(r"[^\w.\- ]", "_", label)
        for name in ("precision", "recall", "f1"):
            out[f"test_{name}.{safe}"] = values[name]
    return out


def _same_classes(model: Any, classes: list[Any] | None) -> None:
    """A multiclass model's probability columns must be in the recorded class order."""
    if classes is None:
        return
    found = [str(c) for c in getattr(model, "classes_", [])]
    if found != [str(c) for c in classes]:
        raise ReproError(
            f"{paths.MODEL} predicts classes {found}, but {paths.SCHEMA} records {classes}; "
            "retrain it with `dvc repro --force train`"
        )


def _write_csv(target: Path, frame: pd.DataFrame) -> None:
    write_with(target, lambda p: frame.to_csv(p, index=False))


def load_logged_model(root: Path, experiment_id: str, experiment_name: str) -> tuple[Any, str]:
    """models/model.joblib and the run that logged it, refused before unpickling unless its md5 is
    one a run of this experiment recorded.

    The file is read once: the bytes hashed are the bytes unpickled, so a file swapped after the
    check cannot slip through (a joblib file is a pickle and runs code when loaded).
    """
    import joblib

    from reproml.stores.mlflow import runs

    data = (root / paths.MODEL).read_bytes()
    model_md5 = hashlib.md5(data).hexdigest()
    run_id = runs.find_run_for_model(experiment_id, model_md5)
    if run_id is None:
        raise ReproError(
            f"{paths.MODEL} (md5 {model_md5}) was not logged by any run of MLflow experiment "
            f"{experiment_name!r}; refusing to load it (it could run any code). Retrain it with "
            "`dvc repro --force train`"
        )
    return joblib.load(io.BytesIO(data)), run_id


def run_evaluate(root: Path = Path(".")) -> EvaluateSummary:
    from reproml import decisions, intervals
    from reproml import scoring as ev
    from reproml.stores.mlflow import connection, runs

    params = load(root)
    schema = read_json(root / paths.SCHEMA)
    task, target, seed = params.data.task, params.data.target, params.seed
    classes = classes_of(params, schema)
    history: HistoryRecord = read_json(root / paths.HISTORY)  # written by `train`
    columns = feature_spec(params, schema).input_columns
    experiment_id = connection.setup(root, params.mlflow.experiment_name)
    model, run_id = load_logged_model(root, experiment_id, params.mlflow.experiment_name)
    with runs.tracked_run(experiment_id, run_id=run_id):
        splits = {name: pd.read_parquet(root / paths.split_file(name)) for name in ("train", "valid", "test")}
        _same_classes(model, classes)
        scores = {name: ev.predict_scores(model, f[columns], task) for name, f in splits.items()}
        ys = {name: f[target].to_numpy() for name, f in splits.items()}
        threshold = decisions.threshold_of(model)  # the cut the model's predict applies
        by_split = {
            name: ev.compute_metrics(ys[name], scores[name], task, threshold=threshold, labels=classes)
            for name in splits
        }
        raw_scores = {name: scores[name] for name in ("valid", "test")}  # before calibration
        decided_in_train = history.get("decision")
        if decided_in_train is not None and decided_in_train.get("calibration", "none") != "none":
            raw = decisions.uncalibrated(model)
            raw_scores = {name: ev.predict_scores(raw, splits[name][columns], task) for name in raw_scores}
        decided = decision_summary(task, history, threshold, ys, scores, raw_scores, classes)
        bounds = None
        if task == "regression":
            valid_X, test_X = splits["valid"][columns], splits["test"][columns]
            level = params.evaluate.interval_level
            bounds = intervals.conformal(model, valid_X, ys["valid"], test_X, ys["test"], level)
        overfit = ev.overfit_check(by_split, task, params.evaluate.overfit_margin)
        valid = splits["valid"]
        sample = valid.sample(n=min(params.evaluate.importance_rows, len(valid)), random_state=seed)
        importance = ev.permutation_importance_frame(
            model, sample[columns], sample[target].to_numpy(), task, params.evaluate.importance_repeats, seed
        )
        y_test, test_scores = splits["test"][target].to_numpy(), scores["test"]
        frames = curve_frames(
            task, y_test, test_scores, history["curves"], importance, seed, classes, threshold
        )
        frames |= decision_frames(
            task, ys, scores, raw_scores, params.evaluate.cost_fp, params.evaluate.cost_fn
        )
        for name, frame in frames.items():
            _write_csv(root / paths.PLOTS / f"{name}.csv", frame)
        draw(frames, history["metric"], root / paths.PLOTS / "images")
        write_parquet(root / paths.PREDICTIONS, _predictions(test_scores, y_test, target, classes, bounds))
        per_class = _per_class(frames)
        summary: EvaluateSummary = {
            "run_id": run_id,
            "test": by_split["test"],
            "overfit": overfit,
            "predictions_sha256": ev.predictions_digest(test_scores),
        }
        # Test first: `dvc exp show` and `dvc metrics show` list columns in the file's key order.
        written: dict[str, object] = {name: by_split[name] for name in ("test", "valid", "train")}
        written["overfit"] = overfit
        if per_class:
            written["per_class"] = per_class
        if decided:
            summary["decision"] = written["decision"] = decided
        if bounds is not None:
            summary["intervals"] = written["intervals"] = bounds.summary()
        write_json(root / paths.METRICS / "metrics.json", written, sort_keys=False)
        digest = summary["predictions_sha256"]
        flat = {f"{split}_{k}": v for split, values in by_split.items() for k, v in values.items()}
        flat |= _per_class_metrics(per_class)
        flat |= {"overfit_gap": overfit["gap"], "overfit": float(overfit["overfit"])}
        flat |= decision_metrics(decided)
        if bounds is not None:
            flat |= {
                "interval_level": bounds.level,
                "test_interval_coverage": bounds.coverage,
                "test_interval_coverage_gap": bounds.coverage - bounds.level,
                "test_interval_mean_width": bounds.mean_width,
            }
        tags = {
            "reproml.overfit": str(overfit["overfit"]).lower(),
            "reproml.test_predictions_sha256": digest,
            "reproml.evaluated": "true",
        }
        runs.log_batch(run_id, metrics=flat, tags=tags)
        runs.log_artifacts(root / paths.PLOTS / "images", artifact_path="plots")
        runs.log_table(importance, artifact_file="importance.json")
    return summary
