"""Model provenance against hostile files, with a real MLflow store and real trained models.

Every model reproml deserialises must first be shown to be the one a run of this project logged:
models/model.joblib by the md5 its train run recorded, an MLflow model version by a source that
resolves under the experiment's artifact root and files whose digest its run recorded. The hostile
models here run code when unpickled (they write a marker file), so "nothing was loaded" is checked
directly: the marker is absent. And the registry's audit record is on disk before any alias moves.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from reproml import gate, registry
from reproml.config import PromoteParams
from reproml.errors import ReproError
from reproml.monitoring.champion import load_champion
from reproml.stages.common import load
from reproml.stages.evaluate import run_evaluate
from reproml.stages.ingest import run_ingest
from reproml.stages.prepare import run_prepare
from reproml.stages.register import run_promote
from reproml.stages.train import run_train
from reproml.stores.mlflow import connection, models
from tests.test_registry import NAME, alias, pipeline, project  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


class Payload:
    """Unpickling this writes `marker`: proof that a file was deserialised."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.marker!r}, 'w').write('code from a model file ran')",))


def hostile_mlflow_model(target: Path, marker: Path, template: Path | None = None) -> Path:
    """An MLflow sklearn model directory whose MLmodel says `pickle` and whose pickle is a Payload.

    Built from `template` (a real logged model's files) when given, so only what an attacker
    needs to change differs."""
    if template is not None:
        shutil.copytree(template, target, dirs_exist_ok=True)
    else:
        target.mkdir(parents=True, exist_ok=True)
    mlmodel = target / "MLmodel"
    spec = yaml.safe_load(mlmodel.read_text()) if mlmodel.is_file() else {"flavors": {}}
    spec["flavors"]["sklearn"] = {"pickled_model": "model.pkl", "serialization_format": "pickle",
                                  "sklearn_version": "1.9.1"}  # fmt: skip
    mlmodel.write_text(yaml.safe_dump(spec))
    (target / "model.pkl").write_bytes(pickle.dumps(Payload(marker)))
    return target


def experiment(root: Path) -> str:
    return connection.setup(root, load(root).mlflow.experiment_name)


def model_files(client: MlflowClient, version: str) -> Path:
    """Where MLflow keeps a version's files (a file:// URI in this local store)."""
    uri = client.get_model_version_download_uri(NAME, version)
    return Path(urllib.request.url2pathname(urllib.parse.urlsplit(uri).path))


def versions() -> list[int]:
    return sorted(int(v.version) for v in MlflowClient().search_model_versions(f"name='{NAME}'"))


def evaluated_run(experiment_id: str) -> str:
    """A FINISHED, evaluated run (what `register` asks of a run), made by hand: no model needed to
    show that a source is refused before a version is created."""
    client = MlflowClient()
    run = client.create_run(experiment_id, tags={"reproml.evaluated": "true"})
    client.set_terminated(run.info.run_id, "FINISHED")
    return str(run.info.run_id)


# --- foreign sources --------------------------------------------------------------------------


def test_register_refuses_a_foreign_source_before_creating_a_version(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    experiment_id = connection.setup(root, "provenance")
    client = MlflowClient()
    run_id = evaluated_run(experiment_id)
    artifacts = root / "mlartifacts"
    elsewhere = hostile_mlflow_model(tmp_path / "elsewhere" / "model", tmp_path / "marker")
    (artifacts / "inside").mkdir(parents=True)
    (artifacts / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    copied = hostile_mlflow_model(artifacts / "copied" / "model", tmp_path / "marker")
    other_experiment = connection.setup(root, "someone-else")
    other_model = client.create_logged_model(other_experiment, name="theirs")
    other_run = evaluated_run(other_experiment)
    hostile = {
        artifacts.as_uri() + "/../../elsewhere/model": "outside this project's artifact root",
        f"{artifacts}/../../elsewhere/model": "outside this project's artifact root",
        f"{artifacts}/inside/../../../elsewhere/model": "outside this project's artifact root",
        (artifacts / "link" / "model").as_uri(): "outside this project's artifact root",
        f"runs:/{other_run}/model": "not this project's experiment",
        f"models:/{other_model.model_id}": "not this project's experiment",
        f"models:/{NAME}/1": "registry reference",
        "http://127.0.0.1:1/model": "'http' scheme",
        "s3://bucket/mlartifacts/model": "'s3' scheme",
        "dbfs:/mlartifacts/model": "'dbfs' scheme",
        "mlflow-artifacts:/1/model": "'mlflow-artifacts' scheme",
        "file://otherhost" + str(elsewhere): "not a plain local file URI",
        "mlartifacts/copied/model": "relative path",
        # inside the root, but no run recorded a digest of these files: not ours either
        copied.as_uri(): "recorded no digest",
    }
    for uri, reason in hostile.items():
        with pytest.raises(registry.RegistryError, match=reason):
            registry.register(run_id, NAME, experiment_id, uri)
        assert versions() == [], f"{uri} left a registered version behind"
    assert not (tmp_path / "marker").exists()


def test_promote_and_monitoring_never_load_a_foreign_model(project: Path, tmp_path: Path) -> None:  # noqa: F811
    registered = pipeline(project)
    client = MlflowClient()
    experiment_id = experiment(project)
    marker = tmp_path / "marker"
    ours = model_files(client, "1")
    hostile_mlflow_model(tmp_path / "elsewhere" / "model", marker, template=ours)
    # passes a prefix test on the unresolved location, and names a real run of this project
    sneaky = (project / "mlartifacts").as_uri() + "/../../elsewhere/model"
    foreign = client.create_model_version(NAME, sneaky, run_id=registered["run_id"])
    client.set_registered_model_alias(NAME, registry.CHALLENGER, foreign.version)
    with pytest.raises(ReproError, match="outside this project's artifact root"):
        run_promote(project)  # the gate would score (load) it
    with pytest.raises(ReproError, match="outside this project's artifact root"):
        run_promote(project, version=int(foreign.version), reason="trust me")
    assert alias("champion") is None
    client.set_registered_model_alias(NAME, registry.CHAMPION, foreign.version)  # as if moved by hand
    with pytest.raises(ReproError, match="outside this project's artifact root"):
        load_champion(project, NAME, experiment_id)
    from reproml.orchestration.replay import report

    with pytest.raises(ReproError, match="outside this project's artifact root"):
        report(project, [], int(foreign.version))
    assert not marker.exists(), "a foreign model was unpickled"


# --- models/model.joblib ----------------------------------------------------------------------


def test_evaluate_never_unpickles_a_model_file_no_run_logged(project: Path, tmp_path: Path) -> None:  # noqa: F811
    import joblib

    for stage in (run_ingest, run_prepare, run_train):
        stage(project)
    marker = tmp_path / "marker"
    joblib.dump(Payload(marker), project / "models" / "model.joblib")
    with pytest.raises(
        ReproError, match=r"models/model\.joblib \(md5 [0-9a-f]{32}\) was not logged by any run"
    ):
        run_evaluate(project)
    assert not marker.exists(), "evaluate unpickled models/model.joblib before checking who wrote it"


# --- MLflow model files changed after they were logged ----------------------------------------


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_registered_model_changed_on_disk_is_never_loaded(project: Path, tmp_path: Path) -> None:  # noqa: F811
    registered = pipeline(project)
    client = MlflowClient()
    experiment_id = experiment(project)
    files = model_files(client, "1")
    pristine = tmp_path / "pristine"
    shutil.copytree(files, pristine)

    def restore() -> None:
        shutil.rmtree(files)
        shutil.copytree(pristine, files)

    flip_a_byte(files / "model.skops")
    changed = (
        rf"model {NAME} version 1: the model files at {re.escape(str(files))} have digest [0-9a-f]+, but run"
    )
    with pytest.raises(ReproError, match=changed):
        run_promote(project)
    with pytest.raises(ReproError, match=changed):
        run_promote(project, version=1, reason="it is fine")
    assert alias("champion") is None

    marker = tmp_path / "marker"
    restore()
    hostile_mlflow_model(files, marker, template=None)  # MLmodel now says pickle; a payload beside it
    with pytest.raises(ReproError, match=changed):
        run_promote(project)

    restore()
    assert run_promote(project, version=1, reason="the real model")["action"] == "force"
    hostile_mlflow_model(files, marker, template=None)  # tampered after it became champion
    with pytest.raises(ReproError, match=changed):
        load_champion(project, NAME, experiment_id)
    from reproml.orchestration.replay import report

    with pytest.raises(ReproError, match=changed):
        report(project, [], 1)
    assert not marker.exists(), "a tampered model was unpickled"

    restore()
    assert load_champion(project, NAME, experiment_id).version == 1  # the real one still loads
    recorded = client.get_run(registered["run_id"]).data.tags[models.MODEL_SHA256_TAG]
    assert recorded == models.model_digest(files)
    client.delete_tag(registered["run_id"], models.MODEL_SHA256_TAG)
    with pytest.raises(
        ReproError, match=rf"model {NAME} version 1 \({re.escape(str(files))}\): run .* recorded no digest"
    ):
        load_champion(project, NAME, experiment_id)


# --- the audit record comes before the aliases move -------------------------------------------


def test_a_failed_alias_move_is_recorded_and_leaves_the_aliases_as_they_were(project: Path) -> None:  # noqa: F811
    registered = pipeline(project)
    client = MlflowClient()
    experiment_id = experiment(project)
    second = registry.register(registered["run_id"], NAME, experiment_id, registered["model_uri"])
    assert run_promote(project, version=1, reason="baseline")["action"] == "force"
    assert [(r["action"], r["status"]) for r in registry.history(project)] == [("force", "done")]

    def decide(y: np.ndarray, challenger: np.ndarray, champion: Any, frame: pd.DataFrame) -> Any:
        client.delete_model_version(NAME, second.version)  # another user removes it meanwhile
        return gate.decide(y, challenger, None, PromoteParams(floor=0.0, slice_column=None), "classification")

    with pytest.raises(registry.RegistryError, match="failed while moving its aliases"):
        registry.promote(project, NAME, experiment_id, decide, "classification")
    records = registry.history(project)
    assert len(records) == 2
    failed = records[-1]
    assert (failed["action"], failed["status"]) == ("promote", "failed")
    assert failed["challenger"] is not None and failed["challenger"]["version"] == int(second.version)
    assert "RESOURCE_DOES_NOT_EXIST" in failed["error"] or "not found" in failed["error"].lower()
    assert failed["reason"].startswith("NOT APPLIED")
    assert failed["aliases_after"] == {"champion": 1, "challenger": None, "previous": None}
    assert (alias("champion"), alias("previous")) == (1, None)  # `previous` was put back


HOLD_PROMOTION = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from reproml.stages.register import run_promote
    run_promote(Path(sys.argv[1]), version=1, reason="killed mid-way")
    """
)


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_a_promotion_killed_while_moving_aliases_leaves_a_record_the_next_one_settles(
    project: Path,  # noqa: F811
) -> None:
    pipeline(project)
    records = project / registry.RECORDS
    # Hold SQLite's write lock: the promotion reads everything it needs, writes its record, and
    # then waits on its first alias write, where it is killed.
    holder = sqlite3.connect(project / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    env = {**os.environ, "TMPDIR": str(project)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD_PROMOTION, str(project)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not list(records.glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(0.5)
        assert proc.poll() is None, "the promotion ended instead of waiting on the alias move"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        holder.execute("ROLLBACK")
        holder.close()
    [pending] = registry.history(project)
    assert (pending["action"], pending["status"]) == ("force", "pending")
    assert alias("champion") is None
    run_promote(project, version=1, reason="again")
    first, second = registry.history(project)
    assert (first["status"], second["status"]) == ("not applied", "done")
    assert "did not take effect" in first["settled"]
    assert alias("champion") == 1
