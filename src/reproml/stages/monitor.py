"""`monitor`: one production batch against the champion; a decision record under monitoring/.

Not a DVC stage: like `promote`, its outcome depends on the registry (which version is champion)
and on earlier decisions (the cooldown), not only on files and params. The Prefect monitor flow
calls `run_monitor` on a schedule; people call `reproml monitor --batch ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reproml.stages.common import load


def run_monitor(root: Path = Path("."), batch: str = "", backfill: bool = False) -> dict[str, Any]:
    """Monitor `batch` (a CSV/Parquet file, or a period such as 2013-08 of the production split);
    `backfill`: judge it even when it is older than the newest monitored batch."""
    from reproml.errors import ReproError
    from reproml.monitoring.run import monitor

    if not batch:
        raise ReproError("--batch is required: a CSV/Parquet file or a period such as 2013-08")
    return monitor(root, batch, load(root), backfill=backfill)


def monitoring_history(root: Path = Path(".")) -> list[dict[str, Any]]:
    """Every batch's decision record, in the order they were monitored."""
    from reproml.monitoring.store import history

    return history(root)
