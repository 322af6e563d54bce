"""`evaluate`: metrics on every split, overfitting check, plots, logged into the training run."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reproml import paths
from reproml.errors import ReproError
from reproml.io import read_json, write_json, write_parquet, write_with
from reproml.stages.common import feature_spec, load


def curve_frames(
    task: str, y: np.ndarray, scores: np.ndarray, history: dict[str, Any], importance: pd.DataFrame, seed: int
) -> dict[str, pd.DataFrame]:
    """Every plot's data, keyed by the file stem dvc.yaml's `plots:` section names."""
    from reproml import evaluate as ev

    frames = {
        "importance": importance,
        "learning_curve": ev.learning_curve_frame(history["curves"]),
        "residuals": ev.residual_frame(y, scores, rows=2000, seed=seed),
    }
    if task == "classification":
        frames["roc"] = ev.roc_frame(y, scores)
        frames["precision_recall"] = ev.precision_recall_frame(y, scores)
        frames["calibration"] = ev.calibration_frame(y, scores)
        frames["confusion"] = ev.confusion_frame(y, scores)
    return frames


def draw(frames: dict[str, pd.DataFrame], metric: str, images: Path) -> None:
    """PNG versions of the frames for the MLflow UI."""
    from reproml import plots

    plots.bars(frames["importance"], "feature", "importance", images / "importance.png",
               "Permutation importance (validation)")  # fmt: skip
    curve = frames["learning_curve"]
    if len(curve):
        columns = [c for c in ("train", "valid") if c in curve]
        plots.line(curve, "round", columns, images / "learning_curve.png", f"Learning curve ({metric})")
    plots.scatter(frames["residuals"], "predicted", "residual", images / "residuals.png", "Residuals (test)")
    if "roc" in frames:
        plots.line(frames["roc"], "fpr", ["tpr"], images / "roc.png", "ROC (test)", diagonal=True)
        plots.line(frames["precision_recall"], "recall", ["precision"], images / "precision_recall.png",
                   "Precision-recall (test)")  # fmt: skip
        plots.line(frames["calibration"], "mean_predicted", ["fraction_positive"], images / "calibration.png",
                   "Calibration (test)", diagonal=True)  # fmt: skip
        plots.confusion(
            frames["confusion"], images / "confusion.png", "Confusion matrix (test, threshold 0.5)"
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

    from reproml import tracking

    data = (root / paths.MODEL).read_bytes()
    model_md5 = hashlib.md5(data).hexdigest()
    run_id = tracking.find_run_for_model(experiment_id, model_md5)
    if run_id is None:
        raise ReproError(
            f"{paths.MODEL} (md5 {model_md5}) was not logged by any run of MLflow experiment "
            f"{experiment_name!r}; refusing to load it (it could run any code). Retrain it with "
            "`dvc repro --force train`"
        )
    return joblib.load(io.BytesIO(data)), run_id


def run_evaluate(root: Path = Path(".")) -> dict[str, Any]:
    import mlflow

    from reproml import evaluate as ev
    from reproml import tracking

    params = load(root)
    schema = read_json(root / paths.SCHEMA)
    task, target, seed = params.data.task, params.data.target, params.seed
    history = read_json(root / paths.HISTORY)
    columns = feature_spec(params, schema).input_columns
    experiment_id = tracking.setup(root, params.mlflow.experiment_name)
    model, run_id = load_logged_model(root, experiment_id, params.mlflow.experiment_name)
    with tracking.tracked_run(experiment_id, run_id=run_id):
        splits = {name: pd.read_parquet(root / paths.split_file(name)) for name in ("train", "valid", "test")}
        scores = {name: ev.predict_scores(model, f[columns], task) for name, f in splits.items()}
        by_split = {
            name: ev.compute_metrics(splits[name][target].to_numpy(), scores[name], task) for name in splits
        }
        overfit = ev.overfit_check(by_split, task, params.evaluate.overfit_margin)
        valid = splits["valid"]
        sample = valid.sample(n=min(params.evaluate.importance_rows, len(valid)), random_state=seed)
        importance = ev.permutation_importance_frame(
            model, sample[columns], sample[target].to_numpy(), task, params.evaluate.importance_repeats, seed
        )
        y_test, test_scores = splits["test"][target].to_numpy(), scores["test"]
        frames = curve_frames(task, y_test, test_scores, history, importance, seed)
        for name, frame in frames.items():
            _write_csv(root / paths.PLOTS / f"{name}.csv", frame)
        draw(frames, history["metric"], root / paths.PLOTS / "images")
        write_parquet(root / paths.PREDICTIONS, pd.DataFrame({"prediction": test_scores, target: y_test}))
        write_json(root / paths.METRICS / "metrics.json", {**by_split, "overfit": overfit})
        digest = ev.predictions_digest(test_scores)
        flat = {f"{split}_{k}": v for split, values in by_split.items() for k, v in values.items()}
        flat |= {"overfit_gap": overfit["gap"], "overfit": float(overfit["overfit"])}
        tags = {
            "reproml.overfit": str(overfit["overfit"]).lower(),
            "reproml.test_predictions_sha256": digest,
            "reproml.evaluated": "true",
        }
        tracking.log_batch(run_id, metrics=flat, tags=tags)
        mlflow.log_artifacts(str(root / paths.PLOTS / "images"), artifact_path="plots")
        mlflow.log_table(importance, artifact_file="importance.json")
    return {"run_id": run_id, "test": by_split["test"], "overfit": overfit, "predictions_sha256": digest}
