"""What a person sees in a real browser (issue 17): headless Chromium against real servers and pages.

One tiny project (tests/test_registry.py's: the target follows `x1` and `cat == 'a'`) is trained
twice through the pipeline's stages (what `dvc repro` runs as `reproml <stage>`, called in-process:
two real repros would cost ~40 s each on two busy cores), `train.xgboost.max_depth` 5 then 1; the
first is promoted. Then:

- a real `mlflow ui` (reproml's own launcher, on a free port) serves the project's store, and the
  MLflow UI's compare page of the last two pipeline runs is opened: both runs, every parameter
  name, the changed parameter's value under the right run, and the metrics must be on screen;
- `reproml monitor` (the CLI) judges a batch like training and one with `x1` shifted, and the
  monitoring index and the drift report it links to are opened: the verdicts, batch ids, the
  drifted feature and its distance must be what the decision records say.

The DOM is read after the pages' scripts ran (`--dump-dom`; virtual time waits for the MLflow UI's
requests), as text, tables and, for the MLflow metrics, its virtualised grid: what is rendered,
not what the server sent. Other tests check the same pages for console errors, blank renders
(tests/test_monitoring.py) and hostile values (tests/test_hardening_html.py).
"""

from __future__ import annotations

import ast
import json
import re
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from typer.testing import CliRunner

from reproml import servers
from reproml.cli import app
from reproml.monitoring import store
from reproml.stages.monitor import monitoring_history
from reproml.stages.register import run_promote
from tests.conftest import free_port, open_in_chromium, tiny_frame
from tests.project import PIPELINE_RUNS
from tests.test_monitoring import batch, monitored_params
from tests.test_registry import NAME, pipeline

pytestmark = pytest.mark.integration

DEPTHS = (5, 1)  # train.xgboost.max_depth of the first and the second pipeline run


# --- what a page shows --------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
HIDDEN = {"script", "style", "template", "noscript", "title"}
LEFT = re.compile(r"(?:^|;)\s*left:\s*(-?\d+)px")
TOP = re.compile(r"(?:^|;)\s*top:\s*(-?\d+)px")


def placed(style: str) -> tuple[int, int] | None:
    """(top, left) of an absolutely placed element, from its inline style."""
    top, left = TOP.search(style), LEFT.search(style)
    if "absolute" not in style or top is None or left is None:
        return None
    return int(top[1]), int(left[1])


def squeeze(parts: list[str]) -> str:
    return " ".join(" ".join(parts).split())


@dataclass
class Cell:
    parts: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return squeeze(self.parts)


class Seen(HTMLParser):
    """A dumped DOM as a person reads it: its text (no script, style or title), its tables (rows of
    cells, with their links) and its virtualised grids (`role="grid"`, cells placed absolutely:
    {(top, left): text}), which is how the MLflow UI lays out the metrics of compared runs."""

    def __init__(self, dom: str) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.tables: list[list[list[Cell]]] = []
        self.grids: list[dict[tuple[int, int], str]] = []
        self._open: list[tuple[str, str]] = []  # (tag, what it opened)
        self._tables: list[list[list[Cell]]] = []
        self._cells: list[Cell] = []
        self._grids: list[dict[tuple[int, int], str]] = []
        self._placed: list[tuple[tuple[int, int], list[str]]] = []
        self.feed(dom)
        self.close()

    @property
    def text(self) -> str:
        return squeeze(self.parts)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:
            return
        found = {key: value or "" for key, value in attrs}
        opened = ""
        if tag in HIDDEN:
            opened = "hidden"
        elif tag == "table":
            self._tables.append([])
            self.tables.append(self._tables[-1])
            opened = "table"
        elif tag == "tr" and self._tables:
            self._tables[-1].append([])
            opened = "tr"
        elif tag in ("td", "th") and self._tables and self._tables[-1]:
            self._cells.append(Cell())
            self._tables[-1][-1].append(self._cells[-1])
            opened = "cell"
        elif found.get("role") == "grid":
            self._grids.append({})
            self.grids.append(self._grids[-1])
            opened = "grid"
        elif self._grids and (where := placed(found.get("style", ""))) is not None:
            self._placed.append((where, []))
            opened = "placed"
        if tag == "a" and found.get("href") and self._cells:
            self._cells[-1].links.append(found["href"])
        self._open.append((tag, opened))

    def handle_endtag(self, tag: str) -> None:
        if tag not in (name for name, _ in self._open):
            return
        while self._open:
            name, opened = self._open.pop()
            if opened == "table":
                self._tables.pop()
            elif opened == "cell":
                self._cells.pop()
            elif opened == "grid":
                self._grids.pop()
            elif opened == "placed":
                where, parts = self._placed.pop()
                if self._grids:
                    self._grids[-1][where] = squeeze(parts)
            if name == tag:
                return

    def handle_data(self, data: str) -> None:
        if any(opened == "hidden" for _, opened in self._open):
            return
        self.parts.append(data)
        if self._cells:
            self._cells[-1].parts.append(data)
        if self._placed:
            self._placed[-1][1].append(data)


def rows(table: list[list[Cell]]) -> list[list[str]]:
    return [[cell.text for cell in row] for row in table]


def by_first_cell(seen: Seen, first: str) -> dict[str, list[str]]:
    """The one table with a row whose first cell reads `first`, as {first cell: the other cells}."""
    found = [t for t in seen.tables if any(r and r[0] == first for r in rows(t))]
    assert len(found) == 1, f"{len(found)} tables with a row {first!r}; text: {seen.text[:2000]}"
    return {r[0]: r[1:] for r in rows(found[0]) if r}


def by_header(seen: Seen, key: str, *headers: str) -> dict[str, dict[str, Cell]]:
    """The one table whose first row holds `key` and `headers`, as {its `key` cell: {header: cell}}."""
    found = [t for t in seen.tables if t and {key, *headers} <= {c.text for c in t[0]}]
    assert len(found) == 1, f"{len(found)} tables headed {[key, *headers]}; text: {seen.text[:2000]}"
    head = [c.text for c in found[0][0]]
    body = [dict(zip(head, row, strict=False)) for row in found[0][1:]]
    return {row[key].text: row for row in body if key in row}


def opened(chromium: str, page: Path | str) -> tuple[Seen, list[str]]:
    shown = open_in_chromium(chromium, page, dump_dom=True)
    return Seen(shown.dom), shown.console


# --- the project ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trained:
    root: Path
    runs: tuple[str, str]  # the first and the second pipeline run's ids


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """The tiny project after two pipeline runs (max_depth 5, promoted; then 1, the challenger)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("browser") / "project"
        (root / "data" / "raw").mkdir(parents=True)
        params = monitored_params()
        params["train"]["xgboost"]["max_depth"] = DEPTHS[0]
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        tiny_frame(2000, seed=1).to_parquet(root / "data" / "raw" / "frame.parquet", index=False)
        first = pipeline(root)
        assert run_promote(root)["action"] == "promote"
        second = pipeline(root, **{"train.xgboost": {**params["train"]["xgboost"], "max_depth": DEPTHS[1]}})
        yield Trained(root, (str(first["run_id"]), str(second["run_id"])))


# --- the MLflow UI -------------------------------------------------------------------------------


@pytest.fixture
def mlflow_ui(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The project's MLflow UI as `reproml servers` starts it, on a free port; stopped after."""
    monkeypatch.setenv("REPROML_MLFLOW_PORT", str(free_port()))
    monkeypatch.delenv("REPROML_SERVER_HOST", raising=False)
    servers.start(trained.root, "mlflow", timeout=120)
    try:
        yield servers.ui_url(trained.root, "mlflow")
    finally:
        servers.stop(trained.root, "mlflow")


def last_pipeline_runs(url: str, count: int) -> list[dict[str, Any]]:
    """The newest `count` pipeline runs, as the server's REST API returns them."""
    experiment = fetch(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=reproml")
    body = {
        "experiment_ids": [experiment["experiment"]["experiment_id"]],
        "filter": PIPELINE_RUNS,
        "order_by": ["attributes.start_time DESC"],
        "max_results": count,
    }
    runs: list[dict[str, Any]] = fetch(f"{url}/api/2.0/mlflow/runs/search", body)["runs"]
    return runs


def fetch(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:  # our own loopback server
        return json.loads(answer.read())


def same_value(shown: str, logged: str) -> bool:
    """A list parameter, logged as Python writes it (`['a', 'b']`, reproml.config.flatten), the UI
    shows as pretty-printed JSON; anything else as logged."""
    if shown == logged:
        return True
    try:
        return bool(json.loads(shown) == ast.literal_eval(logged))
    except (ValueError, SyntaxError):
        return False


def test_mlflow_ui_compares_the_last_two_pipeline_runs(
    trained: Trained, mlflow_ui: str, chromium: str
) -> None:
    runs = last_pipeline_runs(mlflow_ui, 2)
    assert sorted(run["info"]["run_id"] for run in runs) == sorted(trained.runs)
    shows_the_runs_compared(chromium, mlflow_ui, runs, dict(zip(trained.runs, DEPTHS, strict=True)))


def shows_the_runs_compared(
    chromium: str, url: str, runs: list[dict[str, Any]], depth: dict[str, int]
) -> None:
    """The MLflow UI at `url` opened on its compare page of `runs` (two, as the REST API returns
    them): both runs, every parameter either logged with its value under the right run
    (`train.xgboost.max_depth` as `depth` says per run id), and the first metrics of both."""
    ids = [run["info"]["run_id"] for run in runs]
    experiment = runs[0]["info"]["experiment_id"]
    query = f"runs={quote(json.dumps(ids))}&experiments={quote(json.dumps([experiment]))}"
    page = f"{url}/#/compare-runs?{query}"
    seen, console = opened(chromium, page)
    assert [line for line in console if "Uncaught" in line] == [], "the MLflow UI threw"
    assert "Comparing 2 Runs from 1 Experiment" in seen.text, seen.text[:2000]

    details = by_first_cell(seen, "Run ID:")
    columns = details["Run ID:"]  # the runs' order on the page, left to right
    assert sorted(columns) == sorted(ids)
    names = {run["info"]["run_id"]: run["info"]["run_name"] for run in runs}
    assert details["Run Name:"] == [names[run_id] for run_id in columns]

    # every parameter either run logged is a row; the changed one shows each run's own value
    logged = {run["info"]["run_id"]: {p["key"]: p["value"] for p in run["data"]["params"]} for run in runs}
    params = by_first_cell(seen, "train.xgboost.max_depth")
    assert set(params) == set(logged[ids[0]]) | set(logged[ids[1]])
    assert params["train.xgboost.max_depth"] == [str(depth[run_id]) for run_id in columns]
    wrong = {
        key: shown
        for key, shown in params.items()
        if not all(same_value(v, logged[run_id][key]) for v, run_id in zip(shown, columns, strict=True))
    }
    assert wrong == {}, "parameters shown unlike the runs logged them"

    # the metrics: a grid of names beside a grid of values, one column per run, rows aligned by
    # their top; virtualised, so the first rows (alphabetical) are rendered, the rest on scrolling
    assert len(seen.grids) == 2, f"expected the metric names and values grids, found {len(seen.grids)}"
    named, valued = seen.grids
    metrics = {run["info"]["run_id"]: {m["key"]: m["value"] for m in run["data"]["metrics"]} for run in runs}
    keys = sorted(set(metrics[ids[0]]) | set(metrics[ids[1]]))
    listed = [named[where] for where in sorted(named)]
    assert len(listed) >= 5 and listed == keys[: len(listed)], listed
    lefts = sorted({left for _, left in valued})
    assert len(lefts) == 2, f"expected one value column per run, found offsets {lefts}"
    for (top, _), key in named.items():
        shown = [valued.get((top, left), "") for left in lefts]
        expected = [metrics[run_id][key] for run_id in columns]
        assert [float(value) for value in shown] == [
            pytest.approx(value, rel=5e-3, abs=5e-4) for value in expected
        ], f"{key}: shows {shown}, the runs logged {expected}"


# --- the monitoring pages ------------------------------------------------------------------------


def cli_monitor(root: Path, frame: Any, name: str) -> Mapping[str, Any]:
    """`reproml monitor --batch data/incoming/<name>.parquet` in `root`; its decision record."""
    path = root / "data" / "incoming" / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    result = CliRunner().invoke(app, ["monitor", "--batch", f"data/incoming/{name}.parquet"])
    assert result.exit_code == 0, result.output
    _, records = monitoring_history(root)
    record: Mapping[str, Any] = records[-1]  # read back from disk
    assert record["source"].endswith(f"{name}.parquet"), record["source"]
    return record


def test_monitoring_index_and_drift_report_show_the_verdicts(
    trained: Trained, chromium: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = trained.root
    monkeypatch.chdir(root)  # the CLI works on the current directory
    same = cli_monitor(root, batch(), "same")
    shifted = cli_monitor(root, batch(labelled=False, day=1, x1=2.0), "shifted")
    assert (same["verdict"], shifted["verdict"]) == ("ok", "retrain"), shifted["reasons"]

    index = root / store.index(NAME)
    seen, console = opened(chromium, index)
    assert console == [], f"console messages from {index}"
    assert f"Monitoring {NAME}: 2 batches" in seen.text, seen.text[:1000]
    table = by_header(seen, "batch", "verdict", "champion", "why", "reports")
    assert list(table) == [same["batch_id"], shifted["batch_id"]]
    for record in (same, shifted):
        row = table[record["batch_id"]]
        assert row["verdict"].text == record["verdict"]
        assert row["champion"].text == "v1"  # the promoted first run's version judged both
        why = row["why"].text
        assert all(squeeze([reason]) in why for reason in record["reasons"]), why
    assert "x1 (weight" in table[shifted["batch_id"]]["why"].text  # the drifted feature, named

    # follow the row's `drift` link, as a person clicks it
    links = table[shifted["batch_id"]]["reports"].links
    assert len(links) == 2, links  # drift and record: no quality report without labels
    report = (index.parent / links[0]).resolve()
    assert report == (root / shifted["reports"]["drift"]).resolve()
    seen, console = opened(chromium, report)
    assert console == [], f"console messages from {report}"
    assert "Dataset Drift is detected" in seen.text, seen.text[:1000]
    columns = by_header(seen, "Column", "Data Drift", "Drift Score")
    drift = shifted["drift"]
    for judged in [*drift["columns"], drift["prediction"]]:
        row = columns[judged["column"]]
        assert float(row["Drift Score"].text) == pytest.approx(judged["score"], abs=1e-6), judged["column"]
        # what reproml calls drift (distance over the floor and a test's p under alpha), Evidently
        # shows as detected; under the floor it does not. (Between them, Evidently's distance-only
        # rule may say Detected where reproml's test says noise.)
        if judged["drifted"]:
            assert row["Data Drift"].text == "Detected", judged
        elif judged["score"] < drift["effect_floor"]:
            assert row["Data Drift"].text == "Not Detected", judged
    assert columns["x1"]["Data Drift"].text == "Detected"
