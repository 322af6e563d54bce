"""`python -m reproml.servers up|down|status` (`make up` / `make down`)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from reproml.servers.control import (
    Status,
    start_all,
    status,
    stop,
)
from reproml.servers.layout import (
    DESCRIPTION,
    NAMES,
    ServerError,
)
from reproml.servers.processes import (
    running,
)


def _show(root: Path, rows: list[Status], lines: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("server", "url", "pid", "log"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        log = row.log.relative_to(root) if row.log.is_relative_to(root) else row.log
        pid = str(row.pid) if row.pid is not None else "[red]stopped[/red]"
        table.add_row(row.name, row.url, pid, str(log))
    console = Console()
    console.print(table)
    prefect = [row for row in rows if row.name == "prefect" and row.pid is not None]
    hints = [f"flows and the prefect CLI use PREFECT_API_URL={row.url}/api" for row in prefect]
    for line in [*lines, *hints]:
        console.print(line, soft_wrap=True, highlight=False)


def _listed(names: Sequence[str]) -> str:
    return " and ".join(names)


def main(argv: Sequence[str] | None = None) -> int:
    """`up` starts both servers, `down` stops them, `status` shows them; 1 on failure."""
    from reproml.errors import ReproError
    from reproml.paths import project_root

    parser = argparse.ArgumentParser(prog="python -m reproml.servers", description=DESCRIPTION)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument(
        "--root", type=Path, default=Path("."), help="project root (default: the working directory)"
    )
    args = parser.parse_args(argv)
    try:
        root = project_root(args.root, "--root")
    except ReproError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lines: list[str] = []
    failed = False
    try:
        if args.action == "up":
            before = [name for name in NAMES if running(root, name) is not None]
            began = time.monotonic()
            start_all(root, NAMES)
            started = [name for name in NAMES if name not in before]
            if started:
                lines.append(f"started {_listed(started)} in {time.monotonic() - began:.1f} s")
            if before:
                lines.append(f"already running: {_listed(before)}")
        elif args.action == "down":
            stopped, errors = [], []
            for name in NAMES:
                try:
                    if stop(root, name):
                        stopped.append(name)
                except ServerError as error:
                    errors.append(str(error))
            lines.append(f"stopped {_listed(stopped)}" if stopped else "nothing was running")
            if errors:
                raise ServerError("\n".join(errors))
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        failed = True
    _show(root, status(root), lines)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
