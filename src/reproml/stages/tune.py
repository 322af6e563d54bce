"""`tune`: an Optuna study over `train.model`'s space; writes models/best_params.json for `train`.

The study lives in its storage (a journal file in the project by default), not in DVC: running the
stage again with the same study name resumes it and only runs what the budget still lacks. The
default name carries a hash of everything that makes trial values comparable (data versions,
features, fixed params, metric, seed), so new data starts a new study, warm-started from the last.

MLflow gets one parent run per invocation with one child run per trial, logged as trials end.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from reproml import paths
from reproml.config import Params, flatten, model_section
from reproml.env import dvc_experiment
from reproml.errors import ConfigError
from reproml.io import file_md5, read_json, write_json
from reproml.stages.common import classes_of, feature_spec, load

if TYPE_CHECKING:
    import optuna

    from reproml.metrics import MetricSpec
    from reproml.stores.optuna import StorageInfo
    from reproml.tuning.objective import TuneData
    from reproml.tuning.study import BestParams, StudyContext, StudySpec

TUNE_METRICS = paths.METRICS / "tune.json"
TRIAL_STAGE = "tune-trial"


class TrialRun(TypedDict):
    """One finished trial as an MLflow child run (`stores.mlflow.runs.log_child_run`'s arguments)."""

    run_name: str
    status: str
    start_ms: int
    end_ms: int
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    series: dict[str, list[tuple[int, float]]]


class TuneOff(TypedDict):
    """`reproml tune` with `tune.enabled: false`."""

    enabled: bool
    model: str


class TuneSummary(TypedDict):
    """What `reproml tune` returns: the study, where it lives, the run, and its counts."""

    study: str
    storage: str
    run_id: str
    notes: list[str]  # what repairing the journal file said
    best_value: float
    best_trial: int
    finished: int
    complete: int
    pruned: int
    failed: int
    finished_this_run: int
    wall_s: float
    trials_per_minute: float


def study_context(root: Path, params: Params, metric: str) -> StudyContext:
    """What makes two trials' values comparable: equal contexts may share a study."""
    from reproml.tuning.space import distributions

    model = params.train.model
    section = params.train.model_dump(mode="json")[model_section(model)]
    searched = set(distributions(model))
    context: StudyContext = {
        "model": model,
        "metric": metric,
        "seed": params.tune.seed if params.tune.seed is not None else params.seed,
        "target": params.data.target,
        "task": params.data.task,
        "exclude_columns": sorted(params.prepare.exclude_columns),
        "features": params.features.model_dump(mode="json"),
        "fixed": {k: v for k, v in section.items() if k not in searched},
        "data": {
            str(p): file_md5(root / p)
            for p in (paths.SCHEMA, paths.split_file("train"), paths.split_file("valid"))
        },
    }
    if params.tune.cv_folds > 1:  # only when set: studies made before the option (one fold) stay resumable
        context["cv_folds"] = params.tune.cv_folds
    return context


def load_data(root: Path, params: Params) -> TuneData:
    """The train and valid splits, preprocessed for the trials (module level: tune workers in other
    processes call it by name)."""
    import pandas as pd

    from reproml.tuning.objective import prepare_data

    schema = read_json(root / paths.SCHEMA)
    train = pd.read_parquet(root / paths.split_file("train"))
    valid = pd.read_parquet(root / paths.split_file("valid"))
    return prepare_data(train, valid, feature_spec(params, schema), params, classes_of(params, schema))


def _fingerprint(context: StudyContext) -> str:
    return hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()


def _champion_params(root: Path, params: Params) -> tuple[str, dict[str, Any]] | None:
    """The registered champion's values for this model's space, when it is the same model."""
    from reproml import registry
    from reproml.stores.mlflow import runs

    version = registry.alias_version(params.register_.model_name, registry.CHAMPION)
    if version is None or not version.run_id:
        return None
    logged = runs.get_run(version.run_id).params
    if logged.get("train.model") != params.train.model:
        return None
    prefix = f"train.{model_section(params.train.model)}."
    values = {k.removeprefix(prefix): v for k, v in logged.items() if k.startswith(prefix)}
    return f"champion v{version.version}", values


def _trial_record(trial: Any, metric: str, study_name: str) -> TrialRun:
    state = trial.state.name
    start = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
    end = trial.datetime_complete.timestamp() if trial.datetime_complete else start
    metrics = {"duration_s": round(end - start, 3)}
    if trial.value is not None:
        metrics[f"valid_{metric}"] = float(trial.value)
    if "best_iteration" in trial.user_attrs:
        metrics["best_iteration"] = float(trial.user_attrs["best_iteration"])
    tags = {
        "reproml.stage": TRIAL_STAGE,
        "reproml.study_name": study_name,
        "reproml.trial_number": str(trial.number),
        "reproml.trial_state": state,
        "reproml.pruned": str(state == "PRUNED").lower(),
    }
    for key in ("warm_start", "retry_of", "error", "interrupted"):
        if key in trial.user_attrs:
            tags[f"reproml.{key}"] = str(trial.user_attrs[key])
    return {
        "run_name": f"trial-{trial.number}",
        "status": "FAILED" if state == "FAIL" else "FINISHED",
        "start_ms": int(start * 1000),
        "end_ms": int(end * 1000),
        "params": {k: str(v) for k, v in trial.params.items()},
        "metrics": metrics,
        "tags": tags,
        "series": {f"intermediate_{metric}": sorted(trial.intermediate_values.items())},
    }


def _log_plots(study: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    from reproml.stores.mlflow import runs

    plots: dict[str, Callable[[Any], Any]] = {
        "tuning/optimization_history.png": ovm.plot_optimization_history,
        "tuning/param_importances.png": ovm.plot_param_importances,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, draw in plots.items():
            try:
                axes = draw(study)
            except (ValueError, RuntimeError):  # too few complete trials for importances
                continue
            figure = axes.figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            runs.log_figure(figure, name)
            plt.close(figure)


def _study_spec(
    params: Params, metric: MetricSpec, direction: Literal["maximize", "minimize"], context: StudyContext
) -> StudySpec:
    """The study this tuning run belongs to: named by the model and the fingerprint of its context
    (unless tune.study_name names it), with the space, metric and pruning it was created with."""
    from reproml.tuning import space, study

    tune, model = params.tune, params.train.model
    fingerprint = _fingerprint(context)
    return study.StudySpec(
        name=tune.study_name or f"{model}-{fingerprint[:10]}",
        model=model,
        metric=metric,
        direction=direction,
        space=space.signature(model),
        fingerprint=fingerprint,
        context=context,
        seed=int(context["seed"]),
        startup_trials=tune.startup_trials,
        pruner=tune.pruner,
        report_every=tune.report_every,
        max_rounds=params.train.xgboost.n_estimators,
    )


def _checked_storage(root: Path, params: Params) -> tuple[StorageInfo, list[str]]:
    """The study storage, refused if SQLite is asked to serve parallel workers, a journal's torn
    tail repaired first; with the repair notes (also issued as warnings)."""
    from reproml.stores import optuna as storage

    tune = params.tune
    info = storage.resolve(root, tune.storage, tune.heartbeat_interval, tune.grace_period, tune.stale_retries)
    if info.kind == "rdb" and info.location.startswith("sqlite") and tune.workers > 1:
        raise storage.TuneError(
            f"tune.workers={tune.workers} on SQLite storage {info.shown}: SQLite must not be shared by "
            "parallel workers; use the journal file (tune.storage: null) or PostgreSQL/MySQL"
        )
    if tune.backend == "dask" and not info.shared:
        raise storage.TuneError(
            f"tune.backend: dask runs trials on the Dask workers, which need a database they all reach; "
            f"{info.shown} is a file on this machine. Set REPROML_TUNE_STORAGE=postgresql://... "
            "(`source .reproml/team/env` does)"
        )
    notes: list[str] = []
    if info.kind == "journal":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            storage.repair_journal(Path(info.location))
        notes += [str(w.message) for w in caught]
        for note in notes:
            warnings.warn(note, stacklevel=1)
    return info, notes


DASK_ENV = "DASK_SCHEDULER_ADDRESS"


def _dask_address() -> str:
    address = os.environ.get(DASK_ENV)
    if not address:
        raise ConfigError(
            f"tune.backend: dask needs the Dask scheduler's address in {DASK_ENV} "
            "(`make team-up`, then `source .reproml/team/env`)"
        )
    return address


def _warm_start(
    root: Path, params: Params, store: optuna.storages.BaseStorage, the_study: optuna.Study, study_name: str
) -> list[str]:
    """Queue the champion's values, the newest other study's best and params.yaml's as the new
    study's first trials (those inside the space); the sources queued."""
    from reproml.tuning import space, study

    model = params.train.model
    candidates = [_champion_params(root, params)]
    earlier = study.earlier_best(store, model, study_name)
    candidates.append((f"study {earlier[0]}", earlier[1]) if earlier else None)
    section = params.train.model_dump(mode="json")[model_section(model)]
    candidates.append(("params.yaml", section))
    inside = [(src, space.within(model, vals)) for src, vals in (c for c in candidates if c)]
    return study.warm_start(the_study, [(s, v) for s, v in inside if v is not None])


def run_tune(root: Path = Path("."), on_counts: Callable[[Any], None] | None = None) -> TuneOff | TuneSummary:
    params = load(root)
    tune = params.tune
    if not tune.enabled:
        off: BestParams = {"enabled": False, "model": params.train.model}
        write_json(root / paths.BEST_PARAMS, off)
        write_json(root / TUNE_METRICS, {"enabled": False})
        return {"enabled": False, "model": params.train.model}
    import optuna

    from reproml import lineage
    from reproml.metrics import metric_spec
    from reproml.stores import optuna as storage
    from reproml.stores.mlflow import connection, runs
    from reproml.tuning import study
    from reproml.tuning.runner import WorkerConfig, run_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metric = metric_spec(tune.metric, params.data.task, key="tune.metric")
    direction: Literal["maximize", "minimize"] = tune.direction or metric.direction
    context = study_context(root, params, metric.name)
    spec = _study_spec(params, metric, direction, context)
    model = params.train.model
    info, notes = _checked_storage(root, params)
    dask_address = _dask_address() if tune.backend == "dask" else None
    with storage.client_session(info, spec.name):
        store = storage.open_storage(info)
        the_study, created = study.open_study(store, spec, info.shown)
        interrupted = study.recover(the_study, store, info)
        queued = _warm_start(root, params, store, the_study, spec.name) if created and tune.warm_start else []
        experiment_id = connection.setup(root, params.mlflow.experiment_name)
        trial_filter = f"tags.`reproml.study_name` = '{spec.name}' and tags.`reproml.stage` = '{TRIAL_STAGE}'"
        logged = runs.logged_tag_values(experiment_id, trial_filter, "reproml.trial_number")
        budget = study.Budget(tune.n_trials, time.time() + tune.timeout_s if tune.timeout_s else None)
        before = study.counts(the_study)
        started = time.perf_counter()
        git = lineage.git_state(root)
        experiment = dvc_experiment()
        run_name = f"tune-{experiment.name}" if experiment else f"tune-{spec.name}"
        with runs.tracked_run(experiment_id, run_name=run_name) as run:
            parent = run.info.run_id
            runs.log_batch(
                parent,
                params=flatten({"tune": tune.model_dump(mode="json"), "train": {"model": model}}),
                tags={
                    "reproml.stage": "tune",
                    "reproml.study_name": spec.name,
                    "reproml.study_created": str(created).lower(),
                    "reproml.storage": info.shown,
                    "reproml.metric": metric.name,
                    "reproml.direction": direction,
                    "reproml.warm_start": json.dumps(queued),
                    "reproml.interrupted_trials": json.dumps(interrupted),
                    "reproml.git_commit": git["commit"] or "",
                    "mlflow.source.git.commit": git["commit"] or "",
                    **{f"reproml.data.{p}": md5 for p, md5 in context["data"].items()},
                },
            )

            def log_finished(trials: list[Any]) -> None:
                for trial in trials:
                    record = _trial_record(trial, metric.name, spec.name)
                    runs.log_child_run(experiment_id, parent, **record)

            config = WorkerConfig(
                load=functools.partial(load_data, root.resolve(), params),
                params=params,
                spec=spec,
                info=info,
                budget=budget,
                threads=max(1, params.train.n_jobs // tune.workers),
            )
            final = run_study(
                config,
                tune.workers,
                load_data(root, params),
                on_counts or (lambda counts: None),
                log_finished,
                {int(n) for n in logged},
                dask_address,
            )
            if final.best_trial is None:
                raise storage.TuneError(f"study {spec.name!r} has no complete trial; nothing to train with")
            best = the_study.best_trial
            wall = time.perf_counter() - started
            ran = final.finished - before.finished
            counted = {
                "best_value": float(best.value) if best.value is not None else float("nan"),
                "best_trial": best.number,
                "finished": final.finished,
                "complete": final.complete,
                "pruned": final.pruned,
                "failed": final.failed,
                "finished_this_run": ran,
                "wall_s": round(wall, 2),
                "trials_per_minute": round(60 * ran / wall, 2) if wall > 0 else 0.0,
            }
            runs.log_batch(parent, metrics={k: float(v) for k, v in counted.items()})
            runs.log_dict(
                {"params": best.params, "value": best.value, "trial": best.number}, "best_params.json"
            )
            _log_plots(the_study)
    best_params: BestParams = {
        "enabled": True,
        "model": model,
        "study_name": spec.name,
        "metric": metric.name,
        "direction": direction,
        "best_trial": best.number,
        "best_value": best.value,
        "params": best.params,
    }
    write_json(root / paths.BEST_PARAMS, best_params)
    write_json(
        root / TUNE_METRICS,
        {k: counted[k] for k in ("best_value", "best_trial", "finished", "complete", "pruned")},
    )
    return {
        "study": spec.name,
        "storage": info.shown,
        "run_id": parent,
        "notes": notes,
        "best_value": float(counted["best_value"]),
        "best_trial": int(counted["best_trial"]),
        "finished": int(counted["finished"]),
        "complete": int(counted["complete"]),
        "pruned": int(counted["pruned"]),
        "failed": int(counted["failed"]),
        "finished_this_run": int(counted["finished_this_run"]),
        "wall_s": float(counted["wall_s"]),
        "trials_per_minute": float(counted["trials_per_minute"]),
    }
