"""The shape of a batch's decision record, `monitoring/<model>/records/<batch>.json`, and its parts.

The record is JSON: written by `reproml.monitoring.run`, read back by the store, the index page,
the decision's loop guard, the monitoring flow and the replay. So these are TypedDicts (it stays a
plain dict; nothing changes on disk), declared once here so every reader names the same keys.

`BatchRecord` is `total=False`: the record grows step by step while a batch is judged (the
verdict goes in last), a quarantined batch has no drift, and records written by earlier versions
lack keys added since; readers use `.get` for what may be absent. A number that can be NaN in
memory is written as null (`store.jsonable`), so it is typed `float | None`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NotRequired, Required, TypedDict

from reproml.learned import LearnedRecord, ParentRef

if TYPE_CHECKING:  # reproml.retrain imports the registry, which imports monitoring's store
    from reproml.retrain import TrainingSummary


class ChampionRef(TypedDict):
    """The champion that judged the batch (`champion.Champion.describe`)."""

    name: str
    version: int
    run_id: str
    uri: str
    threshold: NotRequired[float]  # binary: the cut its `predict` applies
    learned: NotRequired[LearnedRecord]
    refit_of: NotRequired[ParentRef]
    classes: NotRequired[list[Any]]  # multiclass: labels as the data holds them (int, str, ...)


class ColumnStats(TypedDict, total=False):
    """The quality gate's numbers for one column (which ones depends on its kind)."""

    kind: str
    inf_share: float
    unseen_share: float
    missing_share: float
    reference_missing_share: float


class QualityGateRecord(TypedDict):
    passed: bool
    problems: list[str]
    rows: int
    labelled_rows: int
    columns: dict[str, ColumnStats]


class ColumnDriftRecord(TypedDict):
    """`drift.ColumnDrift` as JSON."""

    column: str
    kind: str
    method: str | None
    score: float | None
    drifted: bool
    judged: bool
    importance: float
    weight: float
    present: int
    p_value: float | None
    note: str | None


class DriftMethods(TypedDict):
    numeric: str
    categorical: str


class DriftRecord(TypedDict):
    """`drift.DriftResult.to_dict`: every column's drift and the shares the decision reads."""

    effect_floor: float
    reference_rows: int
    batch_rows: int
    columns: list[ColumnDriftRecord]
    prediction: ColumnDriftRecord | None
    drift_share: float
    weighted_drift_share: float
    weighting: str
    probabilities: list[ColumnDriftRecord]
    methods: DriftMethods
    drifted: list[str]


class QualityChangeRecord(TypedDict):
    """`concept.QualityChange.to_dict`: the champion's metric on the batch against its test split.

    Values are NaN (null once written) where the metric is undefined on the rows; the intervals
    are pairs (tuples in memory, lists once read back)."""

    metric: str
    higher_is_better: bool
    reference_value: float | None
    batch_value: float | None
    drop: float | None
    interval: tuple[float | None, float | None] | list[float | None]
    batch_interval: tuple[float | None, float | None] | list[float | None]
    confidence: float
    samples: int
    reference_rows: int
    batch_rows: int
    evidently: dict[str, float]
    batch_metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    note: str | None


class LoopGuardRecord(TypedDict, total=False):
    """The numbers the loop guard looked at (`decision.loop_guard`); empty when it did not run."""

    unit: str
    retrains_before: int
    last_retrain_batch: str | None
    since_last_retrain: float
    retrains_in_period: int


# `monitor.*` as configured (`MonitorParams.model_dump(mode="json")`): every value is a scalar
Thresholds = dict[str, float | int | str | None]


class BatchDecision(TypedDict):
    """`decision.Decision.to_dict`: the verdict, what fired, and every threshold."""

    verdict: str
    summary: str
    reasons: list[str]
    triggers: dict[str, bool]
    thresholds: Thresholds
    loop_guard: LoopGuardRecord


class QuarantineRef(TypedDict):
    """Where a batch that failed the quality gate was kept, and its reason file."""

    batch: str
    reason: str


class ReportsRef(TypedDict, total=False):
    """The batch's Evidently pages, relative to the project root."""

    drift: str
    quality: str


class SamplingRecord(TypedDict):
    rule: str
    seed: int
    batch_rows_used: int
    reference_rows_used: int


class SplitRef(TypedDict):
    path: str
    md5: str
    rows: NotRequired[int]
    rows_used: NotRequired[int]
    scored_by: NotRequired[str]


class WindowRecord(TypedDict):
    """The drift reference's rows and time range."""

    rows: int
    days: int | None
    first: str | None
    last: str | None


class ReferenceRecord(TypedDict):
    """What the batch was compared against: the champion's own splits, by md5."""

    train: SplitRef
    test: SplitRef
    learned: dict[str, str]  # split path -> md5
    drift_window: WindowRecord
    profile: ProfileRef


class ProfileRef(TypedDict):
    """The champion's reference profile the batch used, and whether this batch computed it."""

    key: str
    computed: bool


class WorkspaceRef(TypedDict):
    """Where the batch's snapshots went in Evidently's UI workspace."""

    path: str
    project: str
    project_id: str
    snapshots: list[str]


class MlflowRef(TypedDict):
    experiment_id: str
    run_id: str


class EstimateReference(TypedDict):
    """The labelled rows a label-free estimate was fitted on (`monitoring.labels.reference_rows`):
    a labelled window (with the batch it labelled) or the champion's test split."""

    source: str  # the labelled window's file, or the test split's path
    rows: int
    md5: NotRequired[str]  # the file's md5, where the rows came from a file
    batch_id: NotRequired[str]  # the batch a labelled window labelled
    scored_by: NotRequired[str]  # the model version whose scores calibrated the estimator


class EstimateRecord(TypedDict):
    """A label-free performance estimate for a batch (`monitoring.estimate.Estimate.to_dict`), and
    how it compared with the labels once they came (`realised`, `error`, `shift`)."""

    metric: str
    value: float
    lower: float
    upper: float
    method: str
    reference: EstimateReference
    reference_value: float
    sampling_error: float
    higher_is_better: bool
    baseline: float | None
    baseline_source: str | None
    realised: float | None
    error: float | None
    shift: str
    notes: list[str]
    drop: float


class LabelsArrival(TypedDict):
    """The file an earlier batch's labels arrived in, and when."""

    file: str
    md5: str | None
    rows: int
    labelled_rows: int
    arrived_at: str


class LabelsRetrain(TypedDict):
    """A batch's labelled window handed to the training flow when its labels arrived."""

    window: str
    action: str  # the gate's: promote, reject, ...


class RealisedRecord(TypedDict):
    """The champion's realised metric on a batch whose labels arrived after it was judged
    (`reproml monitor --labels`): every stored row with a label, scored when the batch was judged."""

    metric: str
    value: float | None
    rows: int


class ShadowRecord(TypedDict):
    """The shadow challenger's side of a batch (`monitoring.shadow.compare`): the promotion gate's
    metric for both models on the batch's labelled rows. Values are None under `monitor.min_rows`
    labelled rows (the comparison waits for labels) or where the metric is undefined."""

    version: int  # the challenger's version
    metric: str
    higher_is_better: bool
    rows: int  # rows both models scored (every row of the batch)
    labelled_rows: int
    value: float | None  # the challenger's metric
    champion_value: float | None  # the champion's, on the same rows
    delta: float | None  # oriented, as the gate's improvement: positive = challenger better
    note: str | None


class ProductionEvidenceRecord(TypedDict):
    """What a promotion on production evidence read (`monitoring.shadow.Pooled.to_dict`): the
    batches both versions scored, oldest first, and their labelled rows pooled."""

    challenger: int
    champion: int
    batches: list[str]
    rows: int
    learned_until: str | None  # the newest row either model learned (ISO); None: undated data
    overlapping: list[str]  # shadowed batches left out: they start inside what was learned


class BatchRecord(TypedDict, total=False):
    """One monitored batch: identity, champion, quality gate, measurements, decision, timings."""

    batch_id: str
    seq: int
    source: str
    source_md5: str | None
    monitored_at: str
    rows: int
    labelled_rows: int
    champion: ChampionRef
    quality_gate: QualityGateRecord
    drift: DriftRecord | None
    quality: QualityChangeRecord | None
    reports: ReportsRef
    predictions: str | None
    labelled: str | None
    quarantine: QuarantineRef | None
    batch_start: str | None
    batch_time: str | None
    backfill: bool
    sampling: SamplingRecord
    reference: ReferenceRecord
    evidently_workspace: WorkspaceRef
    mlflow: MlflowRef
    verdict: str
    summary: str
    reasons: list[str]
    decision: BatchDecision
    timings: dict[str, float]
    estimate: NotRequired[EstimateRecord | None]
    estimate_skipped: NotRequired[str]
    labels: NotRequired[LabelsArrival]  # labels that arrived after the batch (`reproml monitor --labels`)
    realised: NotRequired[RealisedRecord]  # the champion's metric once those labels arrived
    labels_decision: NotRequired[BatchDecision]  # judged again on those labels (`labels.add_labels`)
    labels_decision_skipped: NotRequired[str]  # why it could not be judged again on them
    labels_retrained: NotRequired[LabelsRetrain]  # its window went to a training flow then
    labels_withheld: NotRequired[bool]  # judged without its labels on purpose (`simulate --labels late`)
    retrain_skipped: NotRequired[str]  # a retrain verdict with nothing to learn: started no retrain (why)
    shadow: NotRequired[ShadowRecord | None]  # the challenger scored beside the champion (None: none)
    shadow_skipped: NotRequired[str]  # why a challenger there was could not score the batch


class BatchSummary(TypedDict, total=False):
    """What the monitoring flow returns for a batch (`orchestration.monitoring.summary`), and the
    replay reads: the record's headline, then what the flow added (the policy, the training flow's
    summary when it retrained and how long that took; the replay adds the champion after it).
    When there was no batch to monitor, it holds `batch: None` alone."""

    batch: Required[str | None]
    verdict: str
    summary: str | None
    reasons: list[str] | None
    rows: int | None
    weighted_drift_share: float | None
    drift_share: float | None
    quality: float | None  # the champion's metric on the batch
    metric: str | None
    champion: ChampionRef
    labelled: str | None
    estimate: EstimateRecord | None  # the quality estimated without labels (CBPE / DLE)
    shadow: ShadowRecord | None  # the shadow challenger beside the champion (`monitoring.shadow`)
    retrain: TrainingSummary | None
    policy: str
    retrain_seconds: float
    champion_after: int | None
    labels_withheld: bool  # judged without its labels (`reproml simulate --labels late`)
    retrain_window: str  # a retrain verdict without labels: the labelled window retrained on
    retrain_skipped: str  # a retrain verdict that could not retrain, and why
    labels_retrain: TrainingSummary | None  # the retrain its labels' verdict started when they arrived
    labels_retrain_seconds: float


class FeedEntry(TypedDict):
    """One file the production feed took (`monitoring.feed`): a batch it monitored, or the labels it
    attached to a batch taken earlier. Kept in `monitoring/<model>/feed.json` so a file is taken
    exactly once: the same path with the same md5 is never read again."""

    file: str  # relative to the project root: data/feed/2013-08-02.parquet
    kind: str  # "batch" | "labels"
    md5: str
    size: int
    mtime: float  # with the size: a file untouched since it was taken is not hashed again
    taken_at: str  # UTC, ISO 8601
    batch_id: str | None  # the batch monitored, or the batch the labels belong to
    outcome: str  # the verdict, "labels attached", or "labels refused"
    error: NotRequired[str]  # why labels could not be attached (taken all the same: never retried)


class FeedLedger(TypedDict):
    """Every file the feed of one model took, in the order it took them."""

    taken: list[FeedEntry]


class FeedRow(TypedDict):
    """One line of a feed run's result (`reproml monitor --feed`, the monitoring flow in feed mode):
    a file taken now, or one left for a later run and why."""

    file: str
    kind: str  # "batch" | "labels"
    batch_id: str | None
    outcome: str  # a verdict, "labels attached", "labels refused: ...", or why it was left


class FeedSummary(TypedDict):
    """What one feed run did: each batch's flow summary (the hand-off's `retrain` included), and a
    row per file it took or left. `busy` when another feed run held the lock, so this one took nothing."""

    feed: str
    rows: list[FeedRow]
    batches: list[BatchSummary]
    busy: bool
    refused: bool  # a file's content changed under a name already taken: a person must rename it
