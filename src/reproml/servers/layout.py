"""Where the servers are: names, host and ports (from the environment), URLs, and the state folder
(pid files, logs, locks) of each project's servers."""

from __future__ import annotations

import os
from pathlib import Path

from reproml.env import port as env_port

PREFECT_PORT = 4200

MLFLOW_PORT = 5000

HOST = "127.0.0.1"

HOST_ENV = "REPROML_SERVER_HOST"

PORT_ENV = {"prefect": "REPROML_PREFECT_PORT", "mlflow": "REPROML_MLFLOW_PORT"}

DEFAULT_PORT = {"prefect": PREFECT_PORT, "mlflow": MLFLOW_PORT}

NAMES = ("prefect", "mlflow")

# Set in each server's environment to `<name>@<root>`: how a pid is recognised as ours.
MARKER_ENV = "REPROML_SERVER_ID"

LOG_TAIL = 20

DESCRIPTION = "Start, stop or show the project's local Prefect server and MLflow UI."


class ServerError(RuntimeError):
    """A server could not be started, reached or stopped; the message says why and what to do."""


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown server {name!r}: expected one of {', '.join(NAMES)}")


def host() -> str:
    """The interface servers listen on: 127.0.0.1 unless `REPROML_SERVER_HOST` says otherwise."""
    return os.environ.get(HOST_ENV) or HOST


def port(name: str) -> int:
    """The server's port: its default, or `REPROML_PREFECT_PORT` / `REPROML_MLFLOW_PORT`."""
    _check_name(name)
    try:
        chosen = env_port(PORT_ENV[name])
    except ValueError as exc:
        raise ServerError(str(exc)) from None
    return DEFAULT_PORT[name] if chosen is None else chosen


def _client_host(listen: str) -> str:
    """The address clients use for a listen address: a wildcard one is reached on loopback."""
    if listen in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{listen}]" if ":" in listen else listen


def prefect_url(root: Path) -> str:
    """The project's Prefect API, e.g. `http://127.0.0.1:4200/api` (its UI is the same without /api)."""
    return f"http://{_client_host(host())}:{port('prefect')}/api"


def mlflow_url(root: Path) -> str:
    """The project's MLflow UI and REST API, e.g. `http://127.0.0.1:5000`."""
    return f"http://{_client_host(host())}:{port('mlflow')}"


def ui_url(root: Path, name: str) -> str:
    """The address to open in a browser."""
    _check_name(name)
    return prefect_url(root).removesuffix("/api") if name == "prefect" else mlflow_url(root)


def _health_url(root: Path, name: str) -> str:
    return f"{prefect_url(root)}/health" if name == "prefect" else f"{mlflow_url(root)}/health"


def state_dir(root: Path) -> Path:
    """`.reproml/servers/` in the project: pid files, logs and locks."""
    return root / ".reproml" / "servers"


def pid_file(root: Path, name: str) -> Path:
    _check_name(name)
    return state_dir(root) / f"{name}.pid"


def log_file(root: Path, name: str) -> Path:
    _check_name(name)
    return state_dir(root) / f"{name}.log"


def prefect_home(root: Path) -> Path:
    """`PREFECT_HOME` of the project's server: its SQLite database lives here."""
    return root / ".reproml" / "prefect"


def _marker(root: Path, name: str) -> str:
    return f"{name}@{root.resolve()}"
