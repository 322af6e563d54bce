"""`monitoring/<model>/reports/index.html`: every monitored batch of one model on one page, for people.

One self-contained file, no scripts and no network: a plot of the champion's quality over time
(inline SVG: the batch metric with its bootstrap interval, the champion's test-split value and the
retrain line under it, points coloured by verdict), then a table of every batch with its verdict,
drift shares, quality, the quality estimated without labels (CBPE / DLE, its band, the realised
value and the shift once the labels arrived), reasons and links to its Evidently reports and
decision record. Rebuilt from the records after every batch, so it can never disagree with them.
The markup is `templates/monitoring_index.html` and `templates/quality_plot.svg`, rendered with autoescape
(`reproml.safehtml`): batch ids, reasons and metric names are always text, never tags.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict, TypeVar

from reproml import safehtml
from reproml.monitoring import store
from reproml.monitoring.records import DriftRecord

COLOURS = {
    "retrain": "#c0392b",
    "retrain_held": "#d68910",
    "ok": "#1e8449",
    "insufficient_data": "#7f8c8d",
    "quarantined": "#6c3483",
    "out_of_order": "#2e86c1",
}
# A batch record as written (`BatchRecord`) or as read back from disk, where every key is checked.
RecordT = TypeVar("RecordT", bound=Mapping[str, Any])

_WIDTH, _HEIGHT, _LEFT, _RIGHT, _TOP, _BOTTOM = 960, 360, 110, 24, 24, 110


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{float(value):.{digits}f}"


class _Tick(TypedDict):
    y: float
    label: str


class _EstimateMark(TypedDict):
    """A batch's label-free estimate on the plot: its band (a box) and its value (a diamond at `y`)."""

    y: float
    x0: float
    top: float
    width: float
    height: float
    title: str


class _Point(TypedDict):
    """One batch on the plot, in SVG coordinates: realised (`reference`, `line`, `low`, `high`,
    `value`, `title` where it was labelled) and estimated (`estimate` where it has one)."""

    x: float
    x0: float
    x1: float
    colour: str
    label: str
    reference: float | None
    value: float | None
    low: float | None
    estimate: _EstimateMark | None
    line: NotRequired[float]
    high: NotRequired[float | None]
    title: NotRequired[str]


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


class _Cell(TypedDict):
    """One feature in one batch on the heat map."""

    text: str
    colour: str
    drifted: bool
    title: str


class _HeatRow(TypedDict):
    label: str
    weight: float | None  # the feature's largest importance share; None for the prediction
    cells: list[_Cell]


class _HeatBatch(TypedDict):
    label: str
    title: str


class _Heatmap(TypedDict):
    """What the heat map of templates/monitoring_index.html draws: features by batches."""

    batches: list[_HeatBatch]
    rows: list[_HeatRow]
    floors: str


class _Row(TypedDict):
    """One table row of templates/monitoring_index.html, as plain values (the template escapes them)."""

    lead: list[object]
    verdict: str
    colour: str
    figures: list[str]
    summary: str
    reasons: list[str]
    links: list[tuple[str, str]]


def _order(records: Sequence[RecordT]) -> list[RecordT]:
    """By batch time (what the plot's x axis means), undated batches after, then by monitoring order."""
    return sorted(
        records, key=lambda r: (r.get("batch_time") is None, r.get("batch_time") or "", r.get("seq", 0))
    )


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _estimate(r: Mapping[str, Any], metric: str | None) -> Mapping[str, Any] | None:
    """The record's label-free estimate of `metric` (`record["estimate"]`: value, lower, upper,
    method), when it has one of that metric (any metric when `metric` is None)."""
    estimate = r.get("estimate")
    if not isinstance(estimate, dict) or not _finite(estimate.get("value")):
        return None
    if metric is not None and estimate.get("metric") not in (None, metric):
        return None
    return estimate


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _realised(r: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The record's realised quality (`record["quality"]`), when it has a finite batch value."""
    q = r.get("quality")
    return q if isinstance(q, dict) and _finite(q.get("batch_value")) else None


def _plot(records: Sequence[Mapping[str, Any]]) -> _Plot | None:
    """Geometry and labels of the quality plot (templates/quality_plot.svg): per batch the realised
    metric (labelled batches) and the label-free estimate with its band (records carrying an
    `estimate`); None when no batch has either."""
    ordered = _order(records)
    first = next((q for q in map(_realised, ordered) if q), None)
    metric = (
        first["metric"]
        if first
        else next((e.get("metric") for r in ordered if (e := _estimate(r, None))), None)
    )
    points = [r for r in ordered if _realised(r) or _estimate(r, metric)]
    if not points:
        return None
    metric = metric or "quality"
    higher = first.get("higher_is_better", True) if first else True
    margin = float(((points[0].get("decision") or {}).get("thresholds") or {}).get("quality_margin", 0.0))
    values: list[float] = []
    for r in points:
        q, e = _realised(r), _estimate(r, metric)
        if q:
            values += [q["batch_value"], q["reference_value"]]
            values += [v for v in (q.get("batch_interval") or []) if v is not None]
            values.append(q["reference_value"] - margin if higher else q["reference_value"] + margin)
        if e:
            values += [float(e[k]) for k in ("value", "lower", "upper") if _finite(e.get(k))]
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or 0.01
    low, high = low - pad, high + pad
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
    step = plot_w / max(len(points), 1)

    def x(i: int) -> float:
        return _LEFT + step * (i + 0.5)

    def y(v: float) -> float:
        return _TOP + plot_h * (1 - (float(v) - low) / (high - low))

    ticks: list[_Tick] = [
        {"y": y(v), "label": f"{v:.3f}"} for v in (low + (high - low) * k / 4 for k in range(5))
    ]
    drawn: list[_Point] = []
    for i, r in enumerate(points):
        q, e = _realised(r), _estimate(r, metric)
        point: _Point = {
            "x": x(i),
            "x0": x(i) - step / 2,
            "x1": x(i) + step / 2,
            "colour": COLOURS.get(r.get("verdict", ""), "#333"),
            "label": _short(r["batch_id"]),
            "reference": None,
            "value": None,
            "low": None,
            "estimate": None,
        }
        if q:
            ref = q["reference_value"]
            lo, hi = q.get("batch_interval") or (None, None)
            point["reference"] = y(ref)  # the champion's test value and its retrain line, per batch
            point["line"] = y(ref - margin if higher else ref + margin)
            point["low"] = None if lo is None or hi is None else y(lo)
            point["high"] = None if lo is None or hi is None else y(hi)
            point["value"] = y(q["batch_value"])
            point["title"] = f"{r['batch_id']}: {metric} {q['batch_value']:.4f} ({r.get('verdict')})"
        if e:
            lower = float(e["lower"]) if _finite(e.get("lower")) else float(e["value"])
            upper = float(e["upper"]) if _finite(e.get("upper")) else float(e["value"])
            half = min(step / 6, 10.0)
            point["estimate"] = {
                "y": y(e["value"]),
                "x0": x(i) - half,
                "top": y(max(lower, upper)),
                "width": 2 * half,
                "height": abs(y(lower) - y(upper)),
                "title": f"{r['batch_id']}: estimated {metric} {float(e['value']):.4f} "
                f"[{lower:.4f}, {upper:.4f}] ({e.get('method') or 'estimate'})",
            }
        drawn.append(point)
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


def _heat(score: float, floor: float) -> str:
    """White at no drift to full red at twice the effect floor (the floor itself is mid-scale)."""
    share = min(max(score / (2 * floor), 0.0), 1.0) if floor > 0 else (1.0 if score > 0 else 0.0)
    red, green, blue = (round(255 + (end - 255) * share) for end in (192, 57, 43))
    return f"#{red:02x}{green:02x}{blue:02x}"


def _heatmap(records: Sequence[Mapping[str, Any]]) -> _Heatmap | None:
    """Features by batches: each cell the feature's drift score in that batch, coloured against
    the batch's effect floor, drifted cells marked; rows by the champion's importance (the largest
    share any batch gave the feature), the prediction last. None before any batch was measured."""
    measured = [r for r in _order(records) if isinstance(r.get("drift"), dict) and r["drift"].get("columns")]
    if not measured:
        return None
    weight: dict[str, float] = {}
    for r in measured:
        for c in r["drift"]["columns"]:
            weight[str(c["column"])] = max(weight.get(str(c["column"]), 0.0), float(c.get("weight") or 0.0))
    features = sorted(weight, key=lambda f: (-weight[f], f))

    def cell(c: Mapping[str, Any] | None, floor: float) -> _Cell:
        if c is None:
            return {"text": "", "colour": "#ffffff", "drifted": False, "title": "not in this batch"}
        if not c.get("judged") or not _finite(c.get("score")):
            return {
                "text": "-",
                "colour": "#eeeeee",
                "drifted": False,
                "title": c.get("note") or "not judged",
            }
        score = float(c["score"])
        p = c.get("p_value")
        title = f"{c['column']}: {c.get('method')} {score:.4f}"
        title += f", p {float(p):.2g}" if p is not None and _finite(p) else ""
        drifted = bool(c.get("drifted"))
        return {"text": f"{score:.2f}", "colour": _heat(score, floor), "drifted": drifted,
                "title": title + (" (drifted)" if drifted else "")}  # fmt: skip

    rows: list[_HeatRow] = []
    for feature in [*features, None]:
        cells: list[_Cell] = []
        for r in measured:
            drift = r["drift"]
            floor = float(drift.get("effect_floor") or 0.1)
            if feature is None:
                cells.append(cell(drift.get("prediction"), floor))
            else:
                found = next((c for c in drift["columns"] if str(c["column"]) == feature), None)
                cells.append(cell(found, floor))
        label = "(prediction)" if feature is None else feature
        rows.append({"label": label, "weight": None if feature is None else weight[feature], "cells": cells})
    if all(not c["text"] for c in rows[-1]["cells"]):
        rows.pop()  # no prediction drift measured anywhere
    batches: list[_HeatBatch] = [
        {"label": _short(r["batch_id"], 12), "title": r["batch_id"]} for r in measured
    ]
    floors = sorted({float(r["drift"].get("effect_floor") or 0.1) for r in measured})
    return {"batches": batches, "rows": rows, "floors": ", ".join(f"{f:g}" for f in floors)}


def _link(root_relative: str | None, text: str, folder: Path) -> tuple[str, str] | None:
    """A link from `folder` (monitoring/<model>/reports/, where index.html lives) to a file named
    relative to the project root, as records name them."""
    if not root_relative:
        return None
    return (os.path.relpath(root_relative, folder).replace(os.sep, "/"), text)


def _row(r: Mapping[str, Any], name: str) -> _Row:
    """One table row as plain values; the template escapes every one of them."""
    drift_result = r.get("drift")
    q = r.get("quality")
    low, high = (None, None) if not q else q.get("interval") or (None, None)
    est = r.get("estimate") or {}
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
            _estimated(est),
            est.get("shift", "-") if est else "-",
        ],
        "summary": r.get("summary", ""),
        "reasons": r.get("reasons", []),
        "links": [link for link in links if link is not None],
    }


def _estimated(est: Mapping[str, Any]) -> str:
    """The label-free estimate with its band, and the realised value once the labels arrived."""
    if not est:
        return "-"
    band = f"[{_num(est.get('lower'))}, {_num(est.get('upper'))}]"
    text = f"{est.get('metric', '')} {_num(est.get('value'))} {band}"
    text += f" ({str(est.get('method', '')).upper()})"
    if est.get("realised") is not None:
        text += f" / realised {_num(est.get('realised'))} (error {_num(est.get('error'))})"
    return text


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


def index_html(name: str, records: Sequence[Mapping[str, Any]]) -> str:
    ordered = _order(records)
    metric = next((q["metric"] for r in ordered if (q := r.get("quality"))), "quality")
    headers = [
        *("#", "batch", "period", "rows", "champion", "verdict"),
        *("drift share", "weighted drift", "prediction drift", f"{metric}: batch vs test", "drop [interval]"),
        *("estimated [band] / realised", "shift"),
        *("why", "reports"),
    ]
    return safehtml.render(
        "monitoring_index.html",
        rows=[_row(r, name) for r in ordered],
        plot=_plot(ordered),
        heatmap=_heatmap(ordered),
        colours=COLOURS,
        metric=metric,
        headers=headers,
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        model=name,
        records=str(store.records(name)),
    )


def write_index(root: Path, name: str, records: Sequence[Mapping[str, Any]]) -> Path:
    """`monitoring/<name>/reports/index.html`: model `name`'s batches."""
    return safehtml.write_page(root / store.index(name), index_html(name, records))
