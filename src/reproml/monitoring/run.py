"""One batch, end to end: gate, score, measure, decide, record, report, track.

The order matters and is the contract of issue 5:

1. the champion and its own reference (what it learned, by md5: its train split, or a refit's
   train, valid and test splits; importance, params) are loaded; drift is measured against the
   newest `monitor.reference_days` of it, so a verdict says production moved since it learned.
   What is compared against (schema, gate statistics, category groups, the scored drift and
   test references) is the champion's reference profile (`reproml.monitoring.profile`), computed
   on its first batch and read back after;
2. the quality gate runs on the whole batch; a failing batch is copied to `monitoring/<model>/quarantine/`
   with its reason and goes no further (no predictions, no drift, never `labelled/`); a batch
   older than the newest monitored one is `out_of_order` and goes no further either, unless it is
   a deliberate backfill;
3. every row is scored by the champion and the scores are stored, with the shadow challenger's
   beside them when a `challenger` version waits (`reproml.monitoring.shadow`; never fatal);
4. under `min_rows` rows: `insufficient_data`, no statistics at all;
5. otherwise the batch and the reference are sampled (see `sample`), Evidently measures feature
   and prediction drift, and, with enough labels, the quality change against the test split;
6. the decision is taken over the earlier records (under a lock, so the cooldown sees them all),
   and the record, the HTML reports and the index are written, each atomically;
7. all of it is one MLflow run in `<experiment>-monitoring`, FAILED if any step raised.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from reproml import safehtml
from reproml.config import Params
from reproml.io import write_json, write_parquet, write_with
from reproml.monitoring import (
    batches,
    champion,
    concept,
    decision,
    drift,
    estimate,
    labels,
    profile,
    quality,
    records,
    reports,
    scores,
    shadow,
    store,
    workspace,
)
from reproml.monitoring.profile import sample
from reproml.redaction import scrub

if TYPE_CHECKING:
    from reproml.metrics import MetricSpec

SAMPLING_RULE = (
    "a batch (and the champion's test split) with more than monitor.sample_rows rows, and its drift "
    "reference (the newest monitor.reference_days of what it learned) with more than "
    "monitor.reference_rows rows, are reduced to that many rows drawn uniformly "
    "without replacement (numpy default_rng(seed)); the quality gate and the stored predictions "
    "always use every row"
)


class _Clock:
    """Seconds per step, kept in the record (the benchmark reads them)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 4)


def _save_html(snapshot: Any, target: Path) -> None:
    """Evidently's page with its data escaped for `<script>` (never `snapshot.save_html`: see safehtml)."""
    safehtml.write_evidently_html(snapshot, target)


def _quarantine(root: Path, name: str, batch: batches.Batch, problems: list[str]) -> records.QuarantineRef:
    folder = root / store.quarantine(name)
    folder.mkdir(parents=True, exist_ok=True)
    arrived = batch.source_path
    if arrived is not None:  # keep exactly what arrived
        kept = folder / f"{batch.id}{arrived.suffix.lower()}"
        write_with(kept, lambda p: shutil.copyfile(arrived, p))
    else:
        kept = store.write_frame(folder / f"{batch.id}.parquet", batch.frame)
    reason = folder / f"{batch.id}.json"
    write_json(reason, {"batch_id": batch.id, "source": batch.source, "rows": len(batch.frame),
                        "problems": problems, "kept": str(kept.relative_to(root))})  # fmt: skip
    return {"batch": str(kept.relative_to(root)), "reason": str(reason.relative_to(root))}


def monitor(
    root: Path, spec: str, params: Params, backfill: bool = False, withhold_labels: bool = False
) -> records.BatchRecord:
    """Monitor the batch `spec` names (a file or a period) against the current champion.

    A batch older than the newest one monitored gets the verdict `out_of_order` and is not
    measured, unless `backfill` says it is monitored late on purpose (then it is judged as usual).
    `withhold_labels`: the batch is judged as if it came without its labels (its target column is
    dropped before anything reads it: no realised quality, no labelled window; the verdict reads
    the estimate); `reproml simulate --labels late` brings them later (`labels.add_labels`).
    """
    from reproml.stores.mlflow import connection, runs

    clock = _Clock()
    with clock.step("load champion"):
        experiment_id = connection.setup(root, params.mlflow.experiment_name)
        best = champion.load_champion(root, params.register_.model_name, experiment_id)
    with clock.step("reference profile"):
        reference = profile.load_or_build(root, best, params)
    with clock.step("read batch"):
        coding = batches.label_coding(root, best.target, best.task)
        batch = batches.resolve(root, spec, best.time_column or params.data.time_column, best.target, coding)
        if withhold_labels and best.target in batch.frame.columns:
            batch = replace(batch, frame=batch.frame.drop(columns=[best.target]))
    schema = reference.schema
    with clock.step("quality gate"):
        gate = quality.check(batch.frame, reference.stats, schema, params.monitor, batch.read_error)
    monitoring_id = connection.setup(root, f"{params.mlflow.experiment_name}-monitoring")
    with store.monitor_lock(root, best.name):
        past = [r for r in store.history(root, best.name) if r.get("batch_id") != batch.id]
        seq = max((int(r.get("seq", 0)) for r in past), default=0) + 1
        with runs.tracked_run(monitoring_id, run_name=batch.id) as run:
            record = _judge(
                root, params, best, reference, schema, batch, gate, past, seq, clock, backfill, experiment_id
            )
            record["mlflow"] = {"experiment_id": monitoring_id, "run_id": run.info.run_id}
            if withhold_labels:
                record["labels_withheld"] = True
            with clock.step("write record"):
                path = store.write_record(root, best.name, record)
                reports.write_index(root, best.name, store.history(root, best.name))
            _track(run.info.run_id, record, root, path)
    return record


@dataclass(frozen=True)
class _Judging:
    """What every step of judging one batch reads: the project, the champion, the batch, the clock."""

    root: Path
    params: Params
    best: champion.Champion
    batch: batches.Batch
    gate: quality.QualityResult
    past: list[records.BatchRecord]
    seq: int
    clock: _Clock
    experiment_id: str = ""  # the pipeline's experiment: where the shadow challenger's files must lie

    def decide(self, evidence: decision.Evidence) -> decision.Decision:
        return decision.decide(evidence, self.params.monitor, self.past)


def _judge(
    root: Path,
    params: Params,
    best: champion.Champion,
    reference: profile.Profile,
    schema: quality.Schema,
    batch: batches.Batch,
    gate: quality.QualityResult,
    past: list[records.BatchRecord],
    seq: int,
    clock: _Clock,
    backfill: bool = False,
    experiment_id: str = "",
) -> records.BatchRecord:
    """The batch's decision record: quality gate, order, scores, drift, quality, labelled window."""
    job = _Judging(root, params, best, batch, gate, past, seq, clock, experiment_id)
    watch = params.monitor
    record = _new_record(job, backfill)
    if not gate.passed:
        record["quarantine"] = _quarantine(root, best.name, batch, gate.problems)
        return _finish(
            record, job.decide(decision.Evidence(False, gate.problems, gate.rows, 0, seq=seq)), clock
        )

    frame = gate.frame
    batch_time = None
    if schema.time_column:
        when = frame[schema.time_column]
        batch_time = when.max()
        record["batch_start"], record["batch_time"] = when.min().isoformat(), batch_time.isoformat()
        late = None if backfill else decision.back_dated(past, when.min(), batch_time)
        if late:
            evidence = decision.Evidence(True, [], len(frame), gate.labelled_rows, batch_time=batch_time,
                                         seq=seq, out_of_order=late)  # fmt: skip
            return _finish(record, job.decide(evidence), clock)
    with clock.step("score batch"):
        scored = _score_batch(job, frame, schema, record)

    if len(frame) < watch.min_rows:
        evidence = decision.Evidence(True, [], len(frame), gate.labelled_rows, batch_time=batch_time, seq=seq)
        return _finish(record, job.decide(evidence), clock)

    current, ref = _samples(job, frame, scored, reference, record)
    folder = root / store.report_dir(best.name, batch.id)
    stamp = None if batch_time is None else batch_time.to_pydatetime()
    drifted = _measure_drift(job, reference, ref, current, schema, folder, stamp)
    record["drift"] = drifted.to_dict()
    snapshots = [drifted.snapshot]
    record["reports"]["drift"] = str((folder / "drift.html").relative_to(root))
    change = _measure_quality(job, reference, current, folder, stamp, snapshots, record)
    estimated = _estimate(job, reference, current, record)

    with clock.step("evidently workspace"):
        record["evidently_workspace"] = workspace.add_snapshots(root, best.name, best.task, snapshots)
    evidence = decision.Evidence(True, [], len(frame), gate.labelled_rows, drifted, change, batch_time, seq,
                                 estimate=estimated)  # fmt: skip
    verdict = job.decide(evidence)
    if gate.labelled_rows >= watch.min_rows:
        record["labelled"] = _keep_labelled_window(job, frame, batch_time)
    return _finish(record, verdict, clock)


def _new_record(job: _Judging, backfill: bool) -> records.BatchRecord:
    """The record before anything is measured: the batch, the champion and the quality gate."""
    return {
        "batch_id": job.batch.id,
        "seq": job.seq,
        "source": job.batch.source,
        "source_md5": job.batch.source_md5,
        "monitored_at": dt.datetime.now(dt.UTC).isoformat(),
        "rows": len(job.batch.frame),
        "labelled_rows": job.gate.labelled_rows,
        "champion": job.best.describe(),
        "quality_gate": job.gate.to_dict(),
        "drift": None,
        "quality": None,
        "reports": {},
        "predictions": None,
        "labelled": None,
        "quarantine": None,
        "estimate": None,
        "shadow": None,
        "batch_start": None,
        "batch_time": None,
        "backfill": backfill,
    }


def _score_batch(
    job: _Judging, frame: pd.DataFrame, schema: quality.Schema, record: records.BatchRecord
) -> np.ndarray:
    """The champion's scores of every row, written (with time and label) to the predictions folder,
    with the shadow challenger's beside them when one waits (and `record["shadow"]` compares them)."""
    from reproml.scoring import predict_scores

    best = job.best
    scored = predict_scores(best.model, frame[best.input_columns], best.task)
    stored = pd.concat(
        [pd.DataFrame({"row": np.arange(len(frame))}), scores.columns(scored, best.classes)], axis=1
    )
    if schema.time_column:
        stored.insert(1, schema.time_column, frame[schema.time_column].to_numpy())
    if best.target in frame.columns:
        stored[best.target] = frame[best.target].to_numpy()
    stored["champion_version"] = best.version
    challenger = _shadow_scores(job, frame, record)
    if challenger is not None:
        column = job.params.promote.slice_column  # the gate judges slices on production rows too
        if column and column in frame.columns and column not in stored.columns:
            stored[column] = frame[column].to_numpy()
        stored = pd.concat([stored, challenger], axis=1)
    target = job.root / store.predictions(best.name) / f"{job.batch.id}.parquet"
    write_parquet(target, stored)
    record["predictions"] = str(target.relative_to(job.root))
    if challenger is not None:
        with _never_fatal(record):
            record["shadow"] = shadow.compare(stored, best.target, _gate_metric(job.params, best.task),
                                              best.classes, job.params.monitor.min_rows)  # fmt: skip
    return scored


def _gate_metric(params: Params, task: str) -> MetricSpec:
    """The promotion gate's metric (`promote.metric`): the shadow record previews that gate."""
    from reproml.metrics import metric_spec

    return metric_spec(params.promote.metric, task)


def _shadow_scores(job: _Judging, frame: pd.DataFrame, record: records.BatchRecord) -> pd.DataFrame | None:
    """The shadow challenger's score columns for every row, or None: no challenger, or one that
    cannot score the batch (why goes to `shadow_skipped`; the champion's monitoring goes on)."""
    best = job.best
    with job.clock.step("shadow challenger"), _never_fatal(record):
        parent = best.refit_of["version"] if best.refit_of else None
        found = shadow.load_challenger(best.name, job.experiment_id, best.version, parent)
        return None if found is None else shadow.score(found, frame, best.task, best.classes)
    return None  # it raised: `_never_fatal` kept why


@contextmanager
def _never_fatal(record: records.BatchRecord) -> Iterator[None]:
    """The shadow challenger's errors end its part only: provenance, MLflow, a model that fails to
    predict, labels its metric cannot read. Why is kept in `shadow_skipped` (scrubbed: an MLflow
    error may quote a tracking URI), and the champion's monitoring goes on."""
    try:
        yield
    except Exception as exc:
        record["shadow"] = None
        record["shadow_skipped"] = scrub(f"{type(exc).__name__}: {exc}")


def _samples(
    job: _Judging,
    frame: pd.DataFrame,
    scored: np.ndarray,
    reference: profile.Profile,
    record: records.BatchRecord,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The batch and reference samples the statistics use, each with the champion's scores (the
    reference's from the champion's profile)."""
    best, watch, seed = job.best, job.params.monitor, job.params.seed
    current = sample(scores.with_scores(frame, scored, best.classes), watch.sample_rows, seed)
    ref = reference.drift_reference
    record["sampling"] = {
        "rule": SAMPLING_RULE,
        "seed": seed,
        "batch_rows_used": len(current),
        "reference_rows_used": len(ref),
    }
    record["reference"] = {
        "train": {"path": champion.TRAIN, "md5": best.data_md5[champion.TRAIN], "rows": reference.rows},
        "test": {"path": champion.TEST, "md5": best.data_md5[champion.TEST]},
        "learned": best.learned_splits,
        "drift_window": reference.window,
        "profile": {"key": reference.key, "computed": reference.built},
    }
    if best.refit_of:
        record["reference"]["test"]["scored_by"] = (
            f"v{best.refit_of['version']}, the promoted model this refit learned from"
        )
    return current, ref


def _measure_drift(
    job: _Judging,
    reference: profile.Profile,
    ref: pd.DataFrame,
    current: pd.DataFrame,
    schema: quality.Schema,
    folder: Path,
    stamp: dt.datetime | None,
) -> drift.DriftResult:
    """Evidently's drift of the batch sample against the reference sample, and its HTML report."""
    best, watch = job.best, job.params.monitor
    with job.clock.step("drift (Evidently)"):
        drifted = drift.measure(ref, current, schema, best.importance, reference.levels,
                                watch.drift_effect_floor, watch.drift_alpha, watch.min_rows,
                                when=stamp, name=f"{job.batch.id} drift")  # fmt: skip
    with job.clock.step("drift report html"):
        _save_html(drifted.snapshot, folder / "drift.html")
    return drifted


def _measure_quality(
    job: _Judging,
    reference: profile.Profile,
    current: pd.DataFrame,
    folder: Path,
    stamp: dt.datetime | None,
    snapshots: list[Any],
    record: records.BatchRecord,
) -> concept.QualityChange | None:
    """With enough labelled rows: the metric's change against the test split (bootstrap interval)
    and Evidently's quality report; else None."""
    from reproml.metrics import THRESHOLD, metric_spec

    best, watch, seed = job.best, job.params.monitor, job.params.seed
    labelled = current[current[best.target].notna()] if best.target in current.columns else current.iloc[:0]
    if len(labelled) < watch.min_rows:
        return None
    with job.clock.step("quality (with Evidently's report)"):
        spec = metric_spec(watch.metric, best.task, "monitor.metric")
        test = reference.test_reference  # sampled, scored by the model whose test scores the gate saw
        record["reference"]["test"]["rows_used"] = len(test)
        change, snapshot = concept.check(spec, best.target, test, labelled, classes=best.classes,
                                         task=best.task, samples=watch.bootstrap_samples,
                                         confidence=watch.confidence, seed=seed,
                                         threshold=best.threshold or THRESHOLD, when=stamp,
                                         name=f"{job.batch.id} quality")  # fmt: skip
        snapshots.append(snapshot)
        _save_html(snapshot, folder / "quality.html")
    record["quality"] = change.to_dict()
    record["reports"]["quality"] = str((folder / "quality.html").relative_to(job.root))
    return change


def _estimate(
    job: _Judging, reference: profile.Profile, current: pd.DataFrame, record: records.BatchRecord
) -> estimate.Estimate | None:
    """The champion's quality on the batch estimated from its scores alone (CBPE / DLE), judged
    against its labels when it has them; None (and why, in `estimate_skipped`) when it cannot be
    made. Never fatal: a batch without labels, or a reference CBPE cannot fit, must not stop the
    decision."""
    if not job.params.monitor.estimate:
        return None
    with job.clock.step("estimate"):
        try:
            found = labels.estimate_batch(job.root, job.best, reference, job.batch.id, current, job.params)
        except Exception as exc:  # NannyML wraps what failed in its own exceptions; none may stop a verdict
            record["estimate_skipped"] = f"{type(exc).__name__}: {exc}"
            return None
    record["estimate"] = found.to_dict()
    return found


def _keep_labelled_window(job: _Judging, frame: pd.DataFrame, batch_time: Any) -> str:
    """The batch's labelled rows (sampled) as the model's newest labelled window; its path.

    The promotion gate scores both models on this window: a million rows would make every
    promotion slow without making it surer than the sample the statistics used.
    """
    best, watch = job.best, job.params.monitor
    rows = sample(frame[frame[best.target].notna()], watch.sample_rows, job.params.seed)
    target = job.root / store.labelled_path(best.name, job.batch.id, batch_time)
    for old in (job.root / store.labelled(best.name)).glob(f"*_{job.batch.id}.parquet"):
        old.unlink()  # the same batch monitored again replaces its window
    write_parquet(target, rows)
    return str(target.relative_to(job.root))


def _finish(record: records.BatchRecord, verdict: decision.Decision, clock: _Clock) -> records.BatchRecord:
    record["verdict"] = verdict.verdict
    record["summary"] = verdict.summary
    record["reasons"] = verdict.reasons
    record["decision"] = verdict.to_dict()
    record["timings"] = dict(clock.seconds)
    return record


def _track(run_id: str, record: records.BatchRecord, root: Path, path: Path) -> None:
    """The record's headline numbers as metrics, its identity as tags, the files as artifacts."""
    from reproml.stores.mlflow import runs

    quality_change = record.get("quality")
    drift_result = record.get("drift")
    prediction = None if drift_result is None else drift_result["prediction"]
    candidates: dict[str, float | None] = {
        "rows": record["rows"],
        "labelled_rows": record["labelled_rows"],
        "drift_share": None if drift_result is None else drift_result["drift_share"],
        "weighted_drift_share": None if drift_result is None else drift_result["weighted_drift_share"],
        "prediction_drift": None if prediction is None else prediction["score"],
        "retrain": float(record["verdict"] == decision.RETRAIN),
    }
    if quality_change is not None:
        low, high = quality_change["interval"]
        candidates |= {
            "quality_batch": quality_change["batch_value"],
            "quality_reference": quality_change["reference_value"],
            "quality_drop": quality_change["drop"],
            "quality_drop_low": low,
            "quality_drop_high": high,
        }
    candidates |= concept.tracked_metrics(quality_change)
    found = record.get("estimate")
    if found:
        candidates |= {
            "estimated_quality": found["value"],
            "estimated_quality_lower": found["lower"],
            "estimated_quality_upper": found["upper"],
            "estimate_error": found["error"],
        }
    candidates |= shadow.tracked_metrics(record.get("shadow"))
    metrics = {k: float(v) for k, v in candidates.items() if v is not None and np.isfinite(float(v))}
    champ = record["champion"]
    tags = {
        "reproml.stage": "monitor",
        "reproml.batch_id": record["batch_id"],
        "reproml.batch_source": record["source"],
        "reproml.verdict": record["verdict"],
        "reproml.model_name": champ["name"],
        "reproml.champion_version": str(champ["version"]),
        "reproml.champion_run_id": champ["run_id"],
    }
    batch_time = record.get("batch_time")
    if batch_time:
        tags["reproml.batch_time"] = batch_time
    if quality_change is not None and quality_change["metric"]:
        tags["reproml.quality_metric"] = quality_change["metric"]
    tags |= shadow.tracked_tags(record)
    if found:
        tags["reproml.shift"] = str(found.get("shift", estimate.NO_SHIFT))
        tags["reproml.estimate_method"] = str(found.get("method"))
    params = {f"monitor.{k}": str(v) for k, v in record["decision"]["thresholds"].items()}
    runs.log_batch(run_id, params=params, metrics=metrics, tags=tags, step=int(record["seq"]))
    runs.log_artifact(path, artifact_path="record")
    pages = record["reports"]
    for report in (pages.get("drift"), pages.get("quality")):
        if report:
            runs.log_artifact(root / report, artifact_path="reports")
