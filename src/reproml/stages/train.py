"""`train`: fit the model, save models/model.joblib, and open the pipeline's MLflow run."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import pandas as pd

from reproml import paths
from reproml.config import flat_params
from reproml.io import file_md5, read_json, write_json, write_with
from reproml.stages.common import feature_spec, load


def _requirements() -> list[str]:
    from reproml.lineage import library_versions

    versions = library_versions()
    keep = ["mlflow", "scikit-learn", "xgboost-cpu", "pandas", "numpy", "pyarrow"]
    extra = {name: importlib.metadata.version(name) for name in ("skops", "cloudpickle")}
    return [f"{n}=={versions[n]}" for n in keep if n in versions] + [f"{n}=={v}" for n, v in extra.items()]


def run_train(root: Path = Path(".")) -> dict[str, Any]:
    import joblib
    import mlflow

    from reproml import lineage, tracking
    from reproml.train import fit_model

    params = load(root)
    schema = read_json(root / paths.SCHEMA)
    train = pd.read_parquet(root / paths.split_file("train"))
    valid = pd.read_parquet(root / paths.split_file("valid"))
    spec = feature_spec(params, schema)
    resolved = flat_params(params)
    git = lineage.git_state(root)
    inputs = [paths.INGESTED, paths.SCHEMA, *(paths.split_file(s) for s in ("train", "valid", "test"))]
    data_md5 = {str(p): file_md5(root / p) for p in inputs}
    experiment_id = tracking.setup(root, params.mlflow.experiment_name)
    commit = (git["commit"] or "nogit")[:7]
    with tracking.tracked_run(experiment_id, run_name=f"{params.train.model}-{commit}") as run:
        run_id = run.info.run_id
        tags = {
            "mlflow.source.git.commit": git["commit"] or "",
            "mlflow.source.name": "dvc repro",
            "reproml.stage": "train",
            "reproml.git_commit": git["commit"] or "",
            "reproml.git_dirty": str(git["dirty"]).lower(),
            "reproml.git_dirty_paths": json.dumps(git["dirty_paths"]),
            "reproml.params_sha256": lineage.params_hash(resolved),
            "reproml.uv_lock_sha256": lineage.sha256_file(root / "uv.lock") or "",
            "reproml.code_sha256": lineage.code_hash(root),
            "reproml.seed": str(params.seed),
            "reproml.data_source": schema["source"],
            "reproml.libraries": json.dumps(lineage.library_versions(), sort_keys=True),
            **{f"reproml.data.{path}": md5 for path, md5 in data_md5.items()},
        }
        tracking.log_batch(run_id, params=resolved, tags=tags)
        mlflow.log_dict(params.model_dump(mode="json", by_alias=True), tracking.PARAMS_ARTIFACT)
        test = pd.read_parquet(root / paths.split_file("test"))
        for name, frame, context in (("train", train, "training"), ("test", test, "testing")):
            path = str(paths.split_file(name))
            tracking.log_dataset(run_id, frame, name, path, data_md5[path], context)
        trained = fit_model(train, valid, spec, params)
        write_with(root / paths.MODEL, lambda p: joblib.dump(trained.pipeline, p))
        history = {
            "metric": trained.history_metric,
            "best_iteration": trained.best_iteration,
            "curves": trained.history,
        }
        write_json(root / paths.HISTORY, history)
        model_md5 = file_md5(root / paths.MODEL)
        example = valid[spec.input_columns].head(5)
        model_uri = tracking.log_sklearn_model(
            trained.pipeline, train[spec.input_columns], example, Path(__file__).parents[1], _requirements()
        )
        summary = {
            "fit_seconds": round(trained.fit_seconds, 3),
            "best_iteration": trained.best_iteration,
        }
        tracking.log_batch(
            run_id,
            metrics={k: v for k, v in summary.items() if v is not None},
            tags={tracking.MODEL_MD5_TAG: model_md5, "reproml.model_uri": model_uri},
        )
        for name, curve in trained.history.items():
            tracking.log_metric_series(run_id, f"curve_{name}_{trained.history_metric}", curve)
    return {"run_id": run_id, "model_uri": model_uri, **summary}
