"""One retrain at a time: the training flow's slot on a Prefect global concurrency limit.

Which limit (`reproml.orchestration.training.slot_name`): the team's `reproml-retrain` when the
Prefect server has it (`reproml deploy --pool` creates it with limit 1), so flow runs on any worker
of any machine, and `reproml retrain` run in-process against the same server, take turns; else the
workspace's own limit, created here, which orders the training flows of one project folder.

How it combines with the workspace's training lock (`reproml.training_lock`, an flock): the flow
holds both, the slot first. The slot orders training flows across processes and machines; the
lock, local to one workspace, also keeps out `dvc repro` and `reproml train/promote` run by hand
there. On a worker the workspace is the flow run's own clone, so only the slot orders retrains.

The slot is a lease: a flow killed with SIGKILL frees it after `lease_s`. A contender that finds
it taken says so in its run log ("waiting for the retrain slot ...") and waits; the log lines
"retrain slot ... taken" and "... released" mark the critical section.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reproml.orchestration.training import TEAM_LIMIT, slot_name

FIRST_TRY_S = 2.0  # taken at once when free; past this the flow says it waits, then waits


def team_limit_exists(client: Any) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_global_concurrency_limit_by_name(TEAM_LIMIT)
    except ObjectNotFound:
        return False
    return True


@contextlib.contextmanager
def retrain_slot(
    home: Path, log: logging.Logger | logging.LoggerAdapter[Any], lease_s: float
) -> Iterator[str]:
    """Hold the training flow's slot for the block; yields the limit's name."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    with get_client(sync_client=True) as client:
        team = team_limit_exists(client)
        name = slot_name(home, team)
        if not team:
            client.upsert_global_concurrency_limit_by_name(name, 1)
    held = contextlib.ExitStack()
    with held:
        try:
            held.enter_context(
                concurrency(name, occupy=1, timeout_seconds=FIRST_TRY_S, lease_duration=lease_s, strict=True)
            )
        except TimeoutError:
            scope = "across all workers" if team else "in this workspace"
            log.warning(
                "waiting for the retrain slot %s: another retrain holds it (one at a time %s)", name, scope
            )
            held.enter_context(concurrency(name, occupy=1, lease_duration=lease_s, strict=True))
        log.info("retrain slot %s taken", name)
        try:
            yield name
        finally:
            log.info("retrain slot %s released", name)
