"""`python -m reproml.team up|down|status`: what `make team-up`, `team-down` and `team-status` run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from reproml.team.layout import Layout, TeamError
from reproml.team.stack import down, status, up

DESCRIPTION = (
    "Start, stop or show this project's team stack (PostgreSQL, MLflow, Prefect, Dask, S3 stand-in)."
)


def show(root: Path, console: Console) -> bool:
    """Print the status table; True when every service runs and answers."""
    rows = status(root)
    table = Table(title=f"team stack of {root}")
    for column in ("service", "pids", "address", "state"):
        table.add_column(column)
    for row in rows:
        state = "[green]ready[/]" if row.healthy else ("[yellow]not answering[/]" if row.pids else "stopped")
        table.add_row(row.name, " ".join(map(str, row.pids)) or "-", row.address or "-", state)
    console.print(table)
    return all(row.healthy for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproml.team", description=DESCRIPTION)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument(
        "--root", type=Path, default=Path.cwd(), help="project root (default: the current folder)"
    )
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    console = Console()
    try:
        if args.action == "up":
            result = up(root)
            if result.started:
                console.print(f"started {', '.join(result.started)} in {result.seconds:.1f} s")
                console.print("ready after (s): " + ", ".join(f"{k} {v}" for k, v in result.ready.items()))
            if result.running:
                console.print(f"already running: {', '.join(result.running)}")
            show(root, console)
            console.print(f"use it: [bold]source {Layout(root).env_file.relative_to(root)}[/]")
        elif args.action == "down":
            stopped = down(root)
            console.print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
        else:
            return 0 if show(root, console) else 3
    except TeamError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
