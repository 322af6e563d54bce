"""The main job on all of the bundled data, as `make run` does it (slow: about a minute)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import default_params
from tests.project import Project

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_default_xgboost_on_all_flights(tmp_path_factory: pytest.TempPathFactory) -> None:
    project = Project(tmp_path_factory.mktemp("full"), default_params())
    project.run("dvc", "repro")
    metrics = json.loads((project.root / "metrics" / "metrics.json").read_text())
    ingest = json.loads((project.root / "metrics" / "ingest.json").read_text())
    prepare = json.loads((project.root / "metrics" / "prepare.json").read_text())
    assert ingest["rows_read"] == 336_776
    assert ingest["rows_without_target"] == 9_430
    assert sum(prepare[s]["rows"] for s in ("train", "valid", "test")) == 160_678
    assert metrics["test"]["roc_auc"] >= 0.70
    assert metrics["overfit"]["overfit"] is False
    again = project.run("dvc", "repro")
    assert "Data and pipelines are up to date" in again.stdout
