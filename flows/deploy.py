"""Deployments, served from this process: `reproml serve` (or `python flows/deploy.py`).

`monitoring/daily` runs the monitoring flow on a cron schedule (the next production batch each
time); `training/on-demand` has no schedule and runs when triggered (`prefect deployment run
training/on-demand`, the UI, or the monitoring flow's hand-off). Both allow one run at a time.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

DAILY = "0 6 * * *"


def deployments(root: Path, cron: str = DAILY, every: str = "month") -> list[Any]:
    from prefect.types.entrypoint import EntrypointType

    from flows.monitoring import monitoring
    from flows.training import training

    home = str(root.resolve())
    return [
        monitoring.to_deployment(
            name="daily",
            cron=cron,
            parameters={"root": home, "every": every},
            concurrency_limit=1,
            tags=["reproml"],
            entrypoint_type=EntrypointType.MODULE_PATH,
            description="The next production batch against the champion; retrain verdicts start training.",
        ),
        training.to_deployment(
            name="on-demand",
            parameters={"root": home},
            concurrency_limit=1,
            tags=["reproml"],
            entrypoint_type=EntrypointType.MODULE_PATH,
            description="A new DVC data version (optional), dvc repro, challenger, promotion gate.",
        ),
    ]


def serve(root: Path, cron: str = DAILY, every: str = "month") -> None:
    """Register the deployments and run their flows here until stopped (Ctrl-C / SIGTERM)."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(root, cron, every), pause_on_shutdown=False)


if __name__ == "__main__":
    import os

    from flows.servers import ensure_prefect

    os.environ["PREFECT_API_URL"] = ensure_prefect(Path.cwd())
    serve(Path.cwd(), *(sys.argv[1:2] or [DAILY]))
