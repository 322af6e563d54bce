"""The project's local Prefect server and MLflow UI, in the background: `make up` / `make down`.

`python -m reproml.servers up|down|status` (`__main__`) in the project root (or `--root`, which
must be the project the command runs in: `reproml.paths.project_root`). Each server runs in its own session
(so its own process group, stopped as a whole), writes its output to `.reproml/servers/<name>.log`
and its pid to `.reproml/servers/<name>.pid`. Prefect keeps its database under `.reproml/prefect`,
so every project has its own; MLflow serves the project's `mlflow.db` and `mlartifacts/`.

A pid counts as ours only if the process carries the marker variable this module put in its
environment (read with psutil), so a pid file left by a crash is never mistaken for a process that
reused the pid. This module only spawns processes: it imports neither Prefect nor MLflow.

Why not `prefect server start --background` / `prefect server stop`: Prefect 3.8 starts the
server with its output piped to a process that exits at once (so no log, and writes that fail),
in the caller's process group, records no way to tell a reused pid, and `stop` sends SIGTERM to
that one pid only; the log, the marker, the group stop and the health wait here are what `make up`
and the tests rely on. One start or stop at a time goes through the library's flock
(`reproml.io.file_lock`), the primitive the training lock is built on.

Split by concern: `layout` (names, ports, URLs, the state folder), `processes` (pid files, the
marker, process groups, health), `launch` (each server's command line and environment) and
`control` (start, reuse, stop, status, `ensure_prefect`). The names below are the public API.
"""

from reproml.servers.control import Status, ensure_prefect, start, start_all, status, stop
from reproml.servers.layout import (
    DEFAULT_PORT,
    HOST_ENV,
    MARKER_ENV,
    NAMES,
    PORT_ENV,
    ServerError,
    host,
    log_file,
    mlflow_url,
    pid_file,
    port,
    prefect_home,
    prefect_url,
    state_dir,
    ui_url,
)
from reproml.servers.processes import port_in_use, running

__all__ = [
    "DEFAULT_PORT",
    "HOST_ENV",
    "MARKER_ENV",
    "NAMES",
    "PORT_ENV",
    "ServerError",
    "Status",
    "ensure_prefect",
    "host",
    "log_file",
    "mlflow_url",
    "pid_file",
    "port",
    "port_in_use",
    "prefect_home",
    "prefect_url",
    "running",
    "start",
    "start_all",
    "state_dir",
    "status",
    "stop",
    "ui_url",
]
