"""Team mode safety (issue 15): loopback by default; bound wider, every server that listens wider asks
for credentials, and the credentials live only in 0600 files and the environment.

Units on the generated commands and environments (no server started), then one live stack bound to
0.0.0.0 (marked `team` and `slow`): an unauthenticated request gets 401, the env file's credentials
get through, and no password shows in a log or a command line.
"""

from __future__ import annotations

import base64
import glob
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reproml.redaction import scrub
from reproml.team import postgres, processes, services, stack
from reproml.team.layout import (
    HOST_ENV,
    MLFLOW_ADMIN,
    Layout,
    TeamError,
    bind_host,
    credentials,
    ensure_credentials,
    exposed,
    password,
    reach_host,
    saved_ports,
    urls,
    write_env,
)

PORTS = {"postgres": 25432, "mlflow": 25000, "prefect": 24200, "dask": 28786, "s3": 29000}


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HOST_ENV, raising=False)


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HOST_ENV, "0.0.0.0")


def _postgres_installed() -> bool:
    return bool(glob.glob("/usr/lib/postgresql/*/bin/postgres")) or shutil.which("postgres") is not None


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_loopback_is_the_default_and_switches_no_auth_on(loopback: None, tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.prepare()
    assert bind_host() == "127.0.0.1" and reach_host() == "127.0.0.1" and not exposed()
    mlflow = services.mlflow_command(layout, PORTS)
    assert _flag(mlflow, "--host") == "127.0.0.1" and "--app-name" not in mlflow
    assert "MLFLOW_AUTH_CONFIG_PATH" not in services.mlflow_env(layout, PORTS)
    assert "PREFECT_SERVER_API_AUTH_STRING" not in services.prefect_env(layout, PORTS)
    assert _flag(services.prefect_server_command(PORTS), "--host") == "127.0.0.1"
    env = urls(layout, PORTS)
    assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"} & set(env)
    assert services.prefect_auth(layout) is None
    assert not layout.auth_file.exists()


def test_bound_wider_mlflow_and_prefect_ask_for_credentials_kept_in_private_files(
    wide: None, tmp_path: Path
) -> None:
    layout = Layout(tmp_path)
    layout.prepare()
    assert exposed() and bind_host() == "0.0.0.0" and reach_host() == "127.0.0.1"
    with pytest.raises(TeamError, match=r"auth\.ini"):
        urls(layout, PORTS)  # bound wider without credentials: refused, not served open
    made = ensure_credentials(layout)
    assert ensure_credentials(layout) == made == credentials(layout)  # generated once, then reused
    assert len(made.mlflow_password) >= 24 and made.prefect_auth.startswith("reproml:")
    assert stat.S_IMODE(layout.auth_file.stat().st_mode) == 0o600

    mlflow = services.mlflow_command(layout, PORTS)
    assert _flag(mlflow, "--host") == "0.0.0.0" and _flag(mlflow, "--app-name") == "basic-auth"
    served = services.mlflow_env(layout, PORTS)
    assert served["MLFLOW_AUTH_CONFIG_PATH"] == str(layout.auth_file.resolve())
    assert served["MLFLOW_FLASK_SERVER_SECRET_KEY"] == made.flask_secret
    assert services.prefect_env(layout, PORTS)["PREFECT_SERVER_API_AUTH_STRING"] == made.prefect_auth
    assert _flag(services.prefect_server_command(PORTS), "--host") == "0.0.0.0"
    # Dask and the S3 stand-in have no authentication: they stay on loopback.
    assert _flag(services.dask_scheduler_command(layout, PORTS), "--host") == "127.0.0.1"
    assert _flag(services.s3_command(PORTS), "-H") == "127.0.0.1"
    if _postgres_installed():
        assert _flag(postgres.postgres_command(layout, PORTS), "-h") == "0.0.0.0"

    env = urls(layout, PORTS)
    assert env["MLFLOW_TRACKING_USERNAME"] == MLFLOW_ADMIN
    assert env["MLFLOW_TRACKING_PASSWORD"] == made.mlflow_password
    assert env["PREFECT_API_AUTH_STRING"] == made.prefect_auth
    assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    write_env(layout, PORTS)
    assert stat.S_IMODE(layout.env_file.stat().st_mode) == 0o600
    secrets = (made.mlflow_password, made.prefect_auth.partition(":")[2], made.flask_secret)
    for command in (
        mlflow,
        services.prefect_server_command(PORTS),
        *(services.prefect_worker_command(n) for n in services.PREFECT_WORKERS),
    ):
        assert not any(s in arg for s in secrets for arg in command), command
    # What leaves the process as text (logs, params, errors) loses both credentials.
    leaked = f"login failed for admin:{made.mlflow_password} with {made.prefect_auth}"
    clean = scrub(leaked, environ=env)
    assert not any(s in clean for s in secrets), clean


@pytest.mark.parametrize("value", ["::", "localhost", "10.0.0", "example.org"])
def test_a_bind_host_that_is_not_an_ipv4_address_is_named(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOST_ENV, value)
    with pytest.raises(TeamError, match=HOST_ENV):
        bind_host()


def test_a_specific_address_is_reached_there_and_a_loopback_one_is_not_exposed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(HOST_ENV, "192.168.7.9")
    assert exposed() and reach_host() == "192.168.7.9"
    monkeypatch.setenv(HOST_ENV, "127.0.0.2")
    assert not exposed()


def test_remote_password_logins_are_allowed_once(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.pg_dir.mkdir(parents=True)
    hba = layout.pg_dir / "pg_hba.conf"
    hba.write_text("host all all 127.0.0.1/32 scram-sha-256")
    postgres.allow_remote_logins(layout)
    postgres.allow_remote_logins(layout)
    lines = hba.read_text().splitlines()
    assert lines[0] == "host all all 127.0.0.1/32 scram-sha-256"
    assert [line for line in lines if "0.0.0.0/0" in line] == [postgres.REMOTE_HBA.strip()]


# --- live: a stack bound to 0.0.0.0 -----------------------------------------------------------


def _status(url: str, auth: str | None = None, body: bytes | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, data=body, headers=headers), timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def wide_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    if not _postgres_installed():
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    monkeypatch.setenv(HOST_ENV, "0.0.0.0")
    for name in ("POSTGRES", "MLFLOW", "PREFECT", "DASK", "S3"):
        monkeypatch.delenv(f"REPROML_TEAM_{name}_PORT", raising=False)
    root = Path(tempfile.mkdtemp(prefix="reproml-team-wide-", dir="/tmp"))
    root.chmod(0o755)
    try:
        stack.up(root)
        yield root
    finally:
        try:
            stack.down(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.mark.team
@pytest.mark.integration
@pytest.mark.slow
def test_a_stack_bound_to_every_interface_refuses_unauthenticated_requests(wide_stack: Path) -> None:
    layout = Layout(wide_stack)
    made = credentials(layout)
    assert made is not None
    env = urls(layout, saved_ports(layout))
    mlflow = env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(mlflow) == 401
    assert _status(mlflow, f"{MLFLOW_ADMIN}:wrong-password-123") == 401
    assert _status(mlflow, f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}") == 200
    pools = env["PREFECT_API_URL"] + "/work_pools/filter"
    assert _status(pools, body=b"{}") == 401
    assert _status(pools, env["PREFECT_API_AUTH_STRING"], body=b"{}") == 200
    secrets = (password(layout), made.mlflow_password, made.prefect_auth.partition(":")[2])
    for log in layout.dir.glob("*.log"):
        text = log.read_text(errors="replace")
        assert not any(s and s in text for s in secrets), log
    for procs in processes.ours(wide_stack).values():
        for process in procs:
            assert not any(s and s in arg for s in secrets for arg in process.cmdline()), process.cmdline()
