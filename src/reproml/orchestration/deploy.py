"""What `reproml serve` deploys, as plain data: `monitoring/daily` runs the monitoring flow on a
cron schedule (the next production batch each time), or, when params.yaml names a production feed
(`monitor.feed`), `monitoring-feed/daily` takes every file that arrived there since its last run;
`training/on-demand` has no schedule and runs
when triggered (`prefect deployment run training/on-demand`, the UI, or the monitoring flow's
hand-off). Both allow one run at a time. `flows/deploy.py` turns these into Prefect deployments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DAILY = "0 6 * * *"


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: which flow (`monitoring` / `training`), its name, schedule and parameters."""

    flow: str
    name: str
    cron: str | None
    parameters: dict[str, Any]
    description: str
    concurrency_limit: int = 1
    tags: list[str] = field(default_factory=lambda: ["reproml"])


def deployment_specs(root: Path, cron: str = DAILY, every: str = "month") -> list[DeploymentSpec]:
    """The project's two deployments, their `root` the resolved project folder."""
    from reproml.stages.common import load

    home = str(root.resolve())
    feed = load(root).monitor.feed
    daily = (
        DeploymentSpec(
            flow="monitoring-feed",
            name="daily",
            cron=cron,
            parameters={"root": home},
            description=f"Every new batch file of the feed {feed}, once, in time order, against the "
            "champion; retrain verdicts start training; labels files attach to their batch.",
        )
        if feed
        else DeploymentSpec(
            flow="monitoring",
            name="daily",
            cron=cron,
            parameters={"root": home, "every": every},
            description="The next production batch against the champion; retrain verdicts start training.",
        )
    )
    return [
        daily,
        DeploymentSpec(
            flow="training",
            name="on-demand",
            cron=None,
            parameters={"root": home},
            description="A new DVC data version (optional), dvc repro, challenger, promotion gate.",
        ),
    ]
