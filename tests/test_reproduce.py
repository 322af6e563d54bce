"""`reproml reproduce` and `reproml compare` on a real project: git worktrees, DVC, MLflow.

One project is built for the module: a baseline `dvc repro` (committed and pushed to the project's
DVC remote) and a `dvc exp run -S train.model=random_forest` experiment. The other cases are
copies of the baseline's MLflow run with one thing in its record changed, so each test rebuilds
once (~15 s) and none disturbs another.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from reproml import lineage
from reproml.config import flat_params, parse_params
from reproml.errors import ReproError
from reproml.reproduce import (
    Check,
    Reproduction,
    RunView,
    check_lineage,
    compare_runs,
    load_run,
    reproduce,
)
from reproml.stores.dvc import DvcStore
from reproml.stores.mlflow import runs as mlflow_runs
from reproml.tuning.space import distributions
from tests.project import PIPELINE_RUNS, Project, sampled_params

pytestmark = pytest.mark.integration

TRAIN_SPLIT = "data/prepared/train.parquet"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    proj = Project(tmp_path_factory.mktemp("reproduce"), sampled_params())
    proj.env["COLUMNS"] = "200"  # Rich tables wide enough that values are not folded
    proj.run("dvc", "repro")
    proj.commit("baseline results")
    proj.run("dvc", "push")
    proj.run("dvc", "exp", "run", "-n", "rf", "-S", "train.model=random_forest")
    return proj


@pytest.fixture(scope="module")
def runs(project: Project) -> dict[str, Any]:
    """The pipeline's own runs by model: `xgboost` (baseline) and `random_forest` (experiment)."""
    mlflow.set_tracking_uri(project.tracking_uri())
    found = mlflow.search_runs(
        experiment_names=["reproml"], filter_string=PIPELINE_RUNS, output_format="list"
    )
    originals = [r for r in found if not (r.info.run_name or "").startswith("copy-of")]
    by_model = {r.data.params["train.model"]: r for r in originals}
    assert set(by_model) == {"xgboost", "random_forest"}, [r.info.run_name for r in originals]
    return by_model


@pytest.fixture
def baseline(project: Project, runs: dict[str, Any]) -> Any:
    mlflow.set_tracking_uri(project.tracking_uri())
    return runs["xgboost"]


def copy_run(run: Any, tags: dict[str, str] | None = None, params_json: dict[str, Any] | None = None) -> str:
    """A new run holding `run`'s params, metrics, lineage tags and params.json, then `tags` and
    `params_json` in place of the originals: a record with one thing changed."""
    client = MlflowClient()
    logged = params_json or mlflow.artifacts.load_dict(
        f"runs:/{run.info.run_id}/{mlflow_runs.PARAMS_ARTIFACT}"
    )
    copy = client.create_run(run.info.experiment_id, run_name=f"copy-of-{run.info.run_name}")
    run_id = str(copy.info.run_id)
    lineage_tags = {k: v for k, v in run.data.tags.items() if k.startswith(mlflow_runs.TAG_PREFIX)}
    record = {"params": run.data.params, "metrics": run.data.metrics, "tags": lineage_tags | (tags or {})}
    mlflow_runs.log_batch(run_id, **record)
    client.log_dict(run_id, logged, mlflow_runs.PARAMS_ARTIFACT)
    client.set_terminated(run_id)
    return run_id


def commit_beside(project: Project, branch: str, path: str, old: str, new: str) -> str:
    """A commit on a side branch with one line of `path` changed, the working tree untouched."""
    side = project.root.parent / branch
    project.run("git", "worktree", "add", "-q", "-b", branch, str(side), "HEAD")
    source = (side / path).read_text()
    assert source.count(old) == 1, (path, old)
    (side / path).write_text(source.replace(old, new))
    project.run("git", "-C", str(side), "commit", "-q", "-am", f"{branch}: change {path}")
    commit = project.run("git", "-C", str(side), "rev-parse", "HEAD").stdout.strip()
    project.run("git", "worktree", "remove", "--force", str(side))
    return commit


def assert_cleaned_up(root: Path, run_id: str) -> None:
    listed = subprocess.run(
        ["git", "worktree", "list", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert [line for line in listed.splitlines() if line.startswith("worktree ")] == [f"worktree {root}"]
    assert not (root / ".reproml" / "reproduce" / run_id).exists()


def rebuild(root: Path, run_id: str) -> Reproduction:
    result = reproduce(root, run_id)
    assert_cleaned_up(root, run_id)
    return result


def differing(result: Reproduction, aspect: str) -> list[str]:
    return [c.item for c in result.of(aspect) if not c.same]


def test_pipeline_run_reproduces_identically(project: Project, baseline: Any) -> None:
    result = rebuild(project.root, baseline.info.run_id)
    assert result.identical, (result.differences, result.failure, result.checks)
    assert result.commit == baseline.data.tags["reproml.git_commit"]
    assert {c.item for c in result.of("data")} == {
        k.removeprefix("reproml.data.") for k in baseline.data.tags if k.startswith("reproml.data.")
    }
    assert {c.detail for c in result.of("data")} == {"DVC cache"}
    metrics = {c.item for c in result.of("metrics")}
    assert {"test_roc_auc", "test_log_loss", "test_f1"} <= metrics
    assert result.of("predictions")[0].rebuilt == baseline.data.tags["reproml.test_predictions_sha256"]
    assert result.notes == ()


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_cli_reproduces_an_experiment_from_its_params_json(project: Project, runs: dict[str, Any]) -> None:
    """A `dvc exp run -S` run trains with params.yaml modified and uncommitted; its params.json
    holds what it used, so it is rebuilt from the commit plus those params."""
    experiment = runs["random_forest"]
    assert experiment.data.tags["reproml.git_dirty"] == "true"
    assert json.loads(experiment.data.tags["reproml.git_dirty_paths"]) == ["params.yaml"]
    done = project.run("reproml", "reproduce", experiment.info.run_id, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("identical")
    assert "train.model" in done.stdout and "an experiment" in done.stdout
    assert_cleaned_up(project.root, experiment.info.run_id)


# suite time (issue 15): in `make test-slow`; CI rebuilds a fresh clone's run in test_team_workers
@pytest.mark.slow
def test_fresh_clone_reproduces_with_data_from_the_dvc_remote(
    project: Project, baseline: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project.root), str(clone)], env=project.env, check=True)

    def dvc(*args: str) -> None:
        subprocess.run(["dvc", *args], cwd=clone, env=project.env, check=True, capture_output=True)

    dvc("remote", "modify", "--local", "storage", "url", str(project.root / "dvc-storage"))
    dvc("config", "--local", "core.site_cache_dir", str(clone / ".dvc" / "site_cache"))
    assert not (clone / ".dvc" / "cache").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.tracking_uri())
    result = rebuild(clone, baseline.info.run_id)
    assert result.identical, (result.differences, result.failure)
    assert {c.detail for c in result.of("data")} == {"DVC remote 'storage'"}
    md5 = baseline.data.tags[f"reproml.data.{TRAIN_SPLIT}"]
    with DvcStore.open(clone) as store:
        fetched = store.object_path(md5)
    assert fetched is not None and fetched.resolve().is_relative_to((clone / ".dvc" / "cache").resolve())


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_changed_param_is_named_with_its_key(project: Project, baseline: Any) -> None:
    """Stands for a record whose params are not what produced its metrics: its params.json (and
    the params hash) say 5 boosting rounds at most, while MLflow's logged params and the metrics
    come from 2000 (early-stopped), as when the artifact is re-logged or edited after the run.
    (Not a tuned key: best_params.json, placed by its md5, would override it.)"""
    logged = mlflow.artifacts.load_dict(f"runs:/{baseline.info.run_id}/{mlflow_runs.PARAMS_ARTIFACT}")
    logged["train"]["xgboost"]["n_estimators"] = 5
    changed_hash = lineage.params_hash(flat_params(parse_params(logged)))
    run_id = copy_run(baseline, tags={"reproml.params_sha256": changed_hash}, params_json=logged)
    result = rebuild(project.root, run_id)
    assert "params" in result.differences and "metrics" in result.differences
    assert differing(result, "params") == ["train.xgboost.n_estimators"]
    assert "code" not in result.differences and "data" not in result.differences
    assert any("train.xgboost.n_estimators" in note for note in result.notes)


def test_changed_data_file_is_refused_naming_the_object(project: Project, baseline: Any) -> None:
    """The cached (and pushed) object for the recorded md5 of the train split now holds other
    bytes (the split with rows dropped): the version there is not the one the run used, and a
    rebuild from it is refused, naming the object and both md5s, before anything is checked out."""
    md5 = baseline.data.tags[f"reproml.data.{TRAIN_SPLIT}"]
    relative = Path("files") / "md5" / md5[:2] / md5[2:]
    objects = [project.root / ".dvc" / "cache" / relative, project.root / "dvc-storage" / relative]
    original = objects[0].read_bytes()
    altered = io.BytesIO()
    frame = pd.read_parquet(io.BytesIO(original))
    frame.iloc[: len(frame) - 200].to_parquet(altered, index=False)
    try:
        for obj in objects:
            replace_bytes(obj, altered.getvalue())
        refused = f"cannot be rebuilt: the DVC cache object {objects[0]} for {TRAIN_SPLIT}"
        with pytest.raises(ReproError, match=re.escape(refused)):
            reproduce(project.root, baseline.info.run_id)
    finally:
        for obj in objects:
            replace_bytes(obj, original)
    assert_cleaned_up(project.root, baseline.info.run_id)


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_changed_line_of_code_is_named(project: Project, baseline: Any) -> None:
    """Stands for a record that names code other than what ran: its commit tag points at a
    commit whose model code has one line changed (XGBoost's learning rate doubled)."""
    old, new = '"learning_rate": p.learning_rate,', '"learning_rate": p.learning_rate * 2,'
    commit = commit_beside(project, "faster-learning", "src/reproml/models.py", old, new)
    run_id = copy_run(baseline, tags={"reproml.git_commit": commit})
    result = rebuild(project.root, run_id)
    assert result.commit == commit
    assert "code" in result.differences and "metrics" in result.differences
    assert "params" not in result.differences and "data" not in result.differences


def test_failing_rebuild_is_reported_with_the_stage_output(project: Project, baseline: Any) -> None:
    broken = commit_beside(project, "broken-cli", "src/reproml/cli.py", "app = typer.Typer(", "app = (")
    run_id = copy_run(baseline, tags={"reproml.git_commit": broken})
    kept = reproduce(project.root, run_id, keep=True)
    assert kept.kept is not None and (kept.kept / "src" / "reproml" / "cli.py").is_file()
    result = rebuild(project.root, run_id)  # removes the kept worktree first, then its own
    assert result.failure is not None and "`reproml train`" in result.failure
    assert "Error" in result.failure  # the stage's own traceback tail
    assert result.differences == ["code", "rebuild"]
    assert not result.of("metrics")


def test_environment_differences_are_notes_when_the_outcome_is_the_same() -> None:
    libraries = Check("libraries", "versions", "9 packages", "9 packages", False, "numpy 2.1 -> 2.2")
    auc = Check("metrics", "test_roc_auc", "0.75", "0.75", True)
    same = Reproduction("r", "c", (libraries, auc))
    assert same.identical and same.differences == []
    moved = Reproduction("r", "c", (libraries, Check("metrics", "test_roc_auc", "0.75", "0.76", False)))
    assert moved.differences == ["libraries", "metrics"]


def test_dirty_source_is_refused_naming_the_path(project: Project, baseline: Any) -> None:
    dirty = json.dumps(["params.yaml", "src/reproml/models.py"])
    run_id = copy_run(baseline, tags={"reproml.git_dirty": "true", "reproml.git_dirty_paths": dirty})
    with pytest.raises(ReproError, match=r"uncommitted changes to src/reproml/models\.py;"):
        reproduce(project.root, run_id)
    assert_cleaned_up(project.root, run_id)
    # an experiment's params.yaml is recoverable: the run logged its exact params
    harmless = json.dumps(["params.yaml"])
    run_id = copy_run(baseline, tags={"reproml.git_dirty": "true", "reproml.git_dirty_paths": harmless})
    assert (
        check_lineage(project.root, mlflow_runs.get_run(run_id)).commit
        == baseline.data.tags["reproml.git_commit"]
    )


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ({"reproml.code_sha256": ""}, "lacks the lineage tags reproml.code_sha256"),
        ({"reproml.git_commit": "f" * 40}, f"commit {'f' * 40} is not in the git repository"),
        ({f"reproml.data.{TRAIN_SPLIT}": "0" * 31 + "1"}, rf"{TRAIN_SPLIT} \(md5 0+1\) .*'storage'"),
    ],
    ids=["missing-tag", "unknown-commit", "data-nowhere"],
)
def test_run_without_rebuildable_lineage_is_refused(
    project: Project, baseline: Any, tags: dict[str, str], reason: str
) -> None:
    run_id = copy_run(baseline, tags=tags)
    with pytest.raises(ReproError, match=reason):
        reproduce(project.root, run_id)
    assert_cleaned_up(project.root, run_id)


def test_unknown_run_exits_2_with_a_clear_message(project: Project) -> None:
    done = project.run("reproml", "reproduce", "0123456789abcdef", check=False)
    assert done.returncode == 2
    assert "no MLflow run with id '0123456789abcdef'" in done.stderr
    assert "Traceback" not in done.stderr


def test_alias_names_the_registered_models_run(project: Project, runs: dict[str, Any]) -> None:
    assert load_run(project.root, "@challenger").run_id == runs["random_forest"].info.run_id
    with pytest.raises(ReproError, match="no version aliased 'nobody'"):
        load_run(project.root, "@nobody")


def test_compare_shows_the_differing_param_and_both_metrics(project: Project, runs: dict[str, Any]) -> None:
    a, b = (RunView.of(mlflow_runs.Run.of(runs[m])) for m in ("xgboost", "random_forest"))
    rows = {(r.section, r.key): r for r in compare_runs(a, b)}
    assert rows[("params", "train.model")].a == "xgboost"
    assert rows[("params", "train.model")].b == "random_forest"
    params_shown = {key for section, key in rows if section == "params" and key != "params sha256"}
    # each run trained its own model's tuned values; every other param is equal and hidden
    tuned = {f"train.{m}.{k}" for m in ("xgboost", "random_forest") for k in distributions(m)}
    assert "train.model" in params_shown
    assert params_shown - {"train.model"} <= tuned, "equal params are shown only with --all"
    auc = rows[("metrics", "test_roc_auc")]
    assert auc.a == f"{a.metrics['test_roc_auc']:.6g}" and auc.b == f"{b.metrics['test_roc_auc']:.6g}"
    assert rows[("data", TRAIN_SPLIT)].same
    assert ("code", "git commit") in rows and ("code", "code sha256") in rows
    everything = {(r.section, r.key) for r in compare_runs(a, b, everything=True)}
    assert ("params", "seed") in everything and ("metrics", "train_roc_auc") in everything

    done = project.run("reproml", "compare", a.run_id, b.run_id)
    for text in ("train.model", "xgboost", "random_forest", "test_roc_auc", auc.a, auc.b, "DIFFERS"):
        assert text in done.stdout


def replace_bytes(path: Path, content: bytes) -> None:
    """Swap a (read-only) DVC object's content without touching files linked to the old inode."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(content)
    fresh.chmod(0o444)
    os.replace(fresh, path)
