"""The replay's report: what retraining bought, batch by batch, against never retraining.

`reproml simulate` feeds the production periods (July-December 2013 for the bundled flights, the
production split's months for a user's dated data) through the monitoring flow; this module turns
the decision records and the training flow's outcomes into one row per batch, scores the model the
replay started with (the never-retrained baseline) on the same labelled rows the champion was
judged on, with the monitor's metric for the task (ROC-AUC, macro one-vs-rest ROC-AUC, RMSE, or
`monitor.metric`), and writes `monitoring/reports/simulation.html` (a plot and the table, the
metric named in its headers) and `simulation.json` next to it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reproml import safehtml
from reproml.io import write_json

HTML_NAME, JSON_NAME = "simulation.html", "simulation.json"
COLUMNS = {
    "batch": "batch",
    "rows": "rows",
    "weighted_drift_share": "weighted drift",
    "drift_share": "drift share",
    "quality": "champion quality",
    "baseline": "never retrained",
    "verdict": "verdict",
    "retrain": "retrain",
    "data_version": "data version",
    "champion": "champion after",
}


def metric_name(task: str, metric: str | None) -> str:
    """The metric the monitor judges `task` on (`monitor.metric`, else the task's primary one)."""
    from reproml.metrics import metric_spec

    return metric_spec(metric, task, "monitor.metric").name


def headers(metric: str) -> list[str]:
    """The table's column headers, the quality columns naming the metric."""
    named = {"quality": f"champion {metric}", "baseline": f"never retrained {metric}"}
    return [named.get(key, label) for key, label in COLUMNS.items()]


def baseline_metric(model: Any, frame: pd.DataFrame, target: str, task: str, metric: str | None) -> float:
    """The metric the monitor uses (`reproml.metrics.score`), for `model` on labelled `frame`; multiclass
    scores are read in the model's own class order."""
    from reproml.decisions import threshold_of
    from reproml.metrics import metric_spec, score
    from reproml.scoring import predict_scores

    labelled = frame[frame[target].notna()]
    if labelled.empty:
        return math.nan
    scores = predict_scores(model, labelled[list(model.feature_names_in_)], task)
    labels = list(model.classes_) if task == "multiclass" else None
    spec = metric_spec(metric, task, "monitor.metric")
    cut = threshold_of(model)  # the model's own, as monitoring cuts the champion's
    return score(spec, labelled[target].to_numpy(), scores, labels=labels, threshold=cut)


def row(outcome: dict[str, Any], baseline: float, champion_after: int | None) -> dict[str, Any]:
    """One batch of the replay: the monitoring flow's summary plus what the retrain did."""
    retrain = outcome.get("retrain")
    what, data_version, outcome_reasons = "-", None, list(outcome.get("reasons") or [])
    if retrain:
        promotion = retrain.get("promotion") or {}
        version = (retrain.get("challenger") or {}).get("version")
        what = str(promotion.get("action")) + ("" if version is None else f" v{version}")
        data_version = ((retrain.get("added") or {}).get("md5") or "")[:10] or None
        if promotion.get("reason"):
            outcome_reasons.append(f"retrain: {promotion['action']}: {promotion['reason']}")
    return {
        "batch": outcome.get("batch"),
        "rows": outcome.get("rows"),
        "weighted_drift_share": outcome.get("weighted_drift_share"),
        "drift_share": outcome.get("drift_share"),
        "quality": outcome.get("quality"),
        "baseline": None if not np.isfinite(baseline) else float(baseline),
        "metric": outcome.get("metric"),
        "verdict": outcome.get("verdict"),
        "retrain": what,
        "data_version": data_version,
        "champion_before": (outcome.get("champion") or {}).get("version"),
        "champion": champion_after,
        "reasons": outcome_reasons,
    }


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def _plot_svg(rows: list[dict[str, Any]], metric: str, baseline_version: int | None) -> Any:
    """The plot as inline SVG markup: matplotlib's SVG writer escapes every label it writes
    (`<`, `>`, `&`, quotes, and `--` in comments), so the page inserts it unescaped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = [r for r in rows if r.get("quality") is not None]
    if not judged:
        return safehtml.markup("<p>No batch had enough labelled rows to judge quality.</p>")
    x = np.arange(len(judged))
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    ax.plot(x, [r["quality"] for r in judged], "o-", color="#2471a3", label="champion at the time")
    ax.plot(
        x,
        [r["baseline"] for r in judged],
        "s--",
        color="#7f8c8d",
        label=f"never retrained (v{baseline_version})",
    )
    for i, r in enumerate(judged):
        if r["retrain"].startswith("promote"):
            ax.axvline(i + 0.5, color="#1e8449", alpha=0.4)
            ax.annotate(f"v{r['champion']}", (i + 0.5, ax.get_ylim()[1]), fontsize=8, ha="center", va="top")
    ax.set_xticks(x, [r["batch"] for r in judged], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(
        "Champion quality per production batch (green line: a promotion after that batch)", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    svg = buffer.getvalue()
    return safehtml.markup(svg[svg.index("<svg") :])


def render_html(rows: list[dict[str, Any]], metric: str, baseline_version: int | None, title: str) -> str:
    """The page (templates/simulation.html, autoescaped): every value from the replay is text."""
    return safehtml.render(
        "simulation.html",
        title=title,
        plot=_plot_svg(rows, metric, baseline_version),
        headers=headers(metric),
        rows=[([cell(r.get(key)) for key in COLUMNS], "; ".join(r["reasons"])) for r in rows],
    )


def write(
    folder: Path, rows: list[dict[str, Any]], metric: str, baseline_version: int | None, title: str
) -> Path:
    write_json(folder / JSON_NAME, {"baseline_version": baseline_version, "metric": metric, "rows": rows})
    return safehtml.write_page(folder / HTML_NAME, render_html(rows, metric, baseline_version, title))
