"""What a monitoring flow run shows in Prefect's UI (`reproml.monitoring.artifacts`), built from
records holding hostile values, and rendered by a real markdown renderer that lets raw HTML
through (as the UI's GitHub-flavoured markdown does). Pure functions: no Prefect here (the flow
publishing them is tested against a real Prefect server in tests/test_flows.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from reproml.monitoring import artifacts

HOSTILE = [
    "<script>alert('PWNED')</script>",
    "[click](javascript:alert(1))",
    "![x](http://evil.invalid/pixel.png)",
    "# heading\n- item | cell |",
    "*bold* _it_ `code` <img src=x onerror=alert(1)>",
    "http://evil.invalid/auto",
]


def render(markdown: str) -> str:
    """HTML of `markdown` as a permissive renderer makes it: raw HTML passes, any link target goes."""
    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    md.validateLink = lambda url: True  # type: ignore[method-assign] # markdown-it would drop file: and javascript: targets itself
    return str(md.render(markdown))


def column(name: str, drifted: bool, weight: float, score: float = 0.2) -> dict[str, Any]:
    return {"column": name, "kind": "numeric", "method": "wasserstein", "score": score,
            "drifted": drifted, "judged": True, "importance": weight, "weight": weight,
            "present": 900, "p_value": 1.234e-9}  # fmt: skip


def record(batch_id: str = "2013-08", **extra: Any) -> dict[str, Any]:
    out = {
        "batch_id": batch_id,
        "verdict": "retrain",
        "summary": "retrain: weighted drift 0.61 >= 0.5",
        "reasons": ["weighted drift share 0.61 >= monitor.drift_share 0.5"],
        "rows": 28000,
        "labelled_rows": 27000,
        "champion": {"name": "flights-late", "version": 3, "run_id": "abc"},
        "drift": {
            "drift_share": 0.5,
            "weighted_drift_share": 0.61,
            "drifted": ["dep_hour", "carrier"],
            "columns": [
                column("carrier", True, 0.21),
                column("dep_hour", True, 0.4),
                column("x", False, 0.39),
            ],
        },
        "quality": {
            "metric": "roc_auc",
            "batch_value": 0.701,
            "reference_value": 0.74,
            "drop": 0.039,
            "interval": [0.03, 0.05],
        },
        "reports": {
            "drift": f"monitoring/flights-late/reports/{batch_id}/drift.html",
            "quality": f"monitoring/flights-late/reports/{batch_id}/quality.html",
        },
    }
    return out | extra


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_render_as_their_own_text(value: str) -> None:
    html = render(f"- {artifacts.md_text(value)}\n")
    assert re.fullmatch(r"<ul>\n<li>[^<]*</li>\n</ul>\n", html), html  # one item, text only: no tag
    shown = html.removeprefix("<ul>\n<li>").removesuffix("</li>\n</ul>\n")
    import html as entities

    assert entities.unescape(shown) == " ".join(value.split())


def test_summary_of_a_hostile_record_has_no_markup_from_the_data(tmp_path: Path) -> None:
    payload = "<script>alert('PWNED')</script>[x](javascript:alert(1))"
    made = artifacts.run_artifacts(
        tmp_path, record("b<i>1", reasons=[payload, "# not a heading"], summary="**loud** <b>x</b>")
    )
    html = render(made.summary)
    assert "<script" not in html and 'href="javascript' not in html
    assert re.findall(r"<(\w+)", html) and set(re.findall(r"<(\w+)", html)) <= {
        "h1",
        "h2",
        "p",
        "ul",
        "li",
        "strong",
        "a",
    }
    assert html.count("<h1>") == 1 and html.count("<h2>") == 2  # "Why" and "Reports"; reasons stay items
    assert "&lt;script&gt;alert(" in html and "b&lt;i&gt;1" in html
    hrefs = re.findall(r'href="([^"]*)"', html)
    assert hrefs and all(h.startswith("file:///") for h in hrefs), hrefs
    assert "b%3Ci%3E1/drift.html" in hrefs[0]  # the batch id in a path is percent-encoded
    link = render(f"[{made.link_text}]({made.link})")  # as Prefect renders a link artifact
    assert "<i>" not in link and link.count("<a ") == 1
    assert "<i>" not in render(made.description) and "<i>" not in render(made.table_description)


def test_summary_shows_verdict_reasons_estimate_and_realised_quality(tmp_path: Path) -> None:
    estimate = {"metric": "roc_auc", "value": 0.712, "lower": 0.69, "upper": 0.73, "method": "cbpe"}
    text = artifacts.summary_markdown(
        tmp_path, record(estimate=estimate, mlflow={"experiment_id": "2", "run_id": "r1"})
    )
    assert "- MLflow: run r1 of experiment 2" in text
    assert "# 2013\\-08: **retrain**" in text
    assert "- estimated roc\\_auc 0.7120 \\[0.6900, 0.7300\\] (cbpe)" in text
    assert "- realised roc\\_auc 0.7010 vs 0.7400 on the test split; drop 0.0390 \\[0.0300, 0.0500\\]" in text
    assert "weighted drift share 0\\.61" in text
    assert (tmp_path / "monitoring/flights-late/reports/index.html").as_uri() in text
    later = artifacts.estimate_line(record(estimate={**estimate, "realised": 0.70, "error": 0.012}))
    assert later is not None and later.endswith("(cbpe); realised later 0.7000, error 0.0120")
    without = artifacts.summary_markdown(tmp_path, record(quality=None))
    assert "estimated" not in without and "realised" not in without  # shown only when there


def test_drifted_features_most_important_first(tmp_path: Path) -> None:
    made = artifacts.run_artifacts(tmp_path, record())
    assert [r["feature"] for r in made.table] == ["dep_hour", "carrier"]
    assert made.table[0] == {"feature": "dep_hour", "kind": "numeric", "importance share": 0.4,
                             "drift score": 0.2, "method": "wasserstein", "p value": 1.23e-9}  # fmt: skip
    assert "2 drifted features, 0.610 of the champion's importance" in made.table_description
    assert artifacts.drifted_rows(record(drift=None)) == []


def test_keys_and_the_report_link(tmp_path: Path) -> None:
    made = artifacts.run_artifacts(tmp_path, record())
    assert (made.summary_key, made.table_key, made.link_key) == (
        "flights-late-monitoring-summary",
        "flights-late-monitoring-drifted-features",
        "flights-late-monitoring-report",
    )
    assert (
        artifacts.artifact_key("Flights_Late.v2 (EU)", "summary") == "flights-late-v2-eu-monitoring-summary"
    )
    assert made.link == (tmp_path / "monitoring/flights-late/reports/2013-08/drift.html").as_uri()
    quarantined = artifacts.run_artifacts(tmp_path, record(reports={}, drift=None, verdict="quarantined"))
    assert quarantined.link.endswith("/monitoring/flights-late/reports/index.html")
