"""The model registry: versions, the challenger/champion/previous aliases, and their audit trail.

MLflow owns versions and aliases; this module owns the rules around them. A version is registered
only from a run that FINISHED and was evaluated. An alias moves only through `promote` (the gate,
or a forced promotion with a reason) or `rollback`, and every such decision, including rejections
and aborted races, is written as a record (before any alias moves) and as tags on the model
version. The records go through `reproml.stores.records`: JSON files under `registry/records/` by
default, or the team's database (`REPROML_RECORDS_URL`), where every clone reads one audit trail.

A version is created, and a model loaded, only after `reproml.provenance` has shown its files to
be the ones a run of this project logged.

The gate's rows are the test split (plus the newest labelled window), or with production evidence
(`promote.evidence: production`) the labelled batches the challenger scored as a shadow beside the
champion (`reproml.monitoring.shadow`): the same rules on other rows, and the record says which.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import pandas as pd

from reproml import learned, paths, provenance
from reproml.errors import ReproError
from reproml.gate import GateRecord, GateResult
from reproml.io import file_lock, file_md5, read_json
from reproml.monitoring import store
from reproml.monitoring.records import ProductionEvidenceRecord
from reproml.redaction import scrub, scrub_obj
from reproml.stores.mlflow import runs, versions
from reproml.stores.mlflow.connection import MlflowError
from reproml.stores.mlflow.versions import Version
from reproml.stores.records import REGISTRY, records_store

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
# the training flow run that made a version (its challenger, tagged before the gate; its refit,
# tagged as it is created from its run's tag): how a rerun of that flow run finds it
FLOW_RUN_TAG = "reproml.flow_run"
RECORDS = Path("registry/records")
LOCK = Path("registry/.promote.lock")


class RegistryError(ReproError):
    """A registry action that must not happen (unfinished run, foreign model, missing alias...)."""


def labelled_windows(name: str) -> Path:
    """Model `name`'s labelled production windows, written by monitoring (`monitoring/<name>/labelled`):
    the newest is scored with the test split. Per model, so per data source: a window of one data
    set is never scored against another's models."""
    return store.labelled(name)


@dataclass(frozen=True)
class EvalData:
    """The rows both models are scored on, and where they came from."""

    frame: pd.DataFrame
    sources: dict[str, str]  # path -> md5


def alias_version(name: str, alias: str) -> Version | None:
    """The version `alias` names, or None."""
    return versions.alias_version(name, alias)


def register(
    run_id: str, model_name: str, experiment_id: str, model_uri: str, alias: str | None = CHALLENGER
) -> Version:
    """A new version from a finished, evaluated run, tagged with its lineage, aliased `challenger`
    (`alias` None: no alias; a refit, which becomes the champion through its own record and must
    not become the next gate's challenger)."""
    run = runs.get_run(run_id)
    if run.status != "FINISHED":
        raise RegistryError(f"run {run_id} is {run.status}, not FINISHED; nothing registered")
    if run.tags.get("reproml.evaluated") != "true":
        raise RegistryError(f"run {run_id} was never evaluated; run `dvc repro` to evaluate it first")
    if run.experiment_id != experiment_id:
        raise RegistryError(f"run {run_id} belongs to another experiment; nothing registered")
    try:
        provenance.verify_logged_model(model_uri, run_id, experiment_id)
    except provenance.ProvenanceError as exc:
        raise RegistryError(f"{exc}; nothing registered") from None
    lineage = {
        k: v
        for k, v in run.tags.items()
        if k.startswith("reproml.data.")
        or k in ("reproml.git_commit", "reproml.params_sha256", learned.TAG, "reproml.refit_of", FLOW_RUN_TAG)
    }
    version = versions.create_version(model_name, model_uri, run_id, {"reproml.run_id": run_id, **lineage})
    if alias is not None:
        versions.set_alias(model_name, alias, version.version)
    return version


def eval_data(root: Path, name: str, time_column: str | None = None) -> EvalData:
    """The frozen test split, plus model `name`'s newest labelled production window when there is one.

    A window that ends inside the test split's time range is not added: after a retrain on that
    batch the window *is* the test split, and counting its rows twice would only narrow the
    bootstrap interval without adding evidence. A window lacking a column of the test split was
    cut from another schema: refused, naming the file and the columns, never scored (its rows
    would read as missing values and the metric as NaN).
    """
    test = root / paths.split_file("test")
    frames = [pd.read_parquet(test)]
    sources = {str(paths.split_file("test")): file_md5(test)}
    home = paths.workspace(root)
    windows = sorted((home / labelled_windows(name)).glob("*.parquet"))
    if windows:
        window = pd.read_parquet(windows[-1])
        shown = windows[-1].relative_to(home)
        missing = [c for c in frames[0].columns if c not in window.columns]
        if missing:
            raise RegistryError(
                f"labelled window {shown} lacks the columns {missing} of {paths.split_file('test')}: "
                f"it was monitored with another data source or schema than model {name!r} now has. "
                f"Move it out of {labelled_windows(name)}/ (for example into "
                f"{store.archive(name)}/) and promote again"
            )
        inside = (
            time_column is not None
            and time_column in window.columns
            and not window.empty
            and not frames[0].empty
            and window[time_column].max() <= frames[0][time_column].max()
        )
        if not inside:
            frames.append(window[list(frames[0].columns)])
            sources[str(shown)] = file_md5(windows[-1])
    return EvalData(pd.concat(frames, ignore_index=True), sources)


def model_scores(version: Version, experiment_id: str, frame: pd.DataFrame, task: str) -> np.ndarray:
    from reproml.scoring import predict_scores

    model = provenance.load_model_version(version, experiment_id)
    missing = [str(c) for c in model.feature_names_in_ if c not in frame.columns]
    if missing:
        raise RegistryError(
            f"version {version.version} of {version.name!r} takes the columns {missing}, which the "
            f"evaluation data ({paths.split_file('test')}) lacks: it was trained on another schema, "
            "so it cannot be scored on these rows"
        )
    return predict_scores(model, frame[list(model.feature_names_in_)], task)


@contextlib.contextmanager
def promotion_lock(root: Path) -> Iterator[None]:
    """One alias move at a time in this project (MLflow has no compare-and-set on aliases): on this
    machine (a file lock), and on every machine sharing the records database (its lock)."""
    with file_lock(paths.workspace(root) / LOCK), records_store().lock("promote"):
        yield


class VersionRef(TypedDict, total=False):
    """A version as a decision record names it."""

    version: int
    run_id: str | None
    learned: learned.LearnedRecord  # what it learned: splits, rows, time range, data hash
    refit_of: learned.ParentRef  # a refit's parent version


class Registered(TypedDict):
    """The version `reproml register` made the challenger, as models/registered.json holds it."""

    model_name: str
    version: int
    alias: str
    run_id: str
    model_uri: str


class DecisionRecord(TypedDict, total=False):
    """One registry decision, as written to `registry/records/<stamp>-<action>-v<n>.json`.

    `action` is promote, reject, force, abort, rollback (or none: nothing to decide, not written);
    `status` and the fields after it are stamped by `_decide` / `settle_pending`.
    """

    action: str
    reason: str
    challenger: VersionRef | None
    champion: VersionRef | None
    demoted: VersionRef | None
    gate: GateRecord  # gate.GateResult.to_dict()
    champion_judged_as: VersionRef | None  # a refit champion's parent, which the gate scored
    eval_data: dict[str, str]  # path -> md5 of the rows both models were scored on
    evidence: str  # test (the test split, + newest labelled window) or production (shadow batches)
    production: ProductionEvidenceRecord  # with evidence production: the batches and rows pooled
    status: str
    error: str
    aliases_after: dict[str, int | None]
    settled: str
    time: str
    user: str
    model_name: str
    record: str  # the file, relative to the workspace
    flow_run: str  # the training flow run that made it (shared retrains): `recorded_decision`'s key


def _version_of(version: Version | None) -> int | None:
    return None if version is None else int(version.version)


def _describe(version: Version | None) -> VersionRef | None:
    if version is None:
        return None
    described: VersionRef = {"version": int(version.version), "run_id": version.run_id}
    tags = version.tags or {}
    if tags.get(learned.TAG):  # what it learned: splits, rows, time range, data hash
        described["learned"] = json.loads(tags[learned.TAG])
    if tags.get("reproml.refit_of"):
        described["refit_of"] = json.loads(tags["reproml.refit_of"])
    return described


# A record's `status`: `done` once its decision is in effect (a reject or an abort at once);
# `pending` while its aliases move, left so only by a process that died in between and settled by
# the next promote or rollback; `failed` when moving them raised; `not applied` when a dead
# process's pending move never happened.
PENDING, DONE, FAILED, NOT_APPLIED = "pending", "done", "failed", "not applied"


def _new_record(root: Path, name: str, record: DecisionRecord) -> tuple[Path, DecisionRecord]:
    """Where the decision's JSON goes, and the record stamped with time, user and model name."""
    now = dt.datetime.now(dt.UTC)
    # a forced promotion's --reason is free text a person typed: it may quote a URL with a password
    stamped: DecisionRecord = {
        "time": now.isoformat(),
        "user": getpass.getuser(),
        "model_name": name,
        **record,
    }
    record = cast(DecisionRecord, scrub_obj(stamped))
    subject = record.get("challenger") or record.get("champion")
    stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
    target = (
        paths.workspace(root)
        / RECORDS
        / f"{stamp}-{record['action']}-v{subject['version'] if subject else 'none'}.json"
    )
    record["record"] = str(target.relative_to(paths.workspace(root)))
    return target, record


def _tag_decision(name: str, record: DecisionRecord) -> None:
    """The decision as tags on its challenger's (or restored champion's) version."""
    subject = record.get("challenger") or record.get("champion")
    if subject is None or subject.get("version") is None:
        return
    version = str(subject["version"])
    versions.set_version_tag(name, version, "reproml.decision", record["action"])
    versions.set_version_tag(name, version, "reproml.decision_reason", record["reason"][:5000])
    versions.set_version_tag(name, version, "reproml.decision_record", record["record"])


def _aliases(name: str) -> dict[str, int | None]:
    """The aliases as they are now (None where unset or unreadable)."""
    now: dict[str, int | None] = {}
    for alias in (CHAMPION, CHALLENGER, PREVIOUS):
        version = alias_version(name, alias)
        now[alias] = None if version is None else int(version.version)
    return now


def _decide(root: Path, name: str, record: DecisionRecord, move: Callable[[], None] | None) -> DecisionRecord:
    """Record the decision, then carry it out (`move` the aliases), then record how that went.

    The record is on disk before any alias moves (status `pending`), so a crash in between cannot
    lose a promotion from the audit trail; it becomes `done` once the aliases moved, or `failed`,
    with the error and the aliases as they really are, if moving them raised. One decision, one
    file: the same record is rewritten atomically, never a second one added.
    """
    target, record = _new_record(root, name, {**record, "status": DONE if move is None else PENDING})
    _write(target, record)
    try:
        if move is not None:
            move()
    except BaseException as exc:
        error = scrub(f"{type(exc).__name__}: {exc}")
        record |= {
            "status": FAILED,
            "error": error,
            "aliases_after": _aliases(name),
            "reason": f"NOT APPLIED, moving the aliases failed ({error}); "
            f"the decision was: {record['reason']}",
        }
        _write(target, record)
        if not isinstance(exc, Exception):
            raise
        raise RegistryError(
            f"{record['action']} of model {name!r} failed while moving its aliases ({error}); "
            f"{record['record']} records it, with the aliases as they are now: {record['aliases_after']}"
        ) from exc
    if move is not None:
        record["status"] = DONE
        _write(target, record)
    _tag_decision(name, record)
    return record


def settle_pending(root: Path, name: str) -> list[Path]:
    """Say what became of decisions whose process died while moving their aliases.

    Called under the promotion lock, so no live process is moving aliases: a `pending` record is
    a dead one's. Its move took effect if the champion is the version it was to make champion.
    """
    champion = alias_version(name, CHAMPION)
    now = None if champion is None else int(champion.version)
    settled = []
    for record in history(root):
        path = paths.workspace(root) / record["record"]
        if record.get("status") != PENDING or record.get("model_name") != name:
            continue
        meant = record.get("champion") if record["action"] == "rollback" else record.get("challenger")
        applied = meant is not None and meant.get("version") is not None and int(meant["version"]) == now
        record |= {
            "status": DONE if applied else NOT_APPLIED,
            "aliases_after": _aliases(name),
            "settled": f"{dt.datetime.now(dt.UTC).isoformat()} by {getpass.getuser()}: the process that "
            f"made this decision ended while moving the aliases; the champion is v{now}, so the "
            f"decision {'took effect' if applied else 'did not take effect'}",
        }
        _write(path, record)
        if applied:
            _tag_decision(name, record)
        settled.append(path)
    return settled


def recorded_decision(root: Path, name: str, version: int, flow_run: str) -> DecisionRecord | None:
    """The decision on `version` of model `name` that flow run `flow_run` recorded and that took
    effect, tagged on the version now (the tags its process, lost after writing the record, never
    set); None when the audit trail holds none, or only one that did not take effect.

    A training flow run lost with its worker is run again as the same flow run: the rerun calls
    this before judging, so the audit trail keeps one decision per (version, flow run), whichever
    step the lost attempt died after. A `pending` record of it (lost while moving the aliases) is
    settled first, under the promotion lock as `promote` settles it; one `not applied` or `failed`
    is left as it says, and the version is judged again."""

    def ours(record: DecisionRecord) -> bool:
        subject = record.get("challenger") or {}
        return (
            record.get("model_name") == name
            and record.get("flow_run") == flow_run
            and subject.get("version") is not None
            and int(subject["version"]) == int(version)
        )

    found = [r for r in history(root) if ours(r)]
    if any(r.get("status") == PENDING for r in found):
        with promotion_lock(root):
            settle_pending(root, name)
        found = [r for r in history(root) if ours(r)]
    done = [r for r in found if r.get("status") == DONE]
    if not done:
        return None
    _tag_decision(name, done[-1])
    return done[-1]


def history(root: Path) -> list[DecisionRecord]:
    """Every decision recorded in this project (or, with a records database, by the team), oldest
    first: the keys start with the decision's UTC time stamp (the JSON edge: the keys are
    DecisionRecord's, as `_decide` wrote them)."""
    folder = paths.workspace(root) / RECORDS
    return [cast(DecisionRecord, r) for r in records_store().all(REGISTRY, None, folder)]


def _write(target: Path, record: DecisionRecord) -> None:
    """The decision, keyed by its file's stem (time stamp, action, version) under its model."""
    records_store().put(REGISTRY, record["model_name"], target.stem, record, target)


def _move_aliases(name: str, new: Version, old: Version | None) -> None:
    """`previous` to the old champion, then `champion` to `new`; if the second move fails,
    `previous` is put back, so a failure leaves the aliases as they were where MLflow allows."""
    before = alias_version(name, PREVIOUS)
    if old is not None:
        versions.set_alias(name, PREVIOUS, old.version)
    try:
        versions.set_alias(name, CHAMPION, new.version)
    except BaseException:
        if old is not None:
            with contextlib.suppress(MlflowError):
                if before is None:
                    versions.delete_alias(name, PREVIOUS)
                else:
                    versions.set_alias(name, PREVIOUS, before.version)
        raise


def gated_stand_in(name: str, champion: Version | None) -> tuple[Version | None, str | None]:
    """The version the gate scores for `champion`, and why when it is not the champion itself.

    A refit champion (`reproml refit`) learned its whole window, one batch more than any
    challenger trained by the pipeline (whose newest batch is its held-out test split): scored
    as it is, it would win for that reason alone and no retrain would pass again. The gate
    scores the promoted model it refits instead, which like the challenger learned the window
    less its newest batch and has not seen the evaluation rows: the same handicap on both sides.
    """
    refit_of = (champion.tags or {}).get("reproml.refit_of") if champion is not None else None
    if champion is None or not refit_of:
        return champion, None
    parent = json.loads(refit_of)
    stand_in = versions.get_version(name, parent["version"])
    return stand_in, (
        f"champion v{champion.version} is a refit of v{stand_in.version} on its whole window; the gate "
        f"scored v{stand_in.version}, which, like the challenger, had not learned its newest batch"
    )


def promote(
    root: Path,
    name: str,
    experiment_id: str,
    decide: Any,
    task: str,
    version: int | None = None,
    reason: str | None = None,
    action: str = "force",
    production: ProductionRules | None = None,
    flow_run: str | None = None,
) -> DecisionRecord:
    """Run the gate (or force `version` with `reason`) and move aliases only if the champion is
    still the one that was judged; every outcome is recorded. `action` names a forced move in the
    record: `force` (a person's, with their name) or `refit` (`reproml refit`: the promoted
    version refit on the whole window). `flow_run`: the training flow run deciding, kept in the
    record, so that a rerun of it finds this decision (`recorded_decision`) instead of deciding again.

    `decide(y, challenger_scores, champion_scores, slices) -> GateResult` is the gate, passed in
    so this function holds only the registry's side of the rule. With `production` the gate judges
    the rows the challenger scored as a shadow in production (`_on_production`), not the test split.
    """
    if version is not None and not reason:
        raise RegistryError("a forced promotion needs --reason")
    challenger = (
        versions.get_version(name, version) if version is not None else alias_version(name, CHALLENGER)
    )
    if challenger is None:
        raise RegistryError(f"model {name!r} has no {CHALLENGER!r} version; run `dvc repro` first")
    provenance.verify_model_version(challenger, experiment_id)
    run_status = runs.get_run(challenger.run_id).status if challenger.run_id else "unknown"
    if run_status != "FINISHED":
        raise RegistryError(
            f"version {challenger.version} comes from run {challenger.run_id} which is {run_status}, "
            "not FINISHED; it cannot be promoted"
        )
    champion = alias_version(name, CHAMPION)
    if champion is not None:
        provenance.check_source(champion, experiment_id)
    if champion is not None and champion.version == challenger.version:
        # e.g. a second `make run` with nothing new: no decision to make, nothing to record
        return {
            "action": "none",
            "challenger": _describe(challenger),
            "champion": _describe(champion),
            "reason": f"version {challenger.version} is already the champion; nothing to decide",
        }
    record: DecisionRecord = {"challenger": _describe(challenger), "champion": _describe(champion)}
    if flow_run is not None:
        record["flow_run"] = flow_run
    if version is not None:
        said = str(reason) if action == "refit" else f"forced by {getpass.getuser()}: {reason}"
        record |= {"action": action, "reason": said}
        promote_it = True
    elif production is not None:
        record |= _on_production(root, name, challenger, champion, decide, production)
        promote_it = record["action"] == "promote"
    else:
        schema = read_json(root / paths.SCHEMA)
        data = eval_data(root, name, schema.get("time_column"))
        target = schema["target"]
        y = data.frame[target].to_numpy()
        challenger_scores = model_scores(challenger, experiment_id, data.frame, task)
        judged, note = gated_stand_in(name, champion)
        champion_scores = None if judged is None else model_scores(judged, experiment_id, data.frame, task)
        result = decide(y, challenger_scores, champion_scores, data.frame)
        promote_it = bool(result.promote)
        record |= {
            "action": "promote" if promote_it else "reject",
            "reason": result.reason + (f" ({note})" if note else ""),
            "gate": result.to_dict(),
            "eval_data": data.sources,
            "evidence": "test",
        }
        if note:
            record["champion_judged_as"] = _describe(judged)
    with promotion_lock(root):
        settle_pending(root, name)
        current = alias_version(name, CHAMPION)
        if _version_of(current) != _version_of(champion):
            record |= {
                "action": "abort",
                "reason": f"champion changed from {_describe(champion)} to {_describe(current)} while "
                f"this decision was being made; nothing moved (was: {record['reason']})",
            }
            promote_it = False
        move = (lambda: _move_aliases(name, challenger, champion)) if promote_it else None
        return _decide(root, name, record, move)


@dataclass(frozen=True)
class ProductionRules:
    """How production evidence is gathered (`promote.evidence: production`): the target column, the
    class order of multiclass scores (the gate's `labels`), the fewest labelled rows that count as
    evidence (`monitor.min_rows`), and each batch's sample (`monitor.sample_rows`, `seed`)."""

    target: str
    min_rows: int
    sample_rows: int
    seed: int
    classes: list[Any] | None = None


def _on_production(
    root: Path,
    name: str,
    challenger: Version,
    champion: Version | None,
    decide: Any,
    rules: ProductionRules,
) -> DecisionRecord:
    """The gate on production evidence: the labelled rows of every batch the challenger scored
    beside the champion (`monitoring.shadow.pool`), both models' scores as monitoring stored them,
    judged by the same `decide` as the test split. Fewer than `rules.min_rows` such rows (or no
    champion to compare against) is not enough evidence: rejected, saying so. The champion is the
    one that served those batches, a refit too (no stand-in as on the test split: neither model
    learned production rows monitored after both were trained). Nothing is loaded or scored here:
    the challenger's files were verified above, and both models' scores are the ones monitoring
    stored."""
    from reproml.monitoring import scores, shadow

    said = f"production evidence for challenger v{challenger.version}"
    if champion is None:
        return {
            "action": "reject",
            "evidence": "production",
            "reason": f"{said}: there is no champion, so no batch was scored by both models; "
            "promote the first model on the test split (`reproml promote --evidence test`)",
        }
    pooled = shadow.pool(
        root,
        name,
        challenger.number,
        champion.number,
        rules.target,
        rules.sample_rows,
        rules.seed,
        learned_until=_learned_until(challenger, champion),
    )
    found: DecisionRecord = {
        "evidence": "production",
        "production": pooled.to_dict(),
        "eval_data": pooled.sources,
    }
    both = f"champion v{champion.version} and challenger v{challenger.version}"
    count = len(pooled.batches)
    batches = f"{count} monitored batch{'' if count == 1 else 'es'}"
    where = (
        f"{pooled.rows} labelled rows in {batches} scored by both {both}"
        if count
        else f"no labelled batch was scored by both {both}"
    )
    if pooled.overlapping:
        where += (
            f" ({len(pooled.overlapping)} more left out: they start by {pooled.learned_until}, "
            "inside what a model learned)"
        )
    if pooled.rows < rules.min_rows:
        hint = "monitor labelled batches, or add late labels with `reproml monitor --batch ID --labels FILE`"
        return found | {
            "action": "reject",
            "reason": f"{said}: {where}, fewer than monitor.min_rows {rules.min_rows}: not enough "
            f"evidence, no promotion ({hint})",
        }
    frame = pooled.frame
    y = frame[rules.target].to_numpy()
    theirs = scores.scores_of(frame, rules.classes)
    ours = shadow.challenger_scores(frame, rules.classes)
    result: GateResult = decide(y, ours, theirs, frame)
    return found | {
        "action": "promote" if result.promote else "reject",
        "reason": f"on production evidence ({where}): {result.reason}",
        "gate": result.to_dict(),
    }


def _learned_until(*models: Version) -> str | None:
    """The newest row any of `models` learned (their `reproml.learned` tags), ISO; None if unknown."""
    lasts = []
    for version in models:
        what = learned.parse((version.tags or {}).get(learned.TAG), f"version {version.version}")
        if what and what.get("last"):
            lasts.append(str(what["last"]))
    return max(lasts, key=lambda text: pd.Timestamp(text).value) if lasts else None


def rollback(root: Path, name: str, reason: str) -> DecisionRecord:
    """`previous` becomes the champion again; the demoted champion becomes `previous`, so a second
    rollback undoes the first."""
    with promotion_lock(root):
        settle_pending(root, name)
        champion = alias_version(name, CHAMPION)
        previous = alias_version(name, PREVIOUS)
        if previous is None or champion is None:
            raise RegistryError(f"model {name!r} has no {PREVIOUS!r} version to roll back to")
        record: DecisionRecord = {
            "action": "rollback",
            "reason": f"rollback by {getpass.getuser()}: {reason}",
            "champion": _describe(previous),
            "demoted": _describe(champion),
        }
        return _decide(root, name, record, lambda: _move_aliases(name, previous, champion))
