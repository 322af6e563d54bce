"""How close the label-free estimate comes to the realised quality: the flights, July-December 2013,
each month's labels withheld until the next month arrives.

In a scratch project (nothing in this one is written) the bundled flights are run through the
stages (ingest, prepare, train, evaluate, register; tuning off, so it takes minutes, not an hour)
and promoted. Then, for each month from July to December, through the public API:

1. the labels of the month before arrive: `run_labels` (`reproml monitor --batch ID --labels FILE`)
   gives its record the realised ROC-AUC and the estimate's error, and writes its labelled window;
2. the month is monitored with its labels removed: `run_monitor` estimates its ROC-AUC with CBPE,
   fitted on the newest labelled rows the champion has not learned (for July: its test split,
   June; from August on: the month before).

December's labels arrive last. The champion is never replaced, so every month measures the same
model. The issue's target: median absolute error of the estimated monthly ROC-AUC at most 0.02.

Run: `.venv/bin/python benchmarks/estimate.py [--workdir DIR] [--out result.json]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

PROJECT = Path(__file__).resolve().parents[1]
MONTHS = ["2013-07", "2013-08", "2013-09", "2013-10", "2013-11", "2013-12"]
TARGET_ERROR = 0.02


def scratch_project(root: Path) -> None:
    """params.yaml of this project, tuning off; MLflow, DVC-less stages, all inside `root`."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["tune"]["enabled"] = False
    root.mkdir(parents=True, exist_ok=True)
    (root / "data" / "raw").mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def train_champion(root: Path) -> None:
    from reproml.stages.evaluate import run_evaluate
    from reproml.stages.ingest import run_ingest
    from reproml.stages.prepare import run_prepare
    from reproml.stages.register import run_promote, run_register
    from reproml.stages.train import run_train

    for stage in (run_ingest, run_prepare, run_train, run_evaluate, run_register):
        started = time.perf_counter()
        stage(root)
        print(f"  {stage.__name__}: {time.perf_counter() - started:.0f} s", flush=True)
    outcome = run_promote(root)
    print(f"  promote: {outcome.get('action')}", flush=True)


def month_files(root: Path, month: str, target: str, time_column: str) -> tuple[str, str]:
    """The month's production rows, once without their labels and once with them."""
    production = pd.read_parquet(root / "data" / "prepared" / "production.parquet")
    when = pd.to_datetime(production[time_column])
    rows = production[when.dt.strftime("%Y-%m") == month].reset_index(drop=True)
    folder = root / "monitoring" / "incoming"
    folder.mkdir(parents=True, exist_ok=True)
    rows.drop(columns=[target]).to_parquet(folder / f"{month}.parquet", index=False)
    rows.to_parquet(folder / f"{month}-labels.parquet", index=False)
    return f"monitoring/incoming/{month}.parquet", f"monitoring/incoming/{month}-labels.parquet"


def replay(root: Path) -> list[dict[str, Any]]:
    from reproml.stages.common import load
    from reproml.stages.monitor import run_labels, run_monitor

    params = load(root)
    target, time_column = params.data.target, str(params.data.time_column)
    monitored: list[tuple[str, str]] = []  # (batch id, labels file)
    for month in MONTHS:
        if monitored:
            run_labels(root, batch=monitored[-1][0], labels=monitored[-1][1])
        unlabelled, labelled = month_files(root, month, target, time_column)
        started = time.perf_counter()
        record = run_monitor(root, unlabelled)
        found = record.get("estimate")
        print(f"  {month}: {record['verdict']}, estimated {found['value'] if found else None} "
              f"from {found['reference'].get('source') if found else None} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
        monitored.append((record["batch_id"], labelled))
    out = []
    for (batch_id, labelled), month in zip(monitored, MONTHS, strict=True):
        if month == MONTHS[-1]:  # the last month's labels arrive after it
            record = run_labels(root, batch=batch_id, labels=labelled)
        else:
            record = json.loads(next((root / "monitoring").glob(f"*/records/{batch_id}.json")).read_text())
        found = record["estimate"]
        assert found is not None, f"{batch_id}: no estimate"
        out.append({"month": month, "batch_id": batch_id, "reference": found["reference"]["source"],
                    "baseline": found.get("baseline"),
                    "estimated": found["value"], "lower": found["lower"], "upper": found["upper"],
                    "realised": found["realised"], "error": found["error"], "shift": found["shift"],
                    "verdict": record["verdict"]})  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="scratch project (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="write the table and the median here (JSON)")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the scratch project's own sqlite store
    os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="reproml-estimate-"))
    root = (workdir / "project").resolve()
    if root.exists():
        shutil.rmtree(root)
    scratch_project(root)
    os.chdir(root)
    print(f"scratch project: {root}", flush=True)
    train_champion(root)
    rows = replay(root)
    errors = [abs(r["error"]) for r in rows if r["error"] is not None]
    median = statistics.median(errors)
    print(f"{'month':8} {'reference':40} {'estimated':>9} {'band':>17} {'realised':>8} {'error':>7} shift")
    for r in rows:
        band = f"[{r['lower']:.3f}, {r['upper']:.3f}]"
        print(f"{r['month']:8} {r['reference']:40} {r['estimated']:9.4f} {band:>17} "
              f"{r['realised']:8.4f} {r['error']:+7.4f} {r['shift']}")  # fmt: skip
    verdict = "meets" if median <= TARGET_ERROR else "misses"
    print(
        f"median absolute error {median:.4f} over {len(errors)} months: {verdict} the target {TARGET_ERROR}"
    )
    if args.out:
        args.out.write_text(json.dumps({"months": rows, "median_abs_error": median}, indent=2))


if __name__ == "__main__":
    main()
