"""Tuning: reproml's Optuna tuner against random search and FLAML, and what pruning and workers buy.

Three targets from the project's issue, each measured side by side on the same machine:

1. **Equal wall-clock budget** (120 s of search, 2 threads each): the held-out ROC-AUC on July 2013
   of a model trained on January-June after searching (train January-May, validate on June) with
   reproml's tuner, with random search over the same space, and with FLAML (`flaml.AutoML`,
   XGBoost only) as a peer. Target: reproml at or above FLAML.
2. **Pruning**: on the pipeline's own splits, wall time with each pruner over wall time without
   (`none`), at the same number of trials, with the best validation value of each. Target: 0.5 or
   less at a best value within 0.5%. This measurement chooses the default `tune.pruner`.
3. **Workers**: finished trials per minute with 2 workers over 1 worker, through
   `reproml.tuning.runner.run_study` as the `tune` stage runs it.

Nothing in the project is written or read back except the data and params.yaml: Optuna journals and
FLAML's log live in a temporary folder (also the working directory while it runs), MLflow is never
imported, and `REPROML_TUNE_STORAGE` is ignored, so the project's `optuna/` journal and `mlflow.db`
are never touched. See benchmarks/README.md for how to read the tables.

Run: `.venv/bin/python benchmarks/tuning.py [--parts 1,2,3] [--budget-s 120] [--trials 40]
[--worker-trials 30] [--seeds 42,43,44] [--json FILE]`; `--quick` for a smoke run (about 9 minutes);
`--from-json FILE...` prints the tables for saved runs, pooled (e.g. one seed per invocation).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Only the standard library at module level: `run_study` spawns worker processes, and `spawn`
# imports this file again in each of them as `__mp_main__`.
if TYPE_CHECKING:
    import numpy as np
    import optuna
    import pandas as pd

    from reproml.config import Params
    from reproml.features import FeatureSpec
    from reproml.metrics import MetricSpec
    from reproml.stores.optuna import StorageInfo
    from reproml.tuning.objective import TuneData
    from reproml.tuning.study import StudySpec

ROOT = Path(__file__).resolve().parents[1]
PRUNERS = ("none", "median", "successive_halving", "hyperband")
PRUNE_RATIO_TARGET = 0.5
PRUNE_GAP_TARGET = 0.005  # relative
# Part 1's calendars. "july": tune on January-May against June, fit the final model on January-June,
# score July. "test": the project's own split from params.yaml (prepare.train_end / valid_end /
# test_end: tune on the train split against valid, fit on both, score the test month).
JULY = ("2013-06-01", "2013-07-01", "2013-08-01")
CALENDARS = ("july", "test")
TARGET_MARGIN = 0.003  # reproml's holdout ROC-AUC at least FLAML's + this, median of paired seeds
METHODS = ("reproml", "random", "flaml")
STORAGE_ENV = "REPROML_TUNE_STORAGE"


class BenchError(RuntimeError):
    pass


@dataclass
class Context:
    params: Params
    schema: dict[str, Any]
    spec: FeatureSpec
    metric: MetricSpec
    scratch: Path
    threads: int
    log: Callable[[str], None]


@dataclass(frozen=True)
class Calendar:
    """Part 1's months: tune before `tune_end` against [tune_end, fit_end), fit the final model
    before `fit_end`, score [fit_end, holdout_end)."""

    name: str
    tune_end: str
    fit_end: str
    holdout_end: str

    def label(self, which: str) -> str:
        import pandas as pd

        first = "2013-01-01"  # part 1 runs on the bundled flights, which start there
        bounds: dict[str, tuple[str, str]] = {
            "tune": (first, self.tune_end), "valid": (self.tune_end, self.fit_end),
            "fit": (first, self.fit_end), "holdout": (self.fit_end, self.holdout_end),
        }  # fmt: skip
        start, end = bounds[which]
        a, b = pd.Timestamp(start), pd.Timestamp(end) - pd.Timedelta(days=1)
        return a.strftime("%b") if (a.year, a.month) == (b.year, b.month) else f"{a:%b}-{b:%b}"


def calendars(params: Params, names: Sequence[str]) -> list[Calendar]:
    chosen = []
    for name in names:
        if name == "july":
            chosen.append(Calendar("july", *JULY))
        elif params.prepare.split != "time":
            raise BenchError("--calendars test needs prepare.split: time (the project's own test month)")
        else:
            p = params.prepare
            chosen.append(Calendar("test", str(p.train_end), str(p.valid_end), str(p.test_end)))
    return chosen


@dataclass
class HeldOut:
    """Part 1's data for one calendar: the tuning pair (preprocessing fit on the tuning rows) and
    the final pair (preprocessing refit on tuning + validation rows), and the scored month."""

    calendar: Calendar
    tune: TuneData
    names: list[str]
    X_fit: Any
    y_fit: np.ndarray
    X_holdout: Any
    y_holdout: np.ndarray
    rows: dict[str, int]
    prepare_s: float


@dataclass
class Search:
    """One method's search in part 1 and its final model's July score."""

    method: str
    seed: int
    budget_s: float
    search_s: float  # wall from the start of the search to its return
    trials: int  # finished (complete or pruned) within the budget
    trials_total: int  # finished at all (a trial started before the deadline runs to its end)
    pruned: int
    best_valid: float  # best June value among trials finished within the budget
    best_iteration: int | None
    best_params: dict[str, Any]
    holdout: float = math.nan
    fit_s: float = math.nan
    note: str = ""
    load: list[float] = field(default_factory=list)  # load average (1/5/15 min) when it ended
    calendar: str = "july"  # runs saved before the project's own test month was added were July's


@dataclass
class PruneRun:
    pruner: str
    seed: int
    wall_s: float
    finished: int
    complete: int
    pruned: int
    best: float


@dataclass
class WorkerRun:
    workers: int
    seed: int
    threads: int
    wall_s: float
    finished: int
    pruned: int
    best: float | None
    pruner: str = "median"  # runs saved before this field existed used params.yaml's median

    @property
    def per_minute(self) -> float:
        return 60.0 * self.finished / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class Results:
    searches: list[Search] = field(default_factory=list)
    prunes: list[PruneRun] = field(default_factory=list)
    workers: list[WorkerRun] = field(default_factory=list)
    held_out: dict[str, Any] = field(default_factory=dict)  # calendar -> rows
    settings: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Shared helpers.
# --------------------------------------------------------------------------------------------


def require(paths: Sequence[Path]) -> None:
    missing = [str(p.relative_to(ROOT)) for p in paths if not p.exists()]
    if missing:
        raise BenchError(
            f"missing {', '.join(missing)}: run `dvc repro prepare` first (it writes the ingested data, "
            "its schema and the prepared splits)"
        )


def seeded(params: Params, seed: int) -> Params:
    """params.yaml with the top-level seed (XGBoost's random_state in trials and final fits) set."""
    return params.model_copy(update={"seed": seed})


def study_spec(ctx: Context, name: str, seed: int, pruner: str) -> StudySpec:
    """A `StudySpec` as the stage builds it, from params.yaml's tune section; fingerprint is ours."""
    from reproml.tuning import space
    from reproml.tuning.study import StudySpec

    p = ctx.params
    model = p.train.model
    return StudySpec(
        name=name,
        model=model,
        metric=ctx.metric,
        direction="maximize" if ctx.metric.higher_is_better else "minimize",
        space=space.signature(model),
        fingerprint=f"benchmark-{name}",
        context={
            "model": model,
            "metric": ctx.metric.name,
            "seed": seed,
            "target": p.data.target,
            "task": p.data.task,
            "exclude_columns": [],
            "features": {},
            "fixed": {},
            "data": {"benchmark": name},
        },
        seed=seed,
        startup_trials=p.tune.startup_trials,
        pruner=pruner,
        report_every=p.tune.report_every,
        max_rounds=p.train.xgboost.n_estimators,
    )


def temp_storage(ctx: Context, name: str) -> tuple[StorageInfo, Any]:
    """A fresh journal file (and its lock folder) inside the scratch folder, never the project's."""
    from reproml.stores import optuna as storage

    folder = ctx.scratch / "optuna" / name
    info = storage.resolve(folder, str(folder / "studies.journal"))
    if info.kind != "journal" or not Path(info.location).is_relative_to(ctx.scratch):
        raise BenchError(f"refusing storage {info.shown}: it is not in the scratch folder {ctx.scratch}")
    return info, storage.open_storage(info)


def better(ctx: Context, a: float, b: float) -> bool:
    return a > b if ctx.metric.higher_is_better else a < b


def relative_gap(ctx: Context, reference: float, value: float) -> float:
    """How much worse `value` is than `reference`, relative (positive = worse, negative = better)."""
    worse = reference - value if ctx.metric.higher_is_better else value - reference
    return worse / abs(reference) if reference else math.nan


def rotate(items: Sequence[Any], by: int) -> list[Any]:
    """The run order for seed `by`: each side goes first in turn, so a slow minute hits all sides.

    Keyed on the seed, not the repeat's index, so one-seed runs pooled with --from-json vary too.
    """
    k = by % len(items)
    return [*items[k:], *items[:k]]


def med(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else math.nan


# --------------------------------------------------------------------------------------------
# Part 1: equal wall-clock budget against random search and FLAML, scored on July.
# --------------------------------------------------------------------------------------------


def held_out_data(ctx: Context, calendar: Calendar) -> HeldOut:
    import pandas as pd

    from reproml.features import build_preprocessor
    from reproml.tuning.objective import prepare_data

    started = time.perf_counter()
    frame = pd.read_parquet(ROOT / "data" / "ingested.parquet")
    p = ctx.params
    time_column = p.data.time_column
    if time_column is None or p.data.task != "classification":
        raise BenchError("part 1 needs the bundled flights data: a time column and a classification target")
    tune_train, valid, fit, holdout = _split(frame, time_column, calendar)
    # Tuning data exactly as the stage prepares it, preprocessing fit on the tuning rows only.
    tune = prepare_data(tune_train, valid, ctx.spec, p)
    # The final models' data: the same preprocessing, refit on tuning + validation rows.
    prep = build_preprocessor(ctx.spec, p.train.model, p.features.max_categories)
    columns = ctx.spec.input_columns
    X_fit = prep.fit_transform(fit[columns])
    X_holdout = prep.transform(holdout[columns])
    target = p.data.target
    return HeldOut(
        calendar=calendar,
        tune=tune,
        names=[str(n) for n in prep.get_feature_names_out()],
        X_fit=X_fit,
        y_fit=fit[target].to_numpy(),
        X_holdout=X_holdout,
        y_holdout=holdout[target].to_numpy(),
        rows={"tune_train": len(tune_train), "valid": len(valid), "fit": len(fit), "holdout": len(holdout)},
        prepare_s=time.perf_counter() - started,
    )


def _split(
    frame: pd.DataFrame, time_column: str, calendar: Calendar
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Tuning rows, validation rows, final-fit rows (both), scored rows, by `calendar`'s dates."""
    import pandas as pd

    when = frame[time_column]
    tune_end, fit_end, holdout_end = (
        pd.Timestamp(d) for d in (calendar.tune_end, calendar.fit_end, calendar.holdout_end)
    )
    return (
        frame[when < tune_end].reset_index(drop=True),
        frame[(when >= tune_end) & (when < fit_end)].reset_index(drop=True),
        frame[when < fit_end].reset_index(drop=True),
        frame[(when >= fit_end) & (when < holdout_end)].reset_index(drop=True),
    )


def _timed_search(
    ctx: Context,
    method: str,
    study: optuna.Study,
    objective: Any,
    info: StorageInfo,
    seed: int,
    budget_s: float,
) -> Search:
    """`run_trials` to a deadline; only trials that finished within the budget count."""
    from optuna.trial import TrialState

    from reproml.tuning.study import Budget, run_trials

    started = time.time()
    clock = time.perf_counter()
    deadline = started + budget_s
    run_trials(study, objective, Budget(n_trials=None, deadline=deadline), info)
    search_s = time.perf_counter() - clock
    finished = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.datetime_complete is not None
    ]
    in_budget = [t for t in finished if t.datetime_complete and t.datetime_complete.timestamp() <= deadline]
    note = ""
    complete = [t for t in in_budget if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:  # only in a smoke run with a budget shorter than one trial
        complete = [t for t in finished if t.state == TrialState.COMPLETE and t.value is not None]
        note = "no trial finished within the budget; best of the over-budget trials used"
    if not complete:
        raise BenchError(f"{method}: no complete trial (seed {seed}); raise --budget-s")
    best = complete[0]
    for trial in complete[1:]:
        if better(ctx, float(trial.values[0]), float(best.values[0])):
            best = trial
    return Search(
        method=method,
        seed=seed,
        budget_s=budget_s,
        search_s=search_s,
        trials=len(in_budget),
        trials_total=len(finished),
        pruned=sum(t.state == TrialState.PRUNED for t in in_budget),
        best_valid=float(best.values[0]),
        best_iteration=int(best.user_attrs["best_iteration"]),
        best_params=dict(best.params),
        note=note,
    )


def search_reproml(ctx: Context, held: HeldOut, seed: int, budget_s: float) -> Search:
    """reproml's tuner as the stage runs it: seeded multivariate TPE, params.yaml's pruner, warm start."""
    from reproml.config import model_section
    from reproml.tuning import space
    from reproml.tuning import study as st
    from reproml.tuning.objective import Objective

    params = seeded(ctx.params, seed)
    model = params.train.model
    spec = study_spec(ctx, f"reproml-{held.calendar.name}-{seed}", seed, params.tune.pruner)
    info, store = temp_storage(ctx, spec.name)
    the_study, _ = st.open_study(store, spec, info.shown)
    if params.tune.warm_start:  # as the stage: params.yaml's values first (no champion, no earlier study)
        section = params.train.model_dump(mode="json")[model_section(model)]
        values = space.within(model, section)
        if values is not None:
            st.warm_start(the_study, [("params.yaml", values)])
    objective = Objective(held.tune, params, ctx.metric, ctx.threads, spec.report_every)
    search = _timed_search(ctx, "reproml", the_study, objective, info, seed, budget_s)
    folds = params.tune.cv_folds
    if folds > 1 and not search.note:
        search.note = (
            f"reproml's best value is a mean over {folds} folds (tune.cv_folds), not the valid month's"
        )
    return search


def search_random(ctx: Context, held: HeldOut, seed: int, budget_s: float) -> Search:
    """Random search: the same objective and space, `RandomSampler(seed)`, no pruning, no warm start."""
    import optuna

    from reproml.tuning.objective import Objective

    params = seeded(ctx.params, seed)
    spec = study_spec(ctx, f"random-{held.calendar.name}-{seed}", seed, "none")
    info, store = temp_storage(ctx, spec.name)
    the_study = optuna.create_study(
        study_name=spec.name,
        storage=store,
        direction=spec.direction,
        sampler=optuna.samplers.RandomSampler(seed=seed),
        pruner=optuna.pruners.NopPruner(),
    )
    objective = Objective(held.tune, params, ctx.metric, ctx.threads, spec.report_every)
    return _timed_search(ctx, "random", the_study, objective, info, seed, budget_s)


def fit_and_score(ctx: Context, held: HeldOut, search: Search) -> None:
    """reproml and random: XGBoost with the best values and best_iteration + 1 rounds on Jan-Jun."""
    from sklearn.metrics import roc_auc_score

    from reproml.config import with_model_params
    from reproml.models import make_estimator

    params = seeded(ctx.params, search.seed)
    tuned = with_model_params(params, search.best_params, f"{search.method} best trial")
    train = tuned.train.model_copy(update={"n_jobs": ctx.threads})
    estimator = make_estimator(train, tuned.data.task, tuned.seed, held.tune.categorical_mask)
    assert search.best_iteration is not None
    estimator.set_params(n_estimators=search.best_iteration + 1, early_stopping_rounds=None)
    started = time.perf_counter()
    estimator.fit(held.X_fit, held.y_fit)
    scores = estimator.predict_proba(held.X_holdout)[:, 1]
    search.fit_s = time.perf_counter() - started
    search.holdout = float(roc_auc_score(held.y_holdout, scores))


def _flaml_frames(ctx: Context, held: HeldOut, kind: str) -> dict[str, pd.DataFrame]:
    """FLAML's inputs: reproml's preprocessed matrices (`matrix`) or raw columns (`raw`)."""
    import pandas as pd

    if kind == "matrix":
        return {
            "train": pd.DataFrame(held.tune.X_train, columns=held.names),
            "valid": pd.DataFrame(held.tune.X_valid, columns=held.names),
            "fit": pd.DataFrame(held.X_fit, columns=held.names),
            "holdout": pd.DataFrame(held.X_holdout, columns=held.names),
        }
    frame = pd.read_parquet(ROOT / "data" / "ingested.parquet", columns=ctx.spec.input_columns)
    for column in ctx.spec.categorical:
        frame[column] = frame[column].astype("category")
    time_column = ctx.spec.time_column
    assert time_column is not None
    train, valid, fit, holdout = _split(frame, time_column, held.calendar)
    return {"train": train, "valid": valid, "fit": fit, "holdout": holdout}


def search_flaml(ctx: Context, held: HeldOut, seed: int, budget_s: float, kind: str) -> Search:
    """FLAML, XGBoost only, on June as its validation set; its best config refit on Jan-Jun.

    With `X_val` given, FLAML 2.7 does not retrain at the end (`retrain_final` is false for a
    holdout with X_val), so its returned model was trained on January-May only. Its own
    `retrain_from_log(..., train_full=True)` retrains the best logged config on the data given,
    which is what `retrain_full` does when FLAML holds out the data itself.
    """
    import warnings

    from flaml.automl import AutoML
    from sklearn.metrics import roc_auc_score

    frames = _flaml_frames(ctx, held, kind)
    log_file = ctx.scratch / f"flaml-{held.calendar.name}-{seed}.log"
    transform = {"skip_transform": True} if kind == "matrix" else {}
    automl: Any = AutoML()  # type: ignore[no-untyped-call,unused-ignore]
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        automl.fit(
            X_train=frames["train"], y_train=held.tune.y_train, X_val=frames["valid"],
            y_val=held.tune.y_valid, task="classification", metric="roc_auc", estimator_list=["xgboost"],
            time_budget=budget_s, n_jobs=ctx.threads, seed=seed, log_file_name=str(log_file),
            log_type="all", verbose=0, **transform,
        )  # fmt: skip
    search_s = time.perf_counter() - started
    records = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    trials = [r for r in records if "record_id" in r]
    in_budget = [r for r in trials if float(r.get("wall_clock_time", 0.0)) <= budget_s]
    best_config = dict(automl.best_config or {})
    search = Search(
        method="flaml",
        seed=seed,
        budget_s=budget_s,
        search_s=search_s,
        trials=len(in_budget),
        trials_total=len(trials),
        pruned=0,
        best_valid=1.0 - float(automl.best_loss),
        best_iteration=best_config.get("n_estimators"),
        best_params=best_config,
        note=f"input: {kind}",
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        automl.retrain_from_log(
            str(log_file), X_train=frames["fit"], y_train=held.y_fit, task="classification",
            train_full=True, n_jobs=ctx.threads, **transform,
        )  # fmt: skip
        scores = automl.predict_proba(frames["holdout"])[:, 1]
    search.fit_s = time.perf_counter() - started
    search.holdout = float(roc_auc_score(held.y_holdout, scores))
    return search


def part_budget(
    ctx: Context,
    seeds: Sequence[int],
    budget_s: float,
    flaml_input: str,
    methods: Sequence[str],
    chosen: Sequence[Calendar],
) -> tuple[list[Search], dict[str, dict[str, int]]]:
    """Per calendar, per seed: each method's search in turn (paired: same data, same minutes)."""
    require([ROOT / "data" / "ingested.parquet", ROOT / "data" / "schema.json"])
    runs: list[Search] = []
    rows: dict[str, dict[str, int]] = {}
    for calendar in chosen:
        held = held_out_data(ctx, calendar)
        rows[calendar.name] = held.rows
        tune, valid, out = calendar.label("tune"), calendar.label("valid"), calendar.label("holdout")
        ctx.log(
            f"part 1, {calendar.name}: tune {tune}, validate {valid}, score {out}; rows {held.rows} "
            f"(preprocessing both pairs {held.prepare_s:.1f} s, outside the budget); "
            f"{len(seeds)} seed(s) x {len(methods)} methods x {budget_s:.0f} s; load {_load()}"
        )
        for seed in seeds:
            for method in rotate(methods, seed):
                if method == "reproml":
                    search = search_reproml(ctx, held, seed, budget_s)
                elif method == "random":
                    search = search_random(ctx, held, seed, budget_s)
                else:
                    search = search_flaml(ctx, held, seed, budget_s, flaml_input)
                if method != "flaml":
                    fit_and_score(ctx, held, search)
                search.calendar = calendar.name
                search.load = list(os.getloadavg())
                runs.append(search)
                ctx.log(
                    f"  {calendar.name} seed {seed} {method}: {search.trials} trials in budget "
                    f"({search.trials_total} in {search.search_s:.0f} s), best {valid} "
                    f"{search.best_valid:.4f}, {out} {search.holdout:.4f} (final fit {search.fit_s:.1f} s); "
                    f"load {_load()}"
                )
    return runs, rows


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# --------------------------------------------------------------------------------------------
# Part 2: pruners at a fixed number of trials, on the pipeline's own train/valid splits.
# --------------------------------------------------------------------------------------------


def part_pruning(ctx: Context, seeds: Sequence[int], n_trials: int, pruners: Sequence[str]) -> list[PruneRun]:
    from reproml import paths
    from reproml.stages.tune import load_data
    from reproml.tuning import study as st
    from reproml.tuning.objective import Objective

    require([ROOT / paths.SCHEMA, ROOT / paths.split_file("train"), ROOT / paths.split_file("valid")])
    started = time.perf_counter()
    data = load_data(ROOT, ctx.params)
    ctx.log(
        f"part 2: pipeline splits train {len(data.y_train)} / valid {len(data.y_valid)} rows "
        f"(loaded in {time.perf_counter() - started:.1f} s); {len(seeds)} seed(s) x {len(pruners)} pruners "
        f"x {n_trials} trials, warm start off"
    )
    runs: list[PruneRun] = []
    for seed in seeds:
        params = seeded(ctx.params, seed)
        for pruner in rotate(pruners, seed):
            spec = study_spec(ctx, f"prune-{pruner}-{seed}", seed, pruner)
            info, store = temp_storage(ctx, spec.name)
            the_study, _ = st.open_study(store, spec, info.shown)
            objective = Objective(data, params, ctx.metric, ctx.threads, spec.report_every)
            clock = time.perf_counter()
            st.run_trials(the_study, objective, st.Budget(n_trials=n_trials, deadline=None), info)
            wall = time.perf_counter() - clock
            counts = st.counts(the_study)
            if counts.best is None:
                raise BenchError(f"pruner {pruner} seed {seed}: no complete trial")
            runs.append(
                PruneRun(pruner, seed, wall, counts.finished, counts.complete, counts.pruned, counts.best)
            )
            ctx.log(
                f"  seed {seed} {pruner}: {wall:.0f} s, {counts.finished} finished ({counts.pruned} pruned), "
                f"best {counts.best:.5f}"
            )
    return runs


# --------------------------------------------------------------------------------------------
# Part 3: trials per minute with 2 workers against 1, through the stage's runner.
# --------------------------------------------------------------------------------------------


def part_workers(
    ctx: Context, seeds: Sequence[int], n_trials: int, worker_counts: Sequence[int], pruner: str | None
) -> list[WorkerRun]:
    from functools import partial

    from reproml import paths
    from reproml.stages.tune import load_data
    from reproml.tuning import study as st
    from reproml.tuning.runner import WorkerConfig, run_study

    require([ROOT / paths.SCHEMA, ROOT / paths.split_file("train"), ROOT / paths.split_file("valid")])
    data = load_data(ROOT, ctx.params)  # the stage loads this before run_study too
    source = "--worker-pruner" if pruner else "params.yaml"
    pruner = pruner or ctx.params.tune.pruner
    ctx.log(
        f"part 3: {len(seeds)} seed(s) x workers {list(worker_counts)} x {n_trials} trials, pruner {pruner} "
        f"({source}), warm start off"
    )
    runs: list[WorkerRun] = []
    for seed in seeds:
        params = seeded(ctx.params, seed)
        for workers in rotate(worker_counts, seed):
            spec = study_spec(ctx, f"workers-{workers}-{seed}", seed, pruner)
            info, store = temp_storage(ctx, spec.name)
            st.open_study(store, spec, info.shown)  # created here, as the stage does before run_study
            threads = max(1, params.train.n_jobs // workers)  # as the stage divides train.n_jobs
            config = WorkerConfig(
                load=partial(load_data, ROOT, params),
                params=params,
                spec=spec,
                info=info,
                budget=st.Budget(n_trials=n_trials, deadline=None),
                threads=threads,
            )
            clock = time.perf_counter()
            final = run_study(config, workers, data, lambda counts: None, lambda trials: None, set())
            wall = time.perf_counter() - clock
            run = WorkerRun(workers, seed, threads, wall, final.finished, final.pruned, final.best, pruner)
            runs.append(run)
            ctx.log(
                f"  seed {seed} workers {workers} x {threads} thread(s): {final.finished} trials in "
                f"{wall:.0f} s = {run.per_minute:.2f}/min ({final.pruned} pruned)"
            )
    return runs


# --------------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _span(values: Sequence[float], digits: int = 4) -> str:
    clean = [v for v in values if v == v]
    if len(clean) < 2:
        return ""
    return f"{min(clean):.{digits}f}-{max(clean):.{digits}f}"


def _verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]MISS[/red]"


def report_budget(console: Any, ctx: Context, runs: list[Search], rows: dict[str, dict[str, int]]) -> None:
    """One table per calendar, then reproml against FLAML on every calendar side by side."""
    from rich.table import Table

    known = {
        c.name: c for c in calendars(ctx.params, [n for n in CALENDARS if n != "test" or _time_split(ctx)])
    }
    summary: list[tuple[str, float, float, list[float]]] = []
    for name in [*CALENDARS, *sorted({r.calendar for r in runs} - set(CALENDARS))]:
        these = [r for r in runs if r.calendar == name]
        if not these:
            continue
        calendar = known.get(name) or Calendar(name, *JULY)
        paired = _report_calendar(console, ctx, these, rows.get(name, {}), calendar)
        if paired is not None:
            summary.append((calendar.label("holdout"), *paired))
    if not summary:
        return
    table = Table(
        title="reproml against FLAML (xgboost) at an equal budget: ROC-AUC of the final model, target "
        f"reproml >= FLAML + {TARGET_MARGIN}"
    )
    for header in (
        "scored month",
        "reproml",
        "FLAML",
        "reproml - FLAML (paired median)",
        "per seed",
        "target",
    ):
        table.add_column(header, justify="left" if header == "scored month" else "right")
    for month, ours, theirs, diffs in summary:
        difference = med(diffs)
        table.add_row(
            month, _f(ours), _f(theirs), f"[bold]{difference:+.4f}[/bold]",
            " ".join(f"{d:+.4f}" for d in diffs), _verdict(difference >= TARGET_MARGIN),
        )  # fmt: skip
    console.print(table)


def _time_split(ctx: Context) -> bool:
    return ctx.params.prepare.split == "time"


def _report_calendar(
    console: Any, ctx: Context, runs: list[Search], rows: dict[str, int], calendar: Calendar
) -> tuple[float, float, list[float]] | None:
    """The table of one calendar; (reproml median, FLAML median, paired differences) if both ran."""
    from rich.table import Table

    seeds = sorted({r.seed for r in runs})
    budget = runs[0].budget_s
    by = {m: [r for r in runs if r.method == m] for m in METHODS}
    inputs = sorted({r.note.removeprefix("input: ") for r in by["flaml"]})
    labels = {
        "reproml": f"reproml (TPE, {ctx.params.tune.pruner} pruner, warm start)",
        "random": "random search (same objective)",
        "flaml": f"FLAML, xgboost only ({'/'.join(inputs)} input)",
    }
    tune, valid, fit, out = (calendar.label(w) for w in ("tune", "valid", "fit", "holdout"))
    table = Table(
        title=f"1. Equal budget ({calendar.name}): {budget:.0f} s of search, {ctx.threads} threads; tune "
        f"{tune} vs {valid}, final fit {fit}, scored on {out} ({len(seeds)} seed(s): "
        f"{', '.join(map(str, seeds))}; medians)"
    )
    for header in (
        "method", "trials in budget", "pruned", "search s", f"best {valid} AUC",
        "final fit s", f"{out} ROC-AUC", f"{out} per seed", "load (1 min) per seed",
    ):  # fmt: skip
        table.add_column(header, justify="left" if header == "method" else "right")
    for method in METHODS:
        rs = by[method]
        if not rs:
            continue
        ordered = sorted(rs, key=lambda r: r.seed)
        table.add_row(
            labels[method],
            f"{med([r.trials for r in rs]):.0f}",
            f"{med([r.pruned for r in rs]):.0f}" if method != "flaml" else "-",
            f"{med([r.search_s for r in rs]):.0f}",
            _f(med([r.best_valid for r in rs])),
            f"{med([r.fit_s for r in rs]):.1f}",
            f"[bold]{_f(med([r.holdout for r in rs]))}[/bold]",
            " ".join(_f(r.holdout) for r in ordered),
            " ".join(f"{r.load[0]:.1f}" if r.load else "-" for r in ordered),
        )
    console.print(table)
    console.print(
        f"[dim]rows: tune train {rows.get('tune_train')}, {valid} {rows.get('valid', rows.get('june'))}, "
        f"final fit {rows.get('fit')}, {out} {rows.get('holdout', rows.get('july'))}. 'trials in budget' "
        f"counts trials finished within {budget:.0f} s of the search's start; only they can be the best. "
        "reproml and random: a trial started before the deadline runs to its end, so 'search s' can "
        "exceed the budget; that time is not used. FLAML: records in its log.[/dim]",
        highlight=False,
    )
    for note in sorted({r.note for r in runs if r.note and not r.note.startswith("input")}):
        console.print(f"[yellow]{note}[/yellow]")
    ours = {r.seed: r.holdout for r in by["reproml"]}
    against_flaml: tuple[float, float, list[float]] | None = None
    for peer, target in (("flaml", True), ("random", False)):
        theirs = {r.seed: r.holdout for r in by[peer]}
        common = sorted(set(ours) & set(theirs))
        if not common:
            continue
        diffs = [ours[s] - theirs[s] for s in common]
        wins = sum(d >= 0 for d in diffs)
        difference = med(diffs)
        verdict = (
            f"target >= +{TARGET_MARGIN}: {_verdict(difference >= TARGET_MARGIN)}"
            if target
            else "(reference)"
        )
        if target:
            against_flaml = (med(list(ours.values())), med(list(theirs.values())), diffs)
        console.print(
            f"[bold]reproml - {peer}, {out} ROC-AUC[/bold]: median of paired differences "
            f"[bold]{difference:+.4f}[/bold] (per seed {' '.join(f'{d:+.4f}' for d in diffs)}; "
            f"reproml at or above in {wins}/{len(common)})  {verdict}",
            highlight=False,
        )
    return against_flaml


def report_pruning(console: Any, ctx: Context, runs: list[PruneRun], n_trials: Any) -> str | None:
    from rich.table import Table

    seeds = sorted({r.seed for r in runs})
    none = {r.seed: r for r in runs if r.pruner == "none"}
    table = Table(
        title=f"2. Pruning: {n_trials} trials each on the pipeline's train/valid splits, "
        f"{len(seeds)} seed(s): {', '.join(map(str, seeds))} (medians; ratio and gap paired by seed)"
    )
    for header in (
        "pruner", "wall s", "wall range", "pruned", f"best valid {ctx.metric.name}",
        "wall / none", "ratio per seed", "best-value gap", "worst gap", "target",
    ):  # fmt: skip
        table.add_column(header, justify="left" if header == "pruner" else "right")
    summary: dict[str, tuple[float, float]] = {}
    for pruner in PRUNERS:
        rs = [r for r in runs if r.pruner == pruner]
        if not rs:
            continue
        ratios = [r.wall_s / none[r.seed].wall_s for r in rs if r.seed in none]
        gaps = [relative_gap(ctx, none[r.seed].best, r.best) for r in rs if r.seed in none]
        ratio, gap = med(ratios), med(gaps)
        worst = max(gaps) if gaps else math.nan
        if pruner != "none" and ratios:
            summary[pruner] = (ratio, gap)
        ok = ratio <= PRUNE_RATIO_TARGET and gap <= PRUNE_GAP_TARGET
        table.add_row(
            pruner,
            f"{med([r.wall_s for r in rs]):.0f}",
            _span([r.wall_s for r in rs], 0),
            f"{med([r.pruned for r in rs]):.0f}",
            _f(med([r.best for r in rs]), 5),
            "1.00" if pruner == "none" else f"[bold]{ratio:.2f}[/bold]",
            "" if pruner == "none" else " ".join(f"{x:.2f}" for x in ratios),
            "-" if pruner == "none" else f"{gap:+.3%}",
            "-" if pruner == "none" else f"{worst:+.3%}",
            "" if pruner == "none" else _verdict(ok),
        )
    console.print(table)
    console.print(
        f"[dim]target: wall / none <= {PRUNE_RATIO_TARGET} with a best value within "
        f"{PRUNE_GAP_TARGET:.1%} of none's (gap > 0: pruning found a worse best). Same sampler seed on both "
        "sides, so the first startup trials are the same parameters.[/dim]",
        highlight=False,
    )
    if not summary:
        return None
    # Once a pruner meets both targets, more speed is not the goal: among those, the one that
    # loses least of the best value. Otherwise the fastest that keeps the value, else the fastest.
    passing = {p: v for p, v in summary.items() if v[0] <= PRUNE_RATIO_TARGET and v[1] <= PRUNE_GAP_TARGET}
    within = {p: v for p, v in summary.items() if v[1] <= PRUNE_GAP_TARGET}
    if passing:
        choice = min(passing, key=lambda p: (passing[p][1], passing[p][0]))
    else:
        pool = within or summary
        choice = min(pool, key=lambda p: pool[p][0])
    ratio, gap = summary[choice]
    others = ", ".join(f"{p} {v[0]:.2f} / {v[1]:+.3%}" for p, v in summary.items() if p != choice)
    if passing:
        why = (
            f"it meets both targets (wall / none {ratio:.2f}, median gap {gap:+.3%}) and loses the least "
            f"best value of the pruners that do (others, wall / none and gap: {others})"
        )
    elif within:
        why = (
            f"the lowest wall / none ({ratio:.2f}) among pruners whose best value stays within "
            f"{PRUNE_GAP_TARGET:.1%} (median gap {gap:+.3%}); none meets the ratio target"
        )
    else:
        why = (
            f"the lowest wall / none ({ratio:.2f}), though no pruner kept the best value within "
            f"{PRUNE_GAP_TARGET:.1%} (its median gap {gap:+.3%})"
        )
    current = ctx.params.tune.pruner
    console.print(
        f"[bold]These numbers favour tune.pruner: {choice}[/bold]: {why}. params.yaml has {current!r}"
        + ("." if choice == current else f"; consider changing it to {choice!r}."),
        highlight=False,
    )
    return choice


def report_workers(console: Any, runs: list[WorkerRun], n_trials: Any) -> None:
    """One table per pruner: pruning changes trial lengths, so rates under two pruners don't pool."""
    for pruner in sorted({r.pruner for r in runs}):
        _report_workers(console, [r for r in runs if r.pruner == pruner], n_trials, pruner)


def _report_workers(console: Any, runs: list[WorkerRun], n_trials: Any, pruner: str) -> None:
    from rich.table import Table

    seeds = sorted({r.seed for r in runs})
    counts = sorted({r.workers for r in runs})
    table = Table(
        title=f"3. Workers: {n_trials} trials through runner.run_study, pruner {pruner}, {len(seeds)} "
        f"seed(s): {', '.join(map(str, seeds))} (medians)"
    )
    for header in ("workers", "threads each", "wall s", "finished", "pruned", "trials / min", "per seed"):
        table.add_column(header, justify="left" if header == "workers" else "right")
    rates: dict[int, dict[int, float]] = {}
    for workers in counts:
        rs = [r for r in runs if r.workers == workers]
        rates[workers] = {r.seed: r.per_minute for r in rs}
        table.add_row(
            str(workers),
            str(rs[0].threads),
            f"{med([r.wall_s for r in rs]):.0f}",
            f"{med([r.finished for r in rs]):.0f}",
            f"{med([r.pruned for r in rs]):.0f}",
            f"[bold]{med([r.per_minute for r in rs]):.2f}[/bold]",
            " ".join(f"{r.per_minute:.2f}" for r in sorted(rs, key=lambda r: r.seed)),
        )
    console.print(table)
    if 1 in rates and len(counts) > 1:
        for workers in counts:
            if workers == 1:
                continue
            paired = [rates[workers][s] / rates[1][s] for s in seeds if s in rates[workers] and s in rates[1]]
            console.print(
                f"[bold]trials per minute, {workers} workers / 1 worker[/bold]: ratio of medians "
                f"[bold]{med(list(rates[workers].values())) / med(list(rates[1].values())):.2f}[/bold] "
                f"(per seed {' '.join(f'{x:.2f}' for x in paired)})",
                highlight=False,
            )
    console.print(
        f"[dim]wall: run_study from start to return, including the extra workers' process start, "
        f"imports and data loading (the stage pays them too). Each of N workers gets "
        f"train.n_jobs // N threads; on {os.cpu_count()} cores.[/dim]",
        highlight=False,
    )


# --------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--parts", type=_ints, default=[1, 2, 3], help="which parts to run (default 1,2,3)")
    parser.add_argument("--budget-s", type=float, default=120.0, help="part 1: search seconds per method")
    parser.add_argument("--trials", type=int, default=40, help="part 2: trials per pruner (default 40)")
    parser.add_argument("--worker-trials", type=int, default=30, help="part 3: trials per run (default 30)")
    parser.add_argument(
        "--worker-pruner", choices=PRUNERS, help="part 3: pruner (default params.yaml's tune.pruner)"
    )
    parser.add_argument("--seeds", type=_ints, default=[42, 43, 44], help="repeats, one per seed (42,43,44)")
    parser.add_argument("--part1-seeds", type=_ints, help="part 1's seeds if not --seeds (~7 min each)")
    parser.add_argument("--pruners", default=",".join(PRUNERS), help="part 2: pruners to compare with none")
    parser.add_argument(
        "--flaml-input", choices=("raw", "matrix"), default="raw",
        help="FLAML gets the raw feature columns, categories as pandas category (default), or reproml's "
        "preprocessed matrix",
    )  # fmt: skip
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="part 1: methods to run (default reproml,random,flaml)"
    )
    parser.add_argument(
        "--calendars", default=",".join(CALENDARS),
        help="part 1: july (tune Jan-May vs June, score July) and/or test (the project's own split: tune on "
        "train vs valid, score the test month); default both",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 s budget, 6 trials, 1 seed")
    parser.add_argument("--json", type=Path, help="also write every run's numbers to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and print its path")
    parser.add_argument(
        "--from-json", type=Path, nargs="+", metavar="FILE",
        help="run nothing: print the tables for runs saved with --json (several files are pooled)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.budget_s, args.trials, args.worker_trials, args.seeds = 20.0, 6, 6, [args.seeds[0]]
    parts = set(args.parts)
    if not parts <= {1, 2, 3}:
        parser.error("--parts takes 1, 2 and/or 3")
    pruners = [p.strip() for p in args.pruners.split(",") if p.strip()]
    if not set(pruners) <= set(PRUNERS):
        parser.error(f"--pruners: choose from {', '.join(PRUNERS)}")
    if "none" not in pruners:
        pruners.insert(0, "none")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or not set(methods) <= set(METHODS):
        parser.error(f"--methods: choose from {', '.join(METHODS)}")
    part1_seeds: list[int] = args.part1_seeds or args.seeds
    args.calendars = [c.strip() for c in args.calendars.split(",") if c.strip()]
    if not args.calendars or not set(args.calendars) <= set(CALENDARS):
        parser.error(f"--calendars: choose from {', '.join(CALENDARS)}")

    from rich.console import Console

    # Tables are wide; keep them readable when the output goes to a file.
    console = Console(width=None if sys.stdout.isatty() else 150)
    log = Console(stderr=True, width=None if sys.stderr.isatty() else 150)
    if os.environ.pop(STORAGE_ENV, None):
        log.log(f"{STORAGE_ENV} is set; ignored (studies go to a temporary folder)")

    import optuna

    from reproml.config import load_params
    from reproml.metrics import metric_spec
    from reproml.stages.common import feature_spec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = load_params(ROOT / "params.yaml")
    if params.train.model != "xgboost":
        raise SystemExit("benchmarks/tuning.py compares XGBoost tuners: set train.model: xgboost")
    schema_path = ROOT / "data" / "schema.json"
    try:
        require([schema_path])
    except BenchError as exc:
        log.print(f"[bold red]benchmark failed:[/bold red] {exc}", highlight=False)
        return 1
    schema = json.loads(schema_path.read_text())
    if args.from_json:
        ctx = Context(
            params, schema, feature_spec(params, schema), metric_spec(params.tune.metric, params.data.task),
            Path(tempfile.gettempdir()), params.train.n_jobs, lambda text: log.log(text, highlight=False),
        )  # fmt: skip
        report(console, ctx, [json.loads(path.read_text()) for path in args.from_json])
        return 0
    if 1 in parts and "flaml" in methods:
        import flaml.automl.logger  # FLAML logs at INFO from retrain_from_log whatever `verbose` says

        flaml.automl.logger.logger.setLevel(logging.WARNING)
    started = time.perf_counter()
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="reproml-tuning-bench-")).resolve()
    here = Path.cwd()
    ctx = Context(
        params=params,
        schema=schema,
        spec=feature_spec(params, schema),
        metric=metric_spec(params.tune.metric, params.data.task),
        scratch=scratch,
        threads=params.train.n_jobs,
        log=lambda text: log.log(text, highlight=False),
    )
    results = Results(
        settings={
            "parts": sorted(parts), "budget_s": args.budget_s, "trials": args.trials,
            "worker_trials": args.worker_trials, "seeds": args.seeds, "part1_seeds": part1_seeds,
            "threads": ctx.threads, "flaml_input": args.flaml_input, "cpus": os.cpu_count(),
            "worker_pruner": args.worker_pruner, "calendars": args.calendars,
            "tune": params.tune.model_dump(mode="json"),
        }
    )  # fmt: skip
    try:
        os.chdir(scratch)  # anything a library writes to the working directory lands in the scratch folder
        if 1 in parts:
            chosen = calendars(params, args.calendars)
            results.searches, results.held_out = part_budget(
                ctx, part1_seeds, args.budget_s, args.flaml_input, methods, chosen
            )
        if 2 in parts:
            results.prunes = part_pruning(ctx, args.seeds, args.trials, pruners)
        if 3 in parts:
            results.workers = part_workers(ctx, args.seeds, args.worker_trials, [1, 2], args.worker_pruner)
    except BenchError as exc:
        log.print(f"[bold red]benchmark failed:[/bold red] {exc}", highlight=False)
        return 1
    finally:
        os.chdir(here)
        if args.keep:
            log.log(f"scratch folder kept at {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    payload = asdict(results) | {
        "environment": {
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "elapsed_s": time.perf_counter() - started,
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    }
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        log.log(f"wrote {args.json}")
    report(console, ctx, [payload])
    return 0


def report(console: Any, ctx: Context, payloads: list[dict[str, Any]]) -> None:
    """Print the tables for one run's results, or for several saved runs pooled together."""
    searches = [Search(**s) for p in payloads for s in p.get("searches", [])]
    prunes = [PruneRun(**r) for p in payloads for r in p.get("prunes", [])]
    workers = [WorkerRun(**w) for p in payloads for w in p.get("workers", [])]
    rows: dict[str, dict[str, int]] = {}
    for p in payloads:
        held = p.get("held_out") or {}
        # runs saved before calendars were added hold July's rows directly
        for name, counts in ({"july": held} if "tune_train" in held else held).items():
            rows.setdefault(name, counts)
    console.print()
    pooled = f"  ({len(payloads)} runs pooled)" if len(payloads) > 1 else ""
    console.print(f"[bold]reproml tuning benchmark[/bold]{pooled}")
    for p in payloads:
        env, settings = p.get("environment", {}), p.get("settings", {})
        before, after = env.get("load_before", [0, 0, 0]), env.get("load_after", [0, 0, 0])
        console.print(
            f"  run finished {env.get('finished_at', '?')}: parts {settings.get('parts')}, python "
            f"{env.get('python')}, cpus {env.get('cpus')}, threads per search {settings.get('threads')}, "
            f"OMP_WAIT_POLICY={env.get('omp_wait_policy') or '(unset)'}, load avg (1/5/15 min) before "
            f"{before[0]:.2f}/{before[1]:.2f}/{before[2]:.2f}, after {after[0]:.2f}/{after[1]:.2f}/"
            f"{after[2]:.2f}, total {env.get('elapsed_s', 0.0) / 60:.1f} min",
            highlight=False,
        )
    cf = ctx.params
    console.print(
        f"[dim]params.yaml now: metric {ctx.metric.name}, tune.pruner {cf.tune.pruner}, startup_trials "
        f"{cf.tune.startup_trials}, report_every {cf.tune.report_every}, xgboost n_estimators "
        f"{cf.train.xgboost.n_estimators} with early stopping {cf.train.xgboost.early_stopping_rounds}[/dim]",
        highlight=False,
    )
    if searches:
        report_budget(console, ctx, searches, rows)
    if prunes:
        trials = sorted({int(x.get("settings", {}).get("trials", 0)) for x in payloads if x.get("prunes")})
        report_pruning(console, ctx, prunes, trials[0] if len(trials) == 1 else trials)
    if workers:
        trials = sorted(
            {int(x.get("settings", {}).get("worker_trials", 0)) for x in payloads if x.get("workers")}
        )
        report_workers(console, workers, trials[0] if len(trials) == 1 else trials)


if __name__ == "__main__":
    sys.exit(main())
