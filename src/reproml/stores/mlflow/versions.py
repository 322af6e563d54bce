"""The MLflow model registry: registered models, their versions, aliases and tags.

Versions are read as `Version` records, not MLflow's entities. The rules around them (who may
register, how aliases move, the audit trail) are `reproml.registry`'s; this module only reaches
the registry.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class Version:
    """A registered model version: `version` is MLflow's string ("3"); `number` the same as int."""

    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def number(self) -> int:
        return int(self.version)

    @classmethod
    def of(cls, version: Any) -> Version:
        """From MLflow's `ModelVersion` entity."""
        return cls(
            name=str(version.name),
            version=str(version.version),
            run_id=version.run_id or None,
            source=str(version.source),
            tags=dict(version.tags or {}),
        )


def get_version(name: str, version: int | str) -> Version:
    """Version `version` of model `name` (MlflowError when there is none)."""
    return Version.of(MlflowClient().get_model_version(name, str(version)))


def alias_version(name: str, alias: str) -> Version | None:
    """The version `alias` names, or None where the alias (or the model) does not exist."""
    try:
        return Version.of(MlflowClient().get_model_version_by_alias(name, alias))
    except MlflowException:
        return None


def create_version(name: str, model_uri: str, run_id: str, tags: dict[str, str]) -> Version:
    """A new version of model `name` (registered first if it is new) from the run's logged model."""
    client = MlflowClient()
    with contextlib.suppress(MlflowException):
        client.create_registered_model(name)
    # An MLflow server (not the SQLite store) accepts a logged model's `models:/m-...` only with its id.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    created = client.create_model_version(name, model_uri, run_id=run_id, tags=tags, model_id=model_id)
    return Version.of(created)


def all_versions(name: str) -> list[Version]:
    """Every version of model `name` ([] when the model does not exist)."""
    try:
        found = MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    return [Version.of(v) for v in found]


def set_alias(name: str, alias: str, version: int | str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def delete_alias(name: str, alias: str) -> None:
    MlflowClient().delete_registered_model_alias(name, alias)


def set_version_tag(name: str, version: int | str, key: str, value: str) -> None:
    MlflowClient().set_model_version_tag(name, str(version), key, value)


def download_uri(name: str, version: int | str) -> str:
    """Where MLflow itself would download version `version` of model `name` from."""
    return str(MlflowClient().get_model_version_download_uri(name, str(version)))
