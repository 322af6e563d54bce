"""The team stack's services: how each is started through its engine's own CLI, and when it is ready.

PostgreSQL (the Debian package's binaries, a cluster under `.reproml/team/pg`, run as the `postgres`
user when we are root, since initdb and postgres refuse root), an MLflow tracking server on it that
serves artifacts, a Prefect server on it with a process work pool and two workers, a Dask scheduler
and two workers, and moto's S3-compatible server as the stand-in for an S3 bucket (DVC's remote).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from reproml.team import processes
from reproml.team.layout import (
    BUCKET,
    DVC_REMOTE,
    HOST,
    S3_KEY_ID,
    S3_SECRET,
    WORK_POOL,
    Layout,
    TeamError,
    bind_host,
    credentials,
    database_url,
    exposed,
    reach_host,
    urls,
)

PREFECT_WORKERS = ("prefect-worker-1", "prefect-worker-2")
DASK_WORKERS = ("dask-worker-1", "dask-worker-2")
# In start order; `down` stops them in reverse (workers before the servers they talk to).
SERVICES = ("postgres", "s3", "dask-scheduler", *DASK_WORKERS, "mlflow", "prefect", *PREFECT_WORKERS)
# Health checks go straight to the server, never through an HTTP(S)_PROXY from the environment.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Started:
    """What one `up` did: services it started, those it found running, and how long it took."""

    started: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ready: dict[str, float] = field(default_factory=dict)  # service -> seconds after the start


# --- small helpers -------------------------------------------------------------------------------


def executable(tool: str) -> str:
    """`tool` from the running interpreter's environment (the project's .venv), else from PATH."""
    beside = Path(sys.executable).parent / tool
    if beside.exists():
        return str(beside)
    found = shutil.which(tool)
    if found is None:
        raise TeamError(f"{tool} not found next to {sys.executable} or on PATH: run `make install`")
    return found


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with _http.open(url, timeout=timeout) as response:
            return bool(200 <= response.status < 300)
    except (OSError, ValueError):
        return False


def prefect_auth(layout: Layout) -> str | None:
    """Prefect's `user:password` auth string when the stack is bound wider, else None."""
    found = credentials(layout) if exposed() else None
    return found.prefect_auth if found else None


def _api(url: str, body: object | None = None, timeout: float = 10.0, auth: str | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if auth is not None:  # what Prefect's own client sends for PREFECT_API_AUTH_STRING
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    request = urllib.request.Request(url, data=data, headers=headers)
    with _http.open(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def wait_for(
    layout: Layout, service: str, pid: int | None, ready: Callable[[], bool], deadline: float
) -> None:
    """Poll `ready` until it holds; raise with the log's tail if `pid` exits or time runs out."""
    while not ready():
        if pid is not None and processes.exited(pid):
            raise TeamError(
                f"{service} exited before it was ready; {layout.log(service)} ends with:\n"
                f"{processes.log_tail(layout, service)}"
            )
        if time.monotonic() > deadline:
            raise TeamError(
                f"{service} was not ready in time; {layout.log(service)} ends with:\n"
                f"{processes.log_tail(layout, service)}"
            )
        time.sleep(0.2)


def base_env(layout: Layout, ports: dict[str, int]) -> dict[str, str]:
    """This environment minus anything pointing elsewhere, plus the stack's variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "MLFLOW_", "AWS_", "DASK_", "PG"))
        and key != "REPROML_TUNE_STORAGE"
    }
    env.update(urls(layout, ports))
    env["PREFECT_HOME"] = str(layout.prefect_home.resolve())
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["DO_NOT_TRACK"] = "1"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


# --- the servers ---------------------------------------------------------------------------------


def mlflow_command(layout: Layout, ports: dict[str, int]) -> list[str]:
    """Bound wider than loopback, with MLflow's `basic-auth` app (its config: `mlflow_env`)."""
    layout.artifacts.mkdir(parents=True, exist_ok=True)
    auth = ["--app-name", "basic-auth"] if exposed() else []
    return [
        executable("mlflow"),
        "server",
        "--backend-store-uri",
        database_url(ports, "mlflow"),
        "--serve-artifacts",
        "--artifacts-destination",
        layout.artifacts.resolve().as_uri(),
        "--host",
        bind_host(),
        "--port",
        str(ports["mlflow"]),
        "--workers",
        "1",
        *auth,
    ]


def mlflow_env(layout: Layout, ports: dict[str, int]) -> dict[str, str]:
    env = base_env(layout, ports)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # 2 processes instead of ~16, /health sooner
    del env["MLFLOW_TRACKING_URI"]
    found = credentials(layout) if exposed() else None
    if found is not None:  # the admin's password is read from this 0600 file, never from the command line
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(layout.auth_file.resolve())
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = found.flask_secret
    return env


def prefect_env(layout: Layout, ports: dict[str, int]) -> dict[str, str]:
    env = base_env(layout, ports)
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url(ports, "prefect", "postgresql+asyncpg")
    auth = prefect_auth(layout)
    if auth is not None:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    return env


def prefect_server_command(ports: dict[str, int]) -> list[str]:
    return [executable("prefect"), "server", "start", "--host", bind_host(), "--port", str(ports["prefect"])]


def prefect_worker_command(name: str) -> list[str]:
    return [
        executable("prefect"),
        "worker",
        "start",
        "--pool",
        WORK_POOL,
        "--type",
        "process",
        "--limit",
        "1",
        "--name",
        f"{name}@{HOST}",
    ]


TEMPLATE_SCRIPT = (
    "import json; from prefect.workers.process import ProcessWorker; "
    "print(json.dumps(ProcessWorker.get_default_base_job_template()))"
)


def process_pool_template(layout: Layout, ports: dict[str, int]) -> subprocess.Popen[str]:
    """Prefect's own default job template of a process work pool, asked of Prefect in a child process
    (started early: it needs no server, and importing Prefect takes seconds)."""
    return subprocess.Popen(
        [sys.executable, "-c", TEMPLATE_SCRIPT],
        env=base_env(layout, ports),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=layout.root,
    )


def ensure_work_pool(
    ports: dict[str, int], template: subprocess.Popen[str], deadline: float, auth: str | None = None
) -> None:
    """The process work pool (as `prefect work-pool create --type process` makes it), if missing."""
    api = f"http://{reach_host()}:{ports['prefect']}/api"
    while True:
        try:
            _api(f"{api}/work_pools/{WORK_POOL}", auth=auth)
            template.kill()  # not needed: the pool is there
            template.communicate()
            return
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise TeamError(f"the Prefect server answered {exc.code} for work pool {WORK_POOL}") from None
            break
        except OSError as exc:  # a server slow to answer on a loaded machine
            if time.monotonic() > deadline:
                raise TeamError(f"the Prefect server at {api} does not answer: {exc}") from None
            time.sleep(0.5)
    out, err = template.communicate(timeout=max(1.0, deadline - time.monotonic()))
    if template.returncode != 0:
        raise TeamError(f"reading Prefect's process work pool template failed:\n{err}")
    body = {"name": WORK_POOL, "type": "process", "base_job_template": json.loads(out)}
    try:
        _api(f"{api}/work_pools/", body, auth=auth)
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # made meanwhile by another `up`
            raise TeamError(
                f"creating work pool {WORK_POOL} failed: HTTP {exc.code} {exc.read()!r}"
            ) from None


def prefect_workers_online(ports: dict[str, int], auth: str | None = None) -> Callable[[], bool]:
    url = f"http://{reach_host()}:{ports['prefect']}/api/work_pools/{WORK_POOL}/workers/filter"
    wanted = {f"{name}@{HOST}" for name in PREFECT_WORKERS}

    def ready() -> bool:
        try:
            workers = _api(url, {}, auth=auth)
        except (OSError, ValueError):
            return False
        if not isinstance(workers, list):
            return False
        online = {w.get("name") for w in workers if isinstance(w, dict) and w.get("status") == "ONLINE"}
        return wanted <= online

    return ready


def dask_scheduler_command(layout: Layout, ports: dict[str, int]) -> list[str]:
    return [executable("dask"), "scheduler", "--host", HOST, "--port", str(ports["dask"]), "--no-dashboard"]


def dask_worker_command(layout: Layout, ports: dict[str, int], name: str) -> list[str]:
    layout.dask_dir.mkdir(parents=True, exist_ok=True)
    return [
        executable("dask"),
        "worker",
        f"tcp://{HOST}:{ports['dask']}",
        "--name",
        name,
        "--host",
        HOST,
        "--nthreads",
        "1",
        "--no-dashboard",
        "--local-directory",
        str(layout.dask_dir.resolve()),
    ]


def dask_env(layout: Layout, ports: dict[str, int]) -> dict[str, str]:
    env = base_env(layout, ports)
    env["DASK_TEMPORARY_DIRECTORY"] = str(layout.dask_dir.resolve())
    return env


def dask_workers_ready(ports: dict[str, int]) -> Callable[[], bool]:
    """Both workers registered with the scheduler (asked through Dask's own client)."""

    def ready() -> bool:
        from distributed import Client

        try:
            with Client(  # type: ignore[no-untyped-call]
                f"tcp://{HOST}:{ports['dask']}", timeout=3
            ) as client:
                names = {info.get("name") for info in client.scheduler_info()["workers"].values()}
        except (OSError, TimeoutError):
            return False
        return set(DASK_WORKERS) <= names

    return ready


def port_open(ports: dict[str, int], name: str) -> Callable[[], bool]:
    import socket

    def ready() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            return probe.connect_ex((HOST, ports[name])) == 0

    return ready


def s3_command(ports: dict[str, int]) -> list[str]:
    return [executable("moto_server"), "-H", HOST, "-p", str(ports["s3"])]


def ensure_bucket(ports: dict[str, int]) -> None:
    """The DVC remote's bucket on the S3 stand-in (moto keeps buckets in memory: made on every start)."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=f"http://{HOST}:{ports['s3']}",
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )
    names = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    if BUCKET not in names:
        client.create_bucket(Bucket=BUCKET)


def dvc_remote_commands(ports: dict[str, int]) -> list[list[str]]:
    """`dvc remote` calls that add the S3 stand-in as remote `team` in this clone's local config
    (`.dvc/config.local`, untracked): `dvc push -r team` / `dvc pull -r team`."""
    dvc = executable("dvc")
    return [
        [dvc, "remote", "add", "--local", "--force", DVC_REMOTE, f"s3://{BUCKET}/dvc"],
        [dvc, "remote", "modify", "--local", DVC_REMOTE, "endpointurl", f"http://{HOST}:{ports['s3']}"],
        [dvc, "remote", "modify", "--local", DVC_REMOTE, "access_key_id", S3_KEY_ID],
        [dvc, "remote", "modify", "--local", DVC_REMOTE, "secret_access_key", S3_SECRET],
    ]
