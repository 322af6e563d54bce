"""Model provenance: a model is deserialised only once it is shown to be one this project logged.

A model's source must resolve (`..`, symlinks, MLflow 3's `models:/m-<id>`) to a place under the
experiment's artifact root: a local path (`file:`), or, when the tracking store is a server that
serves artifacts (`mlflow server --serve-artifacts`, team mode), an `mlflow-artifacts:` location on
that same server; other schemes are refused. Its files are then copied to a local folder and
hashed (`reproml.stores.mlflow.models.model_digest`), and the digest must be the one its run
recorded when it logged them (`models.MODEL_SHA256_TAG`). Only that verified copy is
deserialised, so the bytes checked are the bytes loaded. A model file is code (pickle) or names the
code to trust (skops' trusted types, the MLmodel file): anything that could write the artifact
store could otherwise run code in every process that loads a model.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from reproml.errors import ReproError
from reproml.stores.mlflow import connection, models, runs, versions
from reproml.stores.mlflow.connection import MlflowError
from reproml.stores.mlflow.versions import Version


class ProvenanceError(ReproError):
    """A model that cannot be shown to be this project's: foreign source, other scheme, changed files."""


@dataclass(frozen=True)
class Location:
    """A checked artifact location: a resolved local path, or a path on the tracking server.

    `server` is None for the local file system, else the `mlflow-artifacts:` authority as written
    ("" is the tracking server itself, kept apart from a server named explicitly): one location
    lies within another only on the same server.
    """

    server: str | None
    path: PurePath

    def within(self, root: Location) -> bool:
        return self.server == root.server and (self.path == root.path or root.path in self.path.parents)

    @property
    def uri(self) -> str:
        """Where the files are downloaded from."""
        if self.server is None:
            return Path(self.path).as_uri()
        return (
            f"mlflow-artifacts://{self.server}{self.path}" if self.server else f"mlflow-artifacts:{self.path}"
        )

    def __str__(self) -> str:
        return str(self.path) if self.server is None else self.uri


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are, resolved and checked to lie under the experiment's artifact root."""

    uri: str  # as given (a version's source, a run's model URI)
    location: Location  # resolved: no `..`, no symlink
    run_id: str | None  # the run that logged it, when the URI says (a logged model, runs:/)

    @property
    def path(self) -> PurePath:
        return self.location.path


def _location(uri: str, what: str, tracking_uri: str) -> Location:
    """The resolved location of a `file:` URI, an absolute plain path or, only when the tracking
    store is a server (http/https), an `mlflow-artifacts:` URI.

    The one place that decides which artifact locations can be checked: every other scheme (http,
    s3, dbfs, ...) is refused. A served location is not mapped to the server's disk (only the
    server knows it); it is normalised, with any `..`, query or fragment refused, so that the
    containment check and the download see the same path. The digest check after the download
    (`verified_files`) is what shows the bytes are the ones the run logged.
    """
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != "mlflow-artifacts":
        return Location(None, _local_path(uri, what))
    store = urllib.parse.urlsplit(tracking_uri).scheme
    if store not in ("http", "https"):
        raise ProvenanceError(
            f"{what} {uri!r} uses the 'mlflow-artifacts' scheme, which only a tracking server serves, "
            f"but the tracking store is {store or 'a local path'}"
        )
    raw = urllib.parse.unquote(parsed.path)
    if parsed.query or parsed.fragment or not raw.startswith("/") or ".." in raw.split("/"):
        raise ProvenanceError(f"{what} {uri!r} is not a plain mlflow-artifacts location")
    return Location(parsed.netloc, PurePosixPath(posixpath.normpath(raw)))


def _local_path(uri: str, what: str) -> Path:
    """The resolved local path of a `file:` URI or an absolute plain path (other schemes refused)."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or parsed.query or parsed.fragment:
            raise ProvenanceError(f"{what} {uri!r} is not a plain local file URI")
        location = urllib.request.url2pathname(parsed.path)
    elif parsed.scheme == "":
        location = uri
    else:
        raise ProvenanceError(
            f"{what} {uri!r} uses the {parsed.scheme!r} scheme: reproml can only check local artifacts "
            "(a file:// URI or a path) or those a tracking server serves (mlflow-artifacts:)"
        )
    if not os.path.isabs(location):
        raise ProvenanceError(f"{what} {uri!r} is a relative path")
    return Path(os.path.realpath(location))


def artifact_root(experiment_id: str) -> Location:
    """This project's experiment artifact root, resolved."""
    location = runs.experiment_artifact_location(experiment_id)
    return _location(location, f"the artifact root of experiment {experiment_id}", connection.current_uri())


def resolve_source(uri: str, experiment_id: str) -> ModelSource:
    """Resolve a model URI to its files and refuse it unless they lie under the artifact root.

    `models:/m-<id>` (MLflow 3's logged models) resolve through the logged model's artifact
    location and must belong to this experiment; `runs:/<id>/<path>` through the run's artifact
    URI; registry references (`models:/<name>/<version>`, `@alias`) are refused, since what they
    point at can change.
    """
    run_id: str | None = None
    scheme = urllib.parse.urlsplit(uri).scheme
    try:
        if scheme == "models":
            model_id = uri.removeprefix("models:/")
            if not model_id.startswith("m-") or "/" in model_id:
                raise ProvenanceError(
                    f"model source {uri!r} is a registry reference, not a logged model (models:/m-<id>)"
                )
            logged = models.logged_model(model_id)
            if str(logged.experiment_id) != experiment_id:
                raise ProvenanceError(
                    f"model source {uri!r} was logged in experiment {logged.experiment_id}, not this "
                    f"project's experiment {experiment_id}"
                )
            location, run_id = logged.artifact_location, logged.source_run_id
        elif scheme == "runs":
            run_id, _, inside = uri.removeprefix("runs:/").partition("/")
            run = runs.get_run(run_id)
            if run.experiment_id != experiment_id:
                raise ProvenanceError(
                    f"model source {uri!r} belongs to experiment {run.experiment_id}, not this "
                    f"project's experiment {experiment_id}"
                )
            location = f"{run.artifact_uri.rstrip('/')}/{inside}"
        else:
            location = uri
    except MlflowError as exc:
        raise ProvenanceError(f"model source {uri!r} cannot be resolved: {exc.message}") from None
    root = artifact_root(experiment_id)
    what = "model source" if location == uri else f"model source {uri!r} at"
    resolved = _location(location, what, connection.current_uri())
    if not resolved.within(root):
        raise ProvenanceError(
            f"model source {uri!r} resolves to {resolved}, outside this project's artifact root {root}"
        )
    return ModelSource(uri=uri, location=resolved, run_id=run_id)


def check_source(version: Version, experiment_id: str) -> ModelSource:
    """Refuse a version whose artifacts lie outside this project's experiment artifact root.

    Both the version's source and the location MLflow itself would download it from are checked,
    and must be the same place, so whatever loads `models:/<name>/<version>` reads the checked files.
    """
    label = f"model {version.name} version {version.version}"
    try:
        source = resolve_source(version.source, experiment_id)
        download = versions.download_uri(version.name, version.version)
        stored = resolve_source(download, experiment_id)
    except (ProvenanceError, MlflowError) as exc:
        raise ProvenanceError(f"{label}: {exc}; refusing to load it") from None
    if stored.location != source.location:
        raise ProvenanceError(
            f"{label}: its source {version.source} is {source.location} but MLflow would load it from "
            f"{stored.location}; refusing to load it"
        )
    if source.run_id and version.run_id and source.run_id != version.run_id:
        raise ProvenanceError(
            f"{label} claims run {version.run_id} but its files were logged by run {source.run_id}; "
            "refusing to load it"
        )
    return ModelSource(uri=source.uri, location=source.location, run_id=source.run_id or version.run_id)


def verified_files(source: ModelSource, into: Path, label: str) -> Path:
    """A local copy of `source`'s files under `into`, whose digest is the one its run recorded.

    Nothing is deserialised here; callers load from the returned copy, so the checked bytes are the
    loaded bytes.
    """
    if source.run_id is None:
        raise ProvenanceError(
            f"{label} ({source.location}) names no run, so no recorded digest; refusing to load it"
        )
    try:
        expected = runs.get_run(source.run_id).tags.get(models.MODEL_SHA256_TAG)
    except MlflowError as exc:
        raise ProvenanceError(f"{label}: its run {source.run_id} cannot be read: {exc.message}") from None
    if not expected:
        raise ProvenanceError(
            f"{label} ({source.location}): run {source.run_id} recorded no digest of its model files "
            f"(tag {models.MODEL_SHA256_TAG}), so they cannot be verified; refusing to load them "
            "(retrain with `dvc repro` to log a verifiable model)"
        )
    local = models.fetch_model_files(source.location.uri, into)
    actual = models.model_digest(local)
    if actual != expected:
        raise ProvenanceError(
            f"{label}: the model files at {source.location} have digest {actual}, but run {source.run_id} "
            f"recorded {expected} when it logged them; they were changed since, refusing to load them"
        )
    return local


def verify_logged_model(uri: str, run_id: str, experiment_id: str) -> ModelSource:
    """Refuse `uri` as run `run_id`'s model unless it resolves under the artifact root, that run
    logged it, and its files are unchanged since (nothing is loaded): what `register` asks."""
    source = resolve_source(uri, experiment_id)
    if source.run_id is not None and source.run_id != run_id:
        raise ProvenanceError(f"{uri} was logged by run {source.run_id}, not by run {run_id}")
    source = ModelSource(uri=source.uri, location=source.location, run_id=run_id)
    with tempfile.TemporaryDirectory(prefix="reproml-model-") as scratch:
        verified_files(source, Path(scratch), f"the model {uri} of run {run_id}")
    return source


def verify_model_version(version: Version, experiment_id: str) -> None:
    """Refuse a version from elsewhere or whose files changed since they were logged (no load)."""
    label = f"model {version.name} version {version.version}"
    source = check_source(version, experiment_id)
    with tempfile.TemporaryDirectory(prefix="reproml-model-") as scratch:
        verified_files(source, Path(scratch), label)


def load_model_version(version: Version, experiment_id: str) -> Any:
    """The version's sklearn model: source checked, files copied and verified, then deserialised
    from that verified copy. Every load of an MLflow model in reproml goes through here."""
    label = f"model {version.name} version {version.version}"
    source = check_source(version, experiment_id)
    with tempfile.TemporaryDirectory(prefix="reproml-model-") as scratch:
        local = verified_files(source, Path(scratch), label)
        return models.load_sklearn_model(local)
