"""`up`, `down` and `status` of the team stack: the order services start in, and what is left after.

`up` is idempotent: a service whose processes are alive is left as it is (and waited for), the
others are started. Independent services start side by side: the S3 stand-in, the Dask scheduler
and PostgreSQL first, then, once PostgreSQL answers, MLflow and Prefect, then the workers as soon
as their server is up. `down` stops workers before servers and PostgreSQL last, each as a whole
process group, and checks that no process carrying this project's marker is left.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reproml.team import postgres, processes, services
from reproml.team.layout import (
    HOST,
    PORT_ENV,
    WORK_POOL,
    Layout,
    TeamError,
    choose_ports,
    ensure_credentials,
    exposed,
    locked,
    new_password,
    password,
    port_in_use,
    reach_host,
    saved_ports,
    write_env,
    write_secrets,
)
from reproml.team.services import DASK_WORKERS, PREFECT_WORKERS, SERVICES, Started

# Seconds `up` waits for every service. Measured: 63-72 s on 2 cores shared with ~6 other jobs
# (load ~25), MLflow's server being the slowest; beyond this something is wrong, and the log says what.
READY_S = 180.0
SERVICE_PORT = {
    "postgres": "postgres",
    "mlflow": "mlflow",
    "prefect": "prefect",
    "dask-scheduler": "dask",
    "s3": "s3",
}
# `down` stops these together, phase by phase: workers, then servers, then the database.
STOP_PHASES = (
    (*PREFECT_WORKERS, *DASK_WORKERS),
    ("mlflow", "prefect", "dask-scheduler", "s3"),
    ("postgres",),
)
# Seconds before SIGKILL: a Prefect worker ignores its first SIGTERM, and the Prefect server (3.8.8)
# was seen still running 10 s after SIGTERM; the rest stop well within the default.
STOP_GRACE_S = {"prefect-worker-1": 3.0, "prefect-worker-2": 3.0, "prefect": 5.0}


def up(root: Path, timeout: float = READY_S) -> Started:
    """Start what is not running of this project's stack and wait until every service answers."""
    layout = Layout(root.resolve())
    began = time.monotonic()
    deadline = began + timeout
    result = Started()
    with locked(layout):
        running = processes.ours(layout.root)
        ports = choose_ports(layout, keep=bool(running))
        secret = password(layout)
        if secret is None:
            if (layout.pg_dir / "PG_VERSION").exists():
                raise TeamError(
                    f"{layout.secrets} is gone but the cluster in {layout.pg_dir} was made with the "
                    f"password it held: restore the file, or delete {layout.pg_dir} to start empty"
                )
            secret = new_password()
        write_secrets(layout, secret, ports["postgres"])
        if exposed():
            ensure_credentials(layout)
        write_env(layout, ports)
        pids: dict[str, int | None] = {}

        def start(service: str, command: list[str], env: dict[str, str], user: str | None = None) -> None:
            if service in running:
                result.running.append(service)
                pids[service] = None
                return
            port = ports.get(SERVICE_PORT.get(service, ""))
            if port is not None and port_in_use(port):
                raise TeamError(
                    f"cannot start {service}: port {port} on {HOST} is taken by another program; "
                    f"pick another with {PORT_ENV[SERVICE_PORT[service]]}=<port> "
                    f"(or delete {layout.ports_file})"
                )
            pids[service] = processes.spawn(layout, service, command, env, user=user)
            result.started.append(service)

        try:
            base = services.base_env(layout, ports)
            start("s3", services.s3_command(ports), base)
            dask_env = services.dask_env(layout, ports)
            start("dask-scheduler", services.dask_scheduler_command(layout, ports), dask_env)
            if "postgres" not in running:
                postgres.init_cluster(layout, secret)
                if exposed():
                    postgres.allow_remote_logins(layout)
            start("postgres", postgres.postgres_command(layout, ports), base, user=postgres.postgres_user())
            remote = _configure_dvc_remote(layout, ports)
            template = services.process_pool_template(layout, ports)

            _wait(
                result,
                began,
                layout,
                "postgres",
                pids["postgres"],
                postgres.postgres_ready(layout, ports),
                deadline,
            )
            postgres.create_databases(layout, ports)
            start("mlflow", services.mlflow_command(layout, ports), services.mlflow_env(layout, ports))
            prefect_env = services.prefect_env(layout, ports)
            start("prefect", services.prefect_server_command(ports), prefect_env)

            _wait(
                result,
                began,
                layout,
                "dask-scheduler",
                pids["dask-scheduler"],
                services.port_open(ports, "dask"),
                deadline,
            )
            for name in DASK_WORKERS:
                start(name, services.dask_worker_command(layout, ports, name), dask_env)

            services.wait_for(layout, "s3", pids["s3"], services.port_open(ports, "s3"), deadline)
            services.ensure_bucket(ports)

            prefect_api = f"http://{reach_host()}:{ports['prefect']}/api"
            _wait(
                result,
                began,
                layout,
                "prefect",
                pids["prefect"],
                lambda: services.http_ok(f"{prefect_api}/health"),
                deadline,
            )
            services.ensure_work_pool(ports, template, deadline, services.prefect_auth(layout))
            for name in PREFECT_WORKERS:
                start(name, services.prefect_worker_command(name), base)

            mlflow_health = f"http://{reach_host()}:{ports['mlflow']}/health"
            _wait(
                result,
                began,
                layout,
                "mlflow",
                pids["mlflow"],
                lambda: services.http_ok(mlflow_health),
                deadline,
            )
            _wait(
                result,
                began,
                layout,
                "dask-worker-1",
                pids["dask-worker-1"],
                services.dask_workers_ready(ports),
                deadline,
            )
            _wait(
                result,
                began,
                layout,
                PREFECT_WORKERS[0],
                pids[PREFECT_WORKERS[0]],
                services.prefect_workers_online(ports, services.prefect_auth(layout)),
                deadline,
            )
            for name in (*DASK_WORKERS, *PREFECT_WORKERS):
                pid = pids[name]
                if pid is not None and processes.exited(pid):
                    raise TeamError(
                        f"{name} exited; {layout.log(name)} ends with:\n{processes.log_tail(layout, name)}"
                    )
            remote.join(max(0.0, deadline - time.monotonic()))
            if remote.error:
                raise TeamError(remote.error)
        except BaseException:
            # Nothing half-started is left behind: what this call started is stopped again.
            _stop(layout, [s for s in result.started])
            raise
    result.seconds = time.monotonic() - began
    return result


def _wait(result: Started, began: float, *args: Any) -> None:
    """`services.wait_for`, noting when the service was ready (seconds since `up` began)."""
    services.wait_for(*args)
    result.ready[args[1]] = round(time.monotonic() - began, 1)


class _Remote(threading.Thread):
    """`dvc remote` calls run beside the waiting (each is a second of DVC start-up)."""

    def __init__(self, layout: Layout, commands: list[list[str]]) -> None:
        super().__init__(daemon=True)
        self.layout, self.commands, self.error = layout, commands, ""

    def run(self) -> None:
        for command in self.commands:
            done = subprocess.run(command, cwd=self.layout.root, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                self.error = (
                    f"`{' '.join(command[1:4])} ...` failed: {done.stderr.strip() or done.stdout.strip()}"
                )
                return


def _configure_dvc_remote(layout: Layout, ports: dict[str, int]) -> _Remote:
    commands = services.dvc_remote_commands(ports) if (layout.root / ".dvc").is_dir() else []
    remote = _Remote(layout, commands)
    remote.start()
    return remote


def _stop(layout: Layout, names: list[str], timeout: float = 10) -> list[str]:
    """Stop `names`: workers, then servers, then PostgreSQL, each phase's services side by side.
    Returns the services found and stopped."""
    stopped: list[str] = []
    for phase in STOP_PHASES:
        found = processes.ours(layout.root)
        batch = [(name, found[name]) for name in phase if name in names and found.get(name)]
        if not batch:
            continue
        for name, procs in batch:
            processes.signal_all(procs, processes.STOP_SIGNAL.get(name, signal.SIGTERM))
        grace = min(STOP_GRACE_S.get(name, timeout) for name, _ in batch)
        processes.finish([p for _, procs in batch for p in procs], grace, timeout)
        stopped.extend(name for name, _ in batch)
    return stopped


def down(root: Path, timeout: float = 10) -> list[str]:
    """Stop this project's whole stack; raise if any process of it is still alive afterwards."""
    layout = Layout(root.resolve())
    with locked(layout):
        found = processes.ours(layout.root)
        stopped = _stop(layout, list(found))
        unknown = [name for name in found if name not in SERVICES]  # e.g. from an older version
        for name in unknown:
            processes.stop(found[name], 15, timeout)
        left = processes.wait_gone(layout.root, timeout=5)
    if left:
        described = ", ".join(
            f"{name} (pids {', '.join(str(p.pid) for p in procs)})" for name, procs in left.items()
        )
        raise TeamError(f"still running after stop: {described}")
    return stopped + unknown


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pids: list[int]
    address: str
    healthy: bool


def status(root: Path) -> list[ServiceStatus]:
    """Each service: its live pids, where it listens, and whether it answers there now."""
    layout = Layout(root.resolve())
    found = processes.ours(layout.root)
    ports = saved_ports(layout)
    rows = []
    for name in SERVICES:
        pids = sorted(p.pid for p in found.get(name, []))
        address, healthy = _probe(layout, name, ports) if pids and ports else ("", False)
        rows.append(ServiceStatus(name, pids, address, healthy))
    return rows


def _probe(layout: Layout, name: str, ports: dict[str, int]) -> tuple[str, bool]:
    if name == "postgres":
        return f"{reach_host()}:{ports['postgres']}", postgres.postgres_ready(layout, ports)()
    if name == "mlflow":
        url = f"http://{reach_host()}:{ports['mlflow']}"
        return url, services.http_ok(f"{url}/health")
    if name == "prefect":
        url = f"http://{reach_host()}:{ports['prefect']}/api"
        return url, services.http_ok(f"{url}/health")
    if name == "s3":
        return f"http://{HOST}:{ports['s3']}", services.port_open(ports, "s3")()
    if name == "dask-scheduler":
        return f"tcp://{HOST}:{ports['dask']}", services.port_open(ports, "dask")()
    if name in PREFECT_WORKERS:
        return f"pool {WORK_POOL}", True
    return f"tcp://{HOST}:{ports['dask']}", True
