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
from pathlib import Path
from typing import Any

from reproml import safehtml
from reproml.monitoring import store

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


def _order(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By batch time (what the plot's x axis means), undated batches after, then by monitoring order."""
    return sorted(
        records, key=lambda r: (r.get("batch_time") is None, r.get("batch_time") or "", r.get("seq", 0))
    )


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _plot(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Geometry and labels of the quality plot (templates/quality_plot.svg); None without labels."""
    points = [r for r in _order(records) if r.get("quality") and r["quality"].get("batch_value") is not None]
    if not points:
        return None
    metric = points[0]["quality"]["metric"]
    higher = points[0]["quality"].get("higher_is_better", True)
    margin = float(points[0]["decision"]["thresholds"].get("quality_margin", 0.0))
    values: list[float] = []
    for r in points:
        q = r["quality"]
        values += [q["batch_value"], q["reference_value"]]
        values += [v for v in (q.get("batch_interval") or []) if v is not None]
        values.append(q["reference_value"] - margin if higher else q["reference_value"] + margin)
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or 0.01
    low, high = low - pad, high + pad
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
    step = plot_w / max(len(points), 1)

    def x(i: int) -> float:
        return _LEFT + step * (i + 0.5)

    def y(v: float) -> float:
        return _TOP + plot_h * (1 - (v - low) / (high - low))

    ticks = [{"y": y(v), "label": f"{v:.3f}"} for v in (low + (high - low) * k / 4 for k in range(5))]
    drawn = []
    for i, r in enumerate(points):
        q = r["quality"]
        ref = q["reference_value"]
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
                "value": y(q["batch_value"]),
                "colour": COLOURS.get(r.get("verdict", ""), "#333"),
                "title": f"{r['batch_id']}: {metric} {q['batch_value']:.4f} ({r.get('verdict')})",
                "label": _short(r["batch_id"]),
            }
        )
    box = {
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


def _row(r: dict[str, Any], name: str) -> dict[str, Any]:
    """One table row as plain values; the template escapes every one of them."""
    drift_result = r.get("drift") or {}
    q = r.get("quality") or {}
    low, high = q.get("interval") or (None, None)
    est = r.get("estimate") or {}
    verdict = r.get("verdict", "?")
    period = " to ".join(s[:16].replace("T", " ") for s in (r.get("batch_start"), r.get("batch_time")) if s)
    champion = r.get("champion") or {}
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
            f"v{champion.get('version', '?')}",
        ],
        "verdict": verdict,
        "colour": COLOURS.get(verdict, "#333"),
        "figures": [
            _num(drift_result.get("drift_share"), 3),
            _num(drift_result.get("weighted_drift_share"), 3),
            _num((drift_result.get("prediction") or {}).get("score"), 3),
            f"{_num(q.get('batch_value'))} vs {_num(q.get('reference_value'))}" if q else "-",
            f"{_num(q.get('drop'))} [{_num(low)}, {_num(high)}]" if q else "-",
            _estimated(est),
            est.get("shift", "-") if est else "-",
        ],
        "summary": r.get("summary", ""),
        "reasons": r.get("reasons", []),
        "links": [link for link in links if link is not None],
    }


def _estimated(est: dict[str, Any]) -> str:
    """The label-free estimate with its band, and the realised value once the labels arrived."""
    if not est:
        return "-"
    band = f"[{_num(est.get('lower'))}, {_num(est.get('upper'))}]"
    text = f"{est.get('metric', '')} {_num(est.get('value'))} {band}"
    text += f" ({str(est.get('method', '')).upper()})"
    if est.get("realised") is not None:
        text += f" / realised {_num(est.get('realised'))} (error {_num(est.get('error'))})"
    return text


def index_html(name: str, records: list[dict[str, Any]]) -> str:
    ordered = _order(records)
    metric = next((r["quality"]["metric"] for r in ordered if r.get("quality")), "quality")
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
        colours=COLOURS,
        metric=metric,
        headers=headers,
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        model=name,
        records=str(store.records(name)),
    )


def write_index(root: Path, name: str, records: list[dict[str, Any]]) -> Path:
    """`monitoring/<name>/reports/index.html`: model `name`'s batches."""
    return safehtml.write_page(root / store.index(name), index_html(name, records))
