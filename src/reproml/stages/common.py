"""Helpers every stage module shares: params loading, feature spec, model requirements."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from reproml.config import Params, load_params

if TYPE_CHECKING:  # features imports sklearn; ingest and prepare must not pay for it
    from reproml.features import FeatureSpec


def load(root: Path) -> Params:
    """All of params.yaml, validated, before a stage does any work."""
    return load_params(root / "params.yaml")


def feature_spec(params: Params, schema: dict[str, Any]) -> FeatureSpec:
    from reproml.features import FeatureSpec

    excluded = set(params.prepare.exclude_columns)
    return FeatureSpec(
        numeric=[c for c in schema["numeric"] if c not in excluded],
        categorical=[c for c in schema["categorical"] if c not in excluded],
        time_column=schema["time_column"],
        date_parts=list(params.features.date_parts),
    )
