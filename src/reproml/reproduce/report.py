"""The reproduction as a table for the terminal: one row per check, the differing ones in red."""

from __future__ import annotations

from typing import Any

from reproml.reproduce.checks import Reproduction


def _short(value: str, width: int = 12) -> str:
    return value if len(value) <= width else value[:width]


def reproduction_table(result: Reproduction) -> Any:
    """Rich table: one row per check, differing rows highlighted."""
    from rich.table import Table

    table = Table(title=f"Reproduction of run {result.run_id} (commit {result.commit[:7]})")
    for header in ("aspect", "item", "recorded", "rebuilt", "same?", "detail"):
        table.add_column(header, overflow="fold")
    for c in result.checks:
        style = None if c.same else "bold red"
        table.add_row(
            c.aspect,
            c.item,
            _short(c.recorded),
            _short(c.rebuilt),
            "yes" if c.same else "NO",
            c.detail,
            style=style,
        )
    return table
