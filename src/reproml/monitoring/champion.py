"""The current champion and everything monitoring compares it against, read from its own run.

The reference follows the champion: its training and test splits are the exact data versions
recorded on its MLflow run (`reproml.data.<path>` tags, the DVC md5 of each file), its feature
importance is the permutation importance its evaluate stage logged, and its target, task and
time column come from the `params.json` it was trained with, and a multiclass champion's class
order (its probability columns) from its run's `reproml.classes` tag. When the champion changes,
so does every one of these, without anyone editing a path.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from reproml import learned, paths
from reproml.errors import ReproError
from reproml.io import file_md5
from reproml.learned import ParentRef
from reproml.monitoring.records import ChampionRef
from reproml.stores.dvc import CorruptCacheError, DvcStore, verified_objects

TRAIN, TEST = str(paths.split_file("train")), str(paths.split_file("test"))
IMPORTANCE_ARTIFACT = "importance.json"  # logged by stages/evaluate.py as an MLflow table


class ChampionError(ReproError):
    """No champion, or its run lacks what monitoring needs (data versions, params, importance)."""


@dataclass(frozen=True)
class Champion:
    name: str
    version: int
    run_id: str
    model: Any  # the sklearn Pipeline, taking raw columns
    input_columns: list[str]
    target: str
    task: str
    time_column: str | None
    max_categories: int
    importance: dict[str, float]  # raw input column -> permutation importance (can be <= 0)
    data_md5: dict[str, str]  # split path -> md5 the champion was trained and tested on
    classes: list[Any] | None = None  # multiclass: the labels of its probability columns, in order
    # what it learned (`reproml.learned`): split path -> md5; None: its train split (older runs)
    learned: learned.LearnedRecord | None = None
    # the model whose test-split scores are the quality reference: itself, or for a refit (which
    # learned the test split) the promoted model it refits, the honest estimate the gate saw
    test_model: Any = None
    refit_of: ParentRef | None = None

    @property
    def learned_splits(self) -> dict[str, str]:
        """Split path -> md5 of every data version the model learned."""
        if self.learned:
            return dict(self.learned["splits"])
        return {TRAIN: self.data_md5[TRAIN]}

    @property
    def reference_model(self) -> Any:
        return self.model if self.test_model is None else self.test_model

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@champion"

    @property
    def threshold(self) -> float | None:
        """Binary: the cut its `predict` applies (chosen on its validation split, `evaluate.threshold`),
        so monitoring's precision, recall and F1 are the labels it serves; None for other tasks."""
        from reproml.decisions import threshold_of

        return threshold_of(self.model) if self.task == "classification" else None

    def describe(self) -> ChampionRef:
        out: ChampionRef = {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "uri": self.uri,
        }
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.learned:
            out["learned"] = self.learned
        if self.refit_of:
            out["refit_of"] = self.refit_of
        if self.classes:
            out["classes"] = self.classes
        return out


def _artifact_json(run_id: str, artifact: str) -> Any:
    from reproml.stores.mlflow import runs

    try:
        with tempfile.TemporaryDirectory() as scratch:
            local = runs.download_artifact(run_id, artifact, Path(scratch))
            return json.loads(local.read_text())
    except Exception as exc:  # MlflowException, OSError: the message says which
        raise ChampionError(f"run {run_id} has no readable artifact {artifact!r}: {exc}") from None


def importance_of(table: Any, run_id: str) -> dict[str, float]:
    """`{"columns": [...], "data": [[feature, importance, std], ...]}` (mlflow.log_table's form)."""
    try:
        columns = list(table["columns"])
        feature, value = columns.index("feature"), columns.index("importance")
        return {str(row[feature]): float(row[value]) for row in table["data"]}
    except (KeyError, ValueError, TypeError, IndexError):
        raise ChampionError(
            f"run {run_id}: {IMPORTANCE_ARTIFACT} is not a feature/importance table"
        ) from None


def load_champion(root: Path, name: str, experiment_id: str) -> Champion:
    """The version aliased `champion`, checked to come from this project, with its run's lineage.

    Its model is deserialised only from files whose digest is the one its run recorded.
    """
    from reproml import provenance, registry
    from reproml.stores.mlflow import runs, versions

    version = registry.alias_version(name, registry.CHAMPION)
    if version is None:
        raise ChampionError(
            f"model {name!r} has no {registry.CHAMPION!r} version: "
            "run `dvc repro` and `reproml promote` first"
        )
    provenance.check_source(version, experiment_id)
    run_id = str(version.run_id)
    tags = runs.get_run(run_id).tags
    missing = [p for p in (TRAIN, TEST) if f"reproml.data.{p}" not in tags]
    if missing:
        raise ChampionError(
            f"champion v{version.version} (run {run_id}) records no data version for {missing}; "
            "it cannot be compared against the data it was trained on"
        )
    params = _artifact_json(run_id, "params.json")
    importance = importance_of(_artifact_json(run_id, IMPORTANCE_ARTIFACT), run_id)
    model = provenance.load_model_version(version, experiment_id)
    data = params.get("data", {})
    task = str(data.get("task"))
    label = f"champion v{version.version} (run {run_id})"
    classes = classes_of(tags, model, label) if task == "multiclass" else None
    try:
        what = learned.parse(tags.get(learned.TAG), label)
    except ReproError as exc:
        raise ChampionError(str(exc)) from None
    data_md5 = {p: tags[f"reproml.data.{p}"] for p in (TRAIN, TEST)}
    refit_of, test_model = None, None
    if tags.get("reproml.refit_of"):
        refit_of = cast(ParentRef, json.loads(tags["reproml.refit_of"]))  # written by stages.refit
        parent = versions.get_version(name, refit_of["version"])
        test_model = provenance.load_model_version(parent, experiment_id)
    return Champion(
        name=name,
        version=int(version.version),
        run_id=run_id,
        model=model,
        input_columns=[str(c) for c in model.feature_names_in_],
        target=str(data.get("target")),
        task=task,
        time_column=data.get("time_column"),
        max_categories=int(params.get("features", {}).get("max_categories", 64)),
        importance=importance,
        data_md5=data_md5,
        classes=classes,
        learned=what,
        test_model=test_model,
        refit_of=refit_of,
    )


def load_learned(root: Path, best: Champion, label: str) -> pd.DataFrame:
    """Every row the champion learned (its train split; a refit's train, valid and test splits),
    each file the exact version its run recorded, in time order."""
    frames = [load_split(root, path, md5, label) for path, md5 in sorted(best.learned_splits.items())]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if best.time_column and best.time_column in frame.columns:
        frame = frame.sort_values(best.time_column, kind="stable").reset_index(drop=True)
    return frame


def classes_of(tags: dict[str, str], model: Any, label: str) -> list[Any]:
    """The class order the run recorded (`reproml.classes`), which must be the model's own
    `classes_`: the probability columns are read in this order, so a mismatch would score every
    batch against the wrong classes."""
    recorded = tags.get("reproml.classes")
    own = [v.item() if isinstance(v, np.generic) else v for v in getattr(model, "classes_", [])]
    if recorded is None:
        if not own:
            raise ChampionError(f"{label} is multiclass but records no class order (tag reproml.classes)")
        return own
    classes = list(json.loads(recorded))
    if own and [str(c) for c in own] != [str(c) for c in classes]:
        raise ChampionError(
            f"{label}: tag reproml.classes {classes} disagrees with the model's classes_ {own}"
        )
    return classes


def load_split(root: Path, path: str, md5: str, champion: str) -> pd.DataFrame:
    """The exact file version `md5` of `path`, its bytes hashed before they are read: from the DVC
    cache, else the working file if it is still that version, else fetched from the project's DVC
    remote. Never silently another version, nor a corrupt copy: a reference that is not the
    champion's own would make every drift number wrong. A cache object whose bytes do not match
    its md5 is refused (CorruptCacheError names it), even when the working file would do: the
    corruption would otherwise surface later, in `dvc checkout` or a reproduction."""
    try:  # the cache may live elsewhere (`dvc config cache.dir`), the version on a remote: ask DVC
        store: DvcStore | None = DvcStore.open(root)
    except ReproError:
        store = None  # not a DVC project: only the working file can be that version
    try:
        return pd.read_parquet(_version_file(store, root, path, md5, champion))
    finally:
        if store is not None:
            store.close()


def _version_file(store: DvcStore | None, root: Path, path: str, md5: str, champion: str) -> Path:
    """Where version `md5` of `path` lies, verified: the cache, the working file, the remote."""
    cached = store.verified_object(md5, path) if store is not None else None
    if cached is not None:
        return cached
    working = root / path
    working_md5 = file_md5(working) if working.is_file() else None
    if working_md5 == md5:
        return working
    now = f"md5 {working_md5}" if working_md5 else "missing"
    if store is None:
        raise ChampionError(
            f"{champion} was trained on {path} with md5 {md5}, which is neither in the DVC cache nor the "
            f"working file ({now}); restore it with `dvc pull` (or `dvc checkout` at the champion's commit)"
        )
    try:
        return verified_objects(store, {path: md5})[path].path
    except CorruptCacheError:
        raise
    except ReproError as exc:
        raise ChampionError(
            f"{champion} was trained on {path} with md5 {md5}; the working file is {now}, and {exc}"
        ) from None
