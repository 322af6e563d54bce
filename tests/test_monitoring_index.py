"""The index page's drift heat map (features by batches) and its quality chart with the label-free
estimate beside the realised metric: rendered from tiny records with hostile labels, escaped, and
opened in a real browser when one is installed."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from reproml.monitoring import reports
from tests.conftest import open_in_chromium

SCRIPT = "<script>document.title='PW'+'NED'</script>"


def column(
    name: str, score: float | None, drifted: bool, weight: float, judged: bool = True
) -> dict[str, Any]:
    return {"column": name, "kind": "numeric", "method": "wasserstein", "score": score, "drifted": drifted,
            "judged": judged, "importance": weight, "weight": weight, "present": 900, "p_value": 1e-6,
            "note": None if judged else "12 present values < 500: not judged"}  # fmt: skip


def record(
    batch_id: str,
    seq: int,
    columns: list[dict[str, Any]],
    value: float | None = None,
    estimate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    quality = None
    if value is not None:
        quality = {"metric": "roc_auc", "higher_is_better": True, "batch_value": value}
        quality |= {"reference_value": 0.74, "drop": 0.74 - value, "interval": [0.0, 0.05]}
        quality["batch_interval"] = [value - 0.01, value + 0.01]
    out: dict[str, Any] = {
        "batch_id": batch_id,
        "seq": seq,
        "verdict": "ok",
        "rows": 1000,
        "batch_time": f"2013-0{seq + 6}-28T00:00:00",
        "champion": {"version": 1},
        "reasons": [],
        "drift": {
            "effect_floor": 0.1,
            "drift_share": 0.0,
            "weighted_drift_share": 0.0,
            "columns": columns,
            "prediction": column("prediction", 0.02, False, 0.0),
        },
        "quality": quality,
        "reports": {},
        "decision": {"thresholds": {"quality_margin": 0.02}},
    }
    if estimate is not None:
        out["estimate"] = estimate
    return out


def history() -> list[dict[str, Any]]:
    hostile = f"dep{SCRIPT}"
    july = [column("distance", 0.03, False, 0.6), column(hostile, 0.05, False, 0.4)]
    august = [column("distance", 0.31, True, 0.6), column(hostile, None, False, 0.4, judged=False)]
    return [
        record("2013-07", 1, july, 0.73, estimate(0.735, 0.72, 0.75)),
        record(f"b{SCRIPT}", 2, august, None, estimate(0.70, 0.68, 0.72)),  # no labels yet: estimated only
    ]


def estimate(value: float, lower: float, upper: float) -> dict[str, Any]:
    return {"metric": "roc_auc", "value": value, "lower": lower, "upper": upper, "method": "cbpe"}


class _Cells(HTMLParser):
    """The heat map's cells as (text, class, background) and its row labels, as a browser reads them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.inside, self.depth = False, 0
        self.cells: list[tuple[str, str, str]] = []
        self.labels: list[str] = []
        self._cell: tuple[str, str] | None = None
        self._label = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("class") == "heat":
            self.inside = True
        elif self.inside and tag == "td":
            self._cell = (a.get("class") or "", (a.get("style") or "").removeprefix("background:"))
            self.cells.append(("", *self._cell))
        elif self.inside and tag == "th" and a.get("class") == "feature":
            self._label = True
            self.labels.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.inside = False
        self._cell = None if tag == "td" else self._cell
        self._label = False if tag == "th" else self._label

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            text, cls, colour = self.cells[-1]
            self.cells[-1] = (text + data, cls, colour)
        elif self._label:
            self.labels[-1] += data


def test_heat_map_is_features_by_batches_coloured_marked_and_escaped() -> None:
    page = reports.index_html("flights-late", history())
    assert SCRIPT not in page and "<script" not in page
    parsed = _Cells()
    parsed.feed(page)
    # rows by importance share, the prediction last; the hostile name is text
    assert parsed.labels[1:] == ["distance (0.600)", f"dep{SCRIPT} (0.400)", "(prediction)"]
    texts = [c[0] for c in parsed.cells]
    assert texts == ["0.03", "0.31", "0.05", "-", "0.02", "0.02"]  # row by row, batches in time order
    drifted = [c for c in parsed.cells if c[1] == "drifted"]
    assert [c[0] for c in drifted] == ["0.31"] and drifted[0][
        2
    ] == "#c0392b"  # past twice the floor: full red
    assert parsed.cells[0][2] not in ("#ffffff", "#c0392b")  # a little drift: a light shade


def test_quality_chart_draws_the_estimate_band_beside_the_realised_metric() -> None:
    page = reports.index_html("flights-late", history())
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert svg.count("<circle") == 1  # realised: only the labelled batch
    assert svg.count('<g class="estimate">') == 2  # estimated: both batches
    assert "estimated roc_auc 0.7000 [0.6800, 0.7200] (cbpe)" in svg
    assert f"b{SCRIPT}"[:12] not in svg and "b&lt;script&gt;" in svg  # the batch label, escaped
    heights = [
        float(h)
        for h in re.findall(r'<rect x="[^"]+" y="[^"]+" width="[^"]+" height="([^"]+)" fill="#8e44ad"', svg)
    ]
    assert len(heights) == 2 and all(h > 0 for h in heights)


def test_index_without_estimates_or_drift_still_renders() -> None:
    bare = record("2013-07", 1, [], 0.73)
    bare["drift"] = None
    page = reports.index_html("flights-late", [bare])
    assert "No batch measured for drift yet" in page and '<g class="estimate">' not in page
    assert page.count("<circle") == 1


def test_index_with_heat_map_and_estimates_renders_in_chromium(tmp_path: Path, chromium: str) -> None:
    page = tmp_path / "index.html"
    page.write_text(reports.index_html("flights-late", history()), encoding="utf-8")
    opened = open_in_chromium(chromium, page, dump_dom=True)
    assert opened.console == [] and "PWNED" not in opened.dom
    assert "dep&lt;script&gt;" in opened.dom  # the hostile feature name, shown as text
    shot = tmp_path / "index.png"
    open_in_chromium(chromium, page, screenshot=shot)
    from PIL import Image

    darkest, _ = Image.open(shot).convert("L").getextrema()
    assert isinstance(darkest, int) and darkest < 128  # something dark was drawn
