"""`reproml refit`: after the gate promoted a challenger, the same model learns the whole window.

The gate judged the challenger honestly: it was trained on the train split, stopped early on the
validation split and compared with the champion on the test split (after a retrain: the newest
labelled batch), which neither had seen. Deploying that model would leave the two newest months
unlearned. The refit fits the same hyperparameters, with the boosting round count the early
stopping chose (`reproml.train.refit_rounds`), on train + valid + test, and becomes the champion
through the registry's audit trail (action `refit`, naming the promoted version it refits and
what it learned). Its run copies the promoted run's lineage and importance, and records what it
learned (`reproml.learned`: splits with md5s, rows, time range, data hash).

Monitoring reads that record: the drift reference is the newest part of what the champion learned,
and the quality reference is the promoted (gated) model on the test split, the honest estimate the
gate saw (the refit learned those rows). Not a DVC stage, like `promote`: whether it runs depends
on the registry's decision, not only on files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from reproml import paths
from reproml.config import Params, flat_params
from reproml.errors import ReproError
from reproml.io import file_md5, read_json
from reproml.stages.common import classes_of, feature_spec, load

if TYPE_CHECKING:
    from reproml.fitting import HistoryRecord
    from reproml.learned import LearnedRecord, ParentRef
    from reproml.retrain import RefitOutcome
    from reproml.stores.mlflow.versions import Version

SPLITS = ("train", "valid", "test")
REFIT_OF = "reproml.refit_of"
# the promoted run's tags a refit keeps: same code, params, libraries and data versions
INHERITED = (
    "mlflow.source.git.commit",
    "reproml.git_commit",
    "reproml.git_dirty",
    "reproml.params_sha256",
    "reproml.uv_lock_sha256",
    "reproml.code_sha256",
    "reproml.seed",
    "reproml.data_source",
    "reproml.libraries",
    "reproml.classes",
    "reproml.tuned",
    "reproml.tune_study",
)


def _copy_artifact(run_id: str, artifact: str) -> None:
    """The promoted run's artifact, logged again on the active (refit) run under the same name."""
    import tempfile

    from reproml.stores.mlflow import runs

    with tempfile.TemporaryDirectory() as tmp:
        runs.log_artifact(runs.download_artifact(run_id, artifact, Path(tmp)))


def run_refit(
    root: Path = Path("."), version: int | None = None, flow_run: str | None = None
) -> RefitOutcome:
    """Refit champion `version` (default: the current champion, which must be this worktree's
    registered model, models/model.joblib) on train + valid + test and make the refit the champion;
    `flow_run`: the training flow run refitting, kept in the refit's record
    (`registry.recorded_decision`).
    """
    import joblib

    from reproml import decisions, learned, registry
    from reproml.fitting import refit_model, refit_rounds
    from reproml.stages.register import DATA_SOURCE_TAG, REGISTERED
    from reproml.stages.train import _requirements, tuned_params
    from reproml.stores.mlflow import connection, models, runs, versions

    committed = load(root)
    params, _ = tuned_params(root, committed)
    name = params.register_.model_name
    experiment_id = connection.setup(root, params.mlflow.experiment_name)
    promoted = (
        registry.alias_version(name, registry.CHAMPION)
        if version is None
        else versions.get_version(name, version)
    )
    if promoted is None or not promoted.run_id:
        raise ReproError(f"model {name!r} has no champion to refit; run `reproml promote` first")
    parent = runs.get_run(promoted.run_id)
    if parent.tags.get(REFIT_OF):
        raise ReproError(f"v{promoted.version} of {name!r} is already a refit; nothing to refit")
    model_md5 = file_md5(root / paths.MODEL)
    if parent.tags.get(runs.MODEL_MD5_TAG) != model_md5:
        raise ReproError(
            f"{paths.MODEL} (md5 {model_md5}) is not v{promoted.version}'s model: refit the worktree "
            f"whose `dvc repro` registered it (its {REGISTERED})"
        )
    schema = read_json(root / paths.SCHEMA)
    spec = feature_spec(params, schema)
    classes = classes_of(params, schema)
    history: HistoryRecord = read_json(root / paths.HISTORY)  # written by `train`
    rounds = refit_rounds(history.get("best_iteration"))
    files = {s: paths.split_file(s) for s in SPLITS}
    splits = {str(f): file_md5(root / f) for f in files.values()}
    for path, md5 in splits.items():
        recorded = parent.tags.get(f"reproml.data.{path}")
        if recorded != md5:
            raise ReproError(
                f"{path} (md5 {md5}) is not the version v{promoted.version} was trained and tested on "
                f"({recorded}); refit the worktree that trained it"
            )
    frame = pd.concat([pd.read_parquet(root / f) for f in files.values()], ignore_index=True)
    what = learned.describe(frame, splits, schema.get("time_column"), "refit")
    parent_of: ParentRef = {"version": int(promoted.version), "run_id": promoted.run_id}
    trained = refit_model(frame, spec, params, rounds, classes)
    served = trained.pipeline
    if params.data.task == "classification":  # the parent's cut, chosen on its validation split
        cut = decisions.threshold_of(joblib.load(root / paths.MODEL))
        served = decisions.with_threshold(
            served, cut, frame[spec.input_columns], frame[params.data.target].to_numpy()
        )
    commit = (parent.tags.get("reproml.git_commit") or "nogit")[:7]
    with runs.tracked_run(experiment_id, run_name=f"{params.train.model}-{commit}-refit") as run:
        run_id = run.info.run_id
        tags = {k: parent.tags[k] for k in INHERITED if k in parent.tags}
        tags |= {k: v for k, v in parent.tags.items() if k.startswith("reproml.data.")}
        if flow_run is not None:  # copied onto the version as it is created (registry.register)
            tags[registry.FLOW_RUN_TAG] = flow_run
        tags |= {
            "mlflow.source.name": "reproml refit",
            "reproml.stage": "refit",
            REFIT_OF: json.dumps(parent_of),
            learned.TAG: json.dumps(what),
            "mlflow.note.content": (
                f"Refit of v{promoted.version} (run {promoted.run_id}), which the gate promoted, with the "
                f"same hyperparameters and {rounds} boosting rounds, on {learned.summary(what)}. Its "
                "held-out metrics are its parent's (`parent_*`): the refit learned the test split."
            ),
        }
        resolved = flat_params(params)
        runs.log_batch(run_id, params=resolved, tags=tags)
        runs.log_dict(committed.model_dump(mode="json", by_alias=True), runs.PARAMS_ARTIFACT)
        models.log_dataset(run_id, frame, "refit", "+".join(splits), what["data_hash"][:32], "training")
        example = frame[spec.input_columns].head(5)
        code = Path(__file__).parents[1]
        libraries = json.loads(parent.tags.get("reproml.libraries") or "{}")
        model_uri = models.log_sklearn_model(
            served, frame[spec.input_columns], example, code, _requirements(libraries)
        )
        _copy_artifact(promoted.run_id, "importance.json")
        parent_metrics = {f"parent_{k}": v for k, v in parent.metrics.items() if k.startswith("test_")}
        runs.log_batch(
            run_id,
            metrics={
                **parent_metrics,
                "refit_rows": float(len(frame)),
                "refit_rounds": float(rounds or 0),
                "fit_seconds": round(trained.fit_seconds, 3),
            },
            tags={"reproml.model_uri": model_uri, "reproml.evaluated": "true"},
        )
    refit = registry.register(run_id, name, experiment_id, model_uri, alias=None)
    versions.set_version_tag(
        name, refit.version, DATA_SOURCE_TAG, promoted.tags.get(DATA_SOURCE_TAG, schema["source"])
    )
    fit_seconds = round(trained.fit_seconds, 3)
    return _make_champion(root, experiment_id, params, refit, promoted, rounds, what, fit_seconds, flow_run)


def _make_champion(
    root: Path,
    experiment_id: str,
    params: Params,
    refit: Version,
    promoted: Version,
    rounds: int | None,
    what: LearnedRecord,
    fit_seconds: float,
    flow_run: str | None,
) -> RefitOutcome:
    """The registered refit becomes the champion, through its audit record (action `refit`)."""
    from reproml import learned, registry

    name = params.register_.model_name
    reason = (
        f"refit of v{promoted.version} (promoted by the gate) with its hyperparameters and {rounds} "
        f"rounds on the whole window: {learned.summary(what)}"
    )
    decision = registry.promote(
        root,
        name,
        experiment_id,
        None,
        params.data.task,
        version=int(refit.version),
        reason=reason,
        action="refit",
        flow_run=flow_run,
    )
    return {
        "version": int(refit.version),
        "run_id": refit.run_id or "",
        "refit_of": {"version": int(promoted.version), "run_id": promoted.run_id},
        "learned": what,
        "rounds": rounds,
        "fit_seconds": fit_seconds,
        "decision": {
            "action": decision.get("action"),
            "reason": decision.get("reason"),
            "record": decision.get("record"),
        },
    }


def decide_registered_refit(root: Path, version: int, flow_run: str) -> RefitOutcome | None:
    """A refit that training flow run `flow_run` registered (its version tagged with the flow run as
    it was created) and that no decision names yet, its process lost in between: made the champion
    now, as `run_refit` would have gone on, instead of being refit again; None when `version` is
    not such a refit."""
    from reproml import learned, registry
    from reproml.stages.register import DATA_SOURCE_TAG
    from reproml.stores.mlflow import connection, runs, versions

    params = load(root)
    name = params.register_.model_name
    experiment_id = connection.setup(root, params.mlflow.experiment_name)
    refit = versions.get_version(name, version)
    tags = refit.tags or {}
    if tags.get(registry.FLOW_RUN_TAG) != flow_run or not tags.get(REFIT_OF) or tags.get("reproml.decision"):
        return None
    promoted = versions.get_version(name, json.loads(tags[REFIT_OF])["version"])
    what = learned.parse(tags.get(learned.TAG), f"version {refit.version}")
    if what is None or not refit.run_id:
        return None
    if not tags.get(DATA_SOURCE_TAG):  # lost before this too: as run_refit tags it
        source = promoted.tags.get(DATA_SOURCE_TAG) or read_json(root / paths.SCHEMA)["source"]
        versions.set_version_tag(name, refit.version, DATA_SOURCE_TAG, source)
    metrics = runs.get_run(refit.run_id).metrics
    rounds = int(metrics.get("refit_rounds", 0.0)) or None  # logged as 0 when there were none
    fit_seconds = float(metrics.get("fit_seconds", 0.0))
    return _make_champion(root, experiment_id, params, refit, promoted, rounds, what, fit_seconds, flow_run)
