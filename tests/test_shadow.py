"""The shadow challenger and the production-evidence gate (issue 17).

One project per module (tests/test_registry.py's tiny frame): the champion v1 was trained without
`x1`, the strongest feature, and forced into place; the challenger v2 learned every feature, so it
is clearly better on any fresh draw. Each test works in its own copy. The unit tests at the end
build predictions files by hand to check the pooling and the interval rule without MLflow.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from reproml import gate, registry
from reproml.cli import app
from reproml.config import PromoteParams
from reproml.errors import ConfigError
from reproml.metrics import metric_spec
from reproml.monitoring import shadow, store
from reproml.monitoring.labels import add_labels
from reproml.report import registry_table, verdict_table
from reproml.stages.common import load
from reproml.stages.refit import run_refit
from reproml.stages.register import run_promote
from reproml.stores.mlflow import connection
from tests.conftest import tiny_frame
from tests.test_monitoring import batch, mlflow_run, monitor, monitored_params
from tests.test_registry import NAME, pipeline

WEAK: dict[str, Any] = {"prepare.exclude_columns": ["x1"]}
STRONG: dict[str, Any] = {"prepare.exclude_columns": []}


@pytest.fixture(scope="module")
def shadow_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Champion v1 (no x1), challenger v2 (every feature)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("shadow") / "project"
        (root / "data" / "raw").mkdir(parents=True)
        (root / "params.yaml").write_text(yaml.safe_dump(monitored_params(), sort_keys=False))
        tiny_frame(2000, seed=1).to_parquet(root / "data" / "raw" / "frame.parquet", index=False)
        pipeline(root, **WEAK)
        assert run_promote(root, version=1, reason="test: a weak champion")["action"] == "force"
        pipeline(root, **STRONG)
        yield root


@pytest.fixture
def project(shadow_project: Path, tmp_path: Path) -> Path:
    root = Path(shutil.copytree(shadow_project, tmp_path / "project"))
    connection.setup(root, load(root).mlflow.experiment_name)
    return root


def promote_on_production(root: Path) -> dict[str, Any]:
    """The decision, loosely typed: the assertions index into its optional parts."""
    return cast(dict[str, Any], run_promote(root, evidence="production"))


def aliases() -> tuple[int | None, int | None]:
    found = [registry.alias_version(NAME, a) for a in (registry.CHAMPION, registry.CHALLENGER)]
    champion, challenger = (None if v is None else v.number for v in found)
    return champion, challenger


@pytest.mark.integration
def test_the_shadow_is_logged_side_by_side_and_production_evidence_promotes_a_clear_winner(
    project: Path,
) -> None:
    assert aliases() == (1, 2)
    record = monitor(project, batch(seed=10), "july")
    assert record["verdict"] in ("ok", "retrain"), record["reasons"]
    found = record["shadow"]
    assert found["version"] == 2 and found["metric"] == "roc_auc" and found["labelled_rows"] == 1000
    assert found["value"] > found["champion_value"] + 0.05
    assert found["delta"] == pytest.approx(found["value"] - found["champion_value"])
    # per row, beside the champion's scores: a paired comparison is possible later
    stored = pd.read_parquet(project / record["predictions"])
    assert len(stored) == 1000 and stored["challenger_prediction"].between(0, 1).all()
    assert (stored["challenger_version"] == 2).all() and (stored["champion_version"] == 1).all()
    assert not np.allclose(stored["challenger_prediction"], stored["prediction"])
    assert {"row", "y", "cat"} <= set(stored.columns)  # the label, and the gate's slice column
    run = mlflow_run(record)
    assert run.data.tags["reproml.shadow_version"] == "2"
    assert run.data.metrics["shadow_quality"] == pytest.approx(found["value"])
    assert run.data.metrics["shadow_champion_quality"] == pytest.approx(found["champion_value"])
    assert run.data.metrics["shadow_delta"] == pytest.approx(found["delta"])
    assert "challenger v2" in _text(verdict_table(cast(Any, record)))

    decided = promote_on_production(project)
    assert decided["action"] == "promote", decided["reason"]
    assert decided["evidence"] == "production"
    production = decided["production"]
    assert production["batches"] == [record["batch_id"]] and production["rows"] == 1000
    assert (production["challenger"], production["champion"], production["overlapping"]) == (2, 1, [])
    assert production["learned_until"] < record["batch_start"]  # v2 learned only rows before the batch
    assert set(decided["eval_data"]) == {record["predictions"]}
    numbers = decided["gate"]
    assert numbers["rows"] == 1000 and numbers["improvement"] > numbers["margin"]
    assert numbers["interval"][0] > 0
    assert numbers["improvement"] == pytest.approx(found["delta"], abs=1e-9)
    assert decided["reason"].startswith("on production evidence (1000 labelled rows in 1 monitored batch ")
    assert aliases() == (2, 2)
    on_disk = json.loads((project / decided["record"]).read_text())
    assert on_disk["evidence"] == "production" and on_disk["production"]["batches"] == [record["batch_id"]]
    assert "production evidence" in _text(registry_table(project))
    # v2 is the champion now: nothing shadows it
    after = monitor(project, batch(seed=11, day=1), "july-2")
    assert after["shadow"] is None and "shadow_skipped" not in after
    assert "challenger_prediction" not in pd.read_parquet(project / after["predictions"]).columns
    # refit on its whole window, v3 is the champion; v2, still aliased challenger, is what it refits
    run_refit(project)
    assert aliases() == (3, 2)
    refitted = monitor(project, batch(seed=12, day=2), "july-3")
    assert refitted["champion"]["version"] == 3
    assert refitted["shadow"] is None and "shadow_skipped" not in refitted


@pytest.mark.integration
def test_without_labelled_evidence_nothing_is_promoted_until_the_labels_arrive(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="--evidence 'both'"):
        run_promote(project, evidence="both")
    monkeypatch.chdir(project)
    # the CLI points TMPDIR inside the project (reproml.env.keep_inside): undo that after the test
    monkeypatch.setenv("TMPDIR", os.environ.get("TMPDIR", tempfile.gettempdir()))
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    result = CliRunner().invoke(app, ["promote", "--evidence", "production"])
    assert result.exit_code == 0 and "reject" in result.output, result.output
    nothing = cast(dict[str, Any], registry.history(project)[-1])
    assert nothing["action"] == "reject" and "not enough evidence" in nothing["reason"]
    assert nothing["production"]["rows"] == 0 and nothing["production"]["batches"] == []
    assert "gate" not in nothing

    unlabelled = monitor(project, batch(seed=20, labelled=False), "august")
    found = unlabelled["shadow"]
    assert found["version"] == 2 and found["labelled_rows"] == 0
    assert found["value"] is None and found["delta"] is None and "labels arrive" in found["note"]
    waiting = promote_on_production(project)
    assert waiting["action"] == "reject" and "no labelled batch was scored by both" in waiting["reason"]
    assert aliases() == (1, 2)

    labels = project / "data" / "august-labels.parquet"
    batch(seed=20).to_parquet(labels, index=False)
    params = load(project)
    late = cast(dict[str, Any], add_labels(project, params, unlabelled["batch_id"], str(labels)))
    assert late["shadow"]["labelled_rows"] == 1000 and late["shadow"]["delta"] > 0.05
    run = mlflow_run(late)
    assert run.data.metrics["shadow_delta"] == pytest.approx(late["shadow"]["delta"])
    decided = promote_on_production(project)
    assert decided["action"] == "promote", decided["reason"]
    assert decided["production"]["batches"] == [unlabelled["batch_id"]]


@pytest.mark.integration
def test_a_challenger_equal_to_the_champion_is_refused_on_production_evidence(project: Path) -> None:
    champion = registry.alias_version(NAME, registry.CHAMPION)
    assert champion is not None and champion.run_id
    experiment_id = connection.setup(project, load(project).mlflow.experiment_name)
    uri = MlflowClient().get_run(champion.run_id).data.tags["reproml.model_uri"]
    same = registry.register(champion.run_id, NAME, experiment_id, uri)  # v3: the champion's own model
    assert aliases() == (1, 3)
    record = monitor(project, batch(seed=30), "september")
    assert record["shadow"]["version"] == 3 and record["shadow"]["delta"] == 0.0
    decided = promote_on_production(project)
    assert decided["action"] == "reject" and "tie" in decided["reason"], decided["reason"]
    assert decided["production"]["rows"] == 1000 and int(same.version) == 3
    assert aliases() == (1, 3)


@pytest.mark.integration
def test_a_challenger_that_cannot_be_loaded_does_not_stop_the_champions_monitoring(
    project: Path, tmp_path: Path
) -> None:
    foreign = MlflowClient().create_model_version(NAME, (tmp_path / "elsewhere" / "model").as_uri())
    MlflowClient().set_registered_model_alias(NAME, registry.CHALLENGER, foreign.version)
    record = monitor(project, batch(seed=40), "october")
    assert record["verdict"] in ("ok", "retrain") and record["quality"] is not None
    assert record["shadow"] is None and "outside this project's artifact root" in record["shadow_skipped"]
    stored = pd.read_parquet(project / record["predictions"])
    assert len(stored) == 1000 and "challenger_prediction" not in stored.columns
    run = mlflow_run(record)
    assert run.info.status == "FINISHED" and "reproml.shadow_version" not in run.data.tags
    assert "outside this project" in run.data.tags["reproml.shadow_skipped"]
    assert "challenger not scored" in _text(verdict_table(cast(Any, record)))


def _text(table: Any) -> str:
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(table)
    return console.export_text()


# pure parts: predictions files written by hand


def stored_frame(rows: int, seed: int, noise: float, challenger: int = 2, champion: int = 1) -> pd.DataFrame:
    """A predictions file: two models reading the same signal, each with its own `noise`: equal in
    expectation, different row by row."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=rows)
    signal = y * 0.3 + rng.uniform(0.0, 0.7, size=rows)
    return pd.DataFrame(
        {
            "row": np.arange(rows),
            "prediction": np.clip(signal + rng.normal(scale=noise, size=rows), 0, 1),
            "y": y,
            "champion_version": champion,
            "challenger_prediction": np.clip(signal + rng.normal(scale=noise, size=rows), 0, 1),
            "challenger_version": challenger,
        }
    )


def write_batch(
    root: Path, batch_id: str, seq: int, frame: pd.DataFrame, start: str = "2022-07-01T00:00:00"
) -> None:
    path = store.predictions(NAME) / f"{batch_id}.parquet"
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(root / path, index=False)
    spec = metric_spec(None, "classification")
    record: Any = {
        "batch_id": batch_id,
        "seq": seq,
        "batch_start": start,
        "champion": {"name": NAME, "version": int(frame["champion_version"].iloc[0])},
        "predictions": str(path),
        "shadow": shadow.compare(frame, "y", spec, None, 200),
    }
    store.write_record(root, NAME, record)


def test_the_pool_takes_only_batches_this_challenger_shadowed_for_this_champion(tmp_path: Path) -> None:
    write_batch(tmp_path, "a", 1, stored_frame(300, 1, 0.05))
    write_batch(tmp_path, "b", 2, stored_frame(300, 2, 0.05, challenger=3))  # another challenger
    write_batch(tmp_path, "c", 3, stored_frame(300, 3, 0.05, champion=4))  # another champion
    unlabelled = stored_frame(300, 4, 0.05)
    unlabelled["y"] = np.nan
    write_batch(tmp_path, "d", 4, unlabelled)
    write_batch(tmp_path, "e", 5, stored_frame(900, 5, 0.05))
    backfilled = "2022-05-31T23:00:00+00:00"  # monitored late: it starts inside what a model learned
    write_batch(tmp_path, "f", 6, stored_frame(300, 6, 0.05), start=backfilled)
    pooled = shadow.pool(tmp_path, NAME, 2, 1, "y", 500, 0, learned_until="2022-06-01T00:00:00")
    assert pooled.batches == ["a", "e"] and pooled.rows == 300 + 500  # e sampled to sample_rows
    assert set(pooled.sources) == {f"monitoring/{NAME}/predictions/{b}.parquet" for b in ("a", "e")}
    assert pooled.to_dict() == {
        "challenger": 2,
        "champion": 1,
        "batches": ["a", "e"],
        "rows": 800,
        "learned_until": "2022-06-01T00:00:00",
        "overlapping": ["f"],
    }
    unscored = shadow.compare(unlabelled, "y", metric_spec(None, "classification"), None, 200)
    assert unscored["labelled_rows"] == 0 and unscored["value"] is None


def test_a_noisy_equal_challenger_has_an_interval_including_zero_and_is_refused(tmp_path: Path) -> None:
    """Two models equal in expectation: the challenger comes out ahead on these rows, not clearly."""
    for k in range(3):
        write_batch(tmp_path, f"b{k}", k, stored_frame(400, 28 + k, 0.1))
    pooled = shadow.pool(tmp_path, NAME, 2, 1, "y", sample_rows=5000, seed=0)
    frame = pooled.frame
    y, theirs = frame["y"].to_numpy(), frame["prediction"].to_numpy()
    ours = shadow.challenger_scores(frame, None)
    result = gate.decide(y, ours, theirs, PromoteParams(margin=0.0, bootstrap_samples=300), "classification")
    assert pooled.rows == 1200 and not result.promote
    assert result.improvement is not None and result.improvement > 0, result.reason
    assert result.interval is not None and result.interval[0] <= 0.0 < result.interval[1]
    assert "includes 0" in result.reason


def test_a_multiclass_shadow_is_compared_on_its_probability_columns() -> None:
    from reproml.monitoring import scores

    rng = np.random.default_rng(5)
    classes = ["a", "b", "c"]
    y = rng.choice(classes, size=600)
    truth = (y[:, None] == np.array(classes)[None, :]).astype(float)
    sharp = (truth * 2 + rng.uniform(size=(600, 3))) / 3
    blurred = (truth * 0.5 + rng.uniform(size=(600, 3))) / 1.5
    stored = scores.columns(blurred / blurred.sum(axis=1, keepdims=True), classes)
    challenger = scores.columns(sharp / sharp.sum(axis=1, keepdims=True), classes).add_prefix(shadow.PREFIX)
    challenger[shadow.VERSION_COLUMN] = 7
    stored = pd.concat([stored.assign(y=y, champion_version=6), challenger], axis=1)
    found = shadow.compare(stored, "y", metric_spec(None, "multiclass"), classes, 200)
    assert found["metric"] == "roc_auc_ovr" and found["version"] == 7 and found["labelled_rows"] == 600
    assert found["value"] is not None and found["champion_value"] is not None
    assert found["value"] > found["champion_value"] and found["delta"] == pytest.approx(
        found["value"] - found["champion_value"]
    )
