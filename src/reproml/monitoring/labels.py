"""Labels that come late: what stands in for them (the estimate's reference), and their arrival.

The estimate's reference: the labelled rows CBPE / DLE are fitted on. They must be rows the
champion has NOT learned (on learned rows its scores look better calibrated than they are, and the
estimate is optimistic), and as fresh as possible (calibration drifts with the seasons). So:

1. the newest labelled window (`monitoring/<model>/labelled/`, written when a batch arrives with
   labels or when its labels arrive later) whose rows all come after the newest row the champion
   learned, other than the batch itself, scored by the champion now;
2. else the champion's test split (the exact version its run recorded), scored by the model the
   quality check uses for it: the champion itself, or for a refit (which learned the test split)
   the promoted model it refits. A refit's first batches are so estimated from its parent's
   calibration, an approximation that ends with the first labelled batch after it.

An undated data set has only the test split (a window cannot be placed after what was learned).

`reproml monitor --batch ID --labels FILE`: FILE is the batch again, same rows in the same order,
with its labels. The stored predictions gain the labels, the labelled window is written (the next
batch's estimate reference, and the promotion gate's newest window), and the record gains the
realised metric, the estimate's error and the shift it shows (`estimate.judge`), and the shadow
challenger's comparison with the champion on those rows (`shadow.compare`; both scores are in the
same file).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from reproml.config import Params
from reproml.errors import ReproError
from reproml.io import file_md5, write_parquet
from reproml.monitoring import batches, champion, estimate, scores, shadow, store
from reproml.monitoring.records import BatchRecord, EstimateReference, RealisedRecord

if TYPE_CHECKING:
    from reproml.monitoring.profile import Profile


class LabelsError(ReproError):
    """A labels file that does not fit the batch it claims to label (rows, times, target)."""


def unseen_window(
    root: Path, best: champion.Champion, after: pd.Timestamp | None, batch_id: str, min_rows: int
) -> tuple[Path, pd.DataFrame] | None:
    """The newest labelled window of at least `min_rows` labelled rows, all after `after`, that is
    not the batch `batch_id` itself and (classification) holds more than one class, which CBPE
    needs to calibrate; None if there is none (or the data are undated)."""
    folder = root / store.labelled(best.name)
    if after is None or best.time_column is None or not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.parquet"), reverse=True):
        if path.stem.split("_", 1)[-1] == batch_id:
            continue
        frame = pd.read_parquet(path)
        if best.target not in frame.columns or best.time_column not in frame.columns:
            continue
        frame = frame[frame[best.target].notna()].reset_index(drop=True)
        calibrates = best.task == "regression" or frame[best.target].nunique() > 1
        if len(frame) >= min_rows and calibrates and pd.to_datetime(frame[best.time_column]).min() > after:
            return path, frame
    return None


def reference_rows(
    root: Path, best: champion.Champion, reference: Profile, batch_id: str, params: Params
) -> tuple[pd.DataFrame, np.ndarray, EstimateReference]:
    """The estimate's reference (rows, the champion's scores of them, how the record names it)."""
    from reproml.monitoring.profile import sample
    from reproml.scoring import predict_scores

    watch = params.monitor
    newest = reference.window.get("last")  # the drift window ends where what the champion learned ends
    found = unseen_window(root, best, pd.Timestamp(newest) if newest else None, batch_id, watch.min_rows)
    if found is not None:
        path, frame = found
        frame = sample(frame, watch.sample_rows, params.seed)
        scored = predict_scores(best.model, frame[best.input_columns], best.task)
        named: EstimateReference = {
            "source": str(path.relative_to(root)),
            "md5": file_md5(path),
            "rows": len(frame),
            "batch_id": path.stem.split("_", 1)[-1],
            "scored_by": f"v{best.version}",
        }
        return frame, scored, named
    return _test_rows(best, reference)


def _test_rows(
    best: champion.Champion, reference: Profile
) -> tuple[pd.DataFrame, np.ndarray, EstimateReference]:
    """The champion's labelled test split as its reference profile holds it: sampled as the quality
    check samples it, scored by the model the quality check scores it with (a refit's parent: the
    refit learned these rows)."""
    test = reference.test_reference
    frame = test[test[best.target].notna()].reset_index(drop=True)
    scored = scores.scores_of(frame, best.classes)
    by = f"v{best.refit_of['version']} (the model this refit refits)" if best.refit_of else f"v{best.version}"
    named: EstimateReference = {
        "source": champion.TEST,
        "md5": best.data_md5[champion.TEST],
        "rows": len(frame),
        "scored_by": by,
    }
    return frame, scored, named


def estimate_batch(
    root: Path,
    best: champion.Champion,
    reference: Profile,
    batch_id: str,
    current: pd.DataFrame,
    params: Params,
) -> estimate.Estimate:
    """The champion's quality on the batch sample `current` (with its score columns), estimated
    without its labels; judged against its labels when `current` has enough of them. `reference`
    is the champion's profile: a fresher reference must start after its drift window, and the
    test split comes from it, read and scored once per champion."""
    from reproml.metrics import THRESHOLD

    ref, ref_scores, named = reference_rows(root, best, reference, batch_id, params)
    found: estimate.Estimate = estimate.estimate(
        best.task,
        params.monitor.metric,
        ref[best.target].to_numpy(),
        ref_scores,
        scores.scores_of(current, best.classes),
        named,
        classes=best.classes,
        threshold=best.threshold or THRESHOLD,
        reference_features=ref[best.input_columns],
        batch_features=current[best.input_columns],
    )
    if named["source"] == champion.TEST:
        found = estimate.with_baseline(found, found.reference_value, champion.TEST)
    else:  # the drop is measured from the test split, as the realised quality check measures it
        test, test_scores, _ = _test_rows(best, reference)
        baseline = _realised_on(best, found.metric, test, test_scores)
        found = estimate.with_baseline(found, baseline, champion.TEST)
    realised = None
    if best.target in current.columns and current[best.target].notna().sum() >= params.monitor.min_rows:
        realised = _realised(best, found.metric, current)
    return estimate.judge(found, realised, params.monitor.quality_margin)


def _realised(best: champion.Champion, metric: str, frame: pd.DataFrame) -> float:
    """The champion's `metric` on the labelled rows of `frame` (which holds its score columns)."""
    labelled = frame[frame[best.target].notna()]
    return _realised_on(best, metric, labelled, scores.scores_of(labelled, best.classes))


def _realised_on(best: champion.Champion, metric: str, frame: pd.DataFrame, scored: np.ndarray) -> float:
    """The champion's `metric` on the labelled `frame`, given the champion's `scored` rows."""
    from reproml.metrics import THRESHOLD, metric_spec, score

    spec = metric_spec(metric, best.task, "monitor.metric")
    labels = best.classes if best.task == "multiclass" else None
    cut = best.threshold or THRESHOLD
    return float(score(spec, frame[best.target].to_numpy(), scored, labels=labels, threshold=cut))


def find_record(root: Path, name: str, batch: str) -> BatchRecord:
    """The record of batch `batch` (its id, or the period that names it)."""
    wanted = {batch}
    period = batches.parse_period(batch)
    if period is not None:
        wanted.add(period.batch_id)
    for record in store.history(root, name):
        if record.get("batch_id") in wanted:
            return record
    raise LabelsError(
        f"--batch {batch!r}: no monitored batch of model {name!r} has that id "
        "(`reproml monitoring` lists them)"
    )


def add_labels(root: Path, params: Params, batch: str, labels_file: str) -> BatchRecord:
    """The labels of an earlier batch arrived: the record gains the realised metric, the estimate's
    error and the shift; the predictions their labels; the model a labelled window. Returns the record."""
    from reproml.monitoring import reports
    from reproml.stores.mlflow import connection

    connection.setup(root, params.mlflow.experiment_name)
    name = params.register_.model_name
    with store.monitor_lock(root, name):
        record = find_record(root, name, batch)
        predictions = record.get("predictions")
        if not predictions:
            raise LabelsError(
                f"batch {record['batch_id']} was not scored (verdict {record.get('verdict')}): "
                "there is nothing to label"
            )
        stored = pd.read_parquet(root / predictions)
        target, time_column = _target_and_time(stored, params)
        path = Path(labels_file) if Path(labels_file).is_absolute() else root / labels_file
        coding = batches.label_coding(root, target, params.data.task)
        arrived = batches.resolve(root, str(path), time_column, target, coding)
        if arrived.read_error:
            raise LabelsError(f"--labels {labels_file}: {arrived.read_error}")
        frame = _aligned(arrived.frame, stored, target, time_column, labels_file)
        stored[target] = frame[target].to_numpy()
        write_parquet(root / predictions, stored)
        record["labels"] = {
            "file": str(labels_file),
            "md5": arrived.source_md5,
            "rows": len(frame),
            "labelled_rows": int(frame[target].notna().sum()),
            "arrived_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        record["labelled_rows"] = record["labels"]["labelled_rows"]
        if record["labels"]["labelled_rows"] >= params.monitor.min_rows:
            record["labelled"] = _write_window(root, name, record, frame, target, params)
        _realise(record, stored, target, params)
        _realise_shadow(record, stored, target, params)
        _decide_on_labels(root, name, record, stored, target, params)
        path_written = store.write_record(root, name, record)
        reports.write_index(root, name, store.history(root, name))
        _track_labels(record, path_written)
    return record


def _target_and_time(stored: pd.DataFrame, params: Params) -> tuple[str, str | None]:
    target = params.data.target
    time_column = params.data.time_column
    return target, time_column if time_column in stored.columns else None


def _aligned(
    frame: pd.DataFrame, stored: pd.DataFrame, target: str, time_column: str | None, shown: str
) -> pd.DataFrame:
    """The labels file, checked to be the scored batch: same rows, same order, same times."""
    if target not in frame.columns:
        raise LabelsError(f"--labels {shown}: no target column {target!r}")
    if len(frame) != len(stored):
        raise LabelsError(
            f"--labels {shown}: {len(frame)} rows, but the batch scored {len(stored)}; "
            "the labels file is the batch again, same rows in the same order, with its labels"
        )
    if time_column and time_column in frame.columns:
        given = pd.to_datetime(frame[time_column]).reset_index(drop=True)
        scored = pd.to_datetime(stored[time_column]).reset_index(drop=True)
        if not given.equals(scored):
            raise LabelsError(
                f"--labels {shown}: its {time_column!r} values differ from the scored batch's "
                "(rows in another order, or another batch)"
            )
    return frame.reset_index(drop=True)


def _write_window(
    root: Path, name: str, record: BatchRecord, frame: pd.DataFrame, target: str, params: Params
) -> str:
    from reproml.monitoring.profile import sample

    batch_time = record.get("batch_time")
    end = pd.Timestamp(batch_time) if batch_time else None
    rows = sample(frame[frame[target].notna()], params.monitor.sample_rows, params.seed)
    out = root / store.labelled_path(name, record["batch_id"], end)
    for old in (root / store.labelled(name)).glob(f"*_{record['batch_id']}.parquet"):
        old.unlink()
    write_parquet(out, rows)
    return str(out.relative_to(root))


def _realise(record: BatchRecord, stored: pd.DataFrame, target: str, params: Params) -> None:
    """The champion's realised metric on the labelled rows (`record["realised"]`, the stored scores
    of every row: what it served), and the estimate judged against it, on the same rows it read."""
    from reproml.metrics import THRESHOLD, metric_spec, score

    found = record.get("estimate")
    labelled = stored[stored[target].notna()]
    if len(labelled) < params.monitor.min_rows:
        return
    champ = record.get("champion")
    classes = champ.get("classes") if champ else None
    metric = found["metric"] if found else params.monitor.metric
    spec = metric_spec(metric, params.data.task, "monitor.metric")
    realised = float(
        score(
            spec,
            labelled[target].to_numpy(),
            scores.scores_of(labelled, classes),
            labels=classes,
            threshold=(champ.get("threshold") if champ else None) or THRESHOLD,
        )
    )
    value = realised if np.isfinite(realised) else None
    made: RealisedRecord = {"metric": spec.name, "value": value, "rows": len(labelled)}
    record["realised"] = made
    if found:
        judged = estimate.judge(estimate.from_dict(found), realised, params.monitor.quality_margin)
        record["estimate"] = judged.to_dict()


def _decide_on_labels(
    root: Path, name: str, record: BatchRecord, stored: pd.DataFrame, target: str, params: Params
) -> None:
    """A batch judged without its labels is judged again on them (`record["labels_decision"]`): the
    realised quality change against the test split, with Evidently's quality report, and the same
    rules over the same drift as when it arrived. The verdict it had stays: it is what was done
    then. Taken once, on the first labels that make the quality measurable; a batch that had its
    labels when it was judged already has its realised verdict.

    The loop guard looks at the other batches only: a retrain this batch's estimate started learned
    older rows (its labels were not there), and must not hold the retrain that learns them now."""
    from reproml.metrics import THRESHOLD, metric_spec
    from reproml.monitoring import concept, decision, drift, profile
    from reproml.safehtml import write_evidently_html

    measured, reference, champ = record.get("drift"), record.get("reference"), record.get("champion")
    if record.get("quality") is not None or measured is None or reference is None or champ is None:
        return
    if record.get("verdict") not in decision.MEASURED:
        return
    watch = params.monitor
    current = profile.sample(stored, watch.sample_rows, params.seed)  # the check's rows: same count, seed
    labelled = current[current[target].notna()]
    if len(labelled) < watch.min_rows:
        return
    test = profile.test_reference_of(root, name, reference["profile"]["key"])
    if test is None:
        record["labels_decision_skipped"] = (
            f"the reference profile {reference['profile']['key']} of v{champ['version']} is gone or was "
            "altered: the realised quality change cannot be measured against its test split"
        )
        return
    stamp = record.get("batch_time")
    when = None if stamp is None else pd.Timestamp(stamp)
    try:
        change, snapshot = concept.check(
            metric_spec(watch.metric, params.data.task, "monitor.metric"),
            target,
            test,
            labelled,
            classes=champ.get("classes"),
            task=params.data.task,
            samples=watch.bootstrap_samples,
            confidence=watch.confidence,
            seed=params.seed,
            threshold=champ.get("threshold") or THRESHOLD,
            when=None if when is None else when.to_pydatetime(),
            name=f"{record['batch_id']} quality",
        )
    except Exception as exc:  # Evidently on labels it cannot read (one class): the labels still count
        record["labels_decision_skipped"] = (
            f"the realised quality could not be measured: {type(exc).__name__}: {exc}"
        )
        return
    page = root / store.report_dir(name, record["batch_id"]) / "quality.html"
    write_evidently_html(snapshot, page)
    record["quality"] = change.to_dict()
    record.setdefault("reports", {})["quality"] = str(page.relative_to(root))
    found = record.get("estimate")
    evidence = decision.Evidence(
        True,
        [],
        int(record.get("rows") or 0),
        int(record.get("labelled_rows") or 0),
        drift.DriftResult.from_dict(measured),
        change,
        when,
        int(record.get("seq", 0)),
        estimate=None if found is None else estimate.from_dict(found),
    )
    past = [r for r in store.history(root, name) if r.get("batch_id") != record["batch_id"]]
    record["labels_decision"] = decision.decide(evidence, watch, past).to_dict()


def arrived_window(
    root: Path, name: str, target: str, time_column: str | None, after: pd.Timestamp, min_rows: int
) -> Path | None:
    """The newest labelled window of model `name` that has arrived (`monitoring/<name>/labelled/`,
    written when a batch came with its labels or they came later) with at least `min_rows` labelled
    rows, all after `after`, and not handed to a training flow when it came
    (`note_labels_retrain`); None if there is none."""
    folder = root / store.labelled(name)
    if time_column is None or not folder.is_dir():
        return None
    tried = {
        Path(r["labels_retrained"]["window"]).name
        for r in store.history(root, name)
        if r.get("labels_retrained")
    }
    for path in sorted(folder.glob("*.parquet"), reverse=True):
        if path.name in tried:  # a training flow had it when its labels came (learned, or rejected)
            continue
        frame = pd.read_parquet(path)
        if target not in frame.columns or time_column not in frame.columns:
            continue
        labelled = frame[frame[target].notna()]
        if len(labelled) >= min_rows and pd.to_datetime(labelled[time_column]).min() > after:
            return path
    return None


def retrain_window(root: Path, record: BatchRecord, params: Params) -> tuple[str | None, str]:
    """What a retrain verdict on a batch without labels (its labels withheld or still to come)
    retrains on: the newest labelled window that has arrived whose rows all come after the newest
    row the judging champion learned (the record's drift window ends there), as a path relative to
    `root`, with why; or None with why not. Never the batch's own rows: they have no labels."""
    champ = record.get("champion")
    version = f"v{champ['version']}" if champ else "the champion"
    name = champ["name"] if champ else params.register_.model_name
    reference = record.get("reference")
    last = reference["drift_window"].get("last") if reference else None
    if params.data.time_column is None or not last:
        return None, (
            f"no labels in batch {record['batch_id']} and no dated end of what {version} learned: "
            "nothing to retrain on"
        )
    after = pd.Timestamp(last)
    found = arrived_window(
        root, name, params.data.target, params.data.time_column, after, params.monitor.min_rows
    )
    if found is None:
        return None, (
            f"no labels in batch {record['batch_id']}, and no labelled window of at least "
            f"{params.monitor.min_rows} rows has arrived after what {version} learned "
            f"(rows up to {after:%Y-%m-%d %H:%M}): nothing to retrain on"
        )
    shown = str(found.relative_to(root))
    return shown, (
        f"no labels in batch {record['batch_id']}: retrain on the newest labelled window that has "
        f"arrived after what {version} learned, {shown}"
    )


def _realise_shadow(record: BatchRecord, stored: pd.DataFrame, target: str, params: Params) -> None:
    """The shadow challenger's comparison on the labels that arrived: both scores are in the file."""
    from reproml.metrics import metric_spec

    found = record.get("shadow")
    if not found or shadow.VERSION_COLUMN not in stored.columns:
        return
    champ = record.get("champion")
    classes = champ.get("classes") if champ else None
    spec = metric_spec(found["metric"], params.data.task)
    record["shadow"] = shadow.compare(stored, target, spec, classes, params.monitor.min_rows)


def _track_labels(record: BatchRecord, path: Path) -> None:
    """The batch's monitoring run gains the realised value, the error and the shift."""
    from reproml.stores.mlflow import runs

    tracked = record.get("mlflow")
    if not tracked or not tracked.get("run_id") or not tracked.get("experiment_id"):
        return
    run_id, experiment_id = tracked["run_id"], tracked["experiment_id"]
    found = record.get("estimate")
    metrics = {"labelled_rows": float(record["labelled_rows"])}
    pairs = (("estimate_error", found["error"]), ("quality_realised", found["realised"])) if found else ()
    for key, value in (*pairs, *shadow.tracked_metrics(record.get("shadow")).items()):
        if value is not None and np.isfinite(float(value)):
            metrics[key] = float(value)
    shift = found["shift"] if found else estimate.NO_SHIFT
    tags = {"reproml.shift": shift, "reproml.labels": "arrived", **shadow.tracked_tags(record)}
    again = record.get("labels_decision")
    if again:
        tags["reproml.verdict_on_labels"] = again["verdict"]
    with runs.tracked_run(str(experiment_id), run_id=str(run_id)):  # resumed, and finished again
        runs.log_batch(run_id, metrics=metrics, tags=tags, step=int(record.get("seq", 0)))
        runs.log_artifact(path, artifact_path="record")


def note_labels_retrain(root: Path, record: BatchRecord, action: str) -> BatchRecord:
    """The batch's labelled window went to a training flow when its labels arrived (the gate's
    `action`): the record says so (`labels_retrained`), and a later verdict without labels does not
    hand the same window on again (`arrived_window` passes it by)."""
    name = record["champion"]["name"]
    with store.monitor_lock(root, name):
        found = store.find(root, name, record["batch_id"]) or record
        found["labels_retrained"] = {"window": str(record.get("labelled")), "action": action}
        store.write_record(root, name, found)
    return found


def skip_retrain(root: Path, record: BatchRecord, why: str) -> BatchRecord:
    """The batch's retrain verdict started no retrain (`retrain_window` found nothing): its record
    says why (`retrain_skipped`), so the loop guard does not count it as a retrain (a cooldown
    after a retrain that never ran would hold the next one, which has labels to learn)."""
    name = record["champion"]["name"]
    with store.monitor_lock(root, name):
        found = store.find(root, name, record["batch_id"]) or record
        found["retrain_skipped"] = why
        store.write_record(root, name, found)
    return found
