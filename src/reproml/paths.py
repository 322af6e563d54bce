"""Where each stage reads and writes, relative to the project root (mirrors dvc.yaml)."""

from __future__ import annotations

import os
from pathlib import Path

INGESTED = Path("data/ingested.parquet")
SCHEMA = Path("data/schema.json")
PREPARED = Path("data/prepared")
MODEL = Path("models/model.joblib")
HISTORY = Path("models/history.json")
BEST_PARAMS = Path("models/best_params.json")  # written by `tune`, read by `train`
METRICS = Path("metrics")
PLOTS = Path("plots")
PREDICTIONS = Path("predictions/test.parquet")
# Labelled production batches the training flow added: a DVC-tracked folder `ingest` appends.
LABELLED_DATA = Path("data/raw/labelled")
# Set by the training flow when it runs the pipeline in a git worktree of the project, so MLflow,
# the registry's audit trail and the Optuna studies stay the workspace's, not the worktree's.
WORKSPACE_ENV = "REPROML_WORKSPACE"


def split_file(name: str) -> Path:
    return PREPARED / f"{name}.parquet"


def workspace(root: Path) -> Path:
    """Where the project's local state lives (mlflow.db, mlartifacts/, registry/, optuna/):
    `REPROML_WORKSPACE` when set, else the project root itself."""
    value = os.environ.get(WORKSPACE_ENV)
    return Path(value) if value else root
