"""The tuning library on tiny data, in process: spaces, objective, journal repair, resume rules, budget."""

from __future__ import annotations

import json
import threading
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from reproml.config import Params, parse_params, with_model_params
from reproml.errors import ConfigError
from reproml.features import FeatureSpec
from reproml.metrics import metric_spec
from reproml.stores import optuna as storage
from reproml.tuning import space, study
from reproml.tuning.objective import Objective, prepare_data, time_folds
from tests.conftest import default_params, tiny_frame

SPEC = FeatureSpec(numeric=["x1", "x2"], categorical=["cat"], time_column="when", date_parts=["hour"])
MODELS = ["xgboost", "hist_gradient_boosting", "random_forest", "logistic"]


def make_params(model: str = "xgboost", task: str = "classification") -> Params:
    raw = default_params()
    raw["data"].update({"path": "data/raw/tiny.csv", "target": "y", "task": task, "time_column": "when"})
    raw["prepare"]["exclude_columns"] = []
    raw["train"].update({"model": model, "n_jobs": 1})
    raw["train"]["xgboost"].update({"n_estimators": 200, "early_stopping_rounds": 10})
    raw["train"]["random_forest"]["n_estimators"] = 20
    return parse_params(raw)


def context(data: str) -> study.StudyContext:
    """A study context whose data version is `data` (the rest as one project would have it)."""
    return {
        "model": "xgboost",
        "metric": "roc_auc",
        "seed": 7,
        "target": "y",
        "task": "classification",
        "exclude_columns": [],
        "features": {},
        "fixed": {},
        "data": {"data/prepared/train.parquet": data},
    }


def make_spec(
    name: str = "s", model: str = "xgboost", direction: str = "maximize", **changes: Any
) -> study.StudySpec:
    spec = study.StudySpec(
        name=name,
        model=model,
        metric=metric_spec(None, "classification"),
        direction="maximize" if direction == "maximize" else "minimize",
        space=space.signature(model),
        fingerprint="f" * 64,
        context=context("v1"),
        seed=7,
        startup_trials=3,
        pruner="median",
        report_every=5,
        max_rounds=200,
    )
    return replace(spec, **changes)


def journal(tmp_path: Path) -> storage.StorageInfo:
    return storage.resolve(tmp_path, str(tmp_path / "studies.journal"))


def objective(model: str = "xgboost") -> Objective:
    params = make_params(model)
    frame = tiny_frame(600, seed=3)
    data = prepare_data(frame.iloc[:400], frame.iloc[400:], SPEC, params)
    return Objective(data, params, metric_spec(None, "classification"), threads=1, report_every=5)


# ----------------------------------------------------------------------------------------------
# spaces


@pytest.mark.parametrize("model", [*MODELS, "linear"])
def test_every_space_suggests_only_keys_its_params_section_accepts(model: str) -> None:
    task = "regression" if model == "linear" else "classification"
    params = make_params("xgboost" if model == "linear" else model, task)
    params = params.model_copy(update={"train": params.train.model_copy(update={"model": model})})
    values = space.SPACES[model](space.SpaceRecorder())
    tuned = with_model_params(params, values, "test")  # raises on an unknown key or a bad value
    section = tuned.train.model_dump()["linear" if model in ("logistic", "linear") else model]
    assert all(section[k] == v for k, v in values.items())


def test_signature_is_stable_and_names_what_changed() -> None:
    assert space.signature("xgboost") == space.signature("xgboost")
    stored = json.loads(space.signature("xgboost"))
    stored["max_depth"]["attributes"]["high"] = 12
    del stored["reg_lambda"]
    changes = space.space_changes(json.dumps(stored), space.signature("xgboost"))
    assert "reg_lambda added" in changes
    assert any(c.startswith("max_depth:") for c in changes)


def test_within_keeps_in_range_values_and_rejects_the_rest() -> None:
    defaults = make_params().train.xgboost.model_dump()
    picked = space.within("xgboost", defaults)
    assert picked is not None and set(picked) == set(space.distributions("xgboost"))
    assert picked["max_depth"] == defaults["max_depth"]
    assert space.within("xgboost", {**defaults, "max_depth": 50}) is None
    assert space.within("xgboost", {**defaults, "max_depth": "5"}) == picked  # MLflow params are strings
    assert space.within("xgboost", {k: v for k, v in defaults.items() if k != "subsample"}) is None


# ----------------------------------------------------------------------------------------------
# objective


@pytest.mark.parametrize("model", MODELS)
def test_objective_scores_each_model_on_the_validation_rows(model: str, tmp_path: Path) -> None:
    the_study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    the_study.optimize(objective(model), n_trials=2)
    values = [t.value for t in the_study.trials]
    assert all(v is not None and 0.5 < v <= 1.0 for v in values)  # learnable target


def test_xgboost_trials_report_rounds_and_can_be_pruned() -> None:
    the_study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.ThresholdPruner(lower=0.999),  # prunes any trial at its first report
    )
    the_study.optimize(objective("xgboost"), n_trials=3)
    states = {t.state for t in the_study.trials}
    assert states == {TrialState.PRUNED}
    assert all(t.intermediate_values and min(t.intermediate_values) == 5 for t in the_study.trials)


def test_time_folds_are_expanding_windows_newest_first() -> None:
    when = pd.Series(pd.date_range("2021-01-01", periods=100, freq="D")).sample(frac=1.0, random_state=0)
    folds = time_folds(when.reset_index(drop=True), 2, 20)
    times = when.reset_index(drop=True)
    (fit1, valid1), (fit2, valid2) = folds
    assert len(valid1) == len(valid2) == 20 and len(fit1) == 80 and len(fit2) == 60
    # each fold validates on a later stretch than everything it fits on; the newest stretch first
    assert times[fit1].max() < times[valid1].min() and times[fit2].max() < times[valid2].min()
    assert times[valid2].max() < times[valid1].min()
    assert times[valid1].max() == times.max()


def test_time_folds_keep_a_timestamp_on_one_side_and_refuse_too_few_rows() -> None:
    when = pd.Series(pd.to_datetime(["2021-01-01"] * 5 + ["2021-01-02"] * 5 + ["2021-01-03"] * 5))
    ((fit, valid),) = time_folds(when, 1, 4)  # the cut falls between days, not inside one
    assert sorted(when[valid].dt.day.unique()) == [3] and sorted(when[fit].dt.day.unique()) == [1, 2]
    with pytest.raises(ValueError, match="cannot hold 3 earlier validation folds"):
        time_folds(when, 3, 4)


@pytest.mark.parametrize("model", ["xgboost", "random_forest"])
def test_cv_folds_score_a_trial_as_the_mean_over_the_folds(model: str) -> None:
    params = make_params(model)
    params = params.model_copy(update={"tune": params.tune.model_copy(update={"cv_folds": 3})})
    frame = tiny_frame(800, seed=3)
    data = prepare_data(frame.iloc[:600], frame.iloc[600:], SPEC, params)
    assert [(len(fit), len(valid)) for fit, valid in data.folds] == [(400, 200), (200, 200)]
    short = prepare_data(frame.iloc[:450], frame.iloc[450:], SPEC, params)  # 150 rows per fold
    assert [(len(fit), len(valid)) for fit, valid in short.folds] == [(300, 150), (150, 150)]
    the_study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    the_study.optimize(Objective(data, params, metric_spec(None, "classification"), 1, 5), n_trials=2)
    for trial in the_study.trials:
        folds = trial.user_attrs["fold_values"]
        assert len(folds) == 3 and folds[0] == trial.user_attrs["valid_value"]
        assert trial.value == pytest.approx(sum(folds) / 3)
        assert all(0.5 < v <= 1.0 for v in folds)


def test_cv_folds_on_undated_rows_score_valid_only_and_need_distinct_times() -> None:
    params = make_params()
    folded = params.model_copy(update={"tune": params.tune.model_copy(update={"cv_folds": 3})})
    frame = tiny_frame(400, seed=3)
    no_time = FeatureSpec(numeric=["x1", "x2"], categorical=["cat"], time_column=None, date_parts=[])
    assert prepare_data(frame.iloc[:300], frame.iloc[300:], no_time, folded).folds == []  # valid only
    every_row_at_once = frame.assign(when=pd.Timestamp("2021-01-01"))
    with pytest.raises(ConfigError, match=r"tune.cv_folds: 3: time fold 1 is empty"):
        prepare_data(every_row_at_once.iloc[:300], every_row_at_once.iloc[300:], SPEC, folded)


# ----------------------------------------------------------------------------------------------
# journal repair


def _filled_journal(tmp_path: Path, trials: int = 3) -> tuple[storage.StorageInfo, Path]:
    info = journal(tmp_path)
    the_study, _ = study.open_study(storage.open_storage(info), make_spec(), info.shown)
    the_study.optimize(lambda t: t.suggest_float("learning_rate", 0.01, 0.3), n_trials=trials)
    return info, Path(info.location)


def test_a_torn_last_record_is_backed_up_cut_off_and_warned_about(tmp_path: Path) -> None:
    info, path = _filled_journal(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"op_code":5,"worker_id":"x","trial_id":3,"sta')  # a crash mid-write
    with pytest.warns(UserWarning, match="torn record"):
        backup = storage.repair_journal(path)
    assert backup is not None and backup.read_bytes().startswith(whole)
    assert path.read_bytes() == whole
    loaded = optuna.load_study(study_name="s", storage=storage.open_storage(info))
    assert len(loaded.trials) == 3
    loaded.optimize(lambda t: t.suggest_float("learning_rate", 0.01, 0.3), n_trials=1)  # appends cleanly
    assert len(optuna.load_study(study_name="s", storage=storage.open_storage(info)).trials) == 4


def test_an_unparseable_line_with_a_newline_at_the_end_is_also_cut(tmp_path: Path) -> None:
    _, path = _filled_journal(tmp_path, trials=1)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"op_code":5,"wor\n')
    with pytest.warns(UserWarning):
        assert storage.repair_journal(path) is not None
    assert path.read_bytes() == whole


def test_a_whole_journal_is_left_alone(tmp_path: Path) -> None:
    _, path = _filled_journal(tmp_path, trials=1)
    before = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert storage.repair_journal(path) is None
    assert path.read_bytes() == before
    assert list(tmp_path.glob("*.bak")) == []


def test_corruption_in_the_middle_is_refused_not_guessed_at(tmp_path: Path) -> None:
    _, path = _filled_journal(tmp_path, trials=2)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b"garbage\n"
    path.write_bytes(b"".join(lines))
    with pytest.raises(storage.TuneError, match="record 2 is not valid JSON"):
        storage.repair_journal(path)


# ----------------------------------------------------------------------------------------------
# resume rules


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"direction": "minimize"}, "created to maximize and tune asks to minimize"),
        ({"space": space.signature("hist_gradient_boosting")}, "search space changed"),
        ({"metric": metric_spec("log_loss", "classification")}, "scores 'roc_auc'"),
        ({"fingerprint": "0" * 64, "context": context("v2")}, "differs in: data"),
    ],
)
def test_resuming_a_changed_study_is_refused_and_leaves_it_untouched(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    info, path = _filled_journal(tmp_path)
    before = path.read_bytes()
    with pytest.raises(storage.TuneError, match=message):
        study.open_study(storage.open_storage(info), make_spec(**change), info.shown)
    assert path.read_bytes() == before


def test_resuming_the_same_study_keeps_its_trials(tmp_path: Path) -> None:
    info, _ = _filled_journal(tmp_path)
    resumed, created = study.open_study(storage.open_storage(info), make_spec(), info.shown)
    assert not created and len(resumed.trials) == 3


def test_interrupted_trials_fail_and_their_params_are_queued_again(tmp_path: Path) -> None:
    info = journal(tmp_path)
    the_study, _ = study.open_study(storage.open_storage(info), make_spec(), info.shown)
    trial = the_study.ask()
    trial.suggest_float("learning_rate", 0.01, 0.3)  # then the process dies: the trial stays RUNNING
    resumed, _ = study.open_study(storage.open_storage(info), make_spec(), info.shown)
    assert study.fail_interrupted(resumed, storage.open_storage(info)) == [0]
    states = [t.state for t in resumed.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    assert resumed.trials[1].params == {} and resumed.trials[1].user_attrs["retry_of"] == 0
    assert resumed.trials[0].user_attrs["interrupted"] is True


def test_warm_start_enqueues_distinct_candidates_in_order(tmp_path: Path) -> None:
    info = journal(tmp_path)
    the_study, _ = study.open_study(storage.open_storage(info), make_spec(), info.shown)
    a = {"learning_rate": 0.05}
    b = {"learning_rate": 0.1}
    assert study.warm_start(the_study, [("champion v1", a), ("study old", a), ("params.yaml", b)]) == [
        "champion v1",
        "params.yaml",
    ]
    first = the_study.ask()
    assert first.suggest_float("learning_rate", 0.01, 0.3) == 0.05


def test_earlier_best_is_the_newest_other_study_of_the_same_model(tmp_path: Path) -> None:
    info = journal(tmp_path)
    store = storage.open_storage(info)
    for name, value in (("old", 0.02), ("newer", 0.2)):
        s, _ = study.open_study(store, make_spec(name=name), info.shown)
        s.enqueue_trial({"learning_rate": value})
        s.optimize(lambda t: t.suggest_float("learning_rate", 0.01, 0.3), n_trials=1)
    other, _ = study.open_study(store, make_spec(name="rf", model="random_forest"), info.shown)
    other.optimize(lambda t: t.suggest_float("max_features", 0.2, 1.0), n_trials=1)
    assert study.earlier_best(store, "xgboost", exclude="current") == ("newer", {"learning_rate": 0.2})
    assert study.earlier_best(store, "xgboost", exclude="newer") == ("old", {"learning_rate": 0.02})
    assert study.earlier_best(store, "hist_gradient_boosting", exclude="x") is None


# ----------------------------------------------------------------------------------------------
# budget


def test_concurrent_workers_finish_exactly_the_budget(tmp_path: Path) -> None:
    info = journal(tmp_path)
    spec = make_spec()
    study.open_study(storage.open_storage(info), spec, info.shown)
    budget = study.Budget(n_trials=9, deadline=None)

    def quick(trial: optuna.Trial) -> float:
        x = trial.suggest_float("learning_rate", 0.01, 0.3)
        if trial.number % 4 == 3:
            raise optuna.TrialPruned()
        return x

    def work(seed: int) -> None:
        s = optuna.load_study(
            study_name="s",
            storage=storage.open_storage(info),
            sampler=study.sampler(replace(spec, seed=seed)),
        )
        study.run_trials(s, quick, budget, info)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = study.counts(optuna.load_study(study_name="s", storage=storage.open_storage(info)))
    assert final.finished == 9 and final.running == 0
    assert final.pruned >= 1
    assert sorted(final.numbers) == list(range(9))


def test_failed_trials_do_not_count_and_a_broken_objective_stops(tmp_path: Path) -> None:
    info = journal(tmp_path)
    the_study, _ = study.open_study(storage.open_storage(info), make_spec(), info.shown)
    calls = {"n": 0}

    def flaky(trial: optuna.Trial) -> float:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory")
        return trial.suggest_float("learning_rate", 0.01, 0.3)

    study.run_trials(the_study, flaky, study.Budget(n_trials=3, deadline=None), info)
    final = study.counts(the_study)
    assert (final.complete, final.failed) == (3, 1)
    assert the_study.trials[1].user_attrs["error"] == "RuntimeError: out of memory"

    def broken(trial: optuna.Trial) -> float:
        raise ValueError("bad feature")

    with pytest.raises(storage.TuneError, match=r"3 trials in a row failed.*bad feature"):
        study.run_trials(the_study, broken, study.Budget(n_trials=10, deadline=None), info)


def test_a_study_is_tuned_by_one_session_at_a_time(tmp_path: Path) -> None:
    info = journal(tmp_path)
    with (
        storage.study_session(info, "s"),
        pytest.raises(storage.TuneError, match="being tuned by another"),
        storage.study_session(info, "s"),
    ):
        pass
    with storage.study_session(info, "s"):  # released
        pass


def test_a_password_never_reaches_params_and_is_masked_when_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = default_params()
    raw["tune"]["storage"] = "postgresql://me:hunter2@db/optuna"
    with pytest.raises(Exception, match="REPROML_TUNE_STORAGE"):
        parse_params(raw)
    monkeypatch.setenv(storage.STORAGE_ENV, "postgresql://me:hunter2@db/optuna")
    info = storage.resolve(Path("."), None)
    assert (
        info.kind == "rdb" and "hunter2" not in info.shown and info.shown == "postgresql://me:***@db/optuna"
    )


def test_a_budget_is_required() -> None:
    raw = default_params()
    raw["tune"].update({"n_trials": None, "timeout_s": None})
    with pytest.raises(Exception, match="tune needs a budget"):
        parse_params(raw)


def test_a_spent_deadline_starts_no_trial(tmp_path: Path) -> None:
    info = journal(tmp_path)
    the_study, _ = study.open_study(storage.open_storage(info), make_spec(), info.shown)
    assert study.run_trials(the_study, lambda t: 1.0, study.Budget(n_trials=None, deadline=0.0), info) == 0
    assert the_study.trials == []


def test_the_champions_params_warm_start_only_the_same_model(tmp_path: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from reproml.stages.tune import _champion_params
    from reproml.stores.mlflow import connection

    params = make_params("xgboost")
    experiment = connection.setup(tmp_path, "reproml")
    client = MlflowClient()
    assert _champion_params(tmp_path, params) is None  # no registry yet
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_params({"train.model": "xgboost", "train.xgboost.max_depth": "7", "train.n_jobs": "2"})
    name = params.register_.model_name
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias(name, "champion", version.version)
    assert _champion_params(tmp_path, params) == (f"champion v{version.version}", {"max_depth": "7"})
    forest = params.model_copy(update={"train": params.train.model_copy(update={"model": "random_forest"})})
    assert _champion_params(tmp_path, forest) is None


def test_a_trial_run_left_half_written_by_a_kill_is_dropped_to_be_logged_again(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from reproml.stores.mlflow import connection, runs

    experiment = connection.setup(tmp_path, "reproml")
    client = MlflowClient()
    tags = {"reproml.stage": "tune-trial", "reproml.study_name": "s"}
    done = client.create_run(experiment, tags={**tags, "reproml.trial_number": "0"})
    client.set_terminated(done.info.run_id, "FINISHED")
    torn = client.create_run(experiment, tags={**tags, "reproml.trial_number": "1"})  # its process died here
    found = "tags.`reproml.study_name` = 's' and tags.`reproml.stage` = 'tune-trial'"
    assert runs.logged_tag_values(experiment, found, "reproml.trial_number") == {"0"}
    assert client.get_run(torn.info.run_id).info.lifecycle_stage == "deleted"


def test_a_grace_period_shorter_than_a_heartbeat_is_refused() -> None:
    raw = default_params()
    raw["tune"].update({"heartbeat_interval": 10, "grace_period": 10})
    with pytest.raises(Exception, match=r"tune.grace_period \(10 s\) must be longer"):
        parse_params(raw)


def test_a_sqlite_database_stays_a_one_machine_storage(tmp_path: Path) -> None:
    """SQLite gets heartbeats but keeps the host session lock and the start-up repair."""
    info = storage.resolve(tmp_path, f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1, grace_period=2)
    assert info.kind == "rdb" and info.backend == "sqlite" and not info.shared
    store = storage.open_storage(info)
    the_study, _ = study.open_study(store, make_spec(), info.shown)
    with pytest.warns(UserWarning, match="Heartbeat"):
        the_study.ask()  # left RUNNING, as by a killed process
    with (
        storage.client_session(info, "s"),
        pytest.raises(storage.TuneError, match="being tuned"),
        storage.client_session(info, "s"),
    ):
        pass
    assert study.recover(the_study, store, info) == [0]


def test_the_dask_backend_needs_a_database_every_worker_reaches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reproml.stages.tune import _checked_storage

    monkeypatch.delenv(storage.STORAGE_ENV, raising=False)
    raw = default_params()
    raw["tune"]["backend"] = "dask"
    with pytest.raises(storage.TuneError, match=r"tune.backend: dask .* is a file on this machine"):
        _checked_storage(tmp_path, parse_params(raw))
