"""The `reproml` command as a user meets it: help, stage errors, and the runs table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reproml import cli
from tests.conftest import default_params

BIN = Path(sys.executable).parent


def test_help_lists_one_subcommand_per_stage_and_runs() -> None:
    done = subprocess.run([str(BIN / "reproml"), "--help"], capture_output=True, text=True, check=True)
    for command in ("ingest", "prepare", "train", "evaluate", "runs"):
        assert command in done.stdout


def test_help_does_not_import_heavy_libraries() -> None:
    heavy = ("mlflow", "xgboost", "sklearn", "dvc", "matplotlib", "pandas")
    probe = (
        "import sys; from typer.testing import CliRunner; from reproml.cli import app; "
        "CliRunner().invoke(app, ['--help']); "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_stage_with_bad_params_exits_2_with_the_key_and_no_traceback(
    make_project, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = default_params()
    params["train"]["xgboost"]["max_detph"] = 6
    root = make_project(params)
    monkeypatch.chdir(root)
    result = CliRunner().invoke(cli.app, ["ingest"])
    assert result.exit_code == 2
    assert "train.xgboost.max_detph" in result.output
    assert "unknown key" in result.output
    assert "Traceback" not in result.output
    assert not (root / "data" / "ingested.parquet").exists()


def test_runs_with_no_runs_yet_prints_an_empty_table(make_project, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_project()
    monkeypatch.chdir(root)
    result = CliRunner().invoke(cli.app, ["runs"])
    assert result.exit_code == 0, result.output
    assert "experiment 'reproml'" in result.output


def test_data_stages_do_not_import_model_libraries() -> None:
    """ingest and prepare run in their own processes; sklearn/MLflow would cost them seconds."""
    heavy = ("mlflow", "xgboost", "sklearn", "scipy", "matplotlib")
    probe = (
        "import sys, reproml.stages.ingest, reproml.stages.prepare, reproml.data.ingest, "
        f"reproml.data.split; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
