"""A dated table that is not the flights, to try the whole loop on: `python -m examples.synthetic
multiclass data/raw/depots.csv` (or `binary`, `regression`).

A year (2021) of deliveries from four depots, 1,500 rows a month. The inputs drift with the
seasons (temperature, rain) and the world changes in September: the north depot's new road
makes distance matter the other way round there. The target is the delivery outcome:

- `binary`: `late` (yes/no);
- `multiclass`: `outcome` (early, on_time, late, failed);
- `regression`: `delay_min`, minutes behind schedule.

Set in params.yaml: `data.time_column: shipped_at`, `prepare.split: time` with `train_end:
"2021-05-01"`, `valid_end: "2021-06-01"`, `test_end: "2021-07-01"`; July to December are the
production months `reproml simulate` replays.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

TASKS = {"binary": "late", "multiclass": "outcome", "regression": "delay_min"}
CHANGE = pd.Timestamp("2021-09-01")


def deliveries(task: str, rows_per_month: int = 1500, seed: int = 2021) -> pd.DataFrame:
    """The year of deliveries with the target for `task` (a key of TASKS)."""
    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected one of {sorted(TASKS)}")
    rng = np.random.default_rng(seed)
    starts = pd.date_range("2021-01-01", periods=13, freq="MS")
    months = [
        first + pd.to_timedelta(np.sort(rng.uniform(0, (after - first).total_seconds(), rows_per_month)), "s")
        for first, after in itertools.pairwise(starts)
    ]
    when = pd.Series(np.concatenate([m.to_numpy() for m in months])).dt.floor("min")
    n = len(when)
    season = np.sin(2 * np.pi * (when.dt.dayofyear.to_numpy() - 100) / 365)  # warm in July
    temperature = (12 + 12 * season + rng.normal(scale=3, size=n)).round(1)
    rain = rng.gamma(shape=np.where(season < 0, 1.2, 0.6), scale=3.0).round(1)
    depot = rng.choice(["north", "south", "east", "west"], size=n, p=[0.3, 0.3, 0.2, 0.2])
    distance = rng.lognormal(3, 0.6, size=n).round(1)
    parcels = rng.poisson(8, size=n)
    changed = (when >= CHANGE).to_numpy() & (depot == "north")
    reach = np.where(changed, -1.0, 1.0) * (np.log(distance) - 3)
    delay = 6 * reach + 0.8 * rain - 0.25 * temperature + 0.4 * parcels + 4 * (depot == "east")
    delay = delay + rng.normal(scale=4, size=n)
    frame = pd.DataFrame(
        {"shipped_at": when, "temperature": temperature, "rain_mm": rain, "depot": depot,
         "distance_km": distance, "parcels": parcels}
    )  # fmt: skip
    if task == "regression":
        frame[TASKS[task]] = delay.round(1)
    elif task == "binary":
        frame[TASKS[task]] = np.where(delay > 4, "yes", "no")
    else:
        bins = [-np.inf, -2.0, 6.0, 14.0, np.inf]
        frame[TASKS[task]] = pd.cut(delay, bins, labels=["early", "on_time", "late", "failed"]).astype(str)
    return frame


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m examples.synthetic {binary,multiclass,regression} OUT.csv")
    task, out = argv
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    deliveries(task).to_csv(path, index=False)
    print(f"wrote {path}: {TASKS[task]!r} ({task}), time column 'shipped_at'")


if __name__ == "__main__":
    main(sys.argv[1:])
