"""Labelled production batches joining the training data: the data side of a retrain.

The training flow copies a batch monitoring accepted (`monitoring/labelled/*.parquet`) into
`data/raw/labelled/` and makes that folder a new DVC data version; `ingest` then appends its
rows. A batch is authoritative for its own time span: source rows inside a batch's first..last
time are replaced by the batch's rows. Data that arrives later than the source (a user's CSV of
history plus the months since) simply appends; the bundled 2013 replay, whose package already
holds the later months, gets the same rows back instead of twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from reproml.errors import DataValidationError


@dataclass(frozen=True)
class Appended:
    frame: pd.DataFrame
    files: list[str]
    rows_added: int
    rows_replaced: int


def read_batches(folder: Path) -> list[tuple[str, pd.DataFrame]]:
    """Every Parquet file under `folder` in name order (names start with the batch's end time)."""
    if not folder.is_dir():
        return []
    batches = []
    for path in sorted(folder.glob("*.parquet")):
        try:
            batches.append((str(path), pd.read_parquet(path)))
        except (OSError, ValueError) as exc:
            raise DataValidationError(f"{path}: cannot read labelled batch as parquet: {exc}") from None
    return batches


def _conform(name: str, batch: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in like.columns if c not in batch.columns]
    if missing:
        raise DataValidationError(
            f"{name}: labelled batch lacks columns {missing} that the ingested data has"
        )
    batch = batch[list(like.columns)]
    try:
        return batch.astype(like.dtypes.to_dict())
    except (TypeError, ValueError) as exc:
        raise DataValidationError(
            f"{name}: labelled batch columns do not match the data's types: {exc}"
        ) from None


def append(
    frame: pd.DataFrame, batches: list[tuple[str, pd.DataFrame]], time_column: str | None, target: str
) -> Appended:
    """`frame` plus each batch's labelled rows, each batch replacing the source rows of its span."""
    if not batches:
        return Appended(frame, [], 0, 0)
    kept = frame
    parts = []
    for name, batch in batches:
        batch = _conform(name, batch, frame)
        batch = batch[batch[target].notna()]
        if batch.empty:
            continue
        if time_column is not None:
            first, last = batch[time_column].min(), batch[time_column].max()
            kept = kept[(kept[time_column] < first) | (kept[time_column] > last)]
        parts.append(batch)
    if not parts:
        return Appended(frame, [n for n, _ in batches], 0, 0)
    added = pd.concat(parts, ignore_index=True)
    combined = pd.concat([kept, added], ignore_index=True)
    if time_column is not None:
        combined = combined.sort_values(time_column, kind="stable")
    return Appended(
        combined.reset_index(drop=True),
        [n for n, _ in batches],
        rows_added=len(added),
        rows_replaced=len(frame) - len(kept),
    )
