"""Terminal tables people compare runs with.

Values that come from data (reasons quoting a batch's values, run names, params) go in as
`rich.text.Text` (`_plain`), never as markup: a value such as `[/bold]` would otherwise stop the
table with a MarkupError, and `[link=...]` would put a hyperlink in the operator's terminal.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from reproml import paths
from reproml.monitoring import store

if TYPE_CHECKING:
    from reproml.monitoring.records import BatchRecord, FeedSummary, QualityChangeRecord
    from reproml.registry import VersionRef
    from reproml.reproduce.compare import Row


def _plain(value: object) -> Text:
    """`value` as literal text: rich never reads markup in it."""
    return Text(str(value))


def columns(task: str) -> list[str]:
    """The metric columns of `reproml runs` for a task: its headline metrics on the test split, then
    its primary metric on the validation split (`reproml.metrics.HEADLINE` / `PRIMARY`)."""
    from reproml.metrics import HEADLINE, PRIMARY

    return [f"test_{name}" for name in HEADLINE[task]] + [f"valid_{PRIMARY[task]}"]


def runs_table(root: Path, experiment_name: str, limit: int) -> Table:
    from reproml.redaction import redact_url
    from reproml.stores.mlflow import connection, runs

    experiment_id = connection.setup(root, experiment_name)
    found = runs.search_runs(  # pipeline runs; tuning studies and their trials have their own
        [experiment_id],
        filter_string="tags.`reproml.stage` = 'train'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    store = redact_url(connection.current_uri())  # never a password in a terminal or a CI log
    table = Table(title=f"MLflow runs · experiment {experiment_name!r} · {store}")
    for header in ("run", "started", "status", "model"):
        table.add_column(header)
    task = found[0].params.get("data.task", "classification") if found else "classification"
    metrics = columns(task)
    for name in metrics:
        table.add_column(name, justify="right")
    for header in ("overfit", "data (ingested md5)", "commit"):
        table.add_column(header)
    for run in found:
        started = datetime.fromtimestamp(run.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        dirty = "+dirty" if run.tags.get("reproml.git_dirty") == "true" else ""
        table.add_row(
            _plain(run.name or run.run_id[:8]),
            started,
            run.status,
            _plain(run.params.get("train.model", "?")),
            *(f"{run.metrics[m]:.4f}" if m in run.metrics else "-" for m in metrics),
            run.tags.get("reproml.overfit", "-"),
            run.tags.get(f"reproml.data.{paths.INGESTED}", "-")[:10],
            run.tags.get("reproml.git_commit", "")[:7] + dirty,
        )
    return table


def registry_table(root: Path) -> Table:
    from reproml.registry import history

    def version(entry: VersionRef | None) -> str:
        return "-" if not entry else f"v{entry['version']}"

    table = Table(title=f"Registry decisions ({_records_place('registry/records/')})")
    for header in ("time (UTC)", "model", "action", "challenger", "champion before", "improvement", "reason"):
        table.add_column(header, overflow="fold")
    for record in history(root):
        gate = record.get("gate")
        improvement = None if gate is None else gate.get("improvement")
        reason = record["reason"]
        if record.get("evidence") == "production" and not reason.startswith(("on production", "production")):
            reason = f"(production evidence) {reason}"
        table.add_row(
            record["time"][:19].replace("T", " "),
            _plain(record["model_name"]),
            _plain(record["action"]),
            version(record.get("challenger") or record.get("champion")),
            version(record.get("champion") if record.get("challenger") else record.get("demoted")),
            "-" if improvement is None else f"{improvement:+.4f}",
            _plain(reason),
        )
    return table


def compare_table(rows: list[Row], label_a: str, label_b: str) -> Table:
    """`reproml compare`: rows of reproduce.compare_runs, the differing ones highlighted."""
    table = Table(title=f"{label_a} vs {label_b}")
    for header in ("", "key", label_a, label_b, "same?"):
        table.add_column(header, overflow="fold")
    section = None
    for row in rows:
        shown = row.section if row.section != section else ""
        section = row.section
        table.add_row(
            _plain(shown),
            _plain(row.key),
            _plain(_brief(row.a)),
            _plain(_brief(row.b)),
            "yes" if row.same else "DIFFERS",
            style=None if row.same else "bold yellow",
        )
    return table


def _brief(value: str) -> str:
    """Hashes and other long values cut to what tells them apart at a glance."""
    return value if len(value) <= 40 else value[:16] + "…"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _quality_cell(quality: QualityChangeRecord | None) -> str:
    if not quality:
        return "-"
    low, high = quality.get("interval") or (None, None)
    batch, reference, drop = quality.get("batch_value"), quality.get("reference_value"), quality.get("drop")
    if batch is None or reference is None or drop is None:
        return f"{quality.get('metric')}: undefined"
    interval = "" if low is None or high is None else f" [{low:+.4f}, {high:+.4f}]"
    return f"{quality['metric']} {batch:.4f} vs {reference:.4f}, drop {drop:+.4f}{interval}"


def _number(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{float(value):.4f}"


def verdict_table(record: BatchRecord) -> Table:
    """`reproml monitor`: one batch's verdict and the reasons behind it."""
    champion = record.get("champion")
    name = None if champion is None else champion.get("name")
    table = Table(
        title=f"Batch {record['batch_id']} · {record['rows']} rows · champion "
        f"{name} v{None if champion is None else champion.get('version')}",
        show_header=False,
    )
    table.add_column("", style="bold")
    table.add_column("", overflow="fold")
    drift = record.get("drift")
    table.add_row("verdict", _plain(record["verdict"]))
    table.add_row("summary", _plain(record.get("summary", "")))
    for reason in record.get("reasons", []):
        table.add_row("why", _plain(reason))
    again = record.get("labels_decision")
    if again:  # judged again when its labels arrived
        table.add_row("on its labels", _plain(f"{again['verdict']}: {again['summary']}"))
        for reason in again["reasons"]:
            table.add_row("why", _plain(reason))
    elif record.get("labels_decision_skipped"):
        table.add_row("on its labels", _plain(f"not judged again: {record['labels_decision_skipped']}"))
    table.add_row(
        "drift share",
        f"{_share(None if drift is None else drift.get('drift_share'))} "
        f"(weighted {_share(None if drift is None else drift.get('weighted_drift_share'))})",
    )
    table.add_row("quality", _plain(_quality_cell(record.get("quality"))))
    found = record.get("estimate")
    if found:
        text = (
            f"{found.get('metric')} {_number(found.get('value'))} [{_number(found.get('lower'))}, "
            f"{_number(found.get('upper'))}] ({str(found.get('method', '')).upper()}), "
            f"shift {found.get('shift')}"
        )
        if found.get("realised") is not None:
            text += f"; realised {_number(found.get('realised'))}, error {_number(found.get('error'))}"
        table.add_row("estimated", _plain(text))
    elif record.get("estimate_skipped"):
        table.add_row("estimated", _plain(f"not made: {record['estimate_skipped']}"))
    shadowed = _shadow_cell(record)
    if shadowed:
        table.add_row("shadow", _plain(shadowed))
    for page, path in (record.get("reports") or {}).items():
        table.add_row(f"{page} report", _plain(path))
    kept = record.get("quarantine")
    if kept:
        table.add_row("quarantined", _plain(f"{kept['batch']} (reason: {kept['reason']})"))
    if name:
        table.add_row("record", _plain(store.record_path(str(name), record["batch_id"])))
        table.add_row("index", _plain(store.index(str(name))))
    return table


def _shadow_cell(record: BatchRecord) -> str | None:
    """The shadow challenger's comparison with the champion on the batch, or why there is none."""
    found = record.get("shadow")
    if not found:
        skipped = record.get("shadow_skipped")
        return None if not skipped else f"challenger not scored: {skipped}"
    text = f"challenger v{found['version']} scored every row"
    if found.get("value") is None:
        return text + (f"; {found['note']}" if found.get("note") else "")
    delta = found.get("delta")
    return (
        f"{text}; {found['metric']} {_number(found.get('value'))} vs champion "
        f"{_number(found.get('champion_value'))} on {found['labelled_rows']} labelled rows "
        f"(challenger {'better' if delta is not None and delta > 0 else 'not better'} by "
        f"{_number(delta)})"
    )


def _records_place(folder: str) -> str:
    """Where the records shown were read: their folder, or the records database (password masked)."""
    from reproml.stores.records import FileRecords, records_store

    found = records_store()
    return folder if isinstance(found, FileRecords) else found.shown


def monitoring_table(records: list[BatchRecord], name: str) -> Table:
    """`reproml monitoring`: every monitored batch of model `name`, in the order it was monitored."""
    where = _records_place(f"{store.records(name)}/")
    table = Table(title=f"Monitored batches of {name} ({where}; open {store.index(name)})")
    for header in (
        "#",
        "batch",
        "until",
        "rows",
        "champion",
        "verdict",
        "drift",
        "weighted",
        "quality",
        "summary",
    ):
        table.add_column(header, overflow="fold")
    for record in records:
        drift = record.get("drift")
        champion = record.get("champion")
        table.add_row(
            str(record.get("seq", "")),
            _plain(record["batch_id"]),
            (record.get("batch_time") or "-")[:10],
            str(record.get("rows", "")),
            f"v{'?' if champion is None else champion.get('version', '?')}",
            _plain(record.get("verdict", "?")),
            _share(None if drift is None else drift.get("drift_share")),
            _share(None if drift is None else drift.get("weighted_drift_share")),
            _plain(_quality_cell(record.get("quality"))),
            _plain(record.get("summary") or (record.get("reasons") or ["-"])[0]),
        )
    return table


def feed_table(result: FeedSummary) -> Table:
    """`reproml monitor --feed`: each file taken (its batch and verdict, or its labels' outcome)
    or left for a later run, and why."""
    table = Table(title=f"Production feed {result['feed']}")
    for header in ("file", "kind", "batch", "outcome"):
        table.add_column(header, overflow="fold")
    for row in result["rows"]:
        table.add_row(
            _plain(row["file"]), row["kind"], _plain(row["batch_id"] or "-"), _plain(row["outcome"])
        )
    return table
