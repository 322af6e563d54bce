"""Deployments, served from this process: `reproml serve` (or `python -m flows.deploy [cron]` in
the project root); or on a work pool: `reproml deploy --pool NAME`, whose workers, on any machine,
clone the project's repository (Prefect's `git_clone` pull step) and run the flow there. What is
deployed is `reproml.orchestration.deploy`; this module builds the Prefect deployments from it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from reproml.orchestration.deploy import DAILY, ENTRYPOINTS, GitSource, deployment_specs, pool_specs
from reproml.orchestration.training import TEAM_LIMIT


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


def deploy_to_pool(
    root: Path, pool: str, source: GitSource, cron: str = DAILY, every: str = "month"
) -> list[str]:
    """Register the deployments on work pool `pool`, their code pulled from `source` by the worker
    that runs them, and ensure the team's one-retrain-at-a-time limit (`reproml-retrain`, limit 1).
    Returns the deployments' names. Parameters carry no credentials: workers read the team's
    variables (MLflow, S3, Optuna) from their own environment."""
    from prefect import Flow
    from prefect.client.orchestration import get_client
    from prefect.runner.storage import GitRepository

    with get_client(sync_client=True) as client:
        client.read_work_pool(pool)  # ObjectNotFound names a pool that does not exist, before any clone
        client.upsert_global_concurrency_limit_by_name(TEAM_LIMIT, 1)
    names = []
    for spec in pool_specs(root, cron, every):
        remote: Any = Flow.from_source(  # a Flow here (sync context), typed as maybe a coroutine
            source=GitRepository(url=source.url, branch=source.branch),
            entrypoint=ENTRYPOINTS[spec.flow],
        )
        remote.deploy(
            name=spec.name,
            work_pool_name=pool,
            parameters=spec.parameters,
            concurrency_limit=spec.concurrency_limit,
            tags=spec.tags,
            description=spec.description,
            print_next_steps=False,
            cron=spec.cron,
        )
        names.append(f"{spec.flow}/{spec.name}")
    return names


if __name__ == "__main__":
    import os

    from reproml.servers import ensure_prefect

    os.environ["PREFECT_API_URL"] = ensure_prefect(Path.cwd())
    serve(Path.cwd(), *(sys.argv[1:2] or [DAILY]))
