"""The study: create or resume it safely, warm-start it, and run trials to an exact budget.

Resuming is refused, before anything is written, when the stored study was made for another
direction, metric, search space or data: Optuna would otherwise keep the stored direction and mix
incomparable values. On a host-local storage (journal, SQLite), trials left RUNNING by a killed
process are marked FAIL at start (they will never finish) and their parameters are queued again,
so a crash loses no completed trial and no idea. On a shared database that would fail other
machines' live trials, so there only Optuna's heartbeats decide that a trial is dead
(`stores.optuna.reap_stale`), and its retry callback queues it again.

Budget: `n_trials` counts trials that completed or were pruned. Each worker runs Optuna's own
`study.optimize`; its `ExactBudget` callback claims the next trial under the storage's budget lock
(`stores.optuna.budget_lock`: a file lock, or a PostgreSQL advisory lock for clients on several
machines) that counts those plus the ones running, so N workers never overshoot it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from reproml.metrics import MetricSpec
from reproml.redaction import scrub
from reproml.stores.optuna import StorageInfo, TuneError, budget_lock, has_heartbeats, reap_stale
from reproml.tuning.space import space_changes

ATTR_PREFIX = "reproml."
CLIENT_ATTR = "client"  # a trial's user attribute: which `reproml tune` (host, pid, start) ran it
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
# A worker that fails this many trials in a row stops: the objective is broken, not unlucky.
MAX_CONSECUTIVE_FAILURES = 3
# Seconds between looks at a shared study whose budget is taken only by other clients' running
# trials: if one of them dies, this client retries it once its heartbeat is stale.
WAIT_POLL_S = 1.0


class StudyContext(TypedDict):
    """What makes two trials' values comparable (`stages.tune.study_context`): equal contexts may
    share a study. Stored on the study as JSON and hashed into its fingerprint; only compared, so
    the config sections it copies stay as their JSON dumps."""

    model: str
    metric: str
    seed: int
    target: str
    task: str
    exclude_columns: list[str]
    features: dict[str, object]  # params.features, as JSON
    fixed: dict[str, object]  # the model's hyperparameters the space does not search
    cv_folds: NotRequired[int]  # only when > 1: studies made before the option stay resumable
    data: dict[str, str]  # path -> md5 of the schema and the train and valid splits


class BestParams(TypedDict):
    """models/best_params.json, written by `reproml tune` and read by `train`: the best trial's
    values for `model`; with tuning off, `enabled` false and the model alone."""

    enabled: bool
    model: str
    study_name: NotRequired[str]
    metric: NotRequired[str]
    direction: NotRequired[str]
    best_trial: NotRequired[int]
    best_value: NotRequired[float | None]
    params: NotRequired[dict[str, Any]]  # hyperparameters: free-form, validated by config.with_model_params


@dataclass(frozen=True)
class StudySpec:
    """What a study is for; stored on it and checked on every resume."""

    name: str
    model: str
    metric: MetricSpec
    direction: Literal["maximize", "minimize"]
    space: str
    fingerprint: str
    context: StudyContext
    seed: int
    startup_trials: int
    pruner: str
    report_every: int
    max_rounds: int

    def attrs(self) -> dict[str, str]:
        return {
            "model": self.model,
            "metric": self.metric.name,
            "space": self.space,
            "fingerprint": self.fingerprint,
            "context": json.dumps(self.context, sort_keys=True),
        }


@dataclass(frozen=True)
class Budget:
    n_trials: int | None
    deadline: float | None  # time.time() after which no trial starts


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    best: float | None = None
    best_trial: int | None = None
    numbers: list[int] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=spec.seed, multivariate=True, n_startup_trials=spec.startup_trials)


def pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=spec.report_every)
    if spec.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.report_every)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.report_every, max_resource=spec.max_rounds)
    return optuna.pruners.NopPruner()


def _stored(study: optuna.Study) -> dict[str, Any]:
    attrs = study.user_attrs
    return {k.removeprefix(ATTR_PREFIX): v for k, v in attrs.items() if k.startswith(ATTR_PREFIX)}


def check_resumable(study: optuna.Study, spec: StudySpec, shown: str) -> None:
    """Refuse a stored study made for another direction, metric, space or data; change nothing."""
    refuse = f"study {spec.name!r} in {shown} cannot be resumed:"
    stored_direction = study.direction.name.lower()
    if stored_direction != spec.direction:
        raise TuneError(
            f"{refuse} it was created to {stored_direction} and tune asks to {spec.direction}. "
            "Set tune.study_name to a new name (or null) to start another study"
        )
    stored = _stored(study)
    if stored.get("metric") != spec.metric.name:
        raise TuneError(
            f"{refuse} it scores {stored.get('metric')!r}, tune.metric asks for {spec.metric.name!r}"
        )
    if stored.get("model") != spec.model:
        raise TuneError(f"{refuse} it tunes {stored.get('model')!r}, train.model is {spec.model!r}")
    if stored.get("space") != spec.space:
        changes = space_changes(str(stored.get("space") or "{}"), spec.space)
        raise TuneError(
            f"{refuse} the search space changed since it was created ({'; '.join(changes)}). "
            "Set tune.study_name to a new name (or null) to start another study"
        )
    if stored.get("fingerprint") != spec.fingerprint:
        old = json.loads(str(stored.get("context") or "{}"))
        differ = sorted(k for k in set(old) | set(spec.context) if old.get(k) != spec.context.get(k))
        raise TuneError(
            f"{refuse} it was run on other data or fixed params (differs in: {', '.join(differ) or '?'}); "
            "its values are not comparable. Set tune.study_name to a new name (or null)"
        )


def open_study(storage: Any, spec: StudySpec, shown: str) -> tuple[optuna.Study, bool]:
    """The stored study checked for a safe resume, or a new one; True when it was created.

    Two clients of a shared database may both find no study and both create it: the loser loads
    the winner's, once the winner has stored what the study is for (its user attributes)."""
    names = set(optuna.study.get_all_study_names(storage))
    if spec.name in names:
        return _load_checked(storage, spec, shown), False
    try:
        study = optuna.create_study(
            study_name=spec.name,
            storage=storage,
            direction=spec.direction,
            sampler=sampler(spec),
            pruner=pruner(spec),
        )
    except optuna.exceptions.DuplicatedStudyError:
        return _load_checked(storage, spec, shown), False
    for key, value in spec.attrs().items():
        study.set_user_attr(ATTR_PREFIX + key, value)
    return study, True


CREATOR_WAIT_S = 10.0  # how long a study without its attributes is taken as being created


def _load_checked(storage: Any, spec: StudySpec, shown: str) -> optuna.Study:
    waited_until = time.monotonic() + CREATOR_WAIT_S
    while True:
        study = optuna.load_study(
            study_name=spec.name, storage=storage, sampler=sampler(spec), pruner=pruner(spec)
        )
        being_created = "fingerprint" not in _stored(study) and not study.get_trials(deepcopy=False)
        if not being_created or time.monotonic() >= waited_until:
            break
        time.sleep(0.2)
    check_resumable(study, spec, shown)
    return study


def recover(study: optuna.Study, storage: BaseStorage, info: StorageInfo) -> list[int]:
    """At a client's start: fail and requeue the trials a killed process left RUNNING, on a
    host-local storage (its session lock says no live worker owns them); on a shared database,
    nothing: a RUNNING trial there may be another machine's live one, and heartbeats reap the dead
    (`stores.optuna.reap_stale`). The trial numbers failed."""
    return [] if info.shared else fail_interrupted(study, storage)


def fail_interrupted(study: optuna.Study, storage: BaseStorage) -> list[int]:
    """Mark FAIL the trials a killed process left RUNNING, and queue their parameters again.

    Safe only while this process holds the study's session lock: no live worker owns them.
    `storage` is the study's own (Optuna's public storage API finds a trial by study and number).
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        failed.append(trial.number)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return failed


def earlier_best(storage: Any, model: str, exclude: str) -> tuple[str, dict[str, Any]] | None:
    """The best params of the most recent other study of the same model in this storage."""
    summaries = [
        s
        for s in optuna.get_all_study_summaries(storage, include_best_trial=True)
        if s.study_name != exclude
        and s.user_attrs.get(ATTR_PREFIX + "model") == model
        and s.best_trial is not None
        and s.datetime_start is not None
    ]
    if not summaries:
        return None
    latest = max(summaries, key=lambda s: s.datetime_start or 0)
    assert latest.best_trial is not None
    return latest.study_name, dict(latest.best_trial.params)


def warm_start(study: optuna.Study, candidates: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Enqueue each distinct candidate (already checked to lie in the space); returns their sources."""
    seen: list[dict[str, Any]] = []
    queued = []
    for source, values in candidates:
        if values in seen:
            continue
        seen.append(values)
        study.enqueue_trial(values, user_attrs={"warm_start": source}, skip_if_exists=True)
        queued.append(source)
    return queued


def counts(study: optuna.Study) -> Counts:
    result = Counts()
    best_value: float | None = None
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    for trial in study.get_trials(deepcopy=False):
        state = trial.state
        if state == TrialState.COMPLETE:
            result.complete += 1
            value = trial.value
            if value is not None and (
                best_value is None or (value > best_value if maximize else value < best_value)
            ):
                best_value, result.best_trial = value, trial.number
        elif state == TrialState.PRUNED:
            result.pruned += 1
        elif state == TrialState.FAIL:
            result.failed += 1
        elif state == TrialState.RUNNING:
            result.running += 1
        elif state == TrialState.WAITING:
            result.waiting += 1
        result.numbers.append(trial.number)
    result.best = best_value
    return result


class ExactBudget:
    """An Optuna callback that ends a worker's `study.optimize` at the exact trial budget.

    `MaxTrialsCallback` counts after a trial ends, and Optuna's next `ask` is not atomic with that
    count, so N workers can overshoot by N - 1. Here the count (finished trials plus running ones)
    and the next `ask` share the storage's budget lock: `claim` takes it and keeps it while the
    budget has room, and the trial's objective releases it (`started`) once Optuna has created the
    trial. It also stops a worker whose objective failed `MAX_CONSECUTIVE_FAILURES` times in a row.

    With heartbeats (a database), a worker whose budget is taken only because trials are still
    running does not stop: it waits until they finish, and if one's heartbeat goes stale (its
    client died), reaps it and runs its retry. Otherwise a study whose last client standing had
    already stopped would end short of its budget.
    """

    def __init__(
        self,
        budget: Budget,
        lock: Callable[[], contextlib.AbstractContextManager[Any]],
        stop: Callable[[], bool],
    ) -> None:
        self._budget = budget
        self._lock = lock
        self._stop = stop
        self._held = contextlib.ExitStack()
        self._failures = 0

    def claim(self, study: optuna.Study) -> bool:
        """True, holding the lock, when one more trial fits; False (lock released) otherwise."""
        heartbeats = has_heartbeats(study)
        while not self._stop():
            self._held.enter_context(self._lock())
            budget = self._budget
            if budget.deadline is not None and time.time() >= budget.deadline:
                break
            if budget.n_trials is None:
                return True
            reap_stale(study)
            trials = study.get_trials(deepcopy=False, states=(*COUNTED, TrialState.RUNNING))
            running = sum(1 for t in trials if t.state == TrialState.RUNNING)
            if len(trials) < budget.n_trials:
                return True
            if not heartbeats or running == 0 or len(trials) - running >= budget.n_trials:
                break
            self.started()
            time.sleep(WAIT_POLL_S)
        self.started()
        return False

    def started(self) -> None:
        """The claimed trial exists (RUNNING, so counted): let other workers claim."""
        self._held.close()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            self._failures += 1
            if self._failures >= MAX_CONSECUTIVE_FAILURES:
                raise TuneError(
                    f"{self._failures} trials in a row failed in study {study.study_name!r}; "
                    f"the last: {trial.user_attrs.get('error')}"
                )
        else:
            self._failures = 0
        if not self.claim(study):
            study.stop()


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    budget: Budget,
    info: StorageInfo,
    stop: Callable[[], bool] = lambda: False,
    client: str = "",
) -> int:
    """`study.optimize` until the budget is spent; returns how many trials this worker ran.

    Each trial records the `client` (the `reproml tune` it belongs to) and its worker's pid, so
    that on a shared study each client reports its own trials.

    A failing trial is kept as FAIL with its (scrubbed) error as the `error` attribute, and tuning
    goes on; a NaN metric is a failure too (Optuna marks it FAIL), named as such.
    """
    guard = ExactBudget(budget, lambda: budget_lock(info, study.study_name), stop)
    ran = 0

    def measured(trial: optuna.Trial) -> float:
        nonlocal ran
        guard.started()
        ran += 1
        trial.set_user_attr("worker_pid", os.getpid())
        if client:
            trial.set_user_attr(CLIENT_ATTR, client)
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", scrub(f"{type(exc).__name__}: {exc}")[:2000])  # kept in MLflow too
            raise
        if value != value:
            trial.set_user_attr("error", "the metric is undefined (NaN) on the validation split")
        return value

    if not guard.claim(study):
        return 0
    try:
        timeout = None if budget.deadline is None else max(budget.deadline - time.time(), 0.0)
        study.optimize(measured, timeout=timeout, catch=(Exception,), callbacks=[guard], gc_after_trial=False)
    finally:
        guard.started()  # a claim the loop did not use (its timeout ended it first)
    return ran
