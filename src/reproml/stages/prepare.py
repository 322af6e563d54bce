"""`prepare`: train/valid/test/production splits under data/prepared/."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import pandas as pd

from reproml import paths
from reproml.io import write_json, write_parquet
from reproml.stages.common import load


class SplitSummary(TypedDict, total=False):
    """metrics/prepare.json, per split: its rows, and the label balance for classification."""

    rows: int
    positive_rate: float  # binary
    class_shares: dict[str, float]  # multiclass


def run_prepare(root: Path = Path(".")) -> dict[str, SplitSummary]:
    from reproml.data.split import SPLITS, check_classes_in_train, split

    params = load(root)
    frame = pd.read_parquet(root / paths.INGESTED)
    parts = split(frame, params.data.time_column, params.prepare, params.seed)
    target = params.data.target
    if params.data.task == "multiclass":
        check_classes_in_train(parts, target)
    summary: dict[str, SplitSummary] = {}
    for name in SPLITS:
        part = parts[name]
        summary[name] = {"rows": len(part)}
        if params.data.task == "classification" and len(part):
            summary[name]["positive_rate"] = round(float(part[target].mean()), 6)
        if params.data.task == "multiclass" and len(part):
            shares = part[target].value_counts(normalize=True).sort_index()
            summary[name]["class_shares"] = {str(k): round(float(v), 6) for k, v in shares.items()}
    for name in SPLITS:
        write_parquet(root / paths.split_file(name), parts[name])
    write_json(root / paths.METRICS / "prepare.json", summary)
    return summary
