"""`monitoring/reports/index.html`: every monitored batch on one page, for people.

One self-contained file, no scripts and no network: a plot of the champion's quality over time
(inline SVG: the batch metric with its bootstrap interval, the champion's test-split value and the
retrain line under it, points coloured by verdict), then a table of every batch with its verdict,
drift shares, quality, reasons and links to its Evidently reports and decision record. Rebuilt
from the records after every batch, so it can never disagree with them.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from pathlib import Path
from typing import Any

from reproml.io import write_text
from reproml.monitoring import store

COLOURS = {
    "retrain": "#c0392b",
    "retrain_held": "#d68910",
    "ok": "#1e8449",
    "insufficient_data": "#7f8c8d",
    "quarantined": "#6c3483",
}
_WIDTH, _HEIGHT, _LEFT, _RIGHT, _TOP, _BOTTOM = 960, 360, 110, 24, 24, 110


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{float(value):.{digits}f}"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _order(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By batch time (what the plot's x axis means), undated batches after, then by monitoring order."""
    return sorted(
        records, key=lambda r: (r.get("batch_time") is None, r.get("batch_time") or "", r.get("seq", 0))
    )


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _line(x1: float, x2: float, y1: float, y2: float, style: str) -> str:
    return f'<line x1="{x1:.1f}" x2="{x2:.1f}" y1="{y1:.1f}" y2="{y2:.1f}" {style}/>'


def quality_svg(records: list[dict[str, Any]]) -> str:
    """The champion's metric per labelled batch, in batch order; '' when no batch had labels."""
    points = [r for r in _order(records) if r.get("quality") and r["quality"].get("batch_value") is not None]
    if not points:
        return ""
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

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" role="img" '
        f'aria-label="{_esc(metric)} per batch">',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>',
    ]
    for k in range(5):
        v = low + (high - low) * k / 4
        parts.append(_line(_LEFT, _LEFT + plot_w, y(v), y(v), 'stroke="#eee"'))
        parts.append(
            f'<text x="{_LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">{v:.3f}</text>'
        )
    middle = _TOP + plot_h / 2
    parts.append(
        f'<text x="40" y="{middle:.1f}" font-size="12" transform="rotate(-90 40 {middle:.1f})"'
        f' text-anchor="middle">{_esc(metric)}</text>'
    )
    for i, r in enumerate(points):  # the champion's test value and its retrain line, per batch
        q = r["quality"]
        ref = q["reference_value"]
        line = ref - margin if higher else ref + margin
        x0, x1 = x(i) - step / 2, x(i) + step / 2
        parts.append(_line(x0, x1, y(ref), y(ref), 'stroke="#2471a3" stroke-width="2"'))
        parts.append(_line(x0, x1, y(line), y(line), 'stroke="#c0392b" stroke-dasharray="4 3"'))
    for i, r in enumerate(points):
        q = r["quality"]
        colour = COLOURS.get(r.get("verdict", ""), "#333")
        lo, hi = q.get("batch_interval") or (None, None)
        if lo is not None and hi is not None:
            parts.append(_line(x(i), x(i), y(lo), y(hi), f'stroke="{colour}" stroke-width="2"'))
        title = f"{r['batch_id']}: {metric} {q['batch_value']:.4f} ({r.get('verdict')})"
        parts.append(
            f'<circle cx="{x(i):.1f}" cy="{y(q["batch_value"]):.1f}" r="5" fill="{colour}">'
            f"<title>{_esc(title)}</title></circle>"
        )
        label_y = _TOP + plot_h + 14
        parts.append(
            f'<text x="{x(i):.1f}" y="{label_y}" font-size="10" text-anchor="end" '
            f'transform="rotate(-35 {x(i):.1f} {label_y})">{_esc(_short(r["batch_id"]))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _link(root_relative: str | None, text: str) -> str:
    if not root_relative:
        return ""
    # links are relative to monitoring/reports/, where index.html lives
    target = (
        Path(root_relative).relative_to(store.REPORTS)
        if root_relative.startswith(str(store.REPORTS))
        else None
    )
    href = str(target) if target is not None else f"../../{root_relative}"
    return f'<a href="{_esc(href)}">{_esc(text)}</a>'


def _row(r: dict[str, Any]) -> str:
    drift_result = r.get("drift") or {}
    q = r.get("quality") or {}
    low, high = q.get("interval") or (None, None)
    verdict = r.get("verdict", "?")
    period = " to ".join(s[:16].replace("T", " ") for s in (r.get("batch_start"), r.get("batch_time")) if s)
    champion = r.get("champion") or {}
    links = " ".join(
        filter(
            None,
            [
                _link((r.get("reports") or {}).get("drift"), "drift"),
                _link((r.get("reports") or {}).get("quality"), "quality"),
                _link(str(store.record_path(r["batch_id"])), "record"),
            ],
        )
    )
    reasons = "<br>".join([f"<b>{_esc(r.get('summary', ''))}</b>", *(_esc(x) for x in r.get("reasons", []))])
    cells = [
        _esc(r.get("seq", "")),
        _esc(r["batch_id"]),
        _esc(period or "-"),
        _esc(r.get("rows", "")),
        _esc(f"v{champion.get('version', '?')}"),
        f'<span class="verdict" style="background:{COLOURS.get(verdict, "#333")}">{_esc(verdict)}</span>',
        _num(drift_result.get("drift_share"), 3),
        _num(drift_result.get("weighted_drift_share"), 3),
        _num((drift_result.get("prediction") or {}).get("score"), 3),
        f"{_num(q.get('batch_value'))} vs {_num(q.get('reference_value'))}" if q else "-",
        f"{_num(q.get('drop'))} [{_num(low)}, {_num(high)}]" if q else "-",
        f'<div class="reasons">{reasons}</div>',
        links,
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f4f4f4; position: sticky; top: 0; }
.verdict { color: #fff; padding: 1px 6px; border-radius: 3px; white-space: nowrap; }
.reasons { max-width: 560px; font-size: 12px; color: #444; }
.legend span { display: inline-block; margin-right: 12px; }
"""


def index_html(records: list[dict[str, Any]]) -> str:
    ordered = _order(records)
    metric = next((r["quality"]["metric"] for r in ordered if r.get("quality")), "quality")
    legend = "".join(
        f'<span><span class="verdict" style="background:{c}">{_esc(v)}</span></span>'
        for v, c in COLOURS.items()
    )
    svg = quality_svg(ordered) or "<p>No labelled batch yet: quality over time appears with the first.</p>"
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    headers = [
        *("#", "batch", "period", "rows", "champion", "verdict"),
        *("drift share", "weighted drift", "prediction drift", f"{metric}: batch vs test", "drop [interval]"),
        *("why", "reports"),
    ]
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "\n".join(_row(r) for r in ordered)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>reproml monitoring</title>
<link rel="icon" href="data:,"><style>{_STYLE}</style></head>
<body>
<h1>Monitoring: {len(ordered)} batches</h1>
<p>Generated {generated} from <code>monitoring/records/</code>. Thresholds are in each record and
in <code>params.yaml</code> (<code>monitor:</code>); how to read this page:
<code>monitoring/README.md</code>.</p>
<h2>Champion quality over time</h2>
<p class="legend">{legend} &nbsp; blue line: the champion's {_esc(metric)} on its own test split;
dashed red: that value less <code>monitor.quality_margin</code>; bars: bootstrap interval.</p>
{svg}
<h2>Batches</h2>
<table><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
</body></html>
"""


def write_index(root: Path, records: list[dict[str, Any]]) -> Path:
    target = root / store.INDEX
    write_text(target, index_html(records))
    return target
