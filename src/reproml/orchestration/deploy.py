"""What `reproml serve` deploys, as plain data: `monitoring/daily` runs the monitoring flow on a
cron schedule (the next production batch each time); `training/on-demand` has no schedule and runs
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
    home = str(root.resolve())
    return [
        DeploymentSpec(
            flow="monitoring",
            name="daily",
            cron=cron,
            parameters={"root": home, "every": every},
            description="The next production batch against the champion; retrain verdicts start training.",
        ),
        DeploymentSpec(
            flow="training",
            name="on-demand",
            cron=None,
            parameters={"root": home},
            description="A new DVC data version (optional), dvc repro, challenger, promotion gate.",
        ),
    ]
