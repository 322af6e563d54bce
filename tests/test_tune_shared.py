"""Tuning one study from several clients on a shared PostgreSQL storage (issue 15).

Each client is a separate Python process, as it would be on another machine: it opens the study the
way `reproml tune` does (`client_session`, `open_study`, `recover`) and runs trials to the budget
(`run_trials`). Only PostgreSQL is started (one cluster for this module, not the whole team stack).
Without PostgreSQL installed the tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from reproml.stores import optuna as storage
from reproml.team import postgres, processes, stack
from reproml.team.layout import Layout, choose_ports, database_url, new_password, write_secrets
from reproml.tuning import study
from reproml.tuning.objective import prepare_data
from reproml.tuning.runner import WorkerConfig, run_study
from tests.conftest import in_ci, tiny_frame
from tests.project import BIN, Project, sampled_params
from tests.test_tune import SPEC, make_params, make_spec

pytestmark = [pytest.mark.team, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[1]
HEARTBEAT_S = 1
GRACE_S = 3

# One client, named `role`: it announces its first trial's number in `<tmp>/<role>.started`, and
# then runs each trial in `trial_s` seconds; its first trial also waits until `<tmp>/<wait>.started`
# exists, if `wait` names another client. "doomed" hangs in its first trial, to be killed by the test.
CLIENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from reproml.stores import optuna as storage
    from reproml.tuning import study
    from tests.test_tune import make_spec

    url, name, n_trials, role, trial_s, wait, tmp = sys.argv[1:8]
    # a lock folder of its own, as on another machine: only the database is shared
    info = storage.StorageInfo("rdb", url, Path(tmp) / (role + "-locks"), {heartbeat}, {grace}, 2)
    spec = make_spec(name=name)
    with storage.client_session(info, name):
        store = storage.open_storage(info)
        the_study, _ = study.open_study(store, spec, info.shown)
        study.recover(the_study, store, info)
        first = []

        def objective(trial):
            x = trial.suggest_float("learning_rate", 0.01, 0.3)
            if not first:
                first.append(trial.number)
                Path(tmp, role + ".started").write_text(str(trial.number))
                if role == "doomed":
                    time.sleep(600)
                other = Path(tmp, wait + ".started")
                deadline = time.monotonic() + 60
                while wait and not other.exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
            time.sleep(float(trial_s))
            return x

        ran = study.run_trials(the_study, objective, study.Budget(int(n_trials), None), info, client=role)
    print("ran", ran)
    """
).format(heartbeat=HEARTBEAT_S, grace=GRACE_S)


def _postgres_installed() -> bool:
    return bool(glob.glob("/usr/lib/postgresql/*/bin/postgres")) or shutil.which("postgres") is not None


@pytest.fixture(scope="module")
def pg() -> Iterator[tuple[str, dict[str, str]]]:
    """A PostgreSQL cluster with the `optuna` database: its URL (no password) and the client env."""
    if not _postgres_installed():
        message = "PostgreSQL is not installed (apt-get install -y postgresql)"
        if in_ci():
            pytest.fail(f"CI=true, so the team tests must run, but {message}: .ci/run installs it")
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="reproml-optuna-test-", dir="/tmp"))
    root.chmod(0o755)  # PostgreSQL runs as the `postgres` user when the tests run as root
    layout = Layout(root)
    try:
        layout.prepare()
        ports = choose_ports(layout, keep=False)
        secret = new_password()
        write_secrets(layout, secret, ports["postgres"])
        postgres.init_cluster(layout, secret)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSFILE"] = str(layout.secrets.resolve())
        command = postgres.postgres_command(layout, ports)
        pid = processes.spawn(layout, "postgres", command, env, user=postgres.postgres_user())
        os.environ["PGPASSFILE"] = env["PGPASSFILE"]
        ready = postgres.postgres_ready(layout, ports)
        deadline = time.monotonic() + 60
        while not ready():
            assert not processes.exited(pid), processes.log_tail(layout, "postgres")
            assert time.monotonic() < deadline, processes.log_tail(layout, "postgres")
            time.sleep(0.2)
        postgres.create_databases(layout, ports)
        yield database_url(ports, "optuna"), {**env, "PYTHONPATH": str(REPO)}
    finally:
        os.environ.pop("PGPASSFILE", None)
        try:
            stack.down(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _client(
    pg: tuple[str, dict[str, str]],
    tmp: Path,
    name: str,
    n_trials: int,
    role: str,
    trial_s: float,
    wait: str = "",
) -> subprocess.Popen[str]:
    url, env = pg
    script = tmp / "client.py"
    script.write_text(CLIENT)
    args = [url, name, str(n_trials), role, str(trial_s), wait, str(tmp)]
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(client: subprocess.Popen[str], timeout: float = 90) -> str:
    out, _ = client.communicate(timeout=timeout)
    assert client.returncode == 0, out
    return out


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    info = storage.StorageInfo("rdb", url, Path("/nonexistent"))
    return optuna.load_study(study_name=name, storage=storage.open_storage(info)).get_trials()


def _wait_for(path: Path, client: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert client.poll() is None, client.communicate()[0]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_a_shared_database_is_no_host_local_storage(pg: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, _ = pg
    shared = storage.resolve(tmp_path, url, heartbeat_interval=2, grace_period=5, max_retry=1)
    assert shared.shared and shared.backend == "postgresql"
    assert not storage.resolve(tmp_path, f"sqlite:///{tmp_path}/o.db").shared
    assert not storage.resolve(tmp_path, None).shared
    opened = storage.open_storage(shared)
    assert (opened.heartbeat_interval, opened.grace_period) == (2, 5)
    with storage.client_session(shared, "s"), storage.client_session(shared, "s"):
        pass  # several clients may tune one shared study at once
    key = storage.advisory_key("s")
    assert key == storage.advisory_key("s") != storage.advisory_key("t") and -(2**63) <= key < 2**63


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_two_clients_finish_exactly_the_budget_and_never_fail_each_others_trials(
    pg: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, _ = pg
    # The first client's first trial stays RUNNING until the second client runs one: the second's
    # start-up (and its first claims) happen beside a live trial of another client, which must be
    # left alone however long it runs (its heartbeats say it is alive).
    first = _client(pg, tmp_path, "two-clients", 8, "first", 0.2, wait="second")
    _wait_for(tmp_path / "first.started", first)
    second = _client(pg, tmp_path, "two-clients", 8, "second", 0.2)
    _finish(first)
    _finish(second)
    trials = _trials(url, "two-clients")
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 8
    assert TrialState.FAIL not in states and TrialState.RUNNING not in states
    by = {t.user_attrs.get(study.CLIENT_ATTR) for t in trials}
    assert by == {"first", "second"}  # both clients did share the work


def test_a_killed_clients_trial_is_retried_by_another_and_the_budget_stays_exact(
    pg: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, _ = pg
    doomed = _client(pg, tmp_path, "killed", 6, "doomed", 0.0)
    _wait_for(tmp_path / "doomed.started", doomed)
    dead_number = int((tmp_path / "doomed.started").read_text())
    steady = _client(pg, tmp_path, "killed", 6, "steady", 0.3)
    # killed once the steady client runs trials: it takes the rest of the budget (5 x 0.3 s) well
    # within the grace period, so it must wait for the dead trial to go stale, not stop
    _wait_for(tmp_path / "steady.started", steady)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    began = time.monotonic()
    _finish(steady)
    took = time.monotonic() - began
    trials = _trials(url, "killed")
    dead = trials[dead_number]
    assert dead.state == TrialState.FAIL and dead.user_attrs[study.CLIENT_ATTR] == "doomed"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead_number]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs[study.CLIENT_ATTR] == "steady"
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6
    assert not any(t.state == TrialState.RUNNING for t in trials)
    assert took >= GRACE_S - 1  # the steady client waited for the dead trial to go stale


def test_the_budget_is_exact_across_clients_that_share_only_the_database(
    pg: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """Six clients with instant trials race for a budget of 15; each has its own lock folder (as
    on its own machine), so only the database-side lock can keep the count exact."""
    url, _ = pg
    study.open_study(
        storage.open_storage(storage.StorageInfo("rdb", url, tmp_path)), make_spec(name="race"), url
    )
    failures: list[BaseException] = []

    def client(index: int) -> None:
        info = storage.StorageInfo("rdb", url, tmp_path / f"machine-{index}", HEARTBEAT_S, GRACE_S)
        try:
            the_study = optuna.load_study(study_name="race", storage=storage.open_storage(info))
            study.run_trials(the_study, lambda t: t.suggest_float("x", 0, 1), study.Budget(15, None), info)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    states = [t.state for t in _trials(url, "race")]
    assert states.count(TrialState.COMPLETE) == 15 and len(states) == 15


def test_a_trial_that_never_beat_is_retried_after_the_grace_period(
    pg: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """A RUNNING trial without any heartbeat (its client had none, or died before the first beat)
    is invisible to Optuna's stale check; a client that waits for it must still retry it."""
    url, _ = pg
    spec = make_spec(name="silent")
    plain = optuna.storages.RDBStorage(url)  # no heartbeats, like an older client
    silent, _ = study.open_study(plain, spec, url)
    silent.ask({"learning_rate": optuna.distributions.FloatDistribution(0.01, 0.3)})
    info = storage.StorageInfo("rdb", url, tmp_path, HEARTBEAT_S, GRACE_S)
    the_study = optuna.load_study(study_name="silent", storage=storage.open_storage(info))
    began = time.monotonic()
    study.run_trials(
        the_study, lambda t: t.suggest_float("learning_rate", 0.01, 0.3), study.Budget(3, None), info
    )
    assert time.monotonic() - began >= GRACE_S - 0.5  # waited for it, did not fail it at once
    trials = _trials(url, "silent")
    assert trials[0].state == TrialState.FAIL
    assert [t.system_attrs.get("failed_trial") for t in trials].count(0) == 1
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 3


@pytest.mark.slow  # suite time (issue 15): in `make test-slow`, not the default suite
def test_the_dask_backend_runs_trials_as_tasks_on_the_workers(
    pg: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """`tune.backend: dask`: the trials run in the Dask workers' processes against the same
    database, to the exact budget, and this client still reports each of them as it finishes."""
    from distributed import Client, LocalCluster

    url, _ = pg
    params = make_params()
    frame = tiny_frame(600, seed=3)
    data = prepare_data(frame.iloc[:400], frame.iloc[400:], SPEC, params)
    spec = make_spec(name="on-dask")
    info = storage.StorageInfo("rdb", url, tmp_path, HEARTBEAT_S, GRACE_S)
    study.open_study(storage.open_storage(info), spec, url)
    config = WorkerConfig(
        load=lambda: data, params=params, spec=spec, info=info, budget=study.Budget(6, None), threads=1
    )
    reported: list[int] = []
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)  # type: ignore[no-untyped-call]
    with cluster, Client(cluster) as client:  # type: ignore[no-untyped-call]
        worker_pids = set(client.run(os.getpid).values())
        final = run_study(
            config, 2, data, lambda counts: None, lambda ts: reported.extend(t.number for t in ts), set(),
            cluster.scheduler_address,
        )  # fmt: skip
    trials = _trials(url, "on-dask")
    assert final.finished == 6 and final.running == 0
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 6
    ran_in = {t.user_attrs["worker_pid"] for t in trials}
    assert ran_in <= worker_pids and os.getpid() not in ran_in
    assert sorted(reported) == sorted(t.number for t in trials if t.state.is_finished())


def test_two_clones_run_reproml_tune_on_one_study_at_once(
    pg: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """The measured bug: two clones of the project tune one study on the shared database at the
    same time. Neither fails the other's trials, the budget is exact, and each clone's MLflow
    holds its own trials' runs only, which together are every finished trial."""
    from mlflow.tracking import MlflowClient

    url, env = pg
    params = sampled_params(4000)
    params["tune"].update(
        {"n_trials": 6, "pruner": "none", "warm_start": False, "study_name": "clones",
         "heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S}
    )  # fmt: skip
    clones = [Project(tmp_path / name, params) for name in ("a", "b")]
    for clone in clones:
        clone.env.update({"REPROML_TUNE_STORAGE": url, "PGPASSFILE": env["PGPASSFILE"]})
        clone.run("dvc", "repro", "prepare")
    tunes = [
        subprocess.Popen(
            [str(BIN / "reproml"), "tune"], cwd=c.root, env=c.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        for c in clones
    ]  # fmt: skip
    for tune in tunes:
        _finish(tune, timeout=600)
    trials = _trials(url, "clones")
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 6
    assert TrialState.FAIL not in states and TrialState.RUNNING not in states
    logged: list[list[int]] = []
    for clone in clones:
        client = MlflowClient(tracking_uri=clone.tracking_uri())
        experiment = client.get_experiment_by_name("reproml")
        assert experiment is not None
        found = client.search_runs([experiment.experiment_id], max_results=100)
        logged.append(
            [
                int(r.data.tags["reproml.trial_number"])
                for r in found
                if r.data.tags.get("reproml.stage") == "tune-trial"
            ]
        )
        (parent,) = [r for r in found if r.data.tags.get("reproml.stage") == "tune"]
        assert parent.data.tags["reproml.interrupted_trials"] == "[]"
    assert not set(logged[0]) & set(logged[1])
    assert sorted(logged[0] + logged[1]) == sorted(t.number for t in trials)
