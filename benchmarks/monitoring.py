"""What one `reproml monitor` check costs, against a floor of plain SciPy per-column tests.

Two batches, each measured as medians of several fresh processes, alternated with the floor:

* one month of the held-back production data (about 28,000 flights: `--period 2013-08`),
  report included: target under 10 s;
* a 1,000,000-row batch (production rows drawn with replacement, seeded): target under 60 s and
  4 GB peak memory.

"Check" is the `run_monitor` call in a fresh process: the lazy imports it triggers (MLflow,
XGBoost, Evidently), loading the champion and its reference, the quality gate, scoring every row,
Evidently drift and quality, both HTML reports, the record, the index page and the MLflow run.
"Process" adds the interpreter's start and exit. "Warm" is a second call in the same process
(imports paid, everything else redone, the champion included): what a long-lived scheduler
worker pays per batch. Peak memory is the process's maximum resident
set size (`resource.getrusage`) over both calls, so it includes every library loaded.

The floor reads the same batch file and the champion's training split and runs, per feature
column, `scipy.stats.ks_2samp` (numbers) or `chi2_contingency` (categories) on all rows: the bare
statistics a drift check cannot do without. The ratio check / floor says what the rest (Evidently's
rendering, scoring, reports, tracking) costs on top.

Nothing in the project is written: the script works in a scratch folder holding a copy of
`mlflow.db` and `params.yaml`, links to `data/prepared/` and the DVC cache; the champion's model
is read (not copied) from the project's `mlartifacts/`, and monitoring runs go to the scratch
copy's own store. The project needs a champion: run `make run` first.

Run: `.venv/bin/python benchmarks/monitoring.py [--project .] [--repeats 3] [--rows 1000000]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MONTH_TARGET_S = 10.0
MONTH_BEFORE_S, MONTH_BEFORE_WARM_S = 18.2, 8.4  # issue 17's starting point: fresh process, warm
BIG_TARGET_S, BIG_TARGET_GB = 60.0, 4.0


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux


def _cpu_s() -> float:
    """CPU seconds this process used so far (user + system): on a shared machine, what its wall
    time would be if it had a core to itself, as long as it runs one thread at a time."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def child_monitor(root: Path, batch: str) -> dict[str, Any]:
    start = time.perf_counter()
    from reproml.stages.monitor import run_monitor

    record = run_monitor(root, batch)
    cold = time.perf_counter() - start
    cpu = _cpu_s()
    start = time.perf_counter()
    run_monitor(root, batch)  # again in the same process: what a long-lived worker pays per batch
    return {
        "check_s": cold,
        "cpu_s": cpu,
        "warm_s": time.perf_counter() - start,
        "peak_gb": _peak_gb(),
        "verdict": record["verdict"],
        "rows": record["rows"],
        "steps": record.get("timings", {}),
    }


def child_floor(root: Path, batch: str) -> dict[str, Any]:
    start = time.perf_counter()
    import pandas as pd
    from scipy import stats

    from reproml import paths

    reference = pd.read_parquet(root / paths.split_file("train"))
    schema = json.loads((root / paths.SCHEMA).read_text())
    path = root / batch
    if path.is_file():
        current = pd.read_parquet(path)
    else:  # a period of the production split, cut as monitoring cuts it
        from reproml.monitoring.batches import parse_period

        period = parse_period(batch)
        assert period is not None, batch
        production = pd.read_parquet(root / paths.split_file("production"))
        when = production[schema["time_column"]]
        current = production[(when >= period.start) & (when < period.end)]
    excluded = {"dep_delay", "dep_time", "arr_time", "air_time", "arr_delay", "late"}
    tests = 0
    for column in [c for c in schema["numeric"] if c not in excluded]:
        stats.ks_2samp(reference[column].dropna().to_numpy(), current[column].dropna().to_numpy())
        tests += 1
    for column in [c for c in schema["categorical"] if c not in excluded]:
        counts = pd.concat([reference[column].value_counts(), current[column].value_counts()], axis=1)
        stats.chi2_contingency(counts.fillna(0).to_numpy().T)
        tests += 1
    return {
        "check_s": time.perf_counter() - start,
        "cpu_s": _cpu_s(),
        "peak_gb": _peak_gb(),
        "rows": len(current),
        "tests": tests,
    }


def run_child(mode: str, root: Path, batch: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(root), batch],
        capture_output=True, text=True, env=env, cwd=root,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{mode} on {batch} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    # the process as if it had made one call: its second (warm) call is reported apart
    result["process_s"] = wall - result.get("warm_s", 0.0)
    return result


def scratch_project(project: Path, into: Path) -> Path:
    """A scratch project that reads the real one's data and models but writes only to itself."""
    root = into / "project"
    root.mkdir(parents=True)
    for name in ("params.yaml", "mlflow.db"):
        shutil.copy2(project / name, root / name)
    (root / "data").mkdir()
    (root / "data" / "prepared").symlink_to((project / "data" / "prepared").resolve())
    shutil.copy2(project / "data" / "schema.json", root / "data" / "schema.json")
    if (project / ".dvc" / "cache").is_dir():
        (root / ".dvc").mkdir()
        (root / ".dvc" / "cache").symlink_to((project / ".dvc" / "cache").resolve())
    return root


def big_batch(root: Path, rows: int, seed: int) -> str:
    import pandas as pd

    production = pd.read_parquet(root / "data" / "prepared" / "production.parquet")
    big = production.sample(n=rows, replace=True, random_state=seed).sort_values("time_hour")
    target = root / "incoming" / f"big-{rows}.parquet"
    target.parent.mkdir(parents=True)
    big.to_parquet(target, index=False)
    return str(target.relative_to(root))


def measure(root: Path, batch: str, repeats: int) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {"monitor": [], "floor": []}
    for i in range(repeats):
        for mode in ("monitor", "floor") if i % 2 == 0 else ("floor", "monitor"):
            runs[mode].append(run_child(mode, root, batch))
            last = runs[mode][-1]
            print(f"  {mode:7s} run {i + 1}: {last['check_s']:.2f} s ({last['cpu_s']:.2f} s CPU)", flush=True)
    return runs


def summary(
    label: str, runs: dict[str, list[dict[str, Any]]], target_s: float, target_gb: float | None
) -> None:
    def med(mode: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[mode]))

    check, floor = med("monitor", "check_s"), med("floor", "check_s")
    peak = max(r["peak_gb"] for r in runs["monitor"])
    rows = runs["monitor"][0]["rows"]
    print(f"\n{label}: {rows:,} rows, medians of {len(runs['monitor'])} fresh processes")
    print(f"  {'':34s} {'check (s)':>10s} {'process (s)':>12s} {'peak RSS (GB)':>14s}")
    for mode, name in (
        ("monitor", "reproml monitor (report included)"),
        ("floor", "SciPy per-column tests (floor)"),
    ):
        print(
            f"  {name:34s} {med(mode, 'check_s'):10.2f} {med(mode, 'process_s'):12.2f} "
            f"{max(r['peak_gb'] for r in runs[mode]):14.2f}"
        )
    warm = med("monitor", "warm_s")
    print(f"  {'  same, 2nd call in that process':34s} {warm:10.2f}")
    print(f"  ratio check / floor: {check / floor:.1f}x (warm: {warm / floor:.1f}x)")
    fits = target_gb is None or peak < target_gb
    memory = "" if target_gb is None else f" and {target_gb:g} GB (peak {peak:.2f} GB)"
    for name, seconds in (("fresh process", check), ("warm process", warm)):
        verdict = "PASS" if seconds < target_s and fits else "MISS"
        print(f"  target: check under {target_s:g} s{memory}, {name}: {verdict} ({seconds:.2f} s)")
    steps = runs["monitor"][len(runs["monitor"]) // 2]["steps"]
    print("  steps of one run: " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="a project with a champion")
    parser.add_argument("--period", default="2013-08", help="the monthly batch (a period of production)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the big batch (0: skip it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and print its path")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "ROOT", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, root, batch = args.child
        child = child_monitor if mode == "monitor" else child_floor
        print(json.dumps(child(Path(root), batch)))
        return
    project = args.project.resolve()
    if not (project / "mlflow.db").is_file():
        raise SystemExit(f"{project} has no mlflow.db: run `make run` there first (it needs a champion)")
    scratch = Path(tempfile.mkdtemp(prefix="reproml-monitoring-bench-"))
    try:
        root = scratch_project(project, scratch)
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        print(f"monthly batch {args.period}:")
        month = measure(root, args.period, args.repeats)
        big = None
        if args.rows:
            print(f"{args.rows:,}-row batch:")
            big = measure(root, big_batch(root, args.rows, seed=0), args.repeats)
        summary(f"Monthly check ({args.period})", month, MONTH_TARGET_S, None)
        fresh = statistics.median(r["check_s"] for r in month["monitor"])
        cpu = statistics.median(r["cpu_s"] for r in month["monitor"])
        warm = statistics.median(r["warm_s"] for r in month["monitor"])
        print(
            f"  monthly check, median of {len(month['monitor'])} fresh processes: {fresh:.2f} s "
            f"(issue 17's starting point {MONTH_BEFORE_S} s); warm {warm:.2f} s "
            f"(was {MONTH_BEFORE_WARM_S} s); CPU of the fresh process to the check's end {cpu:.2f} s "
            f"(load average {os.getloadavg()[0]:.2f})"
        )
        if big is not None:
            summary("Big batch", big, BIG_TARGET_S, BIG_TARGET_GB)
    finally:
        if args.keep:
            print(f"scratch kept at {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
