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


# --- the CLI is an edge: Prefect only in the commands that run a flow, flows/ from the project -----

NOT_AT_START = ("prefect", "mlflow", "dvc", "evidently", "xgboost")


def test_importing_the_cli_imports_no_prefect_mlflow_dvc_evidently_or_xgboost() -> None:
    """`python -X importtime -c "import reproml.cli"`: every module it imports, by top-level name."""
    probe = [sys.executable, "-X", "importtime", "-c", "import reproml.cli"]
    done = subprocess.run(probe, capture_output=True, text=True, check=True)
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert {"reproml", "typer", "rich"} <= imported  # the probe sees what is imported
    assert sorted(imported & set(NOT_AT_START)) == []


def test_the_steps_the_flows_run_import_no_prefect() -> None:
    modules = ["commands", "worktree", "training", "monitoring", "replay", "deploy"]
    probe = (
        f"import sys, importlib, reproml.servers; [importlib.import_module('reproml.orchestration.' + m) "
        f"for m in {modules!r}]; print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_flows_is_the_projects_folder_not_an_installed_package(tmp_path: Path) -> None:
    import tomllib

    probe = [sys.executable, "-c", "import flows"]
    done = subprocess.run(probe, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1 and "No module named 'flows'" in done.stderr
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["src/reproml"]


def flow_project(root: Path, with_flows: bool) -> Path:
    for name in ("params.yaml", "dvc.yaml"):
        (root / name).write_text("{}\n")
    if with_flows:
        (root / "flows").mkdir()
        (root / "flows" / "__init__.py").write_text("")
        (root / "flows" / "probe.py").write_text("WHERE = __file__\n")
    return root


def test_flow_commands_import_the_flows_of_the_project_they_run_in(tmp_path: Path) -> None:
    root = flow_project(tmp_path, with_flows=True)
    probe = "from reproml import cli; print(cli._flows('probe').WHERE)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True)
    assert Path(done.stdout.strip()) == (root / "flows" / "probe.py").resolve()


def test_a_flow_command_without_the_projects_flows_is_refused_before_any_server(tmp_path: Path) -> None:
    root = flow_project(tmp_path, with_flows=False)
    done = subprocess.run([str(BIN / "reproml"), "serve"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no flows" in done.stderr and "flows is not a package" in done.stderr.replace("\n", " ")
    assert not (root / ".reproml" / "servers").exists()
