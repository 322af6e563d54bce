"""`monitoring/<model>/reports/index.html`: every monitored batch of one model on one page, for people.

One self-contained file, no scripts and no network: a plot of the champion's quality over time
(inline SVG: the batch metric with its bootstrap interval, the champion's test-split value and the
retrain line under it, points coloured by verdict), then a table of every batch with its verdict,
drift shares, quality, reasons and links to its Evidently reports and decision record. Rebuilt
from the records after every batch, so it can never disagree with them. The markup is
`templates/monitoring_index.html` and `templates/quality_plot.svg`, rendered with autoescape
(`reproml.safehtml`): batch ids, reasons and metric names are always text, never tags.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path
from typing import Any, TypedDict

from reproml import safehtml
from reproml.monitoring import store
from reproml.monitoring.records import BatchRecord, DriftRecord, QualityChangeRecord

COLOURS = {
    "retrain": "#c0392b",
    "retrain_held": "#d68910",
    "ok": "#1e8449",
    "insufficient_data": "#7f8c8d",
    "quarantined": "#6c3483",
    "out_of_order": "#2e86c1",
}
_WIDTH, _HEIGHT, _LEFT, _RIGHT, _TOP, _BOTTOM = 960, 360, 110, 24, 24, 110


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{float(value):.{digits}f}"


class _Tick(TypedDict):
    y: float
    label: str


class _Point(TypedDict):
    """One labelled batch on the plot, in SVG coordinates."""

    x: float
    x0: float
    x1: float
    reference: float
    line: float
    low: float | None
    high: float | None
    value: float
    colour: str
    title: str
    label: str


class _Box(TypedDict):
    left: int
    right: int
    top: int
    width: int
    height: int
    middle: float
    label_y: int


class _Plot(TypedDict):
    """What templates/quality_plot.svg draws."""

    width: int
    height: int
    metric: str
    box: _Box
    ticks: list[_Tick]
    points: list[_Point]


class _Row(TypedDict):
    """One table row of templates/monitoring_index.html, as plain values (the template escapes them)."""

    lead: list[object]
    verdict: str
    colour: str
    figures: list[str]
    summary: str
    reasons: list[str]
    links: list[tuple[str, str]]


def _order(records: list[BatchRecord]) -> list[BatchRecord]:
    """By batch time (what the plot's x axis means), undated batches after, then by monitoring order."""
    return sorted(
        records, key=lambda r: (r.get("batch_time") is None, r.get("batch_time") or "", r.get("seq", 0))
    )


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _measured(record: BatchRecord) -> tuple[QualityChangeRecord, float, float] | None:
    """The record's quality change with its batch and reference values, when both were measured."""
    q = record.get("quality")
    if not q:
        return None
    value, reference = q.get("batch_value"), q.get("reference_value")
    if value is None or reference is None:
        return None
    return q, float(value), float(reference)


def _plot(records: list[BatchRecord]) -> _Plot | None:
    """Geometry and labels of the quality plot (templates/quality_plot.svg); None without labels."""
    points = [(r, m) for r in _order(records) if (m := _measured(r)) is not None]
    if not points:
        return None
    first, (first_q, _, _) = points[0]
    metric = first_q["metric"]
    higher = first_q.get("higher_is_better", True)
    margin = float(first["decision"]["thresholds"].get("quality_margin") or 0.0)
    values: list[float] = []
    for _, (q, value, ref) in points:
        values += [value, ref]
        values += [float(v) for v in (q.get("batch_interval") or []) if v is not None]
        values.append(ref - margin if higher else ref + margin)
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or 0.01
    low, high = low - pad, high + pad
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
    step = plot_w / max(len(points), 1)

    def x(i: int) -> float:
        return _LEFT + step * (i + 0.5)

    def y(v: float) -> float:
        return _TOP + plot_h * (1 - (v - low) / (high - low))

    ticks: list[_Tick] = [
        {"y": y(v), "label": f"{v:.3f}"} for v in (low + (high - low) * k / 4 for k in range(5))
    ]
    drawn: list[_Point] = []
    for i, (r, (q, value, ref)) in enumerate(points):
        lo, hi = q.get("batch_interval") or (None, None)
        drawn.append(
            {
                "x": x(i),
                "x0": x(i) - step / 2,
                "x1": x(i) + step / 2,
                "reference": y(ref),  # the champion's test value and its retrain line, per batch
                "line": y(ref - margin if higher else ref + margin),
                "low": None if lo is None or hi is None else y(lo),
                "high": None if lo is None or hi is None else y(hi),
                "value": y(value),
                "colour": COLOURS.get(r.get("verdict", ""), "#333"),
                "title": f"{r['batch_id']}: {metric} {value:.4f} ({r.get('verdict')})",
                "label": _short(r["batch_id"]),
            }
        )
    box: _Box = {
        "left": _LEFT,
        "right": _LEFT + plot_w,
        "top": _TOP,
        "width": plot_w,
        "height": plot_h,
        "middle": _TOP + plot_h / 2,
        "label_y": _TOP + plot_h + 14,
    }
    return {"width": _WIDTH, "height": _HEIGHT, "metric": metric, "box": box, "ticks": ticks, "points": drawn}


def _link(root_relative: str | None, text: str, folder: Path) -> tuple[str, str] | None:
    """A link from `folder` (monitoring/<model>/reports/, where index.html lives) to a file named
    relative to the project root, as records name them."""
    if not root_relative:
        return None
    return (os.path.relpath(root_relative, folder).replace(os.sep, "/"), text)


def _row(r: BatchRecord, name: str) -> _Row:
    """One table row as plain values; the template escapes every one of them."""
    drift_result = r.get("drift")
    q = r.get("quality")
    low, high = (None, None) if not q else q.get("interval") or (None, None)
    verdict = r.get("verdict", "?")
    period = " to ".join(s[:16].replace("T", " ") for s in (r.get("batch_start"), r.get("batch_time")) if s)
    champion = r.get("champion")
    folder = store.reports(name)
    links = [
        _link((r.get("reports") or {}).get("drift"), "drift", folder),
        _link((r.get("reports") or {}).get("quality"), "quality", folder),
        _link(str(store.record_path(name, r["batch_id"])), "record", folder),
    ]
    return {
        "lead": [
            r.get("seq", ""),
            r["batch_id"],
            period or "-",
            r.get("rows", ""),
            f"v{champion.get('version', '?') if champion else '?'}",
        ],
        "verdict": verdict,
        "colour": COLOURS.get(verdict, "#333"),
        "figures": [
            *_drift_figures(drift_result),
            f"{_num(q.get('batch_value'))} vs {_num(q.get('reference_value'))}" if q else "-",
            f"{_num(q.get('drop'))} [{_num(low)}, {_num(high)}]" if q else "-",
        ],
        "summary": r.get("summary", ""),
        "reasons": r.get("reasons", []),
        "links": [link for link in links if link is not None],
    }


def _drift_figures(drift_result: DriftRecord | None) -> list[str]:
    """Drift share, weighted drift share and prediction drift, as the table shows them."""
    if not drift_result:
        return ["-", "-", "-"]
    prediction = drift_result.get("prediction")
    return [
        _num(drift_result.get("drift_share"), 3),
        _num(drift_result.get("weighted_drift_share"), 3),
        _num(None if not prediction else prediction.get("score"), 3),
    ]


def index_html(name: str, records: list[BatchRecord]) -> str:
    ordered = _order(records)
    metric = next((q["metric"] for r in ordered if (q := r.get("quality"))), "quality")
    headers = [
        *("#", "batch", "period", "rows", "champion", "verdict"),
        *("drift share", "weighted drift", "prediction drift", f"{metric}: batch vs test", "drop [interval]"),
        *("why", "reports"),
    ]
    return safehtml.render(
        "monitoring_index.html",
        rows=[_row(r, name) for r in ordered],
        plot=_plot(ordered),
        colours=COLOURS,
        metric=metric,
        headers=headers,
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        model=name,
        records=str(store.records(name)),
    )


def write_index(root: Path, name: str, records: list[BatchRecord]) -> Path:
    """`monitoring/<name>/reports/index.html`: model `name`'s batches."""
    return safehtml.write_page(root / store.index(name), index_html(name, records))
