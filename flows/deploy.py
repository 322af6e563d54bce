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
    CRASH_AUTOMATION,
    DAILY,
    ENTRYPOINTS,
    POOL_TAG,
    RERUN_AUTOMATION,
    RERUN_TAG,
    ZOMBIE_AFTER_S,
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
        ensure_zombie_automations(client)
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


def zombie_automation(tag: str) -> Any:
    """Prefect's "detect zombie flows" automation for the pool's runs tagged `tag`: a run that
    sent a heartbeat and then neither another one nor a final state for ZOMBIE_AFTER_S (its
    process, or its worker's machine, died) is marked Crashed (POOL_TAG), or put back to Scheduled
    for a worker of the pool to run again (RERUN_TAG). A retry through the flow's own `retries`
    is no use here: the server keeps those for the process that failed (`retry_type:
    in_process`), and workers never pick them up."""
    from prefect.automations import AutomationCore
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    silent = f"no heartbeat for {ZOMBIE_AFTER_S} s: the flow run's process or machine died"
    rerun = tag == RERUN_TAG
    return AutomationCore(
        name=RERUN_AUTOMATION if rerun else CRASH_AUTOMATION,
        description=f"{'Run again' if rerun else 'Crash'} runs tagged {tag} silent for {ZOMBIE_AFTER_S} s",
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
                {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{tag}"}
            ),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=dt.timedelta(seconds=ZOMBIE_AFTER_S),
        ),
        actions=[
            ChangeFlowRunState(
                name="AwaitingRetry" if rerun else None,
                force=False,
                state=StateType.SCHEDULED if rerun else StateType.CRASHED,
                message=f"{silent}: run again" if rerun else silent,
            )
        ],
    )


def ensure_zombie_automations(client: Any) -> None:
    """Create the team's two automations for lost runs, or bring existing ones up to date."""
    for tag in (POOL_TAG, RERUN_TAG):
        wanted = zombie_automation(tag)
        found = client.read_automations_by_name(wanted.name)
        if found:
            client.update_automation(found[0].id, wanted)
        else:
            client.create_automation(wanted)


if __name__ == "__main__":
    import os

    from reproml.servers import ensure_prefect

    os.environ["PREFECT_API_URL"] = ensure_prefect(Path.cwd())
    serve(Path.cwd(), *(sys.argv[1:2] or [DAILY]))
