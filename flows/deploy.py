"""Deployments, served from this process: `reproml serve` (or `python -m flows.deploy [cron]` in
the project root); or on a work pool: `reproml deploy --pool NAME`, whose workers, on any machine,
clone the project's repository (Prefect's `git_clone` pull step) and run the flow there. What is
deployed is `reproml.orchestration.deploy`; this module builds the Prefect deployments from it.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

from reproml.orchestration.deploy import (
    DAILY,
    ENTRYPOINTS,
    POOL_TAG,
    ZOMBIE_AFTER_S,
    ZOMBIE_AUTOMATION,
    GitSource,
    deployment_specs,
    pool_job_env,
    pool_specs,
)
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
        ensure_zombie_automation(client)
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
            job_variables={"env": pool_job_env()},
        )
        names.append(f"{spec.flow}/{spec.name}")
    return names


def zombie_automation() -> Any:
    """Prefect's "detect zombie flows" automation, for the pool's runs (tagged POOL_TAG): a run
    that sent a heartbeat and then neither another one nor a final state for ZOMBIE_AFTER_S (its
    process, or its worker's machine, died) is proposed Failed. Not forced, so the server's own
    rule for failed flow runs applies: a flow with retries left goes to AwaitingRetry and a worker
    of the pool runs it again; else it ends Failed, and its slots are freed."""
    from prefect.automations import AutomationCore
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description=f"Fail (and so retry, where the flow allows) pool runs silent for {ZOMBIE_AFTER_S} s",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification(
                {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{POOL_TAG}"}
            ),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=dt.timedelta(seconds=ZOMBIE_AFTER_S),
        ),
        actions=[
            ChangeFlowRunState(
                name=None,  # Failed, not forced: the server's retry rule for failed runs applies
                force=False,
                state=StateType.FAILED,
                message=f"no heartbeat for {ZOMBIE_AFTER_S} s: the flow run's process or machine died",
            )
        ],
    )


def ensure_zombie_automation(client: Any) -> None:
    """Create the team's zombie automation, or bring an existing one of that name up to date."""
    wanted = zombie_automation()
    found = client.read_automations_by_name(ZOMBIE_AUTOMATION)
    if found:
        client.update_automation(found[0].id, wanted)
    else:
        client.create_automation(wanted)


if __name__ == "__main__":
    import os

    from reproml.servers import ensure_prefect

    os.environ["PREFECT_API_URL"] = ensure_prefect(Path.cwd())
    serve(Path.cwd(), *(sys.argv[1:2] or [DAILY]))
