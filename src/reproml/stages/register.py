"""`register`: the evaluated run's model becomes a new version with alias `challenger`.

Also home of the promotion step that runs after `dvc repro` (`reproml promote`): it is not a DVC
stage because its outcome depends on the registry's state, not only on files and params.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from reproml import paths
from reproml.config import DataSource, Params, data_source, data_source_of_run
from reproml.errors import ConfigError, ReproError
from reproml.io import file_md5, read_json, write_json
from reproml.stages.common import classes_of, load

if TYPE_CHECKING:
    from reproml.registry import DecisionRecord, Registered
    from reproml.stores.mlflow.versions import Version

REGISTERED = Path("models/registered.json")
DATA_SOURCE_TAG = "reproml.data_source"


def _context(root: Path) -> tuple[Params, str]:
    from reproml.stores.mlflow import connection

    params = load(root)
    return params, connection.setup(root, params.mlflow.experiment_name)


def version_source(version: Version) -> DataSource | None:
    """The data source a model version's run was trained on (None: a run that logged none)."""
    from reproml.stores.mlflow import runs

    if not version.run_id:
        return None
    return data_source_of_run(runs.get_run(version.run_id).params)


def own_model_hint(name: str, expected: DataSource) -> str:
    """What to set so that the data in use gets a registered model of its own."""
    own = expected.model_name
    if own != name:
        return f"set register.model_name: null (it derives {own!r} from data.path and data.target)"
    return f"set register.model_name to a name of its own (e.g. {own}-{expected.task})"


def check_same_source(name: str, expected: DataSource, aliases: tuple[str, ...], doing: str) -> None:
    """Refuse, naming both data sources and what to set, when a version `aliases` name of model
    `name` was trained on another data source than `expected` (one model, one data source: its
    versions are compared on the same rows, monitored against the same history)."""
    from reproml import registry

    for alias in aliases:
        version = registry.alias_version(name, alias)
        if version is None:
            continue
        found = version_source(version)
        if found is None or found == expected:
            continue
        fix = own_model_hint(name, expected)
        raise ReproError(
            f"{doing}: model {name!r} (register.model_name) has {alias} v{version.version}, trained on "
            f"{found.describe()}, but the data in use is {expected.describe()}. One registered model "
            f"holds one data source, so nothing of one is scored against the other: {fix}, then run "
            "`dvc repro` and `reproml promote`"
        )


def check_slice_column(root: Path, params: Params) -> None:
    """`promote.slice_column` is a column of the evaluation rows, checked before any model is
    scored (the default, `origin`, is the bundled flights' origin airport)."""
    import pyarrow.parquet as pq

    column = params.promote.slice_column
    test = paths.split_file("test")
    if column is None:
        return
    if not (root / test).is_file():
        raise ReproError(f"{test} not found: run `dvc repro` before `reproml promote`")
    columns = pq.read_schema(root / test).names
    if column not in columns:
        source = data_source(params.data).describe()
        raise ConfigError(
            f"promote.slice_column {column!r} is not a column of {test} ({source}): "
            f"set promote.slice_column: null (no slices) or one of its columns, {columns}"
        )


def run_register(root: Path = Path(".")) -> Registered:
    from reproml import registry
    from reproml.stores.mlflow import runs, versions

    params, experiment_id = _context(root)
    model_md5 = file_md5(root / paths.MODEL)
    run_id = runs.find_run_for_model(experiment_id, model_md5)
    if run_id is None:
        raise ReproError(f"no MLflow run logged {paths.MODEL} (md5 {model_md5}); run `dvc repro` first")
    run = runs.get_run(run_id)
    model_uri = run.tags["reproml.model_uri"]
    name = params.register_.model_name
    source = data_source_of_run(run.params) or data_source(params.data)
    # the champion decides: a challenger of other data (left by an older version) is replaced here
    check_same_source(name, source, (registry.CHAMPION,), "register")
    version = registry.register(run_id, name, experiment_id, model_uri)
    versions.set_version_tag(name, version.version, DATA_SOURCE_TAG, source.describe())
    summary: Registered = {
        "model_name": version.name,
        "version": int(version.version),
        "alias": registry.CHALLENGER,
        "run_id": run_id,
        "model_uri": model_uri,
    }
    write_json(root / REGISTERED, summary)
    return summary


def run_promote(
    root: Path = Path("."),
    version: int | None = None,
    reason: str | None = None,
    evidence: str | None = None,
    flow_run: str | None = None,
) -> DecisionRecord:
    """The gate (or a forced promotion); `evidence` (test or production) overrides `promote.evidence`;
    `flow_run`: the training flow run deciding, kept in the record (`registry.recorded_decision`)."""
    from reproml import gate, registry

    params, experiment_id = _context(root)
    evidence = evidence or params.promote.evidence
    if evidence not in ("test", "production"):
        raise ConfigError(
            f"--evidence {evidence!r}: one of test (the test split) or production (shadow batches)"
        )
    task, column = params.data.task, params.promote.slice_column
    name = params.register_.model_name
    # before any model is scored: the rows, the slice column and both models belong to the data in use
    check_slice_column(root, params)
    labels = classes_of(params, read_json(root / paths.SCHEMA))
    source = data_source(params.data)
    check_same_source(name, source, (registry.CHAMPION,), "promote")
    if version is None:
        check_same_source(name, source, (registry.CHALLENGER,), "promote")
    else:
        from reproml.stores.mlflow import versions
        from reproml.stores.mlflow.connection import MlflowError

        try:
            forced = version_source(versions.get_version(name, version))
        except MlflowError:
            forced = None  # no such version: registry.promote says so
        if forced is not None and forced != source:
            raise ReproError(
                f"promote --version {version}: v{version} of {name!r} was trained on {forced.describe()}, "
                f"but the data in use is {source.describe()}; run `dvc repro` for it first"
            )

    def decide(
        y: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None, frame: pd.DataFrame
    ) -> Any:
        if column is not None and column not in frame.columns:
            raise ReproError(f"promote.slice_column {column!r} is not a column of the evaluation data")
        slices = None if column is None else frame[column].astype(str).to_numpy()
        return gate.decide(
            y, challenger, champion, params.promote, task, slices=slices, seed=params.seed, labels=labels
        )

    production = None
    if evidence == "production":
        production = registry.ProductionRules(
            target=params.data.target,
            min_rows=params.monitor.min_rows,
            sample_rows=params.monitor.sample_rows,
            seed=params.seed,
            classes=labels,
        )
    return registry.promote(
        root,
        name,
        experiment_id,
        decide,
        task,
        version=version,
        reason=reason,
        production=production,
        flow_run=flow_run,
    )


def run_rollback(root: Path = Path("."), reason: str = "") -> DecisionRecord:
    from reproml import registry

    params, _ = _context(root)
    return registry.rollback(root, params.register_.model_name, reason)
