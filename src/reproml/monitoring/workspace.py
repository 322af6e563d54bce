"""Evidently's own UI, offline: every batch's snapshots in a local workspace under monitoring/.

Open it with

    DO_NOT_TRACK=1 .venv/bin/evidently ui --workspace monitoring/workspace --port 8000

(`DO_NOT_TRACK=1` turns off the UI service's usage telemetry; it needs no network otherwise).
One Evidently project per registered model, `reproml <model name>`, with a dashboard of the
unweighted drifted-column share and the quality metric over the batches' own time. The decision
never reads the workspace: it is a view, like the HTML reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reproml.monitoring import store
from reproml.monitoring.records import WorkspaceRef

WORKSPACE = store.MONITORING / "workspace"


def _dashboard(workspace: Any, project: Any, task: str) -> None:
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    quality = "RMSE" if task == "regression" else "RocAuc"  # Evidently's (macro) ROC-AUC for multiclass
    project.dashboard.add_panel(
        line_plot_panel(
            "Share of drifted columns (Evidently's unweighted view; the decision weights by importance)",
            [
                PanelMetric(
                    legend="share", metric="DriftedColumnsCount", metric_labels={"value_type": "share"}
                )
            ],
            size="half",
        )
    )
    project.dashboard.add_panel(
        line_plot_panel(
            f"{quality} on labelled batches", [PanelMetric(legend=quality, metric=quality)], size="half"
        )
    )


def add_snapshots(root: Path, model_name: str, task: str, snapshots: list[Any]) -> WorkspaceRef:
    """Add the batch's snapshots to the model's project (created, with its dashboard, if new)."""
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(root / WORKSPACE))
    name = f"reproml {model_name}"
    found = workspace.search_project(name)
    if found:
        project = found[0]
    else:
        project = workspace.create_project(
            name, description="reproml monitoring: one snapshot per batch and report"
        )
        _dashboard(workspace, project, task)
    ids = [str(workspace.add_run(project.id, snapshot, include_data=False).id) for snapshot in snapshots]
    return {"path": str(WORKSPACE), "project": name, "project_id": str(project.id), "snapshots": ids}
