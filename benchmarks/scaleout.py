"""Scale-out on this machine (issue 15): what a second client, PostgreSQL, Dask, the MLflow server and
xgboost.dask cost or gain, as ratios of medians.

Parts (`--parts`; see benchmarks/README.md, `## scaleout.py`, for a measured run and its reading):

- trials: finished trials per minute with 1 and 2 client processes on one study, on PostgreSQL
  (the advisory budget lock) and on the journal file (a file lock), through
  `reproml.tuning.study.run_trials` as every `reproml tune` worker runs it. Two synthetic trials:
  `sleep` (`--trial-ms` of waiting: what is left is the storage's and the lock's cost, and two
  clients should double the rate unless the storage serialises them) and `cpu` (a fixed amount of
  numpy work, ~`--trial-ms` on an idle core: two clients share the cores with each other and with
  whatever else runs). The clocks start once every client has imported and loaded the study.
- lock: the budget lock's critical section (take the lock, reap stale trials, count, ask,
  release), step by step from one client: what every trial pays in series, whatever the workers;
  the same with PostgreSQL's `synchronous_commit=off` (no WAL flush: is it the disk?).
- dask: `reproml.tuning.runner.run_study` on the real objective (XGBoost on a small synthetic
  frame) with 2 local workers (one thread, one spawned process) against 2 Dask tasks on a
  2-worker LocalCluster (started before the clock; the first study on fresh workers timed apart),
  same PostgreSQL study budget: (dask wall - local wall) / trials.
- mlflow: `MlflowClient.log_batch` calls (10 metrics each) per second from a fresh client process
  to the `mlflow server` on PostgreSQL (as `make team-up` starts it), to PostgreSQL directly (no
  server: which part is HTTP) and to a SQLite file (the solo default).
- xgboost: `xgboost.dask` (`DaskXGBClassifier`, 2 single-thread workers) against one process
  (`XGBClassifier`, `n_jobs=2`) on the same rows, 100 rounds.

PostgreSQL and the MLflow server are started with `reproml.team` (its `postgres` and `services`
commands, spawned with the team stack's process marker) in a throwaway root under /tmp, and stopped
with `reproml.team.stack.down` on the way out, also on Ctrl-C, SIGTERM or an error; the temporary
folders are deleted. Nothing in the project is read or written.
Run: `.venv/bin/python benchmarks/scaleout.py [--repeats 3] [--parts ...] [--json FILE]` (as root, PostgreSQL
runs as the `postgres` user; 12-16 minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Only the standard library at module level: worker processes are started with `spawn`, which
# imports this file again in each of them (as `__mp_main__`).

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _die_with_parent() -> None:
    """Linux: a child process is killed when this benchmark dies, even by SIGKILL."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {_load()[0]:.1f}] {message}", flush=True)


# --- PostgreSQL and the MLflow server, from reproml.team ---------------------------------------------


@contextmanager
def team_root() -> Iterator[tuple[Path, dict[str, int]]]:
    """A throwaway team root with PostgreSQL running (its databases created); on the way out every
    process carrying this root's marker is stopped and the root deleted."""
    from reproml.team import postgres, processes, stack
    from reproml.team.layout import Layout, choose_ports, new_password, write_secrets
    from reproml.team.services import base_env

    root = Path(tempfile.mkdtemp(prefix="reproml-scaleout-", dir="/tmp"))
    root.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root: it must enter the folder
    layout = Layout(root)
    try:
        layout.prepare()
        ports = choose_ports(layout, keep=False)
        secret = new_password()
        write_secrets(layout, secret, ports["postgres"])  # libpq's password file (0600), as `up` does
        postgres.init_cluster(layout, secret)
        os.environ["PGPASSFILE"] = str(layout.secrets.resolve())  # our clients, and their children
        pid = processes.spawn(
            layout,
            "postgres",
            postgres.postgres_command(layout, ports),
            base_env(layout, ports),
            user=postgres.postgres_user(),
        )
        ready = postgres.postgres_ready(layout, ports)
        deadline = time.monotonic() + 60
        while not ready():
            if processes.exited(pid) or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start:\n{processes.log_tail(layout, 'postgres')}")
            time.sleep(0.2)
        postgres.create_databases(layout, ports)
        yield root, ports
    finally:
        try:
            stopped = stack.down(root)
            _log(f"stopped {', '.join(stopped) or 'nothing'} of {root}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
            os.environ.pop("PGPASSFILE", None)


@contextmanager
def mlflow_server(root: Path, ports: dict[str, int]) -> Iterator[str]:
    """`mlflow server` on the root's PostgreSQL, started as `make team-up` starts it; its URL."""
    from reproml.team import processes, services
    from reproml.team.layout import Layout

    layout = Layout(root)
    pid = processes.spawn(
        layout, "mlflow", services.mlflow_command(layout, ports), services.mlflow_env(layout, ports)
    )
    url = f"http://127.0.0.1:{ports['mlflow']}"
    deadline = time.monotonic() + 240
    while not services.http_ok(f"{url}/health"):
        if processes.exited(pid) or time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not start:\n{processes.log_tail(layout, 'mlflow')}")
        time.sleep(0.5)
    yield url  # stopped by stack.down with the rest of the root


# --- 1. trials per minute, and the budget lock's critical section ---------------------------------

_WORK_UNITS = {"units": 0}


def calibrate(trial_ms: float) -> int:
    """How many numpy units take `trial_ms` on one core here (best of 5, so least disturbed)."""
    import numpy as np

    values = np.arange(20_000, dtype=float)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(200):
            float(np.sum(np.sqrt(values)))
        best = min(best, (time.perf_counter() - started) / 200)
    return max(1, round(trial_ms / 1000 / best))


def _work(units: int) -> float:
    import numpy as np

    values = np.arange(20_000, dtype=float)
    return sum(float(np.sum(np.sqrt(values))) for _ in range(units))


def _client(
    location: str,
    kind: str,
    lock_dir: str,
    name: str,
    n: int,
    trial: str,
    trial_ms: float,
    units: int,
    barrier: Any,
    ends: Any,
) -> None:
    _die_with_parent()
    os.environ["OMP_NUM_THREADS"] = "1"
    import optuna

    from reproml.stores import optuna as storage
    from reproml.tuning import study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    info = storage.StorageInfo(kind, location, Path(lock_dir))
    the_study = optuna.load_study(study_name=name, storage=storage.open_storage(info))

    def objective(t: Any) -> float:
        x = float(t.suggest_float("x", 0, 1))
        if trial == "sleep":
            time.sleep(trial_ms / 1000)
        else:
            _work(units)
        return x

    barrier.wait(120)
    ran = study.run_trials(the_study, objective, study.Budget(n, None), info)
    ends.put((time.perf_counter(), ran))


def _info(kind: str, location: str, lock_dir: Path) -> Any:
    from reproml.stores import optuna as storage

    return storage.StorageInfo(kind, location, lock_dir)


def _location(kind: str, url: str, tmp: Path, name: str) -> str:
    return url if kind == "rdb" else str(tmp / f"{name}.journal")  # a fresh journal each run


def trials_per_minute(
    kind: str, url: str, clients: int, n: int, trial: str, trial_ms: float, units: int, tmp: Path
) -> tuple[float, float]:
    """Trials per minute while trials run (first start to last end, from the storage), and per minute
    of the clients' wall time (barrier to the last client's return: that includes the end of the study,
    where a client on a database polls every `WAIT_POLL_S` until the others' running trials end)."""
    import optuna

    from reproml.stores import optuna as storage

    name = f"rate-{kind}-{trial}-{clients}-{time.monotonic_ns()}"
    location = _location(kind, url, tmp, name)
    info = _info(kind, location, tmp / "locks")
    optuna.create_study(study_name=name, storage=storage.open_storage(info), direction="maximize")
    context = multiprocessing.get_context("spawn")
    barrier, ends = context.Barrier(clients + 1), context.Queue()
    # journal: one host, one lock folder (the budget's file lock); PostgreSQL: a lock folder per
    # client, as on separate machines (the advisory lock in the database keeps the budget)
    procs = [
        context.Process(
            target=_client,
            daemon=True,
            args=(
                location,
                kind,
                str(tmp / (f"c{i}" if kind == "rdb" else "locks")),
                name,
                n,
                trial,
                trial_ms,
                units,
                barrier,
                ends,
            ),
        )
        for i in range(clients)
    ]
    try:
        for proc in procs:
            proc.start()
        barrier.wait(120)
        started = time.perf_counter()
        results = [ends.get(timeout=600) for _ in procs]
        for proc in procs:
            proc.join(30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    wall = max(end for end, _ in results) - started
    finished = optuna.load_study(study_name=name, storage=storage.open_storage(info)).get_trials()
    done = [t for t in finished if t.state.is_finished()]
    if len(done) != n or sum(ran for _, ran in results) != n:
        raise RuntimeError(f"{kind}, {clients} clients: {len(done)} trials finished, budget {n}")
    first = min(t.datetime_start for t in done if t.datetime_start is not None)
    last = max(t.datetime_complete for t in done if t.datetime_complete is not None)
    return n / (last - first).total_seconds() * 60, n / wall * 60


def critical_section_ms(kind: str, url: str, n: int, tmp: Path) -> dict[str, float]:
    """Median milliseconds of what `ExactBudget.claim` does under the budget lock, from one client,
    step by step: take the lock, reap stale trials (a database), count, ask for the trial, release
    it; the study grows to `n` trials. `total` is the whole section."""
    import optuna

    from reproml.stores import optuna as storage
    from reproml.tuning.study import COUNTED

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = f"lock-{kind}-{time.monotonic_ns()}"
    info = _info(kind, _location(kind, url, tmp, name), tmp / "locks")
    the_study = optuna.create_study(study_name=name, storage=storage.open_storage(info), direction="maximize")
    warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)  # ask outside optimize
    steps: dict[str, list[float]] = {k: [] for k in ("lock", "reap", "count", "ask", "release", "total")}
    for _ in range(n):
        marks = [time.perf_counter()]
        with storage.budget_lock(info, name):
            marks.append(time.perf_counter())
            storage.reap_stale(the_study)
            marks.append(time.perf_counter())
            the_study.get_trials(deepcopy=False, states=(*COUNTED, optuna.trial.TrialState.RUNNING))
            marks.append(time.perf_counter())
            trial = the_study.ask()
            marks.append(time.perf_counter())
        marks.append(time.perf_counter())
        for i, key in enumerate(("lock", "reap", "count", "ask", "release")):
            steps[key].append(marks[i + 1] - marks[i])
        steps["total"].append(marks[-1] - marks[0])
        the_study.tell(trial, trial.suggest_float("x", 0, 1))
    return {k: _median(v) * 1000 for k, v in steps.items()}


def part_trials(url: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    units = calibrate(args.trial_ms)
    _log(f"part 1: cpu trial = {units} numpy units (~{args.trial_ms:.0f} ms on an idle core)")
    runs: dict[str, list[float]] = {}
    client_wall: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        order = [(k, t, c) for k in ("rdb", "journal") for t in ("sleep", "cpu") for c in (1, 2)]
        if repeat % 2:
            order.reverse()  # a slow minute on the shared machine does not always hit the same side
        for kind, trial, clients in order:
            rate, overall = trials_per_minute(
                kind, url, clients, args.trials, trial, args.trial_ms, units, tmp
            )
            key = f"{'postgresql' if kind == 'rdb' else 'journal'}_{trial}_{clients}"
            runs.setdefault(key, []).append(rate)
            client_wall.setdefault(key, []).append(overall)
            _log(f"  {key}: {rate:.0f} trials/min while running ({overall:.0f} per minute of client wall)")
    return {
        "units": units,
        "runs": runs,
        "median": {k: _median(v) for k, v in runs.items()},
        "client_wall_runs": client_wall,
        "client_wall_median": {k: _median(v) for k, v in client_wall.items()},
    }


def commit_ms(url: str, repeats: int = 200) -> float:
    """Median milliseconds of one `INSERT` + `COMMIT` round trip on `url`, into a scratch table (a
    logged one: a temporary table's commit would not flush the WAL)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    table = f"scaleout_commit_{time.monotonic_ns()}"
    timings = []
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE TABLE {table} (i int)"))
        connection.commit()
        for i in range(repeats):
            started = time.perf_counter()
            connection.execute(sqlalchemy.text(f"INSERT INTO {table} VALUES (:i)"), {"i": i})
            connection.commit()
            timings.append(time.perf_counter() - started)
        connection.execute(sqlalchemy.text(f"DROP TABLE {table}"))
        connection.commit()
    engine.dispose()
    return _median(timings) * 1000


def part_lock(url: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The budget lock's critical section, and what a PostgreSQL commit costs here: the same section
    with `synchronous_commit=off` (a diagnostic: the commit's WAL flush to disk left out)."""
    async_url = url + "?options=-csynchronous_commit%3Doff"
    lock: dict[str, dict[str, float]] = {}
    for key, kind, location in (
        ("postgresql", "rdb", url),
        ("postgresql_no_flush", "rdb", async_url),
        ("journal", "journal", url),
    ):
        runs = [critical_section_ms(kind, location, args.trials, tmp) for _ in range(args.repeats)]
        lock[key] = {step: _median([r[step] for r in runs]) for step in runs[0]}
    commits = {"commit_ms": commit_ms(url), "commit_no_flush_ms": commit_ms(async_url)}
    _log(f"budget lock critical section (median ms): {lock}; one INSERT + COMMIT: {commits}")
    return {"critical_section": lock, **commits}


# --- 2. Dask overhead per trial -------------------------------------------------------------------


def tune_params() -> Any:
    """params.yaml's settings for XGBoost on the synthetic frame (one thread per trial)."""
    import yaml

    from reproml.config import parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update({"path": "data/raw/synthetic.csv", "target": "y", "task": "classification"})
    raw["data"]["time_column"] = "when"
    raw["prepare"]["exclude_columns"] = []
    raw["train"].update({"model": "xgboost", "n_jobs": 1})
    raw["train"]["xgboost"].update({"n_estimators": 200, "early_stopping_rounds": 10})
    raw["tune"]["cv_folds"] = 1
    return parse_params(raw)


def tune_data(rows: int = 4000) -> Any:
    """A synthetic frame (numeric, categorical, time, a learnable target), preprocessed as the stage
    does. Module level: the local runner's spawned worker calls it (`WorkerConfig.load`)."""
    import numpy as np
    import pandas as pd

    from reproml.features import FeatureSpec
    from reproml.tuning.objective import prepare_data

    rng = np.random.default_rng(1)
    x1 = rng.normal(size=rows)
    cat = rng.choice(["a", "b", "c"], size=rows)
    frame = pd.DataFrame(
        {
            "x1": x1,
            "x2": rng.uniform(size=rows),
            "cat": cat,
            "when": pd.date_range("2021-01-01", periods=rows, freq="1h"),
        }
    )
    frame["y"] = (x1 + (cat == "a") + rng.normal(scale=0.7, size=rows) > 0.3).astype(int)
    spec = FeatureSpec(numeric=["x1", "x2"], categorical=["cat"], time_column="when", date_parts=["hour"])
    cut = int(rows * 0.8)
    return prepare_data(frame.iloc[:cut], frame.iloc[cut:], spec, tune_params())


def study_spec(name: str) -> Any:
    from reproml.metrics import metric_spec
    from reproml.tuning import space
    from reproml.tuning.study import StudySpec

    return StudySpec(
        name=name,
        model="xgboost",
        metric=metric_spec(None, "classification"),
        direction="maximize",
        space=space.signature("xgboost"),
        fingerprint=f"benchmark-{name}",
        context={
            "model": "xgboost",
            "metric": "roc_auc",
            "seed": 7,
            "target": "y",
            "task": "classification",
            "exclude_columns": [],
            "features": {},
            "fixed": {},
            "data": {"benchmark": "scaleout"},
        },
        seed=7,
        startup_trials=3,
        pruner="none",
        report_every=5,
        max_rounds=200,
    )


def local_cluster(tmp: Path) -> Any:
    """Two single-thread worker processes on 127.0.0.1, no dashboard on 8787 (as `fitting_dask`)."""
    from distributed import LocalCluster

    return LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        local_directory=str(tmp / "dask"),
    )


def part_dask(url: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from reproml.stores import optuna as storage
    from reproml.tuning import study
    from reproml.tuning.runner import WorkerConfig, run_study

    params, data = tune_params(), tune_data()
    walls: dict[str, list[float]] = {"cold": [], "local": [], "dask": []}
    trial_s: dict[str, list[float]] = {"cold": [], "local": [], "dask": []}
    started = time.perf_counter()
    with local_cluster(tmp) as cluster:
        cluster_s = time.perf_counter() - started
        _log(f"part 2: LocalCluster of 2 workers up in {cluster_s:.1f} s")
        # The first study on fresh Dask workers pays their imports (reproml, Optuna, XGBoost): timed
        # apart, as `cold`. Team workers are long-lived, so the warm runs are the ones compared; the
        # local runner starts (and pays for) its extra worker process on every run.
        plan = [("cold", 0)] + [
            (backend, repeat)
            for repeat in range(args.repeats)
            for backend in (("local", "dask") if repeat % 2 == 0 else ("dask", "local"))
        ]
        for backend, _ in plan:
            spec = study_spec(f"overhead-{backend}-{time.monotonic_ns()}")
            info = storage.StorageInfo("rdb", url, tmp / "locks")
            the_study, _ = study.open_study(storage.open_storage(info), spec, info.shown)
            config = WorkerConfig(
                load=tune_data,
                params=params,
                spec=spec,
                info=info,
                budget=study.Budget(args.dask_trials, None),
                threads=1,
            )
            address = cluster.scheduler_address if backend in ("dask", "cold") else None
            clock = time.perf_counter()
            final = run_study(config, 2, data, lambda c: None, lambda t: None, set(), address)
            wall = time.perf_counter() - clock
            if final.finished != args.dask_trials:
                raise RuntimeError(f"{backend}: {final.finished} trials finished, budget {args.dask_trials}")
            durations = [t.duration.total_seconds() for t in the_study.get_trials() if t.duration is not None]
            walls[backend].append(wall)
            trial_s[backend].append(_median(durations))
            median_trial = trial_s[backend][-1]
            _log(f"  {backend}: {wall:.1f} s, {final.finished} trials, median trial {median_trial:.2f} s")
    local, dask = _median(walls["local"]), _median(walls["dask"])
    return {
        "cluster_start_s": cluster_s,
        "cold_dask_s": walls["cold"][0],
        "walls": walls,
        "median_trial_s": {k: _median(v) for k, v in trial_s.items()},
        "local_s": local,
        "dask_s": dask,
        "overhead_per_trial_s": (dask - local) / args.dask_trials,
    }


# --- 3. MLflow logging throughput -----------------------------------------------------------------

_LOG_CODE = """
import sys, time, mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri(sys.argv[1]); n = int(sys.argv[2])
client = MlflowClient()
exp = mlflow.set_experiment("scaleout").experiment_id
run = client.create_run(exp).info.run_id
client.log_batch(run, metrics=[Metric("warm", 0.0, 0, 0)])
t = time.perf_counter()
for i in range(n):
    now = int(time.time() * 1000)
    client.log_batch(run, metrics=[Metric(f"m{k}", float(i), now, i) for k in range(10)])
rate = n / (time.perf_counter() - t)
client.set_terminated(run)
print(f"RATE {rate}", flush=True)
"""


def _log_rate(uri: str, calls: int, tmp: Path) -> float:
    """log_batch calls per second from a fresh client process (MLflow's import and the run's creation
    are outside the clock)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "TMPDIR": str(tmp)})
    done = subprocess.run(
        [sys.executable, "-c", _LOG_CODE, uri, str(calls)],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"logging to {uri.split('@')[-1]} failed:\n{done.stderr[-2000:]}")
    rates = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("RATE ")]
    return float(rates[-1])


def part_mlflow(root: Path, ports: dict[str, int], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from reproml.team.layout import database_url

    started = time.perf_counter()
    with mlflow_server(root, ports) as server:
        _log(
            f"part 3: mlflow server on PostgreSQL answers /health after {time.perf_counter() - started:.1f} s"
        )
        targets = {
            "server_postgresql": server,
            "direct_postgresql": database_url(ports, "mlflow"),  # the server migrated it
            "direct_sqlite": f"sqlite:///{tmp / 'mlflow.db'}",
        }
        _log_rate(targets["direct_sqlite"], 1, tmp)  # the SQLite schema's migrations, off the clock
        runs: dict[str, list[float]] = {k: [] for k in targets}
        for repeat in range(args.repeats):
            for key in list(targets) if repeat % 2 == 0 else list(reversed(targets)):
                runs[key].append(_log_rate(targets[key], args.log_calls, tmp))
                _log(f"  {key}: {runs[key][-1]:.0f} log_batch calls/s")
    return {"runs": runs, "median_calls_per_s": {k: _median(v) for k, v in runs.items()}}


# --- 4. xgboost.dask against one process ----------------------------------------------------------


def part_xgboost(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import dask.array as da
    import numpy as np
    import xgboost as xgb
    import xgboost.dask as dxgb
    from distributed import Client

    rows = args.rows
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 20)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] * x[:, 3] + rng.normal(size=rows) > 0).astype(np.int32)
    settings: dict[str, Any] = {
        "n_estimators": 100,
        "max_depth": 6,
        "tree_method": "hist",
        "learning_rate": 0.1,
    }
    single: list[float] = []
    dask: list[float] = []
    with (
        local_cluster(tmp) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        dx = da.from_array(x, chunks=(rows // 4, 20)).persist()  # type: ignore[no-untyped-call]
        dy = da.from_array(y, chunks=(rows // 4,)).persist()  # type: ignore[no-untyped-call]
        for repeat in range(args.repeats):
            for side in ("single", "dask") if repeat % 2 == 0 else ("dask", "single"):
                started = time.perf_counter()
                if side == "single":
                    xgb.XGBClassifier(**settings, n_jobs=2).fit(x, y)
                    single.append(time.perf_counter() - started)
                else:
                    model = dxgb.DaskXGBClassifier(**settings)
                    model.client = client
                    model.fit(dx, dy)
                    dask.append(time.perf_counter() - started)
            _log(f"part 4: {rows} rows, single {single[-1]:.1f} s, xgboost.dask {dask[-1]:.1f} s")
    return {
        "rows": rows,
        "single_s": single,
        "dask_s": dask,
        "single_median_s": _median(single),
        "dask_median_s": _median(dask),
    }


# --- the report -----------------------------------------------------------------------------------


def ratios(result: dict[str, Any]) -> list[tuple[str, float]]:
    """The ratios of medians, for the parts that ran."""
    rows = []
    if "trials" in result:
        r = result["trials"]["median"]
        for trial in ("sleep", "cpu"):
            rows += [
                (f"2 clients / 1, PostgreSQL, {trial} trials (trials/min)",
                 r[f"postgresql_{trial}_2"] / r[f"postgresql_{trial}_1"]),
                (f"2 clients / 1, journal file, {trial} trials (trials/min)",
                 r[f"journal_{trial}_2"] / r[f"journal_{trial}_1"]),
                (f"PostgreSQL / journal, 1 client, {trial} trials",
                 r[f"postgresql_{trial}_1"] / r[f"journal_{trial}_1"]),
                (f"PostgreSQL / journal, 2 clients, {trial} trials",
                 r[f"postgresql_{trial}_2"] / r[f"journal_{trial}_2"]),
            ]  # fmt: skip
    if "lock" in result:
        c = {k: v["total"] for k, v in result["lock"]["critical_section"].items()}
        rows += [
            ("budget lock section, PostgreSQL / journal", c["postgresql"] / c["journal"]),
            ("budget lock section, PostgreSQL / same without WAL flush",
             c["postgresql"] / c["postgresql_no_flush"]),
        ]  # fmt: skip
    if "dask" in result:
        d = result["dask"]
        rows.append(("Dask (warm workers) / local workers, run_study wall", d["dask_s"] / d["local_s"]))
    if "mlflow" in result:
        m = result["mlflow"]["median_calls_per_s"]
        rows += [
            ("MLflow server on PostgreSQL / SQLite file (calls/s)",
             m["server_postgresql"] / m["direct_sqlite"]),
            ("MLflow server on PostgreSQL / PostgreSQL direct (calls/s)",
             m["server_postgresql"] / m["direct_postgresql"]),
        ]  # fmt: skip
    if "xgboost" in result:
        x = result["xgboost"]
        rows.append(("xgboost.dask / single process, fit wall", x["dask_median_s"] / x["single_median_s"]))
    return rows


def report(result: dict[str, Any]) -> None:
    print(f"\n{'ratio (of medians)':62s} value")
    for label, value in ratios(result):
        print(f"{label:62s} {value:5.2f}")
    print("\nmedians:")
    if "trials" in result:
        t = result["trials"]
        for key, value in t["median"].items():
            overall = t["client_wall_median"][key]
            print(f"  trials/min {key}: {value:.0f} while running, {overall:.0f} per client wall")
    if "lock" in result:
        for key, value in result["lock"]["critical_section"].items():
            shown = ", ".join(f"{step} {ms:.1f}" for step, ms in value.items() if step != "total")
            print(f"  budget lock critical section, {key}: {value['total']:.1f} ms ({shown})")
        lock = result["lock"]
        print(
            f"  PostgreSQL INSERT + COMMIT: {lock['commit_ms']:.2f} ms, "
            f"{lock['commit_no_flush_ms']:.2f} ms without the WAL flush"
        )
    if "dask" in result:
        d = result["dask"]
        print(
            f"  run_study local {d['local_s']:.1f} s, dask {d['dask_s']:.1f} s (first, cold workers "
            f"{d['cold_dask_s']:.1f} s), overhead per trial {d['overhead_per_trial_s'] * 1000:.0f} ms; "
            f"median trial local {d['median_trial_s']['local']:.2f} s, "
            f"dask {d['median_trial_s']['dask']:.2f} s; "
            f"LocalCluster start {d['cluster_start_s']:.1f} s"
        )
    if "mlflow" in result:
        for key, value in result["mlflow"]["median_calls_per_s"].items():
            print(f"  MLflow {key}: {value:.0f} log_batch calls/s ({1000 / value:.1f} ms/call)")
    if "xgboost" in result:
        x = result["xgboost"]
        print(
            f"  xgboost {x['rows']} rows: single process {x['single_median_s']:.1f} s, "
            f"xgboost.dask {x['dask_median_s']:.1f} s"
        )
    print(
        f"load average before {result['load_before']}, after {result['load_after']} ({result['cores']} cores)"
    )


PARTS = ("trials", "lock", "dask", "mlflow", "xgboost")


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every `finally`: nothing left running


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=40, help="budget of each throughput study")
    parser.add_argument("--trial-ms", type=float, default=100.0)
    parser.add_argument("--dask-trials", type=int, default=16)
    parser.add_argument("--log-calls", type=int, default=300)
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"a comma list of {', '.join(PARTS)}")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    import optuna

    from reproml.team.layout import database_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    result: dict[str, Any] = {
        "cores": os.cpu_count(),
        "load_before": _load(),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    tmp = Path(tempfile.mkdtemp(prefix="reproml-scaleout-tmp-"))
    try:
        if {"trials", "lock", "dask", "mlflow"} & set(parts):
            with team_root() as (root, ports):
                url = database_url(ports, "optuna")
                if "trials" in parts:
                    result["trials"] = part_trials(url, args, tmp)
                if "lock" in parts:
                    result["lock"] = part_lock(url, args, tmp)
                if "dask" in parts:
                    result["dask"] = part_dask(url, args, tmp)
                if "mlflow" in parts:
                    result["mlflow"] = part_mlflow(root, ports, args, tmp)
        if "xgboost" in parts:
            result["xgboost"] = part_xgboost(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_after"] = _load()
    result["ratios"] = dict(ratios(result))
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
