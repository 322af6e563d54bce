"""Terminal tables people compare runs with."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rich.table import Table

from reproml import paths

COLUMNS = {
    "classification": ["test_roc_auc", "test_pr_auc", "test_f1", "valid_roc_auc"],
    "regression": ["test_rmse", "test_mae", "test_r2", "valid_rmse"],
}


def runs_table(root: Path, experiment_name: str, limit: int) -> Table:
    import mlflow
    from mlflow.tracking import MlflowClient

    from reproml import tracking

    experiment_id = tracking.setup(root, experiment_name)
    found = MlflowClient().search_runs(
        [experiment_id], order_by=["attributes.start_time DESC"], max_results=limit
    )
    table = Table(title=f"MLflow runs · experiment {experiment_name!r} · {mlflow.get_tracking_uri()}")
    for header in ("run", "started", "status", "model"):
        table.add_column(header)
    task = found[0].data.params.get("data.task", "classification") if found else "classification"
    metrics = COLUMNS[task]
    for name in metrics:
        table.add_column(name, justify="right")
    for header in ("overfit", "data (ingested md5)", "commit"):
        table.add_column(header)
    for run in found:
        data, info = run.data, run.info
        started = datetime.fromtimestamp(info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        dirty = "+dirty" if data.tags.get("reproml.git_dirty") == "true" else ""
        table.add_row(
            info.run_name or info.run_id[:8],
            started,
            info.status,
            data.params.get("train.model", "?"),
            *(f"{data.metrics[m]:.4f}" if m in data.metrics else "-" for m in metrics),
            data.tags.get("reproml.overfit", "-"),
            data.tags.get(f"reproml.data.{paths.INGESTED}", "-")[:10],
            data.tags.get("reproml.git_commit", "")[:7] + dirty,
        )
    return table


def registry_table(root: Path) -> Table:
    from reproml.registry import history

    def version(entry: dict | None) -> str:
        return "-" if not entry else f"v{entry['version']}"

    table = Table(title="Registry decisions (registry/records/)")
    for header in ("time (UTC)", "model", "action", "challenger", "champion before", "improvement", "reason"):
        table.add_column(header, overflow="fold")
    for record in history(root):
        gate = record.get("gate") or {}
        improvement = gate.get("improvement")
        table.add_row(
            record["time"][:19].replace("T", " "),
            record["model_name"],
            record["action"],
            version(record.get("challenger") or record.get("champion")),
            version(record.get("champion") if record.get("challenger") else record.get("demoted")),
            "-" if improvement is None else f"{improvement:+.4f}",
            record["reason"],
        )
    return table


def compare_table(rows: list, label_a: str, label_b: str) -> Table:
    """`reproml compare`: rows of reproduce.compare_runs, the differing ones highlighted."""
    table = Table(title=f"{label_a} vs {label_b}")
    for header in ("", "key", label_a, label_b, "same?"):
        table.add_column(header, overflow="fold")
    section = None
    for row in rows:
        shown = row.section if row.section != section else ""
        section = row.section
        table.add_row(
            shown,
            row.key,
            _brief(row.a),
            _brief(row.b),
            "yes" if row.same else "DIFFERS",
            style=None if row.same else "bold yellow",
        )
    return table


def _brief(value: str) -> str:
    """Hashes and other long values cut to what tells them apart at a glance."""
    return value if len(value) <= 40 else value[:16] + "…"
