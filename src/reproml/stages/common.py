"""Helpers every stage module shares: params loading, feature spec, model requirements."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from reproml.config import Params, load_params

if TYPE_CHECKING:  # features imports sklearn; ingest and prepare must not pay for it
    from reproml.data.ingest import SchemaRecord
    from reproml.features import FeatureSpec


def load(root: Path) -> Params:
    """All of params.yaml, validated, before a stage does any work."""
    return load_params(root / "params.yaml")


def feature_spec(params: Params, schema: SchemaRecord) -> FeatureSpec:
    from reproml.features import FeatureSpec

    excluded = set(params.prepare.exclude_columns)
    return FeatureSpec(
        numeric=[c for c in schema["numeric"] if c not in excluded],
        categorical=[c for c in schema["categorical"] if c not in excluded],
        time_column=schema["time_column"],
        date_parts=list(params.features.date_parts),
    )


def classes_of(params: Params, schema: SchemaRecord) -> list[Any] | None:
    """Multiclass: the class order ingest recorded (the models' probability columns); else None."""
    if params.data.task != "multiclass":
        return None
    classes = schema.get("classes")
    if not classes:
        from reproml import paths
        from reproml.errors import ReproError

        raise ReproError(
            f"{paths.SCHEMA} records no classes for multiclass target {params.data.target!r} "
            "(written for another data.task?); run `dvc repro` so ingest writes it again"
        )
    return list(classes)
