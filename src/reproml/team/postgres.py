"""The team stack's PostgreSQL: the Debian package's binaries, one cluster under `.reproml/team/pg`.

initdb and postgres refuse to run as root, so when we are root they run as the `postgres` system
user, which then owns `pg/` and must be able to enter every folder above it. The password is set at
initdb from a file only that user can read for that moment, and clients read it from `secrets`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from reproml.team.layout import DATABASES, DB_USER, Layout, TeamError, bind_host, reach_host


def postgres_bin() -> Path:
    """The newest PostgreSQL server binaries (Debian keeps them off PATH, under /usr/lib/postgresql)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[4]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("postgres")
    if found:
        return Path(found).parent
    raise TeamError(
        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres, no postgres on PATH): "
        "`apt-get install -y postgresql` (or `make team-up`, which does it as root)"
    )


def postgres_user() -> str | None:
    """The system user PostgreSQL runs as: `postgres` when we are root (it refuses root), else us."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise TeamError(
            "running as root but there is no `postgres` system user to run PostgreSQL as"
        ) from None
    return "postgres"


def check_reachable(layout: Layout, user: str | None) -> None:
    """Refuse early, and say what to do, when the `postgres` user cannot enter the project folder."""
    if user is None:
        return
    uid = pwd.getpwnam(user).pw_uid
    for folder in reversed(layout.pg_dir.resolve().parents):
        info = folder.stat()
        if info.st_uid != uid and not info.st_mode & 0o001:
            raise TeamError(
                f"PostgreSQL runs as the `{user}` user (it refuses root), which cannot enter {folder} "
                f"(mode {oct(info.st_mode & 0o777)}): `chmod o+x {folder}`, or keep the project elsewhere"
            )


def init_cluster(layout: Layout, secret: str) -> None:
    """initdb a cluster under `.reproml/team/pg` (once) with `reproml` as its superuser."""
    user = postgres_user()
    check_reachable(layout, user)
    if (layout.pg_dir / "PG_VERSION").exists():
        return
    if layout.pg_dir.exists():
        shutil.rmtree(layout.pg_dir)  # a half-made cluster from an interrupted initdb
    layout.pg_dir.mkdir(mode=0o700, parents=True)
    scratch = layout.dir / ".pwfile"
    scratch.unlink(missing_ok=True)
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    try:
        if user is not None:
            shutil.chown(layout.pg_dir, user, user)
            shutil.chown(scratch, user, user)
        command = [
            str(postgres_bin() / "initdb"),
            "--pgdata",
            str(layout.pg_dir.resolve()),
            "--username",
            DB_USER,
            "--auth",
            "scram-sha-256",
            "--pwfile",
            str(scratch.resolve()),
            "--encoding",
            "UTF8",
            "--no-sync",
        ]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd="/",
            user=user,
            group=user,
            extra_groups=[] if user else None,
            check=False,
        )
    finally:
        scratch.unlink(missing_ok=True)
    if done.returncode != 0:
        shutil.rmtree(layout.pg_dir, ignore_errors=True)
        raise TeamError(f"initdb of {layout.pg_dir} failed:\n{done.stdout}{done.stderr}")


REMOTE_HBA = "host all all 0.0.0.0/0 scram-sha-256  # reproml: password logins from other hosts\n"


def allow_remote_logins(layout: Layout) -> None:
    """Let other machines log in with the password (scram-sha-256), once the stack is bound wider:
    initdb's pg_hba.conf admits only loopback. Idempotent; the file keeps its owner."""
    hba = layout.pg_dir / "pg_hba.conf"
    text = hba.read_text()
    if REMOTE_HBA not in text:
        with hba.open("a") as handle:
            handle.write(("" if text.endswith("\n") else "\n") + REMOTE_HBA)


def postgres_command(layout: Layout, ports: dict[str, int]) -> list[str]:
    # `-k ''`: no Unix socket (nothing of ours in /var/run/postgresql); clients come over TCP.
    return [
        str(postgres_bin() / "postgres"),
        "-D",
        str(layout.pg_dir.resolve()),
        "-h",
        bind_host(),
        "-p",
        str(ports["postgres"]),
        "-k",
        "",
    ]


def _connect(layout: Layout, ports: dict[str, int], database: str = "postgres") -> object:
    import psycopg2

    return psycopg2.connect(
        host=reach_host(),
        port=ports["postgres"],
        user=DB_USER,
        dbname=database,
        passfile=str(layout.secrets.resolve()),
        connect_timeout=2,
    )


def postgres_ready(layout: Layout, ports: dict[str, int]) -> Callable[[], bool]:
    def ready() -> bool:
        import psycopg2

        try:
            connection = _connect(layout, ports)
        except psycopg2.OperationalError as exc:
            if "password authentication failed" in str(exc):
                raise TeamError(
                    f"PostgreSQL refuses the password in {layout.secrets}: it is not the one the cluster in "
                    f"{layout.pg_dir} was made with (restore it, or delete {layout.pg_dir})"
                ) from None
            return False
        connection.close()  # type: ignore[attr-defined]
        return True

    return ready


def create_databases(layout: Layout, ports: dict[str, int]) -> None:
    """The mlflow, prefect, optuna and reproml (records) databases (those missing)."""
    connection = _connect(layout, ports)
    try:
        connection.autocommit = True  # type: ignore[attr-defined]  # CREATE DATABASE refuses a transaction
        with connection.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute("SELECT datname FROM pg_database")
            present = {row[0] for row in cursor.fetchall()}
            for name in DATABASES:
                if name not in present:
                    cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()  # type: ignore[attr-defined]
