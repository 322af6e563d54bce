"""Where the team stack keeps its state, which ports it listens on, its secret, and its env file.

Everything lives under `.reproml/team/` in the project (gitignored): one log per service, the
PostgreSQL cluster (`pg/`), MLflow's served artifacts (`mlartifacts/`), Prefect's home, Dask's
scratch space, `ports.json` (chosen once, so a second `up` finds the same stack), `secrets` and
`env` (both 0600).

The database password never appears in a URL, a command line or a log: `secrets` is a libpq
password file (`host:port:db:user:password`), and every client (MLflow's and Optuna's psycopg2,
Prefect's asyncpg) is pointed at it with `PGPASSFILE`. So, on loopback, `env` holds no password at all.

Binding: every server listens on 127.0.0.1 unless `REPROML_TEAM_HOST` names another address. Bound
wider (any address that is not loopback, e.g. 0.0.0.0), PostgreSQL, MLflow and Prefect listen there
with authentication switched on: PostgreSQL's password (already always on), MLflow's `basic-auth` app
with an admin generated once, and Prefect's API auth string. Those two credentials live in `auth.ini`
(0600; MLflow reads it as its auth config) and reach clients through `env` (0600) as
MLFLOW_TRACKING_USERNAME/PASSWORD and PREFECT_API_AUTH_STRING, never through a command line. Dask
and the S3 stand-in have no authentication of their own (Dask's is TLS with certificates, out of
scope here), so they stay on 127.0.0.1 whatever the setting.
"""

from __future__ import annotations

import configparser
import contextlib
import ipaddress
import json
import os
import random
import secrets as _secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from reproml.env import DVC_REMOTE_ENV, DVC_REMOTE_URL_ENV, port

HOST = "127.0.0.1"  # loopback: the default bind address, and where Dask and the S3 stand-in always listen
HOST_ENV = "REPROML_TEAM_HOST"
WILDCARD = "0.0.0.0"
MLFLOW_ADMIN = "admin"
PREFECT_USER = "reproml"
# Services with a port, and the variable that pins each one (else a free port is chosen once).
PORTED = ("postgres", "mlflow", "prefect", "dask", "s3")
PORT_ENV = {name: f"REPROML_TEAM_{name.upper()}_PORT" for name in PORTED}
DB_USER = "reproml"
DATABASES = ("mlflow", "prefect", "optuna", "reproml")  # reproml: the records store
WORK_POOL = "reproml-team"
BUCKET = "reproml-dvc"
DVC_REMOTE = "team"
# The S3 stand-in (moto) accepts any credentials; these only have to be present and consistent.
S3_KEY_ID = "reproml-team"
S3_SECRET = "reproml-team-stand-in"


class TeamError(RuntimeError):
    """The team stack cannot be started, reached or stopped; the message says why and what to do."""


@dataclass(frozen=True)
class Layout:
    """The paths of one project's team stack."""

    root: Path

    @property
    def dir(self) -> Path:
        return self.root / ".reproml" / "team"

    @property
    def pg_dir(self) -> Path:
        return self.dir / "pg"

    @property
    def artifacts(self) -> Path:
        return self.dir / "mlartifacts"

    @property
    def prefect_home(self) -> Path:
        return self.dir / "prefect"

    @property
    def dask_dir(self) -> Path:
        return self.dir / "dask"

    @property
    def secrets(self) -> Path:
        return self.dir / "secrets"

    @property
    def auth_file(self) -> Path:
        return self.dir / "auth.ini"

    @property
    def mlflow_auth_db(self) -> Path:
        return self.dir / "mlflow-auth.db"

    @property
    def env_file(self) -> Path:
        return self.dir / "env"

    @property
    def ports_file(self) -> Path:
        return self.dir / "ports.json"

    def log(self, service: str) -> Path:
        return self.dir / f"{service}.log"

    def prepare(self) -> None:
        """Create the state folder, traversable by the `postgres` user that owns `pg/` when we are root."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)


def bind_host() -> str:
    """Where PostgreSQL, MLflow and Prefect listen: `REPROML_TEAM_HOST`, else 127.0.0.1 (IPv4 only)."""
    value = os.environ.get(HOST_ENV, "").strip() or HOST
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        address = None
    if not isinstance(address, ipaddress.IPv4Address):
        raise TeamError(
            f"{HOST_ENV}={value!r} is not an IPv4 address: use 127.0.0.1 (the default), 0.0.0.0 "
            "(every interface) or one of this machine's addresses"
        )
    return value


def exposed(host: str | None = None) -> bool:
    """Whether the servers are reachable from other machines, so that they need authentication."""
    return not ipaddress.ip_address(host or bind_host()).is_loopback


def reach_host() -> str:
    """The address this machine's clients use for PostgreSQL, MLflow and Prefect: the bind address,
    or loopback when bound to every interface (0.0.0.0 includes it)."""
    host = bind_host()
    return HOST if host == WILDCARD else host


@dataclass(frozen=True)
class Credentials:
    """The MLflow admin's password, Prefect's `user:password` auth string, and the key MLflow's
    auth app signs its CSRF tokens with (bound wider only)."""

    mlflow_password: str
    prefect_auth: str
    flask_secret: str


def credentials(layout: Layout) -> Credentials | None:
    """The credentials recorded in `auth.ini`, or None before the first wide-bound `up`."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        text = layout.auth_file.read_text()
    except FileNotFoundError:
        return None
    try:
        parser.read_string(text)
        return Credentials(
            parser["mlflow"]["admin_password"],
            parser["reproml"]["prefect_auth_string"],
            parser["reproml"]["flask_secret_key"],
        )
    except (configparser.Error, KeyError) as exc:
        raise TeamError(
            f"{layout.auth_file} is unreadable ({exc!r}): delete it together with {layout.mlflow_auth_db} "
            "and run `make team-up` again"
        ) from None


def ensure_credentials(layout: Layout) -> Credentials:
    """The recorded credentials, else new ones written to `auth.ini` (0600): MLflow's auth config
    (its admin is created from it on the first start against an empty auth database)."""
    found = credentials(layout)
    if found is not None:
        return found
    made = Credentials(new_password(), f"{PREFECT_USER}:{new_password()}", new_password())
    text = (
        "# reproml team stack: MLflow's basic-auth config and Prefect's API auth string; keep it 0600\n"
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{layout.mlflow_auth_db.resolve()}\n"
        f"admin_username = {MLFLOW_ADMIN}\n"
        f"admin_password = {made.mlflow_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "[reproml]\n"
        f"prefect_auth_string = {made.prefect_auth}\n"
        f"flask_secret_key = {made.flask_secret}\n"
    )
    write_private(layout.auth_file, text)
    return made


def write_private(target: Path, text: str) -> None:
    """Write `text` to `target` atomically with mode 0600 from the first byte (never world-readable)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(name, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


# Below Linux's ephemeral range (32768-60999), so that no outgoing connection holds our port.
PORT_RANGE = (20000, 32000)


def _free_port(taken: set[int]) -> int:
    """A free port below the ephemeral range, not one of `taken`."""
    for _ in range(200):
        number = random.randint(*PORT_RANGE)
        if number not in taken and not port_in_use(number):
            return number
    raise TeamError(
        f"no free port found in {PORT_RANGE[0]}-{PORT_RANGE[1]}: pin them with {PORT_ENV['mlflow']} etc."
    )


def port_in_use(number: int) -> bool:
    """Whether `number` is taken on the stack's host (the same probe the local servers use)."""
    from reproml.servers import port_in_use as taken

    return taken(HOST, number)


def _env_port(name: str) -> int | None:
    try:
        return port(PORT_ENV[name])
    except ValueError as exc:
        raise TeamError(str(exc)) from None


def saved_ports(layout: Layout) -> dict[str, int]:
    """The ports recorded by the last `up` ({} before the first)."""
    try:
        saved = json.loads(layout.ports_file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise TeamError(
            f"{layout.ports_file} is unreadable ({exc}): delete it and run `make team-up`"
        ) from None
    return {name: int(saved[name]) for name in PORTED if name in saved}


def choose_ports(layout: Layout, keep: bool) -> dict[str, int]:
    """Each service's port: `REPROML_TEAM_<NAME>_PORT`, else the recorded one, else a free one.

    `keep` (some service still runs) keeps recorded ports even if taken, since ours take them; a
    fresh start replaces a recorded port that something else took meanwhile. Recorded for the next call.
    """
    saved = saved_ports(layout)
    chosen: dict[str, int] = {}
    for name in PORTED:
        pinned = _env_port(name)
        if pinned is not None:
            chosen[name] = pinned
        elif name in saved and (keep or not port_in_use(saved[name])):
            chosen[name] = saved[name]
        else:
            chosen[name] = _free_port(set(chosen.values()))
    if chosen != saved:
        layout.dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(chosen, indent=2, sort_keys=True) + "\n"
        write_private(layout.ports_file, text)
        layout.ports_file.chmod(0o644)
    return chosen


def password(layout: Layout) -> str | None:
    """The database password recorded in `secrets`, or None before the first `up`."""
    try:
        lines = layout.secrets.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        if line and not line.startswith("#"):
            fields = line.split(":")
            if len(fields) == 5 and fields[3] == DB_USER:
                return fields[4]
    raise TeamError(
        f"{layout.secrets} holds no password line for {DB_USER}: delete .reproml/team and start again"
    )


def new_password() -> str:
    """A random password with no character libpq's password file would need escaped (`:` or `\\`)."""
    return _secrets.token_urlsafe(24)


def write_secrets(layout: Layout, secret: str, pg_port: int) -> None:
    """The libpq password file (0600): the one place the password is written."""
    text = (
        "# reproml team stack: libpq password file (PGPASSFILE); keep it 0600, never commit or print it\n"
        f"*:{pg_port}:*:{DB_USER}:{secret}\n"
    )
    write_private(layout.secrets, text)


def database_url(ports: dict[str, int], database: str, driver: str = "postgresql") -> str:
    """A URL without password: the client finds it through `PGPASSFILE`."""
    return f"{driver}://{DB_USER}@{reach_host()}:{ports['postgres']}/{database}"


def urls(layout: Layout, ports: dict[str, int]) -> dict[str, str]:
    """The variables that point every command at the stack (what `env` exports); bound wider, the
    MLflow and Prefect client credentials too."""
    found = {
        "MLFLOW_TRACKING_URI": f"http://{reach_host()}:{ports['mlflow']}",
        "PREFECT_API_URL": f"http://{reach_host()}:{ports['prefect']}/api",
        "PGPASSFILE": str(layout.secrets.resolve()),
        "REPROML_TUNE_STORAGE": database_url(ports, "optuna"),
        "REPROML_RECORDS_URL": database_url(ports, "reproml"),  # audit trail, monitoring records
        "DASK_SCHEDULER_ADDRESS": f"tcp://{HOST}:{ports['dask']}",
        "REPROML_TEAM_WORK_POOL": WORK_POOL,
        # the retrain flow's DVC remote (added to its worktree's local config): a worker's fresh
        # clone pushes data versions here; endpoint and keys come from the AWS_* below
        DVC_REMOTE_ENV: DVC_REMOTE,
        DVC_REMOTE_URL_ENV: f"s3://{BUCKET}/dvc",
        "AWS_ACCESS_KEY_ID": S3_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_ENDPOINT_URL": f"http://{HOST}:{ports['s3']}",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    if exposed():
        auth = credentials(layout)
        if auth is None:
            raise TeamError(
                f"{HOST_ENV} binds wider than loopback but {layout.auth_file} is missing: run `make team-up`"
            )
        found["MLFLOW_TRACKING_USERNAME"] = MLFLOW_ADMIN
        found["MLFLOW_TRACKING_PASSWORD"] = auth.mlflow_password
        found["PREFECT_API_AUTH_STRING"] = auth.prefect_auth
    return found


def write_env(layout: Layout, ports: dict[str, int]) -> None:
    """`.reproml/team/env` (0600): `source` it (or `set -a; . env`) to use the stack."""
    header = (
        "# reproml team stack (`make team-up`): `source .reproml/team/env` points reproml, MLflow, Prefect,\n"
        "# Optuna, Dask and DVC's S3 remote at it. The database password is in PGPASSFILE, not here\n"
        "# (bound wider than loopback, MLflow's and Prefect's client credentials are: keep this file 0600);\n"
        "# the AWS keys are the S3 stand-in's (moto accepts any).\n"
    )
    body = "".join(f"export {key}={_quoted(value)}\n" for key, value in urls(layout, ports).items())
    write_private(layout.env_file, header + body)


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


@contextlib.contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """One `up` or `down` of this project's stack at a time."""
    import fcntl

    layout.prepare()
    with (layout.dir / "lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
