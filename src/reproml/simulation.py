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
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import numpy as np
import pandas as pd

from reproml import safehtml
from reproml.io import write_json
from reproml.monitoring.decision import MEASURED  # measured: could be learned

if TYPE_CHECKING:
    from reproml.monitoring.records import BatchSummary
    from reproml.retrain import TrainingSummary

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


class SimulationRow(TypedDict):
    """One batch of the replay (`row`): the table's columns, and why."""

    batch: str | None
    rows: int | None
    weighted_drift_share: float | None
    drift_share: float | None
    quality: float | None  # the champion's metric at the time
    baseline: float | None  # the never-retrained model's, on the same labelled rows
    metric: str | None
    verdict: str | None
    retrain: str  # what the training flow did: `promote v3, refit v4`, `reject v3`, `-`
    data_version: str | None  # the added batch's md5, shortened
    retrained_on: NotRequired[str | None]  # the labelled window the training flow added (file name)
    champion_before: int | None
    champion: int | None  # after the batch
    reasons: list[str]
    summary: str | None
    retrain_seconds: float | None
    retrains: NotRequired[int]  # training flows the batch started (labels late: up to two)
    promotions: NotRequired[int]  # of them, those that changed the champion


class PolicySummary(TypedDict):
    """One retrain policy's line of the comparison (`policy_summary`; `compare` adds `vs_never`)."""

    policy: str
    quality: dict[str, float | None]  # batch -> the champion's metric at the time
    mean: float | None
    retrains: int
    promotions: int
    training_seconds: float
    seconds: float
    vs_never: NotRequired[float | None]


class PolicyTable(TypedDict):
    batches: list[str]
    policies: list[PolicySummary]


class VerdictLine(TypedDict):
    batch: str | None
    verdict: str | None
    retrain: str
    why: str


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


def _retrain_cell(
    retrain: TrainingSummary, reasons: list[str], when: str
) -> tuple[str, str | None, str | None, bool]:
    """One training flow's part of a row: what it did (`promote v3, refit v4`), the added data's
    md5 (short) and file name, and whether it changed the champion; its reasons go to `reasons`,
    prefixed by `when` (`retrain`, or `retrain on labels`)."""
    promotion = retrain.get("promotion")
    action, why = (None, None) if promotion is None else (promotion.get("action"), promotion.get("reason"))
    challenger, added = retrain.get("challenger"), retrain.get("added")
    version = None if challenger is None else challenger.get("version")
    what = str(action) + ("" if version is None else f" v{version}")
    data_version = ((None if added is None else added.get("md5")) or "")[:10] or None
    file = None if added is None else added.get("file")
    if why:
        reasons.append(f"{when}: {action}: {why}")
    refit = retrain.get("refit")
    if refit:
        what += f", refit v{refit['version']}"
        decided = refit.get("decision")
        reasons.append(f"refit: {None if decided is None else decided.get('reason')}")
    return what, data_version, None if not file else Path(file).name, what.startswith(("promote", "refit"))


def row(outcome: BatchSummary, baseline: float, champion_after: int | None) -> SimulationRow:
    """One batch of the replay: the monitoring flow's summary plus what the retrains did: the one
    its verdict started and, labels late, the one its verdict on the labels started when they came."""
    outcome_reasons = list(outcome.get("reasons") or [])
    parts, data_version, retrained_on, promotions = [], None, None, 0
    started = (("retrain", outcome.get("retrain")), ("retrain on labels", outcome.get("labels_retrain")))
    for when, retrain in started:
        if not retrain:
            continue
        what, data_version, retrained_on, promoted = _retrain_cell(retrain, outcome_reasons, when)
        parts.append(what if when == "retrain" else f"on labels: {what}")
        promotions += promoted
    if not outcome.get("retrain") and outcome.get("retrain_skipped"):
        outcome_reasons.append(f"retrain: {outcome['retrain_skipped']}")
    seconds = [v for v in (outcome.get("retrain_seconds"), outcome.get("labels_retrain_seconds")) if v]
    return {
        "batch": outcome.get("batch"),
        "rows": outcome.get("rows"),
        "weighted_drift_share": outcome.get("weighted_drift_share"),
        "drift_share": outcome.get("drift_share"),
        "quality": outcome.get("quality"),
        "baseline": None if not np.isfinite(baseline) else float(baseline),
        "metric": outcome.get("metric"),
        "verdict": outcome.get("verdict"),
        "retrain": "; ".join(parts) or "-",
        "data_version": data_version,
        "retrained_on": retrained_on,
        "champion_before": champion.get("version") if (champion := outcome.get("champion")) else None,
        "champion": champion_after,
        "reasons": outcome_reasons,
        "summary": outcome.get("summary"),
        "retrain_seconds": round(sum(seconds), 1) if seconds else None,
        "retrains": len(parts),
        "promotions": promotions,
    }


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def _plot_svg(rows: list[SimulationRow], metric: str, baseline_version: int | None) -> Any:
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
    ax.plot(x, _values(r["quality"] for r in judged), "o-", color="#2471a3", label="champion at the time")
    ax.plot(
        x,
        _values(r["baseline"] for r in judged),
        "s--",
        color="#7f8c8d",
        label=f"never retrained (v{baseline_version})",
    )
    for i, r in enumerate(judged):
        if r["retrain"].startswith("promote"):
            ax.axvline(i + 0.5, color="#1e8449", alpha=0.4)
            ax.annotate(f"v{r['champion']}", (i + 0.5, ax.get_ylim()[1]), fontsize=8, ha="center", va="top")
    ax.set_xticks(x, [str(r["batch"]) for r in judged], rotation=30, ha="right", fontsize=8)
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


def _values(values: Iterable[float | None]) -> list[float]:
    """Numbers to plot, a missing one as NaN (a gap in the line)."""
    return [math.nan if v is None else v for v in values]


def render_html(rows: list[SimulationRow], metric: str, baseline_version: int | None, title: str) -> str:
    """The page (templates/simulation.html, autoescaped): every value from the replay is text."""
    return safehtml.render(
        "simulation.html",
        title=title,
        plot=_plot_svg(rows, metric, baseline_version),
        headers=headers(metric),
        rows=[([cell(r.get(key)) for key in COLUMNS], "; ".join(r["reasons"])) for r in rows],
    )


def write(
    folder: Path,
    rows: list[SimulationRow],
    metric: str,
    baseline_version: int | None,
    title: str,
    policy: str | None = None,
    labels: str = "now",
) -> Path:
    """simulation.html and .json; under a policy other than `reproml`, simulation-<policy>.*.
    `labels`: the replay's label mode (`LABEL_MODES`), kept in the JSON."""
    stem = "simulation" if policy in (None, REPROML) else f"simulation-{policy}"
    payload = {
        "baseline_version": baseline_version,
        "metric": metric,
        "rows": rows,
        "policy": policy,
        "labels": labels,
    }
    write_json(folder / f"{stem}.json", payload)
    return safehtml.write_page(folder / f"{stem}.html", render_html(rows, metric, baseline_version, title))


# --- policies side by side (`reproml simulate --policies never,always,reproml`) ---------------

NEVER, ALWAYS, REPROML = "never", "always", "reproml"
# `reproml simulate --labels`: when a period's labels arrive
LABEL_MODES = {
    "now": "labels now (each period judged with its own labels)",
    "late": "labels late (each period judged without its labels, which arrive with the next period)",
}
POLICIES = {
    NEVER: "never retrain: the model the replay starts with serves every period",
    ALWAYS: "retrain after every period with enough labelled rows, whatever the verdict "
    "(the same training flow: new data version, gate, refit)",
    REPROML: "retrain when the monitor's verdict is `retrain` (quality drop or drift against what "
    "the champion learned, within the loop guard), through the same training flow",
}
POLICIES_STEM = "policies"


def parse_policies(text: str) -> list[str]:
    """`never,always,reproml` -> the policies in order, each once; an unknown name is refused."""
    from reproml.errors import ConfigError

    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in POLICIES]
    if unknown or not names:
        raise ConfigError(
            f"--policies: unknown policy {unknown or text!r}; choose from {', '.join(POLICIES)}"
        )
    return list(dict.fromkeys(names))


def parse_labels(text: str) -> str:
    """`now` or `late` (`reproml simulate --labels`); anything else is refused."""
    from reproml.errors import ConfigError

    mode = text.strip().lower()
    if mode not in LABEL_MODES:
        raise ConfigError(f"--labels: unknown mode {text!r}; choose from {', '.join(LABEL_MODES)}")
    return mode


def wants_retrain(policy: str, verdict: str) -> bool:
    """Whether `policy` hands a monitored batch with this verdict to the training flow."""
    if policy == NEVER:
        return False
    if policy == ALWAYS:
        return verdict in MEASURED
    return verdict == "retrain"


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def policy_summary(policy: str, rows: list[SimulationRow], seconds: float) -> PolicySummary:
    """One policy's line: quality per batch (the champion at the time), its mean, the training
    flows run (`retrains`), how many changed the champion, and the compute time they took."""
    ran = [r for r in rows if r.get("retrain") not in (None, "-")]
    return {
        "policy": policy,
        "quality": {str(r["batch"]): r.get("quality") for r in rows},
        "mean": _mean([r.get("quality") for r in rows]),
        "retrains": sum(r.get("retrains", 1) for r in ran),
        "promotions": sum(
            r.get("promotions", int(str(r["retrain"]).startswith(("promote", "refit")))) for r in ran
        ),
        "training_seconds": round(sum(float(r.get("retrain_seconds") or 0.0) for r in rows), 1),
        "seconds": round(seconds, 1),
    }


def compare(summaries: list[PolicySummary]) -> PolicyTable:
    """The policies' lines, and each one's mean against never retraining (when it ran)."""
    never = next((s["mean"] for s in summaries if s["policy"] == NEVER), None)
    out: list[PolicySummary] = []
    for s in summaries:
        gain = None if never is None or s["mean"] is None else s["mean"] - never
        out.append({**s, "vs_never": gain})
    batches = list(dict.fromkeys(b for s in summaries for b in s["quality"]))
    return {"batches": batches, "policies": out}


def policies_markdown(table: PolicyTable, metric: str, verdicts: list[VerdictLine]) -> str:
    """The comparison as Markdown (README-ready): one line per policy, then the `reproml`
    policy's verdicts with their reasons. Cells are plain numbers and names; `|` is escaped."""

    def esc(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    head = [
        "policy",
        *table["batches"],
        f"mean {metric}",
        "vs never",
        "retrains",
        "promotions",
        "training s",
        "total s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in table["policies"]:
        cells = [
            s["policy"],
            *(cell(s["quality"].get(b)) for b in table["batches"]),
            cell(s["mean"]),
            "-" if s["vs_never"] is None else f"{s['vs_never']:+.4f}",
            s["retrains"],
            s["promotions"],
            s["training_seconds"],
            s["seconds"],
        ]
        lines.append("| " + " | ".join(esc(c) for c in cells) + " |")
    lines += ["", "Policies: " + "; ".join(f"`{k}`: {v}" for k, v in POLICIES.items()), ""]
    if verdicts:
        lines += ["| batch | verdict | retrain | why |", "|---|---|---|---|"]
        for v in verdicts:
            lines.append(
                f"| {esc(v['batch'])} | {esc(v['verdict'])} | {esc(v['retrain'])} | {esc(v['why'])} |"
            )
    return "\n".join(lines) + "\n"


def verdict_lines(rows: list[SimulationRow]) -> list[VerdictLine]:
    """A policy's batches as (batch, verdict, what the retrain did, the verdict's one-line reason)."""
    return [
        {
            "batch": r["batch"],
            "verdict": r.get("verdict"),
            "retrain": r.get("retrain"),
            "why": r.get("summary") or "; ".join(r.get("reasons") or []),
        }
        for r in rows
    ]


def _policies_svg(table: PolicyTable, metric: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = table["batches"]
    x = np.arange(len(batches))
    fig, ax = plt.subplots(figsize=(9, 3.8), dpi=100)
    for s in table["policies"]:
        values = [s["quality"].get(b) for b in batches]
        y = [np.nan if v is None else v for v in values]
        mean = "-" if s["mean"] is None else f"{s['mean']:.4f}"
        ax.plot(x, y, "o-", label=f"{s['policy']} (mean {mean}, {s['retrains']} retrains)")
    ax.set_xticks(x, batches, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title("Champion quality per period under each retrain policy", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def write_policies(
    folder: Path, table: PolicyTable, metric: str, verdicts: list[VerdictLine], title: str
) -> dict[str, Path]:
    """policies.md, policies.html (the plot inline, every value escaped), policies.svg and
    policies.json under `folder`."""
    from reproml.io import write_text

    svg = _policies_svg(table, metric)
    paths = {
        "md": write_text(
            folder / f"{POLICIES_STEM}.md", f"# {title}\n\n" + policies_markdown(table, metric, verdicts)
        ),
        "svg": write_text(folder / f"{POLICIES_STEM}.svg", svg),
        "json": write_json(
            folder / f"{POLICIES_STEM}.json", {"metric": metric, **table, "verdicts": verdicts}
        ),
    }
    head = [
        "policy",
        *table["batches"],
        f"mean {metric}",
        "vs never",
        "retrains",
        "promotions",
        "training s",
        "total s",
    ]
    body = [
        [
            s["policy"],
            *(cell(s["quality"].get(b)) for b in table["batches"]),
            cell(s["mean"]),
            "-" if s["vs_never"] is None else f"{s['vs_never']:+.4f}",
            str(s["retrains"]),
            str(s["promotions"]),
            str(s["training_seconds"]),
            str(s["seconds"]),
        ]
        for s in table["policies"]
    ]
    page = safehtml.render(
        "policies.html",
        title=title,
        plot=safehtml.markup(svg),
        headers=head,
        rows=body,
        verdicts=verdicts,
        policies=POLICIES,
    )
    paths["html"] = safehtml.write_page(folder / f"{POLICIES_STEM}.html", page)
    return paths
