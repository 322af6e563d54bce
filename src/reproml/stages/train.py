"""`train`: fit the model, save models/model.joblib, and open the pipeline's MLflow run."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from reproml import paths
from reproml.config import Params, flat_params, with_model_params
from reproml.env import dvc_experiment
from reproml.io import file_md5, read_json, write_json, write_with
from reproml.stages.common import classes_of, feature_spec, load

if TYPE_CHECKING:
    from reproml.fitting import HistoryRecord
    from reproml.tuning.study import BestParams


def _requirements(versions: dict[str, str]) -> list[str]:
    """The logged model's pip requirements, from the versions the run's lineage tag records (looked
    up once per stage: each look-up scans every installed distribution)."""
    keep = ["mlflow", "scikit-learn", "xgboost-cpu", "pandas", "numpy", "pyarrow"]
    extra = {name: importlib.metadata.version(name) for name in ("skops", "cloudpickle")}
    return [f"{n}=={versions[n]}" for n in keep if n in versions] + [f"{n}=={v}" for n, v in extra.items()]


def decision_metrics(decided: Any) -> dict[str, float]:
    """The run's metrics of `decisions.decide`: the threshold, its objective on the validation split,
    and the validation Brier score before/after calibration."""
    out = {f"valid_brier_{when}": value for when, value in decided.brier_valid.items()}
    if decided.threshold is not None:
        choice = decided.threshold
        out |= {"threshold": choice.threshold, f"valid_threshold_{choice.objective}": choice.value}
    return out


def decision_tags(decided: Any) -> dict[str, str]:
    tags = {"reproml.calibration": decided.calibration}
    if decided.threshold is not None:
        tags["reproml.threshold_rule"] = decided.threshold.rule
    return tags


def tuned_params(root: Path, params: Params) -> tuple[Params, BestParams | None]:
    """params.yaml with the `tune` stage's best values for `train.model` applied, and what was read.

    `tune.enabled: false` (or no best_params.json, for a project without the stage) keeps the fixed
    params. A file tuned for another model is refused: the pipeline would train what was not tuned.
    """
    from reproml.errors import ReproError

    path = root / paths.BEST_PARAMS
    if not params.tune.enabled or not path.is_file():
        return params, None
    tuned: BestParams = read_json(path)  # written by `reproml tune`
    if not tuned.get("enabled"):
        return params, None
    if tuned.get("model") != params.train.model:
        raise ReproError(
            f"{paths.BEST_PARAMS} holds params tuned for {tuned.get('model')!r}, but train.model is "
            f"{params.train.model!r}; run `dvc repro` (or `reproml tune`) to tune it first"
        )
    return with_model_params(params, tuned["params"], str(paths.BEST_PARAMS)), tuned


def _tune_run(experiment_id: str, study_name: str) -> str | None:
    """The newest finished parent run of the study that produced best_params.json."""
    from reproml.stores.mlflow import runs

    found = runs.newest_run(
        experiment_id,
        f"tags.`reproml.stage` = 'tune' and tags.`reproml.study_name` = '{study_name}' "
        "and attributes.status = 'FINISHED'",
    )
    return found.run_id if found else None


def run_train(root: Path = Path(".")) -> dict[str, Any]:
    import joblib

    from reproml import decisions, learned, lineage
    from reproml.fitting import fit_model
    from reproml.stores.mlflow import connection, models, runs

    committed = load(root)
    params, tuned = tuned_params(root, committed)
    schema = read_json(root / paths.SCHEMA)
    train = pd.read_parquet(root / paths.split_file("train"))
    valid = pd.read_parquet(root / paths.split_file("valid"))
    spec = feature_spec(params, schema)
    classes = classes_of(params, schema)
    resolved = flat_params(params)
    git = lineage.git_state(root)
    versions = lineage.library_versions()
    inputs = [paths.INGESTED, paths.SCHEMA, *(paths.split_file(s) for s in ("train", "valid", "test"))]
    if tuned is not None:
        inputs.append(paths.BEST_PARAMS)
    data_md5 = {str(p): file_md5(root / p) for p in inputs}
    experiment_id = connection.setup(root, params.mlflow.experiment_name)
    commit = (git["commit"] or "nogit")[:7]
    # Under `dvc exp run` the pipeline's run takes the experiment's name, as `dvc exp show` lists it.
    experiment = dvc_experiment()
    run_name = experiment.name if experiment else f"{params.train.model}-{commit}"
    with runs.tracked_run(experiment_id, run_name=run_name) as run:
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
            "reproml.libraries": json.dumps(versions, sort_keys=True),
            **{f"reproml.data.{path}": md5 for path, md5 in data_md5.items()},
            learned.TAG: json.dumps(
                learned.describe(
                    train,
                    {str(paths.split_file("train")): data_md5[str(paths.split_file("train"))]},
                    schema.get("time_column"),
                    "train split",
                )
            ),
        }
        if classes is not None:  # the order of the model's probability columns, as labels
            tags["reproml.classes"] = json.dumps(classes)
        if tuned is not None:
            tune_run = _tune_run(experiment_id, tuned["study_name"]) or ""
            tags |= {
                "reproml.tuned": "true",
                "reproml.tune_study": tuned["study_name"],
                "reproml.tune_run_id": tune_run,
                "reproml.tune_best_trial": str(tuned["best_trial"]),
                "mlflow.note.content": (
                    f"Params of `train.{params.train.model}` tuned by Optuna study `{tuned['study_name']}` "
                    f"(best trial {tuned['best_trial']}, valid {tuned['metric']} {tuned['best_value']:.5f}); "
                    f"its trials are nested under run {tune_run or '(not found)'}."
                ),
            }
        # MLflow params are the effective ones (tuned values applied); params.json is params.yaml,
        # what a rebuild starts from (it reads the same best_params.json, by md5).
        runs.log_batch(run_id, params=resolved, tags=tags)
        runs.log_dict(committed.model_dump(mode="json", by_alias=True), runs.PARAMS_ARTIFACT)
        test = pd.read_parquet(root / paths.split_file("test"))
        for name, frame, context in (("train", train, "training"), ("test", test, "testing")):
            path = str(paths.split_file(name))
            models.log_dataset(run_id, frame, name, path, data_md5[path], context)
        if params.train.backend == "dask":
            from reproml.fitting_dask import dask_client, fit_model_dask, n_workers

            with dask_client() as client:
                runs.log_batch(run_id, tags={"reproml.dask_workers": str(n_workers(client))})
                trained = fit_model_dask(
                    client,
                    root / paths.split_file("train"),
                    root / paths.split_file("valid"),
                    spec,
                    params,
                    classes,
                )
        else:
            trained = fit_model(train, valid, spec, params, classes)
        served, decided = decisions.decide(
            trained.pipeline,
            valid,
            spec.input_columns,
            params.data.target,
            params.data.task,
            calibration=params.train.calibration,
            rule=params.evaluate.threshold,
            cost_fp=params.evaluate.cost_fp,
            cost_fn=params.evaluate.cost_fn,
        )
        write_with(root / paths.MODEL, lambda p: joblib.dump(served, p))
        history: HistoryRecord = {
            "metric": trained.history_metric,
            "best_iteration": trained.best_iteration,
            "curves": trained.history,
            "decision": decided.to_dict(),
        }
        write_json(root / paths.HISTORY, history)
        model_md5 = file_md5(root / paths.MODEL)
        example = valid[spec.input_columns].head(5)
        code = Path(__file__).parents[1]
        inputs_frame = train[spec.input_columns]
        model_uri = models.log_sklearn_model(served, inputs_frame, example, code, _requirements(versions))
        summary = {
            "fit_seconds": round(trained.fit_seconds, 3),
            "best_iteration": trained.best_iteration,
            **decision_metrics(decided),
        }
        runs.log_batch(
            run_id,
            metrics={k: v for k, v in summary.items() if v is not None},
            tags={
                runs.MODEL_MD5_TAG: model_md5,
                "reproml.model_uri": model_uri,
                **decision_tags(decided),
            },
        )
        for name, curve in trained.history.items():
            runs.log_metric_series(run_id, f"curve_{name}_{trained.history_metric}", curve)
    return {"run_id": run_id, "model_uri": model_uri, **summary}
