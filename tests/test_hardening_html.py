"""Hostile data on every page reproml writes, opened in a real browser (issue 12).

The champion is trained on a user's own file whose category column holds markup (`</script>`, an
`<img onerror>`, `<!--<script>`); a labelled batch carries the same categories into the Evidently
drift and quality reports; a quarantined batch quotes markup in its reason on the index page; the
replay's page gets markup in every cell. Each page is opened in headless Chromium: no script from
the data may run (the payloads would set the title and log `PWNED`), and the page must still render,
with the hostile values shown as text (or, in an Evidently report, decoded intact by its scripts).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, cast

import pandas as pd
import pytest
import yaml

from reproml import safehtml, simulation
from reproml.monitoring import store
from reproml.monitoring.records import BatchRecord
from reproml.simulation import SimulationRow
from reproml.stages.monitor import run_monitor
from reproml.stages.register import run_promote
from tests.conftest import open_in_chromium, tiny_frame
from tests.test_monitoring import monitored_params
from tests.test_registry import NAME, pipeline

pytestmark = pytest.mark.integration

# run, each writes PWNED to the title and the console; as text they hold only 'PW'+'NED'
SCRIPT = "</script><script>console.log('PW'+'NED-script');document.title='PW'+'NED-script'</script>"
IMG = "<img src=x onerror=\"console.log('PW'+'NED-img');document.title='PW'+'NED-img'\">"
COMMENT = "<!--<script>"
PAYLOADS = (SCRIPT, IMG, COMMENT)

# appended to a copy of an Evidently page: what its scripts decoded from the embedded data
PROBE = """<script>
document.body.setAttribute("data-probe", JSON.stringify(Object.keys(window)
  .filter(function (k) { return /^(additional_graphs_)?metric_[0-9a-f]{32}$/.test(k); })
  .map(function (k) { return window[k]; })));
</script>"""


def hostile(frame: pd.DataFrame) -> pd.DataFrame:
    """tiny_frame with its categories b and c (and some of them) replaced by markup."""
    cat = frame["cat"].map({"a": "a", "b": SCRIPT, "c": IMG})
    return frame.assign(cat=cat.where((cat == "a") | (frame["x2"] > 0.2), COMMENT))


@pytest.fixture(scope="module")
def hostile_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project whose champion was trained on the user's file with markup categories."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("hostile") / "project"
        (root / "data" / "raw").mkdir(parents=True)
        (root / "params.yaml").write_text(yaml.safe_dump(monitored_params(), sort_keys=False))
        hostile(tiny_frame(2000, seed=1)).to_parquet(root / "data" / "raw" / "frame.parquet", index=False)
        pipeline(root)
        assert run_promote(root)["action"] == "promote"
        yield root


def monitor(root: Path, frame: pd.DataFrame, name: str) -> dict[str, Any]:
    """The batch's record, loosely typed: the assertions index deep into its optional parts."""
    path = root / "incoming" / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return cast(dict[str, Any], run_monitor(root, f"incoming/{name}.parquet"))


def labelled_batch(rows: int = 600, seed: int = 10) -> pd.DataFrame:
    """Fresh draws of the training distribution, after the test split: every markup category is seen."""
    frame = hostile(tiny_frame(rows, seed=seed))
    return frame.assign(when=pd.date_range("2022-07-01", periods=rows, freq="min"))


class _Page(HTMLParser):
    """What a person sees (text outside script/style), the document title and body attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.titles: list[str] = []
        self.body: dict[str, str | None] = {}
        self._stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self.body = dict(attrs)
        self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._stack:
            del self._stack[len(self._stack) - 1 - self._stack[::-1].index(tag) :]

    def handle_data(self, data: str) -> None:
        inside = self._stack[-1] if self._stack else ""
        if inside == "title" and "svg" not in self._stack:
            self.titles.append(data)
        elif inside not in ("script", "style"):
            self.text.append(data)


def open_inert(chromium: str, page: Path) -> _Page:
    """Open `page`; fail if any script from the data ran, else return what the page shows.

    As text a payload holds only 'PW'+'NED': PWNED in the DOM (a title it set) or on the console
    means it ran.
    """
    opened = open_in_chromium(chromium, page, dump_dom=True)
    assert "PWNED" not in opened.dom, f"a payload ran in {page}"
    assert opened.console == [], f"console messages from {page}: {opened.console}"
    parsed = _Page()
    parsed.feed(opened.dom)
    return parsed


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def probed(page: Path, folder: Path) -> Path:
    """A copy of the Evidently page `page` with PROBE run after all of its own scripts."""
    html = page.read_text(encoding="utf-8")
    end = html.rindex("</body>")
    target = folder / f"{page.parent.name}-{page.name}"
    target.write_text(html[:end] + PROBE + html[end:], encoding="utf-8")
    return target


def test_evidently_reports_from_hostile_training_and_batch_categories_run_no_script(
    hostile_project: Path, tmp_path: Path, chromium: str
) -> None:
    project = Path(shutil.copytree(hostile_project, tmp_path / "project"))
    record = monitor(project, labelled_batch(), "hostile")
    assert record["verdict"] != "quarantined", record["reasons"]
    assert set(record["reports"]) == {"drift", "quality"}
    for name, page in record["reports"].items():
        shown = open_inert(chromium, probed(project / page, tmp_path))
        text = " ".join(shown.text)
        assert len(text) > 200, f"{name} report did not render: {text[:500]}"
        if name == "drift":  # the drift table lists every judged column
            assert {"x1", "cat", "prediction"} <= set(shown.text), text[:1000]
        # the report's scripts decoded the embedded data intact: the markup is there, as data
        decoded = set(strings(json.loads(shown.body.get("data-probe") or "[]")))
        assert decoded, f"{name}: no report data reached the page's scripts"
        if name == "drift":
            assert all(any(p in s for s in decoded) for p in PAYLOADS), f"{name}: payload values lost"


def test_index_with_hostile_quarantine_reasons_runs_no_script(
    hostile_project: Path, tmp_path: Path, chromium: str
) -> None:
    project = Path(shutil.copytree(hostile_project, tmp_path / "project"))
    ok = monitor(project, labelled_batch(seed=11), "fine")
    rows = 300
    bad = labelled_batch(rows, seed=12).assign(x1=[PAYLOADS[i % 3] for i in range(rows)])
    quarantined = monitor(project, bad, "hostile")
    assert quarantined["verdict"] == "quarantined"
    assert any(SCRIPT in reason for reason in quarantined["reasons"]), quarantined["reasons"]
    shown = open_inert(chromium, project / store.index(NAME))
    text = "".join(shown.text)
    assert shown.titles == [f"reproml monitoring: {NAME}"]
    for reason in quarantined["reasons"]:  # every reason, markup and all, is on the page as text
        assert reason in text, reason
    assert ok["batch_id"] in text and quarantined["batch_id"] in text


def test_simulation_page_with_hostile_values_runs_no_script(tmp_path: Path, chromium: str) -> None:
    rows: list[SimulationRow] = [
        {
            "batch": f"2013-0{7 + i}",
            "rows": 100,
            "weighted_drift_share": 0.1,
            "drift_share": 0.2,
            "quality": 0.8 - i / 100,
            "baseline": 0.79,
            "metric": "roc_auc",
            "verdict": payload,
            "retrain": payload,
            "data_version": None,
            "champion_before": 1,
            "champion": 1,
            "reasons": [payload, "and more"],
            "summary": None,
            "retrain_seconds": None,
        }
        for i, payload in enumerate(PAYLOADS)
    ]
    page = simulation.write(tmp_path, rows, "roc_auc", 1, f"replay {SCRIPT}")
    shown = open_inert(chromium, page)
    text = "".join(shown.text)
    assert shown.titles == [f"replay {SCRIPT}"]
    assert all(payload in text for payload in PAYLOADS)
    assert f"{IMG}; and more" in text and "never retrained" in text


def test_terminal_tables_print_markup_in_data_as_text() -> None:
    """`reproml monitor` and `reproml monitoring` print reasons quoting batch values: markup is text."""
    from rich.console import Console

    from reproml.report import monitoring_table, verdict_table

    hostile_reason = (
        "column 'x1' is numeric but holds strings such as ['[/bold]', '[link=https://e.invalid]x[/link]']"
    )
    record: BatchRecord = {
        "batch_id": "b",
        "rows": 3,
        "verdict": "quarantined",
        "seq": 1,
        "reasons": [hostile_reason],
    }
    console = Console(record=True, width=400, color_system=None)
    console.print(verdict_table(record))
    console.print(monitoring_table([record], "flights-late"))
    assert console.export_text().count(hostile_reason) == 2


def test_evidently_data_lines_are_escaped_to_the_same_json_and_other_layouts_refused() -> None:
    data = {"x": [SCRIPT, IMG, COMMENT, "a & b", "line\u2028break", "\\<"], "n": [1.5, None]}
    graphs = {"g": COMMENT + "\u2029"}
    dashboard = "metric_" + "0123456789abcdef" * 2
    page = (
        "<head><script>\n"
        f"    var {dashboard} = {json.dumps(data)};\n"
        f"    var additional_graphs_{dashboard} = {json.dumps(graphs, ensure_ascii=False)};\n"
        "</script></head>"
    )
    lines = safehtml.escape_evidently_page(page).split("\n")[1:3]
    assert not any(c in line for line in lines for c in "<>&\u2028\u2029")  # the tags are around them
    assert json.loads(lines[0].split(" = ", 1)[1].rstrip(";")) == data  # the same values
    assert json.loads(lines[1].split(" = ", 1)[1].rstrip(";")) == graphs
    with pytest.raises(safehtml.UnsafeHtmlError, match="expects 2"):
        safehtml.escape_evidently_page(page.replace("additional_graphs_", "graphs_"))
