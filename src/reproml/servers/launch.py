"""Each server's command line and environment: `prefect server start` with its own
`PREFECT_HOME`, and `mlflow ui` over the project's `mlflow.db` and `mlartifacts/`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from reproml.servers.layout import (
    MARKER_ENV,
    ServerError,
    _marker,
    host,
    port,
    prefect_home,
    prefect_url,
)


def _executable(tool: str) -> Path:
    """`prefect` / `mlflow` from the running interpreter's environment (the project's .venv)."""
    path = Path(sys.executable).parent / tool
    if not path.exists():
        raise ServerError(f"{path} not found: install the project first (`make install`)")
    return path


def _command(root: Path, name: str) -> list[str]:
    listen = host()
    if name == "prefect":
        return [str(_executable("prefect")), "server", "start", "--host", listen, "--port", str(port(name))]
    root = root.resolve()
    return [
        str(_executable("mlflow")),
        "ui",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        # the same place `reproml.stores.mlflow.connection.setup` gives experiments it creates
        "--default-artifact-root",
        (root / "mlartifacts").as_uri(),
        "--artifacts-destination",
        (root / "mlartifacts").as_uri(),
        "--host",
        listen,
        "--port",
        str(port(name)),
        "--workers",
        "1",
    ]


def _environment(root: Path, name: str) -> dict[str, str]:
    env = dict(os.environ)
    env[MARKER_ENV] = _marker(root, name)
    if name == "prefect":
        # Nothing inherited may point this server at another API, profile or database.
        # (Service tuning such as PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS may pass.)
        tuning = "PREFECT_SERVER_SERVICES_"
        for key in [k for k in env if k.startswith("PREFECT_") and not k.startswith(tuning)]:
            del env[key]
        env["PREFECT_HOME"] = str(prefect_home(root).resolve())
        env["PREFECT_API_URL"] = prefect_url(root)
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    else:
        # One process pair instead of ~16 and a health answer in ~7 s instead of 12-15 s.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env
