"""`register`: the evaluated run's model becomes a new version with alias `challenger`.

Also home of the promotion step that runs after `dvc repro` (`reproml promote`): it is not a DVC
stage because its outcome depends on the registry's state, not only on files and params.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reproml import paths
from reproml.errors import ReproError
from reproml.io import file_md5, read_json, write_json
from reproml.stages.common import classes_of, load

REGISTERED = Path("models/registered.json")


def _context(root: Path) -> tuple[Any, Any, str]:
    from mlflow.tracking import MlflowClient

    from reproml import tracking

    params = load(root)
    experiment_id = tracking.setup(root, params.mlflow.experiment_name)
    return params, MlflowClient(), experiment_id


def run_register(root: Path = Path(".")) -> dict[str, Any]:
    from reproml import registry, tracking

    params, client, experiment_id = _context(root)
    model_md5 = file_md5(root / paths.MODEL)
    run_id = tracking.find_run_for_model(experiment_id, model_md5)
    if run_id is None:
        raise ReproError(f"no MLflow run logged {paths.MODEL} (md5 {model_md5}); run `dvc repro` first")
    model_uri = client.get_run(run_id).data.tags["reproml.model_uri"]
    version = registry.register(client, run_id, params.register_.model_name, experiment_id, model_uri)
    summary = {
        "model_name": version.name,
        "version": int(version.version),
        "alias": registry.CHALLENGER,
        "run_id": run_id,
        "model_uri": model_uri,
    }
    write_json(root / REGISTERED, summary)
    return summary


def run_promote(
    root: Path = Path("."), version: int | None = None, reason: str | None = None
) -> dict[str, Any]:
    from reproml import gate, registry

    params, client, experiment_id = _context(root)
    task, column = params.data.task, params.promote.slice_column
    labels = classes_of(params, read_json(root / paths.SCHEMA))

    def decide(
        y: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None, frame: pd.DataFrame
    ) -> Any:
        if column is not None and column not in frame.columns:
            raise ReproError(f"promote.slice_column {column!r} is not a column of the evaluation data")
        slices = None if column is None else frame[column].astype(str).to_numpy()
        return gate.decide(
            y, challenger, champion, params.promote, task, slices=slices, seed=params.seed, labels=labels
        )

    return registry.promote(
        root, client, params.register_.model_name, experiment_id, decide, task, version=version, reason=reason
    )


def run_rollback(root: Path = Path("."), reason: str = "") -> dict[str, Any]:
    from reproml import registry

    params, client, _ = _context(root)
    return registry.rollback(root, client, params.register_.model_name, reason)
