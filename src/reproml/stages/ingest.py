"""`ingest`: the configured source, validated, as data/ingested.parquet plus its schema."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from reproml import paths
from reproml.io import write_json, write_parquet
from reproml.stages.common import load

if TYPE_CHECKING:
    from reproml.data.ingest import SchemaRecord


def run_ingest(root: Path = Path(".")) -> dict[str, int]:
    """The source as data/ingested.parquet and its schema; returns (and writes to metrics/) the row
    counts: read, kept, dropped for each reason, from labelled batches."""
    from reproml.data import labelled
    from reproml.data.ingest import check_slice_column, ingest
    from reproml.data.validate import class_labels

    params = load(root)
    result = ingest(params.data, params.prepare.exclude_columns, params.seed, root)
    check_slice_column(params.promote.slice_column, list(result.frame.columns), result.source)
    frame = result.frame
    target = params.data.target
    positive = None
    if params.data.task == "classification":
        classes = sorted(frame[target].unique().tolist())
        positive = classes[-1]
        frame[target] = (frame[target] == positive).astype("int8")
    elif params.data.task == "multiclass":
        frame[target] = class_labels(frame[target])
    # labelled production batches are stored as ingest wrote them (binary target already 0/1,
    # multiclass in its labels)
    appended = labelled.append(
        frame, labelled.read_batches(root / paths.LABELLED_DATA), params.data.time_column, target
    )
    frame = appended.frame
    schema: SchemaRecord = {
        "source": result.source,
        "target": target,
        "task": params.data.task,
        "positive_class": positive,
        "time_column": params.data.time_column,
        "numeric": result.numeric_columns,
        "categorical": result.categorical_columns,
    }
    if params.data.task == "classification" and params.data.path is not None:
        # your file's two labels, negative then positive: a batch file handed to `reproml monitor`
        # arrives with them and is coded 0/1 as here (the bundled schema stays as it was)
        schema["classes"] = classes
    if params.data.task == "multiclass":
        # the class order of every model's probability columns: the sorted labels (binary and
        # regression schemas stay as they were, so their data hashes and study names do not move)
        schema["classes"] = sorted(frame[target].unique().tolist())
    summary = {
        "rows": len(frame),
        "rows_read": result.rows_read,
        "rows_without_target": result.rows_without_target,
        **result.notes,
        "labelled_batches": len(appended.files),
        "rows_from_labelled_batches": appended.rows_added,
        "rows_replaced_by_labelled_batches": appended.rows_replaced,
    }
    write_parquet(root / paths.INGESTED, frame)
    write_json(root / paths.SCHEMA, schema)
    write_json(root / paths.METRICS / "ingest.json", summary)
    return summary
