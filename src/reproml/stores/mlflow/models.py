"""MLflow models and datasets: a dataset input's schema, logging a fitted Pipeline, the digest of
a logged model's files, fetching them, and loading a verified local copy.

Models are hashed and deserialised only from a local copy (`fetch_model_files`), so the bytes
checked are the bytes loaded (`reproml.provenance` decides what may be loaded).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from reproml import env

# sha256 over the logged MLflow model's files (see `model_digest`), set on the run and the logged
# model when it is logged, checked before every load (`provenance.load_model_version`).
MODEL_SHA256_TAG = "reproml.model_sha256"


def frame_schema(frame: pd.DataFrame) -> Any:
    """MLflow column schema from dtypes, with `required` false where any value is missing.

    MLflow's own inference visits every string value (seconds on 100k rows); dtypes and one
    vectorised null check give the same schema at once.
    """
    from mlflow.types import ColSpec, DataType, Schema

    def kind(column: pd.Series) -> DataType:
        if pd.api.types.is_bool_dtype(column):
            return DataType.boolean
        if pd.api.types.is_integer_dtype(column):
            return DataType.long
        if pd.api.types.is_float_dtype(column):
            return DataType.double
        if pd.api.types.is_datetime64_any_dtype(column):
            return DataType.datetime
        return DataType.string

    nulls = frame.isna().any()
    return Schema([ColSpec(kind(frame[c]), str(c), required=not bool(nulls[c])) for c in frame.columns])


def log_dataset(run_id: str, frame: pd.DataFrame, name: str, source: str, digest: str, context: str) -> None:
    """An MLflow dataset input whose digest is the DVC md5 of the file it came from."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = Dataset(
        name=name,
        digest=digest,
        source_type="local",
        source=json.dumps({"uri": source}),
        schema=json.dumps({"mlflow_colspec": frame_schema(frame).to_dict()}),
        profile=json.dumps({"num_rows": len(frame), "num_elements": int(frame.size)}),
    )
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)]
    MlflowClient().log_inputs(run_id, datasets=[DatasetInput(dataset, tags=tags)])


def log_sklearn_model(
    pipeline: Any, inputs: Any, example: Any, code_dir: Path, requirements: list[str]
) -> str:
    """Log the fitted Pipeline with signature and input example; returns the model URI.

    The signature is inferred from all training inputs, so a column with any missing value is
    optional rather than required because the 5-row example happened to be complete.

    Serialized with skops, MLflow's safe default, trusting exactly the types this pipeline holds
    (our `DateParts` and XGBoost's estimator); `code_paths` ships `reproml` so the model loads
    where the package is not installed.
    """
    from mlflow.models import infer_signature

    signature = infer_signature(example, pipeline.predict(example))
    signature.inputs = frame_schema(inputs)
    trusted = untrusted_types(pipeline)
    with _no_module_scan():
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=signature,
            input_example=example,
            code_paths=[str(code_dir)],
            pip_requirements=requirements,
            serialization_format="skops",
            skops_trusted_types=trusted,
        )
    record_model_digest(info.run_id, info.model_id)
    return str(info.model_uri)


@contextlib.contextmanager
def _no_module_scan() -> Iterator[None]:
    """Spare `log_model` MLflow's map of every installed distribution's top-level modules.

    Given explicit `pip_requirements`, MLflow still checks each one against the installed version
    (a warning on a mismatch), and first builds that map with
    `importlib.metadata.packages_distributions()`, which reads the file list of all ~300
    distributions in this venv: about 1.5 s on a 2-core machine, with no documented switch. The
    check reads versions by distribution name and uses the map only when a name is not installed,
    where the map could not hold it either, so an empty map gives the same answers. The map is a
    private MLflow global: it is set only while nothing has built it, and reset afterwards so any
    later user in the process builds the real one. Should MLflow drop or rename it, nothing
    changes here but the time.
    """
    try:
        from mlflow.utils import requirements_utils as reqs
    except ImportError:  # pragma: no cover - depends on the installed MLflow
        yield
        return
    if getattr(reqs, "_MODULES_TO_PACKAGES", False) is not None:
        yield  # built already in this process (free to use), or not MLflow's layout any more
        return
    state = vars(reqs)  # MLflow's module globals (typed None there)
    state["_MODULES_TO_PACKAGES"] = {}
    try:
        yield
    finally:
        state["_MODULES_TO_PACKAGES"] = None
        state["_PACKAGES_TO_MODULES"] = None


def untrusted_types(obj: Any) -> list[str]:
    """The types skops does not trust by default in `obj`'s skops dump, sorted: what
    `skops.io.get_untrusted_types(data=skops.io.dumps(obj))` returns, without the dump.

    That public route encodes the whole state as indented JSON and parses it back (most of its
    cost, a few tenths of a second for a boosted model) only to walk the same tree; MLflow
    serialises the model again anyway. Here the state skops would save is walked in memory by
    the same skops functions. Should a skops release move them, the public route is used.
    """
    import io
    import zipfile

    try:
        from skops.io._audit import get_tree
        from skops.io._utils import LoadContext, SaveContext, get_state
    except ImportError:  # pragma: no cover - depends on the installed skops
        import skops.io

        return list(skops.io.get_untrusted_types(data=skops.io.dumps(obj)))
    buffer = io.BytesIO()  # arrays and raw bytes go into an in-memory zip, as in a dump
    with zipfile.ZipFile(buffer, "w") as archive:
        saving = SaveContext(zip_file=archive)
        state = get_state(obj, saving)
        saving.clear_memo()
    with zipfile.ZipFile(buffer) as archive:
        tree = get_tree(state, load_context=LoadContext(src=archive, protocol=saving.protocol), trusted=None)
        return sorted(tree.get_unsafe_set())


# MLflow writes this (the registered name and version, nothing it loads) into a *local* model's own
# folder whenever anyone downloads `models:/<name>/<version>`, so it cannot be part of the digest.
MLFLOW_BOOKKEEPING = frozenset({"registered_model_meta"})


def model_digest(directory: Path) -> str:
    """sha256 over the sorted manifest of every file under `directory` (relative path, sha256).

    Any changed byte, added, removed or renamed file changes it: the MLmodel file (which names
    the serialization format and the trusted types) and the shipped code included. Only MLflow's
    `registered_model_meta` is left out (see MLFLOW_BOOKKEEPING).
    """
    manifest = hashlib.sha256()
    files = sorted(
        (p.relative_to(directory).as_posix(), p)
        for p in directory.rglob("*")
        if p.is_file() and p.relative_to(directory).as_posix() not in MLFLOW_BOOKKEEPING
    )
    for relative, path in files:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        manifest.update(f"{relative}\t{digest.hexdigest()}\n".encode())
    return manifest.hexdigest()


def fetch_model_files(location: str, into: Path) -> Path:
    """A local copy of the model files at `location` (an artifact URI), made under `into`.

    Models are hashed and deserialised only from such a copy, so the bytes checked are the bytes
    loaded, whatever happens at `location` in between.
    """
    import mlflow.artifacts

    into.mkdir(parents=True, exist_ok=True)
    with env.overridden("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(into)))


def _local_directory(location: str) -> Path | None:
    """The folder of a `file:` artifact location on this machine, else None."""
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(location)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        return None
    folder = Path(urllib.request.url2pathname(parts.path))
    return folder if folder.is_dir() else None


def record_model_digest(run_id: str, model_id: str) -> str:
    """Hash the files just logged as model `model_id` and tag the run (and the logged model).

    A store on this machine (`file:` artifacts, the default) is hashed where MLflow wrote it:
    nothing is loaded here, so there is no need for the copy every load hashes. Other stores
    (S3, an MLflow server) are hashed from a downloaded copy.
    """
    import tempfile

    client = MlflowClient()
    location = str(client.get_logged_model(model_id).artifact_location)
    local = _local_directory(location)
    if local is not None:
        digest = model_digest(local)
    else:
        with tempfile.TemporaryDirectory(prefix="reproml-model-") as scratch:
            digest = model_digest(fetch_model_files(location, Path(scratch)))
    client.set_tag(run_id, MODEL_SHA256_TAG, digest)
    client.set_logged_model_tags(model_id, {MODEL_SHA256_TAG: digest})
    return digest


@dataclass(frozen=True)
class LoggedModel:
    """An MLflow 3 logged model (`models:/m-<id>`): where its files are and who logged it."""

    model_id: str
    experiment_id: str
    artifact_location: str
    source_run_id: str | None


def logged_model(model_id: str) -> LoggedModel:
    """The logged model `model_id` (MlflowError when the store has none)."""
    found = MlflowClient().get_logged_model(model_id)
    return LoggedModel(
        model_id=model_id,
        experiment_id=str(found.experiment_id),
        artifact_location=str(found.artifact_location),
        source_run_id=found.source_run_id,
    )


def load_sklearn_model(local: Path) -> Any:
    """Deserialise the sklearn model in the local folder `local` (verified by the caller)."""
    return mlflow.sklearn.load_model(str(local))
