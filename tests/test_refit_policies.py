"""Retrains that learn the newest data, the drift reference that follows what the champion learned,
and the retrain policies side by side (issue 16).

Unit tests on tiny frames: the refit's round count and rows, what a model learned and the recent
window of it, the policies' table, page and plot. The registry side (a refit becoming the champion
through the audit trail, the gate scoring its promoted parent) runs the real stages on a real
MLflow store in `test_a_promoted_challenger_is_refit_on_the_whole_window`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from reproml import learned, registry, simulation
from reproml.config import parse_params
from reproml.errors import ConfigError, ReproError
from reproml.features import FeatureSpec
from reproml.fitting import fit_model, refit_model, refit_rounds
from reproml.monitoring import champion
from reproml.monitoring.records import BatchSummary
from reproml.retrain import TrainingSummary
from reproml.simulation import SimulationRow
from tests.conftest import default_params, tiny_frame


def _params(model: str = "xgboost") -> Any:
    raw = default_params()
    raw["data"].update({"target": "y", "task": "classification", "time_column": "when", "path": "x.parquet"})
    raw["train"]["model"] = model
    raw["train"]["xgboost"].update({"n_estimators": 300, "learning_rate": 0.3, "early_stopping_rounds": 5})
    raw["train"]["n_jobs"] = 1
    return parse_params(raw, "test params")


SPEC = FeatureSpec(numeric=["x1", "x2"], categorical=["cat"], time_column="when", date_parts=["hour"])


def test_the_refit_trains_the_early_stopped_round_count_on_every_row() -> None:
    frame = tiny_frame(900, seed=3)
    train, valid, test = frame.iloc[:500], frame.iloc[500:700], frame.iloc[700:]
    params = _params()
    gated = fit_model(train, valid, SPEC, params)
    rounds = refit_rounds(gated.best_iteration)
    assert gated.best_iteration is not None and rounds == gated.best_iteration + 1 < 300
    whole = pd.concat([train, valid, test], ignore_index=True)
    refit = refit_model(whole, SPEC, params, rounds)
    booster = refit.pipeline.named_steps["model"].get_booster()
    assert booster.num_boosted_rounds() == rounds  # no early stopping, exactly the gated count
    assert refit.pipeline.named_steps["model"].n_features_in_ > 0
    # the newest rows were learned: the refit fits the test split better than the gated model did
    from sklearn.metrics import log_loss

    newest = test[SPEC.input_columns]
    assert log_loss(test["y"], refit.pipeline.predict_proba(newest)[:, 1]) < log_loss(
        test["y"], gated.pipeline.predict_proba(newest)[:, 1]
    )
    # a boosting refit without a round count is refused; a model without rounds fits as usual
    with pytest.raises(ValueError, match="round count"):
        refit_model(whole, SPEC, params, None)
    plain = refit_model(whole, SPEC, _params("logistic"), None)
    assert plain.best_iteration is None and plain.pipeline.predict_proba(newest).shape == (len(test), 2)
    assert refit_rounds(None) is None


def test_what_a_model_learned_names_rows_time_range_and_one_data_hash() -> None:
    frame = tiny_frame(100)
    splits = {"data/prepared/valid.parquet": "b" * 32, "data/prepared/train.parquet": "a" * 32}
    what = learned.describe(frame, splits, "when", "refit")
    assert what["rows"] == 100 and what["kind"] == "refit"
    assert what["first"] == "2021-01-01T00:00:00" and what["last"] == frame["when"].max().isoformat()
    # one digest for the versions, whatever order they were listed in, and another for other data
    assert what["data_hash"] == learned.data_hash(dict(reversed(list(splits.items()))))
    assert what["data_hash"] != learned.data_hash({**splits, "data/prepared/test.parquet": "c" * 32})
    assert learned.parse(json.dumps(what), "run x") == what
    assert learned.parse(None, "run x") is None
    with pytest.raises(ReproError, match=r"run x: tag reproml\.learned is not JSON"):
        learned.parse("{oops", "run x")
    with pytest.raises(ReproError, match="names no learned splits"):
        learned.parse(json.dumps({"splits": {}}), "run x")
    assert "100 rows" in learned.summary(what) and what["data_hash"][:12] in learned.summary(what)


def test_the_drift_reference_is_the_newest_days_of_what_was_learned() -> None:
    frame = tiny_frame(400)  # 100 days, four rows a day
    last = frame["when"].max()
    recent = learned.recent(frame, "when", 10)
    assert recent["when"].min() > last - pd.Timedelta(days=10) and recent["when"].max() == last
    assert len(recent) == 40
    assert len(learned.recent(frame, "when", None)) == 400  # null: all of it
    assert len(learned.recent(frame, None, 10)) == 400  # undated data: all of it
    assert len(learned.recent(frame, "when", 1000)) == 400


def _champion(tmp_path: Path, parts: dict[str, pd.DataFrame], learned_tag: bool) -> champion.Champion:
    from reproml.io import file_md5

    md5 = {}
    for name, part in parts.items():
        path = f"data/prepared/{name}.parquet"
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        part.to_parquet(tmp_path / path, index=False)
        md5[path] = file_md5(tmp_path / path)
    what = learned.describe(pd.concat(parts.values()), md5, "when", "refit") if learned_tag else None
    return champion.Champion(
        name="m", version=2, run_id="r", model=None, input_columns=["x1"], target="y", task="classification",
        time_column="when", max_categories=8, importance={}, data_md5={champion.TRAIN: md5[champion.TRAIN],
        champion.TEST: md5[champion.TEST]}, learned=what,
    )  # fmt: skip


def test_a_refit_champions_reference_holds_its_newest_rows(tmp_path: Path) -> None:
    frame = tiny_frame(600)
    parts = {"train": frame.iloc[:400], "valid": frame.iloc[400:500], "test": frame.iloc[500:]}
    refit = _champion(tmp_path, parts, learned_tag=True)
    loaded = champion.load_learned(tmp_path, refit, "champion v2")
    assert len(loaded) == 600 and loaded["when"].is_monotonic_increasing
    window = learned.recent(loaded, "when", 15)
    assert window["when"].min() > parts["valid"]["when"].max()  # the newest batch, not January
    # a model from before the tag learned its train split only
    plain = _champion(tmp_path, parts, learned_tag=False)
    assert list(plain.learned_splits) == [champion.TRAIN]
    assert len(champion.load_learned(tmp_path, plain, "champion v1")) == 400


def test_the_reference_window_is_a_validated_monitor_param() -> None:
    raw = default_params()
    assert parse_params(raw, "p").monitor.reference_days == 60
    raw["monitor"]["reference_days"] = None
    assert parse_params(raw, "p").monitor.reference_days is None
    raw["monitor"]["reference_days"] = 0
    with pytest.raises(ConfigError, match="reference_days"):
        parse_params(raw, "p")


def test_policies_are_parsed_and_decide_which_batches_retrain() -> None:
    assert simulation.parse_policies(" never, always,reproml,never") == ["never", "always", "reproml"]
    with pytest.raises(ConfigError, match="unknown policy \\['sometimes'\\]"):
        simulation.parse_policies("never,sometimes")
    assert not simulation.wants_retrain("never", "retrain")
    assert simulation.wants_retrain("always", "ok") and simulation.wants_retrain("always", "retrain_held")
    assert not simulation.wants_retrain("always", "quarantined")
    assert not simulation.wants_retrain("always", "insufficient_data")
    assert simulation.wants_retrain("reproml", "retrain") and not simulation.wants_retrain("reproml", "ok")


def _rows(qualities: list[float], retrained: list[bool], seconds: float = 60.0) -> list[SimulationRow]:
    return [
        {"batch": f"2013-{7 + i:02d}", "quality": q, "verdict": "retrain" if r else "ok",
         "retrain": "promote v3, refit v4" if r else "-", "retrain_seconds": seconds if r else None,
         "summary": "weighted feature drift 0.5 >= 0.4 <b>" if r else "no trigger", "reasons": [],
         "rows": 100, "weighted_drift_share": None, "drift_share": None, "baseline": None,
         "metric": "roc_auc", "data_version": None, "champion_before": 3, "champion": 4}
        for i, (q, r) in enumerate(zip(qualities, retrained, strict=True))
    ]  # fmt: skip


def test_the_policies_table_has_quality_mean_retrains_and_compute(tmp_path: Path) -> None:
    never = simulation.policy_summary("never", _rows([0.70, 0.68, 0.66], [False] * 3), 30.0)
    always = simulation.policy_summary("always", _rows([0.70, 0.71, 0.69], [True] * 3), 400.0)
    ours = simulation.policy_summary("reproml", _rows([0.70, 0.71, 0.70], [True, False, False]), 150.0)
    assert never["mean"] == pytest.approx(0.68) and never["retrains"] == 0
    assert always["retrains"] == 3 and always["promotions"] == 3 and always["training_seconds"] == 180.0
    assert ours["retrains"] == 1 and ours["quality"]["2013-08"] == 0.71
    table = simulation.compare([never, always, ours])
    assert table["batches"] == ["2013-07", "2013-08", "2013-09"]
    line = {s["policy"]: s for s in table["policies"]}
    assert line["reproml"]["vs_never"] == pytest.approx(0.7033333 - 0.68, abs=1e-6)
    assert line["never"]["vs_never"] == 0.0
    verdicts = simulation.verdict_lines(_rows([0.70, 0.71], [True, False]))
    files = simulation.write_policies(tmp_path, table, "roc_auc", verdicts, "policies <&>")
    md = files["md"].read_text()
    assert "| reproml | 0.7000 | 0.7100 | 0.7000 | 0.7033 | +0.0233 | 1 | 1 | 60.0 | 150.0 |" in md
    assert "| 2013-07 | retrain | promote v3, refit v4 | weighted feature drift 0.5 >= 0.4 <b> |" in md
    page = files["html"].read_text()
    assert "<svg" in page and "policies &lt;&amp;&gt;" in page and "0.4 &lt;b&gt;" in page
    assert "<b>" not in page.split("<svg")[0]
    assert files["svg"].read_text().startswith("<svg")
    stored = json.loads(files["json"].read_text())
    assert [s["policy"] for s in stored["policies"]] == ["never", "always", "reproml"]


def test_a_refit_row_names_the_refit_and_its_reason() -> None:
    outcome: BatchSummary = {
        "batch": "2013-07", "rows": 10, "verdict": "retrain", "quality": 0.7, "summary": "drift",
        "retrain": cast(TrainingSummary, {  # only the parts `row` reads
            "promotion": {"action": "promote", "reason": "better"}, "challenger": {"version": 3},
            "refit": {"version": 4, "decision": {"reason": "refit of v3 on 9 rows"}}}),
        "retrain_seconds": 12.5,
    }  # fmt: skip
    row = simulation.row(outcome, 0.69, 4)
    assert row["retrain"] == "promote v3, refit v4" and row["retrain_seconds"] == 12.5
    assert "refit: refit of v3 on 9 rows" in row["reasons"] and row["summary"] == "drift"


@pytest.mark.integration
def test_a_promoted_challenger_is_refit_on_the_whole_window(make_project: Any) -> None:
    from reproml.stages.refit import run_refit
    from reproml.stages.register import run_promote
    from tests.test_registry import NAME, pipeline, project_params

    root = make_project(project_params(), files={"data/raw/frame.parquet": tiny_frame(2000, seed=1)})
    first = pipeline(root)
    assert run_promote(root)["action"] == "promote"
    out = run_refit(root)
    champ = registry.alias_version(NAME, registry.CHAMPION)
    assert champ is not None and int(champ.version) == out["version"] == first["version"] + 1
    splits = [pd.read_parquet(root / f"data/prepared/{s}.parquet") for s in ("train", "valid", "test")]
    what = json.loads(champ.tags[learned.TAG])
    assert what["rows"] == sum(len(s) for s in splits) and what["kind"] == "refit"
    assert what["last"] == splits[2]["when"].max().isoformat()  # the newest labelled rows
    assert json.loads(champ.tags["reproml.refit_of"])["version"] == first["version"]
    run = MlflowClient().get_run(out["run_id"])
    assert json.loads(run.data.tags[learned.TAG]) == what and run.data.metrics["refit_rows"] == what["rows"]
    assert run.data.metrics["refit_rounds"] == out["rounds"]
    # the audit trail: one `refit` record saying what the new champion learned and what it refits
    record = registry.history(root)[-1]
    challenger = record.get("challenger")
    assert record["action"] == "refit" and challenger is not None and challenger.get("learned") == what
    assert challenger.get("refit_of", {}).get("version") == first["version"]
    previous = registry.alias_version(NAME, registry.PREVIOUS)
    assert previous is not None and int(previous.version) == first["version"]
    # the refit is no challenger: a later gate (a DVC-cached `dvc repro` registers nothing) judges
    # the pipeline's own registered model, never a refit
    still = registry.alias_version(NAME, registry.CHALLENGER)
    assert still is not None and int(still.version) == first["version"]
    with pytest.raises(ReproError, match="already a refit"):
        run_refit(root)


@pytest.mark.integration
@pytest.mark.slow
def test_the_gate_scores_a_refit_champions_promoted_parent(make_project: Any) -> None:
    """The refit learned one batch more than any challenger can have: the gate scores its parent."""
    from reproml.stages.refit import run_refit
    from reproml.stages.register import run_promote
    from tests.test_registry import pipeline, project_params

    root = make_project(project_params(), files={"data/raw/frame.parquet": tiny_frame(2000, seed=1)})
    first = pipeline(root)
    assert run_promote(root)["action"] == "promote"
    out = run_refit(root)
    pipeline(root, **{"train.xgboost": {**project_params()["train"]["xgboost"], "max_depth": 2}})
    decision = run_promote(root)
    judged = decision.get("champion_judged_as")
    assert judged is not None and judged["version"] == first["version"]
    assert f"champion v{out['version']} is a refit of v{first['version']}" in decision["reason"]


def test_simulate_refuses_an_unknown_policy_before_anything_starts(
    make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from reproml import cli

    root = make_project()
    monkeypatch.chdir(root)
    result = CliRunner().invoke(cli.app, ["simulate", "--policies", "never,sometimes"])
    assert result.exit_code == 2, result.output
    assert "unknown policy ['sometimes']" in result.output and "never, always, reproml" in result.output
    assert "Traceback" not in result.output
    assert not (root / ".reproml" / "servers").exists()  # no Prefect server started for it
