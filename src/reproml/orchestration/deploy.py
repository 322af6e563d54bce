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
# A work pool's flow runs outlive nothing of the machine that runs them: each beats every
# HEARTBEAT_S seconds (Prefect's flow-run heartbeat events, set in the deployment's job
# environment), and `reproml deploy --pool` makes two automations ("detect zombie flows") for a run
# whose beats stopped for ZOMBIE_AFTER_S: one marks the run Crashed if it is tagged POOL_TAG (the
# monitoring deployments: a rerun could record a batch twice), the other puts it back to Scheduled
# ("AwaitingRetry") if it is tagged RERUN_TAG (flows safe to run again: training, which resumes
# after what its lost attempt published, keyed by its flow run's id), and a worker of the pool, any
# one, runs it again. A run carries one of the two tags, never both.
POOL_TAG = "reproml-pool"
RERUN_TAG = "reproml-rerun-if-lost"
RERUN_FLOWS = frozenset({"training"})  # tagged RERUN_TAG on a pool, the others POOL_TAG
HEARTBEAT_S = 30  # Prefect's minimum
ZOMBIE_AFTER_S = 90  # three missed beats
CRASH_AUTOMATION = "reproml-lost-runs-crashed"
RERUN_AUTOMATION = "reproml-lost-runs-rerun"


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


# Where each flow lives in the project's repository: what a worker's clone runs.
ENTRYPOINTS = {
    "training": "flows/training.py:training",
    "monitoring": "flows/monitoring.py:monitoring",
    "monitoring-feed": "flows/monitoring.py:monitoring_feed",
}


@dataclass(frozen=True)
class GitSource:
    """The repository a worker clones (Prefect's `git_clone` pull step) and the branch it runs."""

    url: str
    branch: str


def pool_specs(root: Path, cron: str = DAILY, every: str = "month") -> list[DeploymentSpec]:
    """`deployment_specs` for a work pool: the same deployments without `root`, since a worker runs
    each flow in its own clone of the repository (the flows' default root, `.`), not in this folder;
    training with `shared`: its clone is thrown away, so the retrain branch lives in the repository."""
    return [
        DeploymentSpec(
            flow=spec.flow,
            name=spec.name,
            cron=spec.cron,
            parameters={k: v for k, v in spec.parameters.items() if k != "root"}
            | ({"shared": True} if spec.flow == "training" else {}),
            description=spec.description,
            concurrency_limit=spec.concurrency_limit,
            tags=[*spec.tags, RERUN_TAG if spec.flow in RERUN_FLOWS else POOL_TAG],
        )
        for spec in deployment_specs(root, cron, every)
    ]


def pool_job_env() -> dict[str, str]:
    """The environment a pool deployment's flow run gets on top of its worker's: its heartbeat."""
    return {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}


def git_source(root: Path, repo: str | None = None, branch: str | None = None) -> GitSource:
    """What workers clone: `repo` (a URL or a path), else the project's `origin` remote; `branch`,
    else the branch checked out here. Workers run what the remote's branch holds: push first.

    Refused, naming the fix: no remote and no `repo`, no branch checked out, or a URL carrying a
    password (the deployment's pull step stores the URL on the Prefect server for anyone to read;
    workers get credentials from their own environment, e.g. a git credential helper)."""
    from urllib.parse import urlsplit

    from reproml.errors import ReproError
    from reproml.stores import git

    url = repo or (git.output(root, "remote", "get-url", "origin") or "").strip()
    if not url:
        raise ReproError(
            f"{root} has no git remote `origin`: workers clone the project's repository, so push it "
            "somewhere they can reach and add it (`git remote add origin <url>`), or pass --repo <url>"
        )
    if "://" in url and urlsplit(url).password is not None:
        raise ReproError(
            "the repository URL carries a password: it would be stored in the deployment for anyone "
            "with access to the Prefect server; give workers credentials through their environment "
            "(a git credential helper) and deploy the URL without them"
        )
    if "://" not in url and ":" not in url.split("/")[0]:  # a path, not a URL or host:path
        path = Path(url) if Path(url).is_absolute() else root / url
        if path.exists():
            url = str(path.resolve())  # absolute: a worker runs in a folder of its own
    name = branch or (git.output(root, "symbolic-ref", "--quiet", "--short", "HEAD") or "").strip()
    if not name:
        raise ReproError(f"{root} has no branch checked out: pass --branch <name> (the branch workers run)")
    return GitSource(url=url, branch=name)
