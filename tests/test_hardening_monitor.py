"""Issue 12, monitoring's part: verified reads of the DVC cache, unseen categories, back-dated batches.

One real project for the module (tests/project.py: git, `dvc repro` on a sample of the flights,
`dvc push` to the project's own DVC remote, `reproml promote`), so the champion's training split
lies in a real DVC cache and remote. Each test starts with no monitoring records and puts back
whatever cache object or working file it broke.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.pipeline import Pipeline

from reproml.config import MonitorParams
from reproml.features import FeatureSpec, build_preprocessor, category_levels
from reproml.io import file_md5
from reproml.monitoring import decision, drift, quality, store
from reproml.monitoring.records import BatchRecord
from reproml.reproduce import reproduce
from reproml.stages.monitor import run_monitor
from reproml.stores.dvc import CorruptCacheError
from tests.project import BIN, PIPELINE_RUNS, Project, sampled_params

TRAIN = "data/prepared/train.parquet"
PRODUCTION = "data/prepared/production.parquet"


def params() -> dict[str, Any]:
    values = sampled_params(6000)  # ~500 flights a month in July-December
    values["tune"]["n_trials"] = 2
    # a 6,000-flight sample sees few tail numbers: most of a month's are new, and would quarantine it
    values["monitor"].update({"min_rows": 200, "bootstrap_samples": 200, "max_unseen_category_share": 0.9})
    values["promote"].update({"bootstrap_samples": 200, "floor": 0.5})
    return values


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Project:
    p = Project(tmp_path_factory.mktemp("hardening-monitor"), params())
    p.run("dvc", "repro")
    p.run("dvc", "push", "--quiet")
    p.run("reproml", "promote")
    p.commit("pipeline")
    return p


@pytest.fixture
def project(built: Project) -> Iterator[Project]:
    """The module's project with no monitoring records (history decides `out_of_order`)."""
    for folder in ("flights-late", "workspace"):  # the model's history, and Evidently's workspace
        shutil.rmtree(built.root / "monitoring" / folder, ignore_errors=True)
    yield built


def champion_md5(p: Project) -> str:
    """The md5 of the training split recorded on the champion's run (what monitoring reads)."""
    client = MlflowClient(tracking_uri=p.tracking_uri())
    run_id = str(client.get_model_version_by_alias("flights-late", "champion").run_id)
    return str(client.get_run(run_id).data.tags[f"reproml.data.{TRAIN}"])


def objects(p: Project, md5: str) -> tuple[Path, Path]:
    """The DVC 3 object of `md5` in the project's cache and in its remote (`dvc-storage/`)."""
    relative = Path("files") / "md5" / md5[:2] / md5[2:]
    return p.root / ".dvc" / "cache" / relative, p.root / "dvc-storage" / relative


def other_version(content: bytes) -> bytes:
    """A valid Parquet file with 100 rows fewer: bytes a reader takes without complaint."""
    altered = io.BytesIO()
    frame = pd.read_parquet(io.BytesIO(content))
    frame.iloc[: len(frame) - 100].to_parquet(altered, index=False)
    return altered.getvalue()


def replace_bytes(path: Path, content: bytes) -> None:
    """Swap a read-only DVC object's content without touching files linked to the old inode."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(content)
    fresh.chmod(0o444)
    os.replace(fresh, path)


def no_record(p: Project) -> bool:
    return not list((p.root / store.records("flights-late")).glob("*.json"))


# --- md5 verified on every read from the DVC cache ------------------------------------------------


def test_monitor_refuses_a_corrupt_cache_object_and_names_it(project: Project) -> None:
    md5 = champion_md5(project)
    cached, _ = objects(project, md5)
    original = cached.read_bytes()
    altered = other_version(original)
    replace_bytes(cached, altered)
    try:
        with pytest.raises(CorruptCacheError) as refused:
            run_monitor(project.root, "2013-08")
    finally:
        replace_bytes(cached, original)
    message = str(refused.value)
    assert str(cached) in message and TRAIN in message
    assert f"expected md5 {md5}" in message and f"have md5 {hashlib.md5(altered).hexdigest()}" in message
    assert "dvc pull" in message and "rm -f" in message
    assert no_record(project)  # nothing judged against the wrong reference


def test_reproduce_refuses_a_corrupt_cache_object_and_names_it(project: Project) -> None:
    md5 = champion_md5(project)
    cached, _ = objects(project, md5)
    original = cached.read_bytes()
    altered = other_version(original)
    run_id = pipeline_run_id(project)
    replace_bytes(cached, altered)
    try:
        with pytest.raises(CorruptCacheError) as refused:
            reproduce(project.root, run_id)
    finally:
        replace_bytes(cached, original)
    message = str(refused.value)
    assert f"run {run_id} cannot be rebuilt" in message and str(cached) in message
    assert f"expected md5 {md5}" in message and f"have md5 {hashlib.md5(altered).hexdigest()}" in message
    assert not (project.root / ".reproml" / "reproduce" / run_id).exists()


def test_a_missing_object_is_fetched_from_the_remote_verified_and_used(project: Project) -> None:
    md5 = champion_md5(project)
    cached, remote = objects(project, md5)
    working = project.root / TRAIN
    kept = working.read_bytes()
    cached.unlink()
    working.unlink()  # neither the cache nor the working file has the champion's training split
    try:
        record = run_monitor(project.root, "2013-08")
    finally:
        working.write_bytes(kept)
        if not cached.exists():  # the next test needs the object whatever happened here
            replace_bytes(cached, kept)
    assert record["verdict"] != "quarantined", record["reasons"]
    assert record["reference"]["train"]["md5"] == md5 and record["drift"] is not None
    assert cached.is_file() and file_md5(cached) == md5 == file_md5(remote)


def test_an_object_fetched_corrupt_from_the_remote_is_refused(project: Project) -> None:
    md5 = champion_md5(project)
    cached, remote = objects(project, md5)
    working = project.root / TRAIN
    original = cached.read_bytes()
    cached.unlink()
    working.unlink()
    replace_bytes(remote, other_version(original))
    try:
        with pytest.raises(CorruptCacheError) as refused:
            run_monitor(project.root, "2013-08")
    finally:
        replace_bytes(remote, original)
        cached.unlink(missing_ok=True)
        replace_bytes(cached, original)
        working.write_bytes(original)
    message = str(refused.value)
    assert "DVC remote 'storage'" in message and str(cached) in message and f"expected md5 {md5}" in message
    assert no_record(project)


def pipeline_run_id(p: Project) -> str:
    client = MlflowClient(tracking_uri=p.tracking_uri())
    experiment = client.get_experiment_by_name("reproml")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], PIPELINE_RUNS, max_results=1)
    return str(runs[0].info.run_id)


# --- unseen categories: missing to the model, "(unseen)" to the drift check -------------------------


SPEC = FeatureSpec(numeric=["x"], categorical=["cat"], time_column=None, date_parts=[])


def category_frame(values: list[Any]) -> pd.DataFrame:
    return pd.DataFrame({"x": np.linspace(0.0, 1.0, len(values)), "cat": values})


@pytest.mark.parametrize("model", ["xgboost", "hist_gradient_boosting", "logistic"])
def test_never_seen_categories_are_missing_to_the_model_and_unseen_to_the_drift_check(model: str) -> None:
    """Training: a and b frequent, c and d rare (max_categories 3 keeps two), some missing. A batch
    whose categories were never seen gets exactly the model input of a missing category, and the
    drift check puts those rows in "(unseen)", not with the rare known ones in "(other)"."""
    train = category_frame(["a"] * 50 + ["b"] * 30 + ["c"] * 8 + ["d"] * 7 + [None] * 5)
    fitted = Pipeline([("preprocess", build_preprocessor(SPEC, model, 3).fit(train[SPEC.input_columns]))])
    levels = category_levels(fitted)
    assert levels is not None and levels["cat"].kept == {"a", "b"} and levels["cat"].pooled == {"c", "d"}

    never = category_frame(["zz-new", "yy-new", "xx-new", "ww-new"])
    missing = never.assign(cat=pd.Series([None, np.nan, pd.NA, None], dtype=object))
    rare = never.assign(cat=["c", "d", "c", "d"])
    model_input = {name: fitted.transform(f[SPEC.input_columns]) for name, f in
                   (("never", never), ("missing", missing), ("rare", rare))}  # fmt: skip
    np.testing.assert_array_equal(model_input["never"], model_input["missing"])  # unseen == missing
    if model != "logistic":  # (one-hot pools a rare "(missing)" with the infrequent values too)
        assert not np.array_equal(model_input["never"], model_input["rare"])  # not the infrequent code

    assert drift.bucket(never["cat"], levels["cat"]).tolist() == [drift.UNSEEN] * 4
    assert drift.bucket(rare["cat"], levels["cat"]).tolist() == [drift.OTHER] * 4
    assert drift.bucket(missing["cat"], levels["cat"]).isna().all()


def test_a_shift_from_rare_to_never_seen_values_is_drift() -> None:
    """The rare known values of the reference replaced by new ones: the model's input changed
    (infrequent code -> missing) and the drift check measures it; pooled with "(other)", as
    before, the distance was zero. The quality gate counts the same rows as unseen."""
    rng = np.random.default_rng(0)
    values = rng.choice(["a", "b", "c", "d", "e"], size=2000, p=[0.4, 0.3, 0.1, 0.1, 0.1])
    reference = pd.DataFrame({"x": rng.normal(size=2000), "cat": values, "y": rng.integers(0, 2, 2000)})
    batch = reference.assign(cat=reference["cat"].where(reference["cat"].isin(["a", "b"]), "brand-new"))
    schema = quality.schema_of(reference, ["x", "cat"], None, "y", "classification")
    fitted = Pipeline([("preprocess", build_preprocessor(SPEC, "xgboost", 3).fit(reference[["x", "cat"]]))])
    levels = category_levels(fitted)
    assert levels is not None
    importance = {"x": 0.5, "cat": 0.5}
    measured = drift.measure(reference.assign(prediction=0.5), batch.assign(prediction=0.5), schema,
                             importance, levels, 0.1, 0.01, 50)  # fmt: skip
    assert "cat" in measured.drifted and "x" not in measured.drifted
    gate = quality.check(batch, reference, schema, MonitorParams(max_unseen_category_share=0.5))
    unseen = (drift.bucket(batch["cat"], levels["cat"]) == drift.UNSEEN).mean()
    assert gate.columns["cat"]["unseen_share"] == pytest.approx(unseen) == pytest.approx(0.3, abs=0.03)


# --- back-dated batches -------------------------------------------------------------------------------


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_a_back_dated_period_is_out_of_order_unless_backfilled(project: Project) -> None:
    august = run_monitor(project.root, "2013-08")
    assert august["verdict"] != decision.OUT_OF_ORDER
    july = run_monitor(project.root, "2013-07")
    assert july["verdict"] == decision.OUT_OF_ORDER, july["reasons"]
    reason = july["reasons"][0]
    assert "2013-07-01" in reason and "2013-07-31" in reason  # this batch's period
    assert "batch 2013-08 already monitored (2013-08-01" in reason and "2013-08-31" in reason
    assert july["drift"] is None and july["predictions"] is None and july["labelled"] is None
    run = MlflowClient().get_run(july["mlflow"]["run_id"])
    assert run.data.tags["reproml.verdict"] == decision.OUT_OF_ORDER and run.data.metrics["retrain"] == 0.0

    done = project.run("reproml", "monitor", "--batch", "2013-07", "--backfill", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    backfilled = json.loads((project.root / store.record_path("flights-late", "2013-07")).read_text())
    assert backfilled["verdict"] != decision.OUT_OF_ORDER and backfilled["backfill"] is True
    assert backfilled["drift"] is not None and backfilled["predictions"] is not None


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_a_file_batch_with_older_times_is_out_of_order_and_the_flow_can_backfill_it(
    project: Project, prefect_api: str
) -> None:
    run_monitor(project.root, "2013-08")
    production = pd.read_parquet(project.root / PRODUCTION)
    late = production[production["time_hour"] < pd.Timestamp("2013-07-20")]
    (project.root / "data" / "incoming").mkdir(exist_ok=True)
    late.to_parquet(project.root / "data" / "incoming" / "late.parquet", index=False)
    record = run_monitor(project.root, "data/incoming/late.parquet")
    assert record["verdict"] == decision.OUT_OF_ORDER, record["reasons"]
    assert "older than batch 2013-08" in record["reasons"][0]

    script = (
        "import json\n"
        "from flows.monitoring import monitoring\n"
        "out = monitoring(root='.', batch='data/incoming/late.parquet', retrain=False, backfill=True)\n"
        "print('RESULT=' + json.dumps(out, default=str))\n"
    )
    env = {**project.env, "PREFECT_API_URL": prefect_api, "PREFECT_SERVER_EPHEMERAL_ENABLED": "false"}
    done = subprocess.run([str(BIN / "python"), "-c", script], cwd=project.root, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT="))
    out = json.loads(line.removeprefix("RESULT="))
    assert out["batch"] == record["batch_id"] and out["verdict"] != decision.OUT_OF_ORDER
    assert out["weighted_drift_share"] is not None  # measured like any batch


WATCH = MonitorParams(cooldown_unit="batches", cooldown=2, retrain_period=10, max_retrains=2)


def evidence(seq: int, late: str | None = None) -> decision.Evidence:
    drifted = drift.DriftResult(0.1, 1000, 1000, [], None, 1.0, 1.0, "importance")
    return decision.Evidence(True, [], 1000, 0, drifted, None, pd.Timestamp("2013-08-01"), seq, late)


def past(verdict: str, seq: int) -> BatchRecord:
    return {"verdict": verdict, "seq": seq, "batch_id": f"b{seq}", "batch_time": "2013-08-01T00:00:00"}


def test_out_of_order_batches_count_neither_for_the_cooldown_nor_the_cap() -> None:
    turned_away = decision.decide(evidence(2, late="back-dated: ...; not measured"), WATCH, [])
    assert turned_away.verdict == decision.OUT_OF_ORDER and turned_away.triggers == {}
    # retrain, one ordinary batch, then two back-dated ones: one batch since the retrain, not three
    history = [past(decision.RETRAIN, 1), past(decision.OK, 2)] + [
        past(decision.OUT_OF_ORDER, s) for s in (3, 4)
    ]
    held = decision.decide(evidence(5), WATCH, history)
    assert held.verdict == decision.HELD and held.loop_guard["since_last_retrain"] == 1
    after = [*history, past(decision.OK, 5)]
    assert decision.decide(evidence(6), WATCH, after).verdict == decision.RETRAIN  # two real batches
    # and the cap counts retrain verdicts only
    capped = [past(decision.RETRAIN, 1), *(past(decision.OUT_OF_ORDER, s) for s in range(2, 9))]
    assert decision.decide(evidence(12), WATCH, capped).loop_guard["retrains_in_period"] == 1
