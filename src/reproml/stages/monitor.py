"""`monitor`: one production batch against the champion; a decision record under monitoring/.

Not a DVC stage: like `promote`, its outcome depends on the registry (which version is champion)
and on earlier decisions (the cooldown), not only on files and params. The Prefect monitor flow
calls `run_monitor` on a schedule; people call `reproml monitor --batch ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from reproml.config import Params
from reproml.monitoring.records import BatchRecord
from reproml.stages.common import load

if TYPE_CHECKING:
    from reproml.monitoring.records import BatchRecord


def run_monitor(root: Path = Path("."), batch: str = "", backfill: bool = False) -> BatchRecord:
    """Monitor `batch` (a CSV/Parquet file, or a period such as 2013-08 of the production split);
    `backfill`: judge it even when it is older than the newest monitored batch."""
    from reproml.errors import ReproError
    from reproml.monitoring.run import monitor

    if not batch:
        raise ReproError("--batch is required: a CSV/Parquet file or a period such as 2013-08")
    params = load(root)
    check_undated_period(root, batch, params)
    check_champion_source(root, params)
    return monitor(root, batch, params, backfill=backfill)


def run_labels(root: Path = Path("."), batch: str = "", labels: str = "") -> BatchRecord:
    """The labels of the monitored batch `batch` arrived in the file `labels`: its record gains the
    realised metric, the estimate's error and the shift (`monitoring.labels.add_labels`)."""
    from reproml.errors import ReproError
    from reproml.monitoring.labels import add_labels

    if not batch or not labels:
        raise ReproError("--labels needs --batch: the id (or period) of the batch these labels belong to")
    return add_labels(root, load(root), batch, labels)


def check_undated_period(root: Path, batch: str, params: Params) -> None:
    """A period of an undated data set: said at once, before any model is loaded (a file of that
    name would be a batch, as `batches.resolve` reads it)."""
    from reproml.monitoring.batches import UNDATED, BatchError, parse_period

    is_file = (Path(batch) if Path(batch).is_absolute() else root / batch).is_file()
    if params.data.time_column is None and not is_file and parse_period(batch) is not None:
        raise BatchError(f"--batch {batch!r} is a period, but {UNDATED}")


def check_champion_source(root: Path, params: Params) -> None:
    """Before any batch is read: the champion of `register.model_name` was trained on the data
    source params.yaml names. After switching data without a new champion, a batch of the new data
    would be scored by the old model against the old model's reference: refused, naming both."""
    from reproml import registry
    from reproml.config import data_source
    from reproml.monitoring.champion import ChampionError
    from reproml.stages.register import own_model_hint, version_source
    from reproml.stores.mlflow import connection

    connection.setup(root, params.mlflow.experiment_name)
    name = params.register_.model_name
    champion = registry.alias_version(name, registry.CHAMPION)
    if champion is None:
        return  # the monitor's own message: run `dvc repro` and `reproml promote` first
    found, expected = version_source(champion), data_source(params.data)
    if found is not None and found != expected:
        raise ChampionError(
            f"the champion of {name!r} (register.model_name), v{champion.version}, was trained on "
            f"{found.describe()}, but params.yaml names {expected.describe()}: its batches would be "
            f"scored by a model of another data set. Give the data in use its own model "
            f"({own_model_hint(name, expected)}), run `dvc repro` and `reproml promote`, then monitor"
        )


def monitoring_history(root: Path = Path(".")) -> tuple[str, list[BatchRecord]]:
    """The model of the data in use, and every batch's decision record of its history, in the
    order they were monitored."""
    from reproml.monitoring.store import history

    name = load(root).register_.model_name
    return name, history(root, name)
