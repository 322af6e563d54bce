"""README's "Your own data", step by step, in one project that ran the bundled pipeline first.

The project does what `make run` does on a sample of the flights (`dvc repro`, `reproml promote`,
one monitored month, which leaves a labelled window of flights), then a user switches params.yaml to
their own CSV exactly as README says (the `data:` and `prepare:` keys) and runs the loop again:
`dvc repro`, `reproml promote`, `reproml monitor --batch` (a period of a dated set, a file of an
undated one). Each data source must get its own registered model (`<file stem>-<target>`), its own
monitoring history (`monitoring/<model>/`) and never be scored on another's model or windows.

Data sets: a synthetic dated binary set (sign-ups, `churned`), the same kind of set as regression
(`amount`), scikit-learn's wine (multiclass, undated) and breast cancer (binary, undated). The
issue's findings on main are reproduced first: a user set registered as a version of
`flights-late`, promote "challenger roc_auc is NaN on 27201 rows" against the flights' window,
`monitor` dying in pyarrow (`No match for FieldRef.Name(time_hour)`), `promote.slice_column
'origin'` refused after training.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from reproml import gate, registry
from reproml.config import (
    DataSource,
    PromoteParams,
    data_source,
    data_source_of_run,
    derived_model_name,
    flat_params,
    parse_params,
    simulation_branch,
)
from reproml.errors import ConfigError
from reproml.metrics import metric_spec
from reproml.monitoring import batches
from reproml.paths import branch_name
from reproml.registry import RegistryError
from tests.project import REPO, Project, sampled_params

pytestmark = pytest.mark.integration

BUNDLED = "flights-late"
DATES = {"train_end": "2021-06-01", "valid_end": "2021-07-01", "test_end": "2021-08-01"}


def flat(text: str) -> str:
    """Output with Rich's line wrapping undone."""
    return " ".join(text.split())


def dated_frame(target: str, rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    """A user's dated table: a year of sign-ups with a numeric, a skewed and a category feature.
    From October the relationship changes (age stops mattering), so late months lose quality."""
    rng = np.random.default_rng(seed)
    days = np.sort(rng.uniform(0, 365, size=rows))
    when = (pd.Timestamp("2021-01-01") + pd.to_timedelta(days, unit="D")).round("min")
    age = rng.normal(40, 10, size=rows).round(1)
    income = rng.lognormal(10, 0.5, size=rows).round(2)
    region = rng.choice(["north", "south", "east", "west"], size=rows)
    weight = np.where(when >= pd.Timestamp("2021-10-01"), -0.12, 0.12)
    signal = weight * (age - 40) + 1.2 * (region == "north") - 0.6 * (income > np.median(income))
    signal = signal + rng.normal(scale=0.6, size=rows)
    frame = pd.DataFrame({"signup_time": when, "age": age, "income": income, "region": region})
    if target == "churned":
        frame["churned"] = np.where(signal > 0.2, "yes", "no")
    else:
        frame[target] = (50 + 12 * signal).round(2)
    return frame


def bundled_params() -> dict[str, Any]:
    params = sampled_params(6000)
    params["tune"]["n_trials"] = 2
    # a 6,000-flight sample sees few tail numbers: most of a month's are new
    params["monitor"].update({"min_rows": 200, "bootstrap_samples": 200, "max_unseen_category_share": 0.9})
    params["promote"]["bootstrap_samples"] = (
        200  # floor: null, as params.yaml has it (the sample's ROC-AUC: 0.75)
    )
    return params


def own_data(params: dict[str, Any], data: dict[str, Any], prepare: dict[str, Any]) -> dict[str, Any]:
    """README: put the file under data/raw/, then set the `data:` and `prepare:` keys; nothing else."""
    out: dict[str, Any] = json.loads(json.dumps(params))
    out["data"].update({"numeric_columns": [], "categorical_columns": [], "sample_rows": None, **data})
    out["prepare"].update({"exclude_columns": [], **prepare})
    return out


def client(p: Project) -> MlflowClient:
    return MlflowClient(tracking_uri=p.tracking_uri())


def versions(p: Project, name: str) -> list[int]:
    return sorted(int(v.version) for v in client(p).search_model_versions(f"name = '{name}'"))


def champion(p: Project, name: str) -> int:
    return int(client(p).get_model_version_by_alias(name, "champion").version)


def records(p: Project, action: str | None = None) -> list[dict[str, Any]]:
    found = [json.loads(f.read_text()) for f in sorted((p.root / "registry" / "records").glob("*.json"))]
    return [r for r in found if action is None or r["action"] == action]


# --- the defaults that follow the data (no project needed) ----------------------------------------


def test_null_names_derive_from_the_data_source_and_the_bundled_ones_stay() -> None:
    bundled = parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert bundled.register_.model_name == BUNDLED and bundled.promote.slice_column == "origin"
    assert bundled.retrain.branch == "reproml/flights-late/retrain"
    assert flat_params(bundled)["register.model_name"] == BUNDLED  # MLflow logs the name used
    regression = parse_params({"data": {"target": "arr_delay", "task": "regression"}})
    assert regression.register_.model_name == "flights-arr_delay"  # not a version of flights-late
    mine = parse_params(
        {"data": {"path": "data/raw/My Sales 2024.v2.csv", "target": "churned?", "time_column": None}}
    )
    assert mine.register_.model_name == "My-Sales-2024.v2-churned" and mine.promote.slice_column is None
    assert mine.retrain.branch == "reproml/My-Sales-2024.v2-churned/retrain"
    assert branch_name(mine.retrain.branch) and branch_name(simulation_branch(mine.register_.model_name))
    pinned = parse_params({"data": {"path": "data/raw/a.csv", "target": "y"}, "register": {"model_name": "m"},
                           "promote": {"slice_column": "region"}, "retrain": {"branch": "mine"}})  # fmt: skip
    assert (pinned.register_.model_name, pinned.promote.slice_column, pinned.retrain.branch) == (
        "m",
        "region",
        "mine",
    )
    assert derived_model_name("data/raw/records.csv", "") == "model-records"  # a folder of monitoring/
    assert derived_model_name("data/raw/..x.lock.csv", "") == "x"
    with pytest.raises(ConfigError, match="monitoring/ keeps for itself"):
        parse_params({"register": {"model_name": "workspace"}})
    with pytest.raises(ConfigError, match="may not hold"):
        parse_params({"register": {"model_name": "a..b"}})


def test_a_run_names_its_data_source_through_its_logged_params() -> None:
    bundled = data_source_of_run({"data.path": "None", "data.target": "late", "data.task": "classification"})
    assert bundled == data_source(parse_params({}).data) and bundled is not None
    mine = data_source_of_run(
        {"data.path": "./data/raw/x.csv", "data.target": "y", "data.task": "regression"}
    )
    assert mine == DataSource("data/raw/x.csv", "y", "regression") != bundled
    assert data_source_of_run({"seed": "42"}) is None


def test_a_null_floor_is_auc_070_or_beating_a_constant_prediction() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(50, 10, size=400)
    good, poor = y + rng.normal(0, 3, size=400), np.full(400, 80.0)
    params = PromoteParams(slice_column=None, bootstrap_samples=100)
    assert params.floor is None
    first = gate.decide(y, good, None, params, "regression")
    assert first.promote and "of a constant prediction" in first.reason, first.reason
    assert not gate.decide(y, poor, None, params, "regression").promote
    labels = (y > 50).astype(int)
    floor, _ = gate.first_model_floor(metric_spec(None, "classification"), labels, good, None)
    assert floor == 0.70


def test_binary_labels_of_a_batch_file_are_coded_as_ingest_coded_them() -> None:
    coding = {"no": 0, "yes": 1}
    frame = pd.DataFrame({"churned": ["yes", "no", None, "yes"], "x": [1, 2, 3, 4]})
    assert batches.coded(frame, "churned", coding)["churned"].tolist()[:2] == [1.0, 0.0]
    for untouched in (["yes", "maybe"], [0, 1]):  # an odd label is the quality gate's to name
        odd = pd.DataFrame({"churned": untouched})
        assert batches.coded(odd, "churned", coding)["churned"].tolist() == untouched


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """`make run`'s first steps on a sample of the flights, and one monitored month."""
    p = Project(tmp_path_factory.mktemp("own-data"), bundled_params())
    p.run("dvc", "repro")
    p.run("reproml", "promote")
    p.run("reproml", "monitor", "--batch", "2013-08")
    p.commit("bundled pipeline")
    p.bundled = yaml.safe_load((p.root / "params.yaml").read_text())  # type: ignore[attr-defined]
    yield p


@pytest.mark.slow  # suite time (issue 15); CI's own-data pipelines: test_registry, test_multiclass_pipeline
def test_the_bundled_pipeline_keeps_its_names_and_a_history_of_its_own(project: Project) -> None:
    p = project
    assert json.loads((p.root / "models" / "registered.json").read_text())["model_name"] == BUNDLED
    assert champion(p, BUNDLED) == 1
    august = json.loads((p.root / "monitoring" / BUNDLED / "records" / "2013-08.json").read_text())
    assert august["champion"]["name"] == BUNDLED
    assert august["labelled"].startswith(f"monitoring/{BUNDLED}/labelled/"), august["labelled"]
    assert (p.root / "monitoring" / BUNDLED / "reports" / "index.html").is_file()
    assert not (p.root / "monitoring" / "records").exists()  # nothing outside the model's folder
    promoted = records(p, "promote")[0]
    assert promoted["gate"]["metric"] == "roc_auc"
    assert {s["value"] for s in promoted["gate"]["slices"]} == {"EWR", "JFK", "LGA"}  # slice_column: auto


# --- a dated binary set: signups.csv, target churned --------------------------------------------


@dataclass
class Loop:
    repro: Any
    promote: Any
    monitor: Any


def dated_binary_params(p: Project) -> dict[str, Any]:
    data = {"path": "data/raw/signups.csv", "target": "churned", "task": "classification",
            "time_column": "signup_time"}  # fmt: skip
    return own_data(p.bundled, data, {"split": "time", **DATES})  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def dated_binary(project: Project) -> Loop:
    p = project
    dated_frame("churned").to_csv(p.root / "data" / "raw" / "signups.csv", index=False)
    p.run("dvc", "add", "--quiet", "data/raw/signups.csv")
    p.write_params(dated_binary_params(p))
    p.commit("my sign-ups")
    return Loop(
        p.run("dvc", "repro"),
        p.run("reproml", "promote"),
        p.run("reproml", "monitor", "--batch", "2021-09"),
    )


@pytest.mark.slow  # suite time (issue 15); CI's own-data pipelines: test_registry, test_multiclass_pipeline
def test_a_user_csv_gets_its_own_registered_model(project: Project, dated_binary: Loop) -> None:
    p = project
    registered = json.loads((p.root / "models" / "registered.json").read_text())
    assert registered["model_name"] == "signups-churned" and registered["version"] == 1
    assert versions(p, BUNDLED) == [1]  # the flights' model got no version of the sign-ups
    version = client(p).get_model_version("signups-churned", "1")
    assert version.tags["reproml.data_source"] == "data/raw/signups.csv, target 'churned' (classification)"


@pytest.mark.slow  # suite time (issue 15); CI's own-data pipelines: test_registry, test_multiclass_pipeline
def test_promote_judges_it_on_its_own_rows_never_the_flights_window(
    project: Project, dated_binary: Loop
) -> None:
    p = project
    decided = [r for r in records(p) if r["model_name"] == "signups-churned"]
    assert [r["action"] for r in decided] == ["promote"], decided
    gate = decided[0]["gate"]
    assert decided[0]["eval_data"].keys() == {"data/prepared/test.parquet"}  # no flights window
    assert gate["metric"] == "roc_auc" and np.isfinite(gate["challenger_value"]) and gate["slices"] == []
    assert champion(p, "signups-churned") == 1 and champion(p, BUNDLED) == 1


@pytest.mark.slow  # suite time (issue 15); CI's own-data pipelines: test_registry, test_multiclass_pipeline
def test_monitor_takes_a_period_of_its_own_production_rows(project: Project, dated_binary: Loop) -> None:
    p = project
    home = p.root / "monitoring" / "signups-churned"
    record = json.loads((home / "records" / "2021-09.json").read_text())
    assert record["champion"]["name"] == "signups-churned" and record["verdict"] != "quarantined", record
    assert record["rows"] > 200 and record["quality"]["metric"] == "roc_auc"
    assert record["labelled"].startswith("monitoring/signups-churned/labelled/")
    assert "monitoring/signups-churned/records/2021-09.json" in flat(dated_binary.monitor.stdout)
    # the flights' history is untouched and separate
    assert sorted(f.name for f in (p.root / "monitoring" / BUNDLED / "records").iterdir()) == ["2013-08.json"]
    listed = p.run("reproml", "monitoring")
    assert "2021-09" in listed.stdout and "2013-08" not in listed.stdout


@pytest.mark.slow  # suite time (issue 15); CI's own-data pipelines: test_registry, test_multiclass_pipeline
def test_a_window_of_another_schema_is_refused_naming_file_and_columns(
    project: Project, dated_binary: Loop
) -> None:
    """The issue's "challenger roc_auc is NaN on 27201 rows": a flights window scored with the
    sign-ups' test split. Windows are per model now; a stray one is an error, not a NaN."""
    p = project
    flights = next((p.root / "monitoring" / BUNDLED / "labelled").glob("*.parquet"))
    own = p.root / "monitoring" / "signups-churned" / "labelled"
    stray = own / "29990101T000000_stray.parquet"  # sorts last: "the newest window"
    shutil.copyfile(flights, stray)
    try:
        with pytest.raises(RegistryError) as refused:
            registry.eval_data(p.root, "signups-churned", "signup_time")
        said = str(refused.value)
        assert "monitoring/signups-churned/labelled/29990101T000000_stray.parquet" in said
        assert "lacks the columns ['signup_time', 'age', 'income', 'region', 'churned']" in said, said
    finally:
        stray.unlink()
    kept = registry.eval_data(p.root, "signups-churned", "signup_time")
    assert set(kept.sources) == {"data/prepared/test.parquet", dated_binary_window(p)}


def dated_binary_window(p: Project) -> str:
    own = p.root / "monitoring" / "signups-churned" / "labelled"
    return str(sorted(own.glob("*.parquet"))[-1].relative_to(p.root))


# --- the whole loop on the dated set: the replay over its own later months, and a retrain ---------


@pytest.mark.slow
def test_simulate_replays_the_users_own_later_months_and_retrain_adds_a_window(
    project: Project, dated_binary: Loop, prefect_api: str
) -> None:
    """README: `reproml simulate` (defaults: the production rows' own months, here August-December
    2021) on the branch reproml/signups-churned/simulation, then `reproml retrain --labelled`."""
    p = project
    p.env["PREFECT_API_URL"] = prefect_api
    p.env["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"
    p.run("dvc", "push", "--quiet")
    p.commit("sign-ups pipeline")
    done = p.run("reproml", "simulate", timeout=1500)
    shown = flat(done.stdout)
    for month in ("2021-08", "2021-09", "2021-10", "2021-11", "2021-12"):
        assert month in shown, shown
    assert "Production replay 2021-08..2021-12" in shown
    replay = json.loads(
        (p.root / "monitoring" / "signups-churned" / "reports" / "simulation.json").read_text()
    )
    assert [r["batch"] for r in replay["rows"]] == ["2021-08", "2021-09", "2021-10", "2021-11", "2021-12"]
    assert all(r["champion_before"] is not None for r in replay["rows"])
    branches = p.run("git", "branch", "--list", "reproml/*").stdout
    assert "reproml/signups-churned/simulation" in branches and "reproml/flights-late" not in branches
    assert (p.root / "monitoring" / BUNDLED / "records" / "2013-08.json").is_file()  # flights untouched
    window = dated_binary_window(p)
    retrained = p.run("reproml", "retrain", "--labelled", window, timeout=1200)
    assert "'action'" in retrained.stdout, retrained.stdout
    assert "reproml/signups-churned/retrain" in p.run("git", "branch", "--list", "reproml/*").stdout
    assert versions(p, BUNDLED) == [1]


# --- a dated regression set: orders.csv, target amount --------------------------------------------


@pytest.fixture(scope="module")
def dated_regression(project: Project) -> Loop:
    p = project
    dated_frame("amount", seed=1).to_csv(p.root / "data" / "raw" / "orders.csv", index=False)
    data = {
        "path": "data/raw/orders.csv",
        "target": "amount",
        "task": "regression",
        "time_column": "signup_time",
    }
    p.write_params(own_data(p.bundled, data, {"split": "time", **DATES}))  # type: ignore[attr-defined]
    p.commit("my orders")
    return Loop(
        p.run("dvc", "repro"), p.run("reproml", "promote"), p.run("reproml", "monitor", "--batch", "2021-11")
    )


@pytest.mark.slow
def test_a_dated_regression_set_runs_the_loop_under_its_own_name(
    project: Project, dated_regression: Loop
) -> None:
    p = project
    assert json.loads((p.root / "models" / "registered.json").read_text())["model_name"] == "orders-amount"
    decided = [r for r in records(p) if r["model_name"] == "orders-amount"]
    assert [r["action"] for r in decided] == ["promote"], decided
    gate = decided[0]["gate"]
    assert gate["metric"] == "rmse" and "of a constant prediction" in decided[0]["reason"], decided[0]
    assert decided[0]["eval_data"].keys() == {"data/prepared/test.parquet"}
    record = json.loads((p.root / "monitoring" / "orders-amount" / "records" / "2021-11.json").read_text())
    assert record["champion"]["name"] == "orders-amount" and record["quality"]["metric"] == "rmse"
    assert versions(p, BUNDLED) == [1]


# --- a dated multiclass set: examples/synthetic.py's deliveries, target outcome ------------------

DELIVERY_DATES = {"train_end": "2021-05-01", "valid_end": "2021-06-01", "test_end": "2021-07-01"}


@pytest.fixture(scope="module")
def dated_multiclass(project: Project, prefect_api: str) -> Loop:
    """README step by step with the example table README names; September is after the north
    depot's change, so its labelled month is the one to retrain on."""
    from examples.synthetic import deliveries

    p = project
    p.env["PREFECT_API_URL"] = prefect_api
    p.env["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"
    table = deliveries("multiclass", rows_per_month=500)
    table.to_csv(p.root / "data" / "raw" / "deliveries.csv", index=False)
    p.run("dvc", "add", "--quiet", "data/raw/deliveries.csv")
    data = {"path": "data/raw/deliveries.csv", "target": "outcome", "task": "multiclass",
            "time_column": "shipped_at"}  # fmt: skip
    params = own_data(p.bundled, data, {"split": "time", **DELIVERY_DATES})  # type: ignore[attr-defined]
    params["monitor"]["min_rows"] = 300  # README: lower it for batches of a few hundred rows
    p.write_params(params)
    p.commit("my deliveries")
    loop = Loop(
        p.run("dvc", "repro"),
        p.run("reproml", "promote"),
        p.run("reproml", "monitor", "--batch", "2021-09"),
    )
    p.run("dvc", "push", "--quiet")
    p.commit("deliveries pipeline")
    return loop


@pytest.mark.slow
def test_a_dated_multiclass_set_runs_promote_monitor_and_a_retrain(
    project: Project, dated_multiclass: Loop
) -> None:
    p = project
    name = "deliveries-outcome"
    decided = [r for r in records(p) if r["model_name"] == name]
    assert [r["action"] for r in decided] == ["promote"], decided
    assert decided[0]["gate"]["metric"] == "roc_auc_ovr" and decided[0]["gate"]["slices"] == []
    classes = client(p).get_model_version(name, "1")
    assert classes.tags["reproml.data_source"] == "data/raw/deliveries.csv, target 'outcome' (multiclass)"
    record = json.loads((p.root / "monitoring" / name / "records" / "2021-09.json").read_text())
    assert record["verdict"] != "quarantined" and record["quality"]["metric"] == "roc_auc_ovr", record
    assert record["champion"]["classes"] == ["early", "failed", "late", "on_time"]
    window = record["labelled"]
    assert window.startswith(f"monitoring/{name}/labelled/")
    retrained = p.run("reproml", "retrain", "--labelled", window, timeout=1200)
    assert "'action'" in retrained.stdout, retrained.stdout
    after = [r for r in records(p) if r["model_name"] == name]
    assert len(after) == 2 and after[-1]["action"] in ("promote", "reject"), after
    assert after[-1]["gate"]["metric"] == "roc_auc_ovr"
    assert f"reproml/{name}/retrain" in p.run("git", "branch", "--list", "reproml/*").stdout
    assert versions(p, name) == [1, 2] and versions(p, BUNDLED) == [1]


# --- an undated regression set a package ships: scikit-learn's diabetes ---------------------------


@pytest.fixture(scope="module")
def undated_regression(project: Project) -> Loop:
    from sklearn.datasets import load_diabetes

    p = project
    frame = load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})
    frame.to_csv(p.root / "data" / "raw" / "diabetes.csv", index=False)
    (p.root / "data" / "incoming").mkdir(exist_ok=True)
    frame.sample(150, random_state=5).to_csv(p.root / "data" / "incoming" / "diabetes.csv", index=False)
    data = {"path": "data/raw/diabetes.csv", "target": "progression", "task": "regression",
            "time_column": None}  # fmt: skip
    params = own_data(p.bundled, data, {"split": "random"})  # type: ignore[attr-defined]
    params["train"]["xgboost"].update({"min_child_weight": 1.0})  # README: the flights' size is too big
    params["monitor"]["min_rows"] = 100
    p.write_params(params)
    p.commit("my diabetes patients")
    return Loop(
        p.run("dvc", "repro"),
        p.run("reproml", "promote"),
        p.run("reproml", "monitor", "--batch", "data/incoming/diabetes.csv"),
    )


@pytest.mark.slow
def test_an_undated_regression_set_is_promoted_on_rmse_and_monitors_a_file(
    project: Project, undated_regression: Loop
) -> None:
    p = project
    name = "diabetes-progression"
    decided = [r for r in records(p) if r["model_name"] == name]
    assert [r["action"] for r in decided] == ["promote"], decided
    gate = decided[0]["gate"]
    assert gate["metric"] == "rmse" and gate["higher_is_better"] is False
    record = json.loads(next((p.root / "monitoring" / name / "records").glob("diabetes-*.json")).read_text())
    assert record["champion"]["name"] == name and record["rows"] == 150
    assert record["verdict"] != "quarantined" and record["quality"]["metric"] == "rmse", record["reasons"]
    period = p.run("reproml", "monitor", "--batch", "2021-09", check=False)
    said = flat(period.stdout + period.stderr)
    assert period.returncode == 2 and "data.time_column is null" in said, said


# --- an undated multiclass set a package ships: scikit-learn's wine -------------------------------


@pytest.fixture(scope="module")
def undated_multiclass(project: Project) -> Loop:
    from sklearn.datasets import load_wine

    p = project
    wine = load_wine(as_frame=True)
    frame = wine.frame.rename(columns={"target": "cultivar"})
    frame["cultivar"] = np.asarray(["barolo", "grignolino", "barbera"], dtype=object)[wine.target.to_numpy()]
    frame.to_csv(p.root / "data" / "raw" / "wine.csv", index=False)
    (p.root / "data" / "incoming").mkdir(exist_ok=True)
    frame.sample(120, random_state=3).drop(columns="cultivar").to_csv(
        p.root / "data" / "incoming" / "wine.csv", index=False
    )
    data = {"path": "data/raw/wine.csv", "target": "cultivar", "task": "multiclass", "time_column": None}
    params = own_data(p.bundled, data, {"split": "random"})  # type: ignore[attr-defined]
    params["train"]["xgboost"].update({"min_child_weight": 1.0, "n_estimators": 300})
    p.write_params(params)
    p.commit("my wines")
    return Loop(
        p.run("dvc", "repro"),
        p.run("reproml", "promote"),
        p.run("reproml", "monitor", "--batch", "data/incoming/wine.csv", check=False),
    )


@pytest.mark.slow
def test_an_undated_multiclass_set_is_promoted_on_macro_roc_auc(
    project: Project, undated_multiclass: Loop
) -> None:
    p = project
    decided = [r for r in records(p) if r["model_name"] == "wine-cultivar"]
    assert [r["action"] for r in decided] == ["promote"], decided
    assert decided[0]["gate"]["metric"] == "roc_auc_ovr"
    period = p.run("reproml", "monitor", "--batch", "2021-09", check=False)
    said = flat(period.stdout + period.stderr)
    assert period.returncode == 2 and "data.time_column is null: this data set is undated" in said, said


@pytest.mark.slow
def test_an_undated_multiclass_batch_file_is_monitored(project: Project, undated_multiclass: Loop) -> None:
    done = undated_multiclass.monitor
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(
        next((project.root / "monitoring" / "wine-cultivar" / "records").glob("wine-*.json")).read_text()
    )
    assert record["champion"]["name"] == "wine-cultivar" and record["rows"] == 120


# --- an undated binary set a package ships: scikit-learn's breast cancer --------------------------


def undated_binary_params(p: Project) -> dict[str, Any]:
    data = {
        "path": "data/raw/biopsies.csv",
        "target": "diagnosis",
        "task": "classification",
        "time_column": None,
    }
    return own_data(p.bundled, data, {"split": "random"})  # type: ignore[attr-defined]


def write_biopsies(p: Project) -> None:
    from sklearn.datasets import load_breast_cancer

    cancer = load_breast_cancer(as_frame=True)
    frame = cancer.frame.rename(columns={"target": "diagnosis"})
    frame["diagnosis"] = np.asarray(["malignant", "benign"], dtype=object)[cancer.target.to_numpy()]
    frame.to_csv(p.root / "data" / "raw" / "biopsies.csv", index=False)
    (p.root / "data" / "incoming").mkdir(exist_ok=True)
    frame.sample(250, random_state=4).to_csv(p.root / "data" / "incoming" / "biopsies.csv", index=False)


@pytest.fixture(scope="module")
def undated_binary(project: Project) -> Loop:
    p = project
    write_biopsies(p)
    p.write_params(undated_binary_params(p))
    p.commit("my biopsies")
    return Loop(
        p.run("dvc", "repro"),
        p.run("reproml", "promote"),
        p.run("reproml", "monitor", "--batch", "data/incoming/biopsies.csv"),
    )


@pytest.mark.slow
def test_an_undated_binary_set_is_promoted_and_monitors_a_file(
    project: Project, undated_binary: Loop
) -> None:
    """The batch file holds the labels as the user wrote them (benign/malignant): coded as ingest did."""
    p = project
    decided = [r for r in records(p) if r["model_name"] == "biopsies-diagnosis"]
    assert [r["action"] for r in decided] == ["promote"], decided
    record = json.loads(
        next((p.root / "monitoring" / "biopsies-diagnosis" / "records").glob("biopsies-*.json")).read_text()
    )
    assert record["champion"]["name"] == "biopsies-diagnosis" and record["rows"] == 250
    assert record["verdict"] != "quarantined" and record["quality"]["metric"] == "roc_auc", record["reasons"]
    assert record["quality"]["batch_value"] > 0.9  # labels coded the way the model learnt them


@pytest.mark.slow
def test_an_undated_set_stops_after_promote_with_a_clear_message(
    project: Project, undated_binary: Loop
) -> None:
    undated_commands_say_so(project)


@pytest.mark.slow  # suite time (issue 15); CI's own-data pipelines: test_registry, test_multiclass_pipeline
def test_an_undated_set_says_at_once_that_monitoring_needs_a_time_column_or_a_file(project: Project) -> None:
    """The fast sibling: the same commands on params switched to an undated set, before `dvc repro`."""
    p = project
    write_biopsies(p)
    p.write_params(undated_binary_params(p))
    undated_commands_say_so(p)


def undated_commands_say_so(p: Project) -> None:
    """No periods to monitor, replay or retrain on: each command says so and what to do instead,
    before any model is loaded, any server starts or anything moves."""
    for command in (
        ("reproml", "monitor", "--batch", "2021-09"),
        ("reproml", "simulate"),
        ("reproml", "retrain", "--labelled", "data/incoming/biopsies.csv"),
    ):
        done = p.run(*command, check=False)
        said = flat(done.stdout + done.stderr)
        assert done.returncode == 2 and "Traceback" not in said, (command, said)
        assert "data.time_column is null" in said, (command, said)
    assert not (p.root / ".reproml" / "servers" / "prefect.pid").exists()  # refused before Prefect started
    assert "reproml monitor --batch data/new_rows.csv" in flat(
        p.run("reproml", "simulate", check=False).stderr
    )


# --- last, as it leaves the pipeline's outputs behind: the bundled name pinned for user data ------


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_the_bundled_model_name_pinned_for_user_data_is_refused_at_register(
    project: Project, dated_binary: Loop
) -> None:
    """On main the sign-ups became version 2 of flights-late, then promote compared them with the
    flights' champion on the flights' window (NaN)."""
    p = project
    params = dated_binary_params(p)
    params["register"]["model_name"] = BUNDLED
    p.write_params(params)
    try:
        done = p.run("dvc", "repro", check=False)
        assert done.returncode != 0
        said = flat(done.stdout + done.stderr)
        assert "model 'flights-late' (register.model_name) has champion v1, trained on the bundled" in said, (
            said
        )
        assert "data/raw/signups.csv, target 'churned' (classification)" in said
        assert "set register.model_name: null (it derives 'signups-churned'" in said
        assert versions(p, BUNDLED) == [1]
        monitored = p.run("reproml", "monitor", "--batch", "2021-10", check=False)
        said = flat(monitored.stdout + monitored.stderr)
        assert monitored.returncode == 2 and "Traceback" not in said and "FieldRef" not in said, said
        assert "the champion of 'flights-late' (register.model_name), v1, was trained on the bundled" in said
    finally:
        p.write_params(dated_binary_params(p))  # dvc repro removed the failed stage's outputs: run it again
