"""Faults in team mode (issue 15): a server restarted or a worker killed mid-work.

PostgreSQL restarted while two clients tune one study: the clients reconnect (SQLAlchemy's
`pool_pre_ping` on Optuna's engine and on the budget lock's) and the study ends with exactly the
budget. A Dask worker killed with SIGKILL in the middle of a `tune.backend: dask` trial: the trial
goes stale (no heartbeat), is retried, and the budget stays exact. The MLflow server restarted in
the middle of a run: the run completes. Only the engines each test needs are started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
from optuna.trial import TrialState

from reproml.stores import optuna as storage
from reproml.team import postgres, processes
from reproml.team.layout import Layout
from reproml.tuning import study
from reproml.tuning.objective import prepare_data
from reproml.tuning.runner import WorkerConfig, run_study
from tests import test_tune_shared as shared
from tests.conftest import free_port, tiny_frame
from tests.test_tune import SPEC, make_params, make_spec

REPO, _trials, _wait_for = shared.REPO, shared._trials, shared._wait_for
pg = shared.pg  # the fixture: this module's own PostgreSQL cluster

pytestmark = [pytest.mark.team, pytest.mark.integration]

# A client of one study: each trial takes `trial_s` seconds and touches `<tmp>/<role>.started` first.
# Heartbeats every second; a trial silent for 20 s is stale (a PostgreSQL restart takes a few).
CLIENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from reproml.stores import optuna as storage
    from reproml.tuning import study
    from tests.test_tune import make_spec

    url, name, n_trials, role, trial_s, tmp = sys.argv[1:7]
    info = storage.StorageInfo("rdb", url, Path(tmp) / (role + "-locks"), 1, 20, 2)
    spec = make_spec(name=name)
    with storage.client_session(info, name):
        store = storage.open_storage(info)
        the_study, _ = study.open_study(store, spec, info.shown)
        study.recover(the_study, store, info)

        def objective(trial):
            x = trial.suggest_float("learning_rate", 0.01, 0.3)
            Path(tmp, role + ".started").touch()
            time.sleep(float(trial_s))
            return x

        ran = study.run_trials(the_study, objective, study.Budget(int(n_trials), None), info, client=role)
    print("ran", ran)
    """
)


def _client(
    pg: tuple[str, dict[str, str]], tmp: Path, name: str, n: int, role: str, trial_s: float
) -> subprocess.Popen[str]:
    url, env = pg
    script = tmp / "faults_client.py"
    script.write_text(CLIENT)
    return subprocess.Popen(
        [sys.executable, str(script), url, name, str(n), role, str(trial_s), str(tmp)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def restart_postgres(pg: tuple[str, dict[str, str]]) -> float:
    """Stop the cluster (fast shutdown: every connection is cut) and start it again; the seconds
    it was away."""
    url, env = pg
    root = Path(env["PGPASSFILE"]).parents[2]
    layout = Layout(root)
    ports = {"postgres": int(urlsplit(url).port or 0)}
    found = processes.ours(root)["postgres"]
    began = time.monotonic()
    leader = processes.leader(found)
    assert leader is not None
    leader.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
    psutil.wait_procs(found, timeout=30)
    command = postgres.postgres_command(layout, ports)
    pid = processes.spawn(layout, "postgres", command, env, user=postgres.postgres_user())
    ready = postgres.postgres_ready(layout, ports)
    while not ready():
        assert not processes.exited(pid), processes.log_tail(layout, "postgres")
        assert time.monotonic() - began < 60, processes.log_tail(layout, "postgres")
        time.sleep(0.1)
    return time.monotonic() - began


def test_postgres_restarted_mid_study_both_clients_reconnect_and_the_budget_is_exact(
    pg: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, _ = pg
    first = _client(pg, tmp_path, "pg-restart", 8, "first", 1.5)
    second = _client(pg, tmp_path, "pg-restart", 8, "second", 1.5)
    _wait_for(tmp_path / "first.started", first)
    _wait_for(tmp_path / "second.started", second)
    time.sleep(0.5)  # both inside a trial
    away = restart_postgres(pg)
    outs = []
    for client in (first, second):
        out, _ = client.communicate(timeout=120)
        outs.append(out)
        assert client.returncode == 0, out
    trials = _trials(url, "pg-restart")
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 8, (states, outs)
    assert TrialState.RUNNING not in states
    print(f"PostgreSQL away {away:.1f} s; states {[s.name for s in states]}")


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_a_dask_worker_killed_mid_trial_has_its_trial_retried_and_the_budget_stays_exact(
    pg: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """`tune.backend: dask`: SIGKILL to the worker process running a trial. Its trial stops beating,
    goes stale and is retried once; Dask reruns the lost task elsewhere; no trial counts twice."""
    from distributed import Client, LocalCluster

    url, _ = pg
    params = make_params()
    frame = tiny_frame(3000, seed=5)
    data = prepare_data(frame.iloc[:2400], frame.iloc[2400:], SPEC, params)
    spec = make_spec(name="dask-kill")
    info = storage.StorageInfo("rdb", url, tmp_path, shared.HEARTBEAT_S, shared.GRACE_S)
    study.open_study(storage.open_storage(info), spec, url)
    config = WorkerConfig(
        load=lambda: data, params=params, spec=spec, info=info, budget=study.Budget(8, None), threads=1
    )
    killed: list[tuple[int, int]] = []  # (trial number, pid)

    def killer() -> None:
        watch = storage.open_storage(info)
        import optuna

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for trial in optuna.load_study(study_name="dask-kill", storage=watch).get_trials(deepcopy=False):
                pid = trial.user_attrs.get("worker_pid")
                if trial.state == TrialState.RUNNING and pid and trial.number >= 1:
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append((trial.number, int(pid)))
                    return
            time.sleep(0.02)

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)  # type: ignore[no-untyped-call]
    with cluster, Client(cluster):  # type: ignore[no-untyped-call]
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        final = run_study(config, 2, data, lambda c: None, lambda ts: None, set(), cluster.scheduler_address)
        thread.join(5)
    assert killed, "no RUNNING trial was seen to kill"
    number, pid = killed[0]
    trials = _trials(url, "dask-kill")
    assert trials[number].state == TrialState.FAIL
    assert [t.system_attrs.get("failed_trial") for t in trials].count(number) == 1
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 8
    assert final.finished == 8 and final.running == 0
    assert pid not in {
        t.user_attrs["worker_pid"] for t in trials if t.number > number and t.state.is_finished()
    }


MLFLOW_CLIENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import mlflow
    from reproml.stores.mlflow import runs

    tmp = Path(sys.argv[1])
    experiment = mlflow.set_experiment("restart").experiment_id
    with runs.tracked_run(experiment) as run:
        Path(tmp, "run_id").write_text(run.info.run_id)
        runs.log_batch(run.info.run_id, metrics={"before": 1.0})
        while not Path(tmp, "restarted").exists():
            time.sleep(0.1)
        runs.log_batch(run.info.run_id, params={"after": "restart"}, metrics={"after": 2.0})
    print("done")
    """
)


def _mlflow_server(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
        "--artifacts-destination", (tmp / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    log = (tmp / "mlflow.log").open("ab")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_health(port: int, server: subprocess.Popen[bytes], timeout: float = 120) -> None:
    from reproml.team.services import http_ok

    deadline = time.monotonic() + timeout
    while not http_ok(f"http://127.0.0.1:{port}/health"):
        assert server.poll() is None, "mlflow server exited"
        assert time.monotonic() < deadline, "mlflow server not ready"
        time.sleep(0.3)


def _stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.mark.slow
def test_the_mlflow_server_restarted_mid_run_the_run_completes(tmp_path: Path) -> None:
    """MLflow's client retries a refused connection with backoff: a run whose server restarts
    between two logging calls ends FINISHED with what it logged on both sides."""
    from mlflow.tracking import MlflowClient

    port = free_port()
    server = _mlflow_server(tmp_path, port)
    client: subprocess.Popen[str] | None = None
    try:
        _wait_health(port, server)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}", PYTHONPATH=str(REPO))
        script = tmp_path / "client.py"
        script.write_text(MLFLOW_CLIENT)
        client = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path)], env=env, cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        _wait_for(tmp_path / "run_id", client, timeout=120)
        _stop_server(server)
        server = _mlflow_server(tmp_path, port)
        (tmp_path / "restarted").touch()  # the client's next call meets a server still starting
        _wait_health(port, server)
        out, _ = client.communicate(timeout=180)
        assert client.returncode == 0, out
        run = MlflowClient(f"http://127.0.0.1:{port}").get_run((tmp_path / "run_id").read_text())
        assert run.info.status == "FINISHED"
        assert run.data.metrics == {"before": 1.0, "after": 2.0} and run.data.params == {"after": "restart"}
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        _stop_server(server)


def test_an_mlflow_server_that_stays_away_fails_the_call_naming_the_server(tmp_path: Path) -> None:
    """No server at the tracking URI: the error names its address (no silent hang, no bare
    `ConnectionError`)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
        PYTHONPATH=str(REPO),
    )
    code = "import mlflow; from reproml.stores.mlflow import runs\nwith runs.tracked_run('0'): pass"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert f"127.0.0.1:{port}" in done.stderr, done.stderr[-2000:]
