"""What a monitoring flow run shows in the Prefect UI, built from the batch's decision record.

Three artifacts per monitored batch, so whoever opens the run sees what to do without opening a
file: a markdown summary (verdict, reasons, estimated and realised quality, links to the reports),
a table of the drifted features with their share of the champion's importance, and a link to the
batch's HTML report. This module builds their content as plain strings and rows; `flows/monitoring.py`
hands them to Prefect (nothing in `reproml` imports Prefect).

The record's values are not ours: batch ids come from file names, reasons quote values of a
production batch, feature names come from a user's CSV. Prefect's UI renders markdown (GitHub
flavour, raw HTML included), so every value put into the markdown goes through `md_text`: HTML
special characters become entities and markdown punctuation is backslash-escaped, so a value is
always text, never a link, an image, a heading or a tag. Table cells are data (JSON), shown as text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from reproml.monitoring import store

# Markdown's punctuation (CommonMark: any ASCII punctuation may be backslash-escaped), less the
# characters html-escaping already turned into entities (& < > " ').
_MD_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|~=:;/^$%@,?])")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
_KEY_UNSAFE = re.compile(r"[^a-z0-9]+")


def md_text(value: Any) -> str:
    """`value` as markdown text that renders as exactly its characters: HTML-escaped, markdown
    punctuation backslash-escaped, line breaks (which could start a heading or a list) as spaces."""
    text = " ".join(str(value).split())
    text = "".join(_HTML.get(ch, ch) for ch in text)
    # the entities just written must stay entities: escape the punctuation of the rest only
    parts = re.split(r"(&(?:amp|lt|gt|quot|#39);)", text)
    return "".join(p if i % 2 else _MD_PUNCTUATION.sub(r"\\\1", p) for i, p in enumerate(parts))


def artifact_key(model: str, kind: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes only) for `kind` of `model`'s
    monitoring: `flights-late` -> `flights-late-monitoring-summary`. Keys group an artifact's
    versions (one per batch) on Prefect's Artifacts page."""
    slug = _KEY_UNSAFE.sub("-", f"{model}-monitoring-{kind}".lower()).strip("-")
    return slug or f"monitoring-{kind}"


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return md_text(value)
    return f"{number:.{digits}f}" if math.isfinite(number) else "-"


def _uri(root: Path, relative: str | None) -> str | None:
    """A file the record names (relative to the project) as an absolute file:// URI, percent-encoded
    (so brackets and parentheses cannot end a markdown link)."""
    if not relative:
        return None
    return (root / relative).resolve().as_uri()


def estimate_line(record: Mapping[str, Any]) -> str | None:
    """`estimated roc_auc 0.7412 [0.7120, 0.7690] (cbpe)`, when the record carries an estimate."""
    estimate = record.get("estimate")
    if not isinstance(estimate, dict) or estimate.get("value") is None:
        return None
    band = ""
    if estimate.get("lower") is not None or estimate.get("upper") is not None:
        band = f" \\[{_number(estimate.get('lower'))}, {_number(estimate.get('upper'))}\\]"
    method = f" ({md_text(estimate['method'])})" if estimate.get("method") else ""
    metric = md_text(estimate.get("metric") or "quality")
    later = ""  # labels that arrived after the batch: the realised value and the estimate's error
    if estimate.get("realised") is not None:
        later = f"; realised later {_number(estimate['realised'])}, error {_number(estimate.get('error'))}"
    return f"estimated {metric} {_number(estimate['value'])}{band}{method}{later}"


def realised_line(record: Mapping[str, Any]) -> str | None:
    """`realised roc_auc 0.7301 vs 0.7650 on the test split; drop 0.0349 [0.0200, 0.0500]`."""
    quality = record.get("quality")
    if not isinstance(quality, dict) or quality.get("batch_value") is None:
        return None
    low, high = quality.get("interval") or (None, None)
    metric = md_text(quality.get("metric") or "quality")
    line = f"realised {metric} {_number(quality['batch_value'])}"
    if quality.get("reference_value") is not None:
        line += f" vs {_number(quality['reference_value'])} on the test split"
    if quality.get("drop") is not None:
        line += f"; drop {_number(quality['drop'])} \\[{_number(low)}, {_number(high)}\\]"
    return line


# One row of the drifted-features table artifact; Prefect shows the keys as column headers, so they
# are words with spaces (hence the functional TypedDict form).
DriftedRow = TypedDict(
    "DriftedRow",
    {
        "feature": str,
        "kind": str,
        "importance share": float,
        "drift score": float | None,
        "method": str,
        "p value": float | None,
    },
)


def drifted_rows(record: Mapping[str, Any]) -> list[DriftedRow]:
    """One row per drifted feature, largest share of the champion's importance first."""
    drift = record.get("drift")
    if not isinstance(drift, dict):
        return []
    rows: list[DriftedRow] = []
    for column in drift.get("columns") or []:
        if not column.get("drifted"):
            continue
        rows.append(
            {
                "feature": str(column.get("column")),
                "kind": str(column.get("kind")),
                "importance share": round(float(column.get("weight") or 0.0), 4),
                "drift score": None if column.get("score") is None else round(float(column["score"]), 4),
                "method": str(column.get("method")),
                "p value": None if column.get("p_value") is None else float(f"{column['p_value']:.3g}"),
            }
        )
    return sorted(rows, key=lambda r: (-r["importance share"], r["feature"]))


def report_link(root: Path, record: Mapping[str, Any]) -> tuple[str, str]:
    """(URI, markdown text) of the batch's HTML report: its drift report, else the model's index
    page. Prefect renders a link artifact as `[text](link)`, so the text is escaped here."""
    reports = record.get("reports") or {}
    drift = _uri(root, reports.get("drift"))
    if drift is not None:
        return drift, f"drift report of batch {md_text(record['batch_id'])}"
    name = (record.get("champion") or {}).get("name")
    if not name:
        return (root / store.MONITORING).resolve().as_uri(), "monitoring folder"
    return (root / store.index(name)).resolve().as_uri(), f"monitoring index of {md_text(name)}"


def summary_markdown(root: Path, record: Mapping[str, Any]) -> str:
    """The run's headline: verdict, why, estimated and realised quality, drift, links."""
    champion = record.get("champion") or {}
    drift = record.get("drift") or {}
    lines = [
        f"# {md_text(record['batch_id'])}: **{md_text(record.get('verdict', '?'))}**",
        "",
        f"{md_text(record.get('summary') or '')}",
        "",
        f"- model: {md_text(champion.get('name', '?'))}, champion v{md_text(champion.get('version', '?'))}",
        f"- rows: {md_text(record.get('rows', '?'))} ({md_text(record.get('labelled_rows', 0))} labelled)",
    ]
    for line in (estimate_line(record), realised_line(record)):
        if line:
            lines.append(f"- {line}")
    if drift:
        drifted = ", ".join(md_text(c) for c in drift.get("drifted") or []) or "none"
        lines.append(
            f"- drift: weighted share {_number(drift.get('weighted_drift_share'), 3)}, "
            f"plain share {_number(drift.get('drift_share'), 3)}; drifted: {drifted}"
        )
    tracked = record.get("mlflow") or {}
    if tracked.get("run_id"):
        lines.append(
            f"- MLflow: run {md_text(tracked['run_id'])} of experiment "
            f"{md_text(tracked.get('experiment_id', '?'))}"
            " (tag reproml\\.verdict; the reports are its artifacts under reports/)"
        )
    reasons = record.get("reasons") or []
    if reasons:
        lines += ["", "## Why", ""]
        lines += [f"- {md_text(reason)}" for reason in reasons]
    links = [
        (_uri(root, path), md_text(kind)) for kind, path in sorted((record.get("reports") or {}).items())
    ]
    name = champion.get("name")
    if name:
        links.append(((root / store.index(name)).resolve().as_uri(), "index of every batch"))
    if links:
        lines += ["", "## Reports", ""]
        lines += [f"- [{text}]({uri})" for uri, text in links if uri]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RunArtifacts:
    """Everything the flow publishes for one batch: keys, markdown, table rows and the link."""

    summary_key: str
    summary: str
    table_key: str
    table: list[DriftedRow]
    table_description: str
    link_key: str
    link: str
    link_text: str
    description: str


def run_artifacts(root: Path, record: Mapping[str, Any]) -> RunArtifacts:
    """The artifacts of the monitoring run that judged `record`'s batch."""
    model = str((record.get("champion") or {}).get("name") or "model")
    link, text = report_link(root, record)
    rows = drifted_rows(record)
    share = (record.get("drift") or {}).get("weighted_drift_share")
    return RunArtifacts(
        summary_key=artifact_key(model, "summary"),
        summary=summary_markdown(root, record),
        table_key=artifact_key(model, "drifted-features"),
        table=rows,
        table_description=f"batch {md_text(record['batch_id'])}: {len(rows)} drifted features, "
        f"{_number(share, 3)} of the champion's importance",
        link_key=artifact_key(model, "report"),
        link=link,
        link_text=text,
        description=f"batch {md_text(record['batch_id'])}: {md_text(record.get('verdict', '?'))}",
    )
