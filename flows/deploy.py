"""Deployments, served from this process: `reproml serve` (or `python -m flows.deploy [cron]` in
the project root). What is deployed is `reproml.orchestration.deploy`; this module builds the
Prefect deployments from it and serves them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from reproml.orchestration.deploy import DAILY, deployment_specs


def deployments(root: Path, cron: str = DAILY, every: str = "month") -> list[Any]:
    from prefect.types.entrypoint import EntrypointType

    from flows.monitoring import monitoring, monitoring_feed
    from flows.training import training

    flows: dict[str, Any] = {
        "monitoring": monitoring,
        "monitoring-feed": monitoring_feed,
        "training": training,
    }
    return [
        flows[spec.flow].to_deployment(
            name=spec.name,
            parameters=spec.parameters,
            concurrency_limit=spec.concurrency_limit,
            tags=spec.tags,
            entrypoint_type=EntrypointType.MODULE_PATH,
            description=spec.description,
            **({"cron": spec.cron} if spec.cron else {}),
        )
        for spec in deployment_specs(root, cron, every)
    ]


def serve(root: Path, cron: str = DAILY, every: str = "month") -> None:
    """Register the deployments and run their flows here until stopped (Ctrl-C / SIGTERM)."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(root, cron, every), pause_on_shutdown=False)


if __name__ == "__main__":
    import os

    from reproml.servers import ensure_prefect

    os.environ["PREFECT_API_URL"] = ensure_prefect(Path.cwd())
    serve(Path.cwd(), *(sys.argv[1:2] or [DAILY]))
