"""Where each stage reads and writes, relative to the project root (mirrors dvc.yaml)."""

from __future__ import annotations

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


def split_file(name: str) -> Path:
    return PREPARED / f"{name}.parquet"
