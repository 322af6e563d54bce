"""The shadow challenger: while a `challenger` version waits, every production batch is scored by it too.

Why: the promotion gate's usual evidence is the frozen test split (plus the newest labelled
window), rows both models were built to be judged on. Production rows are the ones that matter,
and a challenger that has scored them beside the champion can be judged on them with the same
rules (`reproml promote --evidence production`).

What happens per monitored batch (`reproml.monitoring.run`):

1. the version aliased `challenger`, when there is one and it is not the champion, is loaded the
   way the champion is: its source checked to lie in this project and its files' digest checked
   against the one its run recorded, before anything is deserialised;
2. it scores every row the champion scored; its scores are stored in the batch's predictions file
   beside the champion's (`challenger_prediction`, `challenger_proba_<class>`,
   `challenger_version`), one row per batch row, so the two can be compared row by row whenever
   the labels are there, now or when they arrive later (`reproml monitor --batch ID --labels FILE`
   writes them into the same file);
3. the record gains `shadow` (`ShadowRecord`): both models' gate metric on the batch's labelled
   rows and the difference. A challenger that cannot be loaded or scored leaves `shadow` None and
   says why in `shadow_skipped`: the champion's monitoring never depends on it.

No label-free estimate is made for the challenger: CBPE / DLE would need the challenger scored
on a labelled reference of its own for every batch, which is not cheap; an unlabelled batch's
comparison waits for its labels.

`pool` gathers the production evidence the gate reads: the labelled rows of every batch monitored
while this challenger shadowed this champion (a version is the challenger only after it was
registered, so these are batches since then), each batch's rows sampled to `monitor.sample_rows`
as its labelled window is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from reproml.errors import ReproError
from reproml.io import file_md5
from reproml.monitoring import scores, store
from reproml.monitoring.records import BatchRecord, ProductionEvidenceRecord, ShadowRecord

if TYPE_CHECKING:
    from reproml.metrics import MetricSpec

PREFIX = "challenger_"
VERSION_COLUMN = "challenger_version"
CHAMPION_VERSION_COLUMN = "champion_version"


class ShadowError(ReproError):
    """A challenger that cannot score the batch the champion scored (schema, classes)."""


@dataclass(frozen=True)
class Challenger:
    """The version aliased `challenger`, loaded after its provenance was checked."""

    version: int
    run_id: str | None
    model: Any  # the sklearn Pipeline, taking raw columns

    @property
    def input_columns(self) -> list[str]:
        return [str(c) for c in self.model.feature_names_in_]


def load_challenger(
    name: str, experiment_id: str, champion_version: int, refit_of: int | None = None
) -> Challenger | None:
    """The `challenger` version of model `name`, or None when there is none, or it is the champion
    (a promoted version keeps its challenger alias until the next registration), or the version
    the champion refits (`refit_of`: promoted, then refit on its whole window; no longer a candidate).

    `provenance.load_model_version` refuses files from outside the project or changed since their
    run logged them, before deserialising: the same gate the champion passes."""
    from reproml import provenance, registry

    version = registry.alias_version(name, registry.CHALLENGER)
    if version is None or int(version.version) in (int(champion_version), refit_of):
        return None
    model = provenance.load_model_version(version, experiment_id)
    return Challenger(int(version.version), version.run_id, model)


def score(
    challenger: Challenger, frame: pd.DataFrame, task: str, classes: Sequence[Any] | None
) -> pd.DataFrame:
    """The challenger's scores of every row of `frame`, as the predictions file's challenger columns.

    A challenger lacking a column of the batch, or (multiclass) with other classes than the
    champion, is refused naming what differs: its scores could not be paired with the champion's."""
    from reproml.scoring import predict_scores

    label = f"challenger v{challenger.version}"
    missing = [c for c in challenger.input_columns if c not in frame.columns]
    if missing:
        raise ShadowError(f"{label} takes the columns {missing}, which the batch lacks")
    if classes is not None:
        own = [str(c.item() if isinstance(c, np.generic) else c) for c in challenger.model.classes_]
        if own != [str(c) for c in classes]:
            raise ShadowError(f"{label} has the classes {own}, the champion {list(classes)}")
    scored = predict_scores(challenger.model, frame[challenger.input_columns], task)
    added = scores.columns(scored, classes).add_prefix(PREFIX)
    added[VERSION_COLUMN] = challenger.version
    return added


def challenger_scores(frame: pd.DataFrame, classes: Sequence[Any] | None) -> np.ndarray:
    """The challenger's scores `score` stored (probability columns in `classes` order)."""
    if classes:
        return frame[[PREFIX + c for c in scores.proba_columns(classes)]].to_numpy(dtype=np.float64)
    return frame[PREFIX + scores.PREDICTION].to_numpy(dtype=np.float64)


def compare(
    stored: pd.DataFrame,
    target: str,
    spec: MetricSpec,
    classes: Sequence[Any] | None,
    min_rows: int,
) -> ShadowRecord:
    """Both models' `spec` metric on the labelled rows of a predictions file holding both scores.

    Under `min_rows` labelled rows the values are None, as monitoring's own quality check makes
    none: a metric of a few dozen rows is noise. `delta` is oriented (positive: the challenger is
    better), as the gate's improvement."""
    from reproml.metrics import oriented
    from reproml.metrics import score as metric

    version = int(stored[VERSION_COLUMN].iloc[0]) if len(stored) else 0
    labelled = stored[stored[target].notna()] if target in stored.columns else stored.iloc[:0]
    record: ShadowRecord = {
        "version": version,
        "metric": spec.name,
        "higher_is_better": spec.higher_is_better,
        "rows": len(stored),
        "labelled_rows": len(labelled),
        "value": None,
        "champion_value": None,
        "delta": None,
        "note": None,
    }
    if len(labelled) < min_rows:
        record["note"] = (
            f"{len(labelled)} labelled rows, fewer than monitor.min_rows {min_rows}: compared once "
            "labels arrive (`reproml monitor --batch ID --labels FILE`)"
        )
        return record
    y = labelled[target].to_numpy()
    labels = list(classes) if classes else None
    ours = metric(spec, y, challenger_scores(labelled, classes), labels=labels)
    theirs = metric(spec, y, scores.scores_of(labelled, classes), labels=labels)
    record["value"], record["champion_value"] = _finite(ours), _finite(theirs)
    record["delta"] = _finite(oriented(spec, ours, theirs))
    if record["delta"] is None:
        record["note"] = f"{spec.name} is undefined on these rows for at least one model (one class?)"
    return record


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class Pooled:
    """The production evidence: labelled rows both models scored, and where they came from."""

    frame: pd.DataFrame  # the predictions files' labelled rows (target, both scores, slice column)
    batches: list[str]
    sources: dict[str, str]  # predictions file -> md5
    challenger: int
    champion: int
    learned_until: str | None = None  # the newest row either model learned
    overlapping: tuple[str, ...] = ()  # shadowed batches left out: they start inside what was learned

    @property
    def rows(self) -> int:
        return len(self.frame)

    def to_dict(self) -> ProductionEvidenceRecord:
        return {
            "challenger": self.challenger,
            "champion": self.champion,
            "batches": list(self.batches),
            "rows": self.rows,
            "learned_until": self.learned_until,
            "overlapping": list(self.overlapping),
        }


def pool(
    root: Path,
    name: str,
    challenger: int,
    champion: int,
    target: str,
    sample_rows: int,
    seed: int,
    learned_until: str | None = None,
) -> Pooled:
    """The labelled rows of every batch of model `name` that challenger v`challenger` scored beside
    champion v`champion` (by the record and by the file's own version columns, so a batch monitored
    again under other versions is not counted), oldest batch first, each batch's labelled rows
    sampled to `sample_rows` as its labelled window is (a million rows would make the bootstrap
    slow without making it surer).

    A batch that starts at or before `learned_until` (the newest row either model learned) is left
    out and named in `overlapping`: a batch monitored late (`--backfill`) may hold rows one of the
    models was trained on, and a model judged on its own training rows looks better than it is."""
    from reproml.monitoring.profile import sample

    frames, batches, sources, overlapping = [], [], {}, []
    limit = None if learned_until is None else _utc(learned_until)
    for record in store.history(root, name):
        path = _shadowed(record, challenger, champion)
        if path is None or not (root / path).is_file():
            continue
        start = record.get("batch_start")
        if limit is not None and start and _utc(start) <= limit:
            overlapping.append(record["batch_id"])
            continue
        stored = pd.read_parquet(root / path)
        versions_match = (
            VERSION_COLUMN in stored.columns
            and CHAMPION_VERSION_COLUMN in stored.columns
            and (stored[VERSION_COLUMN] == challenger).all()
            and (stored[CHAMPION_VERSION_COLUMN] == champion).all()
        )
        if not versions_match or target not in stored.columns:
            continue
        labelled = sample(stored[stored[target].notna()], sample_rows, seed)
        if labelled.empty:
            continue
        frames.append(labelled)
        batches.append(record["batch_id"])
        sources[path] = file_md5(root / path)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return Pooled(frame, batches, sources, challenger, champion, learned_until, tuple(overlapping))


def _utc(text: str) -> pd.Timestamp:
    """A record's ISO time, comparable whether it was written with a zone or without (UTC)."""
    stamp = pd.Timestamp(text)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp


def _shadowed(record: BatchRecord, challenger: int, champion: int) -> str | None:
    """The predictions file of a batch challenger v`challenger` shadowed champion v`champion` on."""
    found = record.get("shadow")
    judged_by = record.get("champion")
    if not found or judged_by is None or int(found["version"]) != challenger:
        return None
    if int(judged_by["version"]) != champion:
        return None
    return record.get("predictions")


def tracked_metrics(found: ShadowRecord | None) -> dict[str, float | None]:
    """The shadow comparison as the monitoring run's metrics, beside the champion's own."""
    if not found:
        return {}
    return {
        "shadow_quality": found["value"],
        "shadow_champion_quality": found["champion_value"],
        "shadow_delta": found["delta"],
        "shadow_labelled_rows": float(found["labelled_rows"]),
    }


def tracked_tags(record: BatchRecord) -> dict[str, str]:
    """Which challenger shadowed the batch (and on which metric), or why none could."""
    found = record.get("shadow")
    if found:
        return {"reproml.shadow_version": str(found["version"]), "reproml.shadow_metric": found["metric"]}
    skipped = record.get("shadow_skipped")
    return {"reproml.shadow_skipped": skipped[:5000]} if skipped else {}
