"""reproml.servers: the project's Prefect server and MLflow UI start, answer, are reused and stop whole.

The unit tests use stand-in processes (a sleeping Python with or without our marker); the
integration test starts the real servers once, on free ports, over a tiny MLflow store in tmp_path.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from reproml import servers
from reproml.servers import layout, processes

_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fetch(url: str, payload: dict[str, object] | None = None) -> tuple[str, bytes]:
    """(content type, body) of a GET, or of a JSON POST when `payload` is given."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with _http.open(request, timeout=10) as response:
        return str(response.headers.get("Content-Type", "")), response.read()


@pytest.fixture
def ports(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    chosen = {"prefect": free_port(), "mlflow": free_port()}
    monkeypatch.setenv("REPROML_PREFECT_PORT", str(chosen["prefect"]))
    monkeypatch.setenv("REPROML_MLFLOW_PORT", str(chosen["mlflow"]))
    monkeypatch.delenv("REPROML_SERVER_HOST", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return chosen


# --- stand-ins: a sleeping process, with our marker or without -----------------------------------

SLEEPER = "import subprocess, sys, time; {spawn}time.sleep(60)"
WORKER = "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            with_group = os.getpgid(process.pid) == process.pid
            (os.killpg if with_group else os.kill)(process.pid, signal.SIGKILL)
        process.wait()


def sleeper(
    started: list[subprocess.Popen[bytes]],
    marker: str | None,
    worker: bool = False,
    args: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """A sleeping Python leading its own session, as our servers do; `args` only show in its command line."""
    env = dict(os.environ)
    if marker is not None:
        env[servers.MARKER_ENV] = marker
    code = SLEEPER.format(spawn=WORKER if worker else "")
    process = subprocess.Popen([sys.executable, "-c", code, *args], env=env, start_new_session=True)
    started.append(process)
    processes._children[process.pid] = process  # reaped by stop(), as the servers it starts are
    return process


def write_pid(root: Path, name: str, pid: int) -> Path:
    path = servers.pid_file(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n")
    return path


def members(pgid: int) -> list[int]:
    """Live, non-zombie processes of a group, as psutil and the kernel see them."""
    import psutil

    found = []
    for pid in psutil.pids():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
    return found


LOOPBACK = {"127.0.0.1", "::1"}


def listening(pgid: int) -> set[tuple[str, int]]:
    """(address, port) of every LISTEN socket held by the server's process group and its children."""
    import psutil

    pids = set(members(pgid))
    for pid in list(pids):
        with contextlib.suppress(psutil.Error):
            pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
    found = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(pid).net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port))
    return found


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# --- unit -----------------------------------------------------------------------------------------


def test_a_dead_pid_is_stale_and_its_file_removed(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    path = write_pid(tmp_path, "mlflow", int(done.stdout))
    assert servers.running(tmp_path, "mlflow") is None
    assert not path.exists()
    write_pid(tmp_path, "mlflow", 0)  # garbage is stale too
    assert servers.running(tmp_path, "mlflow") is None


def test_a_live_process_that_is_not_ours_is_not_running_and_survives_stop(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    stranger = sleeper(sleepers, marker=None)
    other_project = sleeper(sleepers, marker=f"mlflow@{tmp_path / 'elsewhere'}")
    other_server = sleeper(sleepers, marker=layout._marker(tmp_path, "prefect"))
    for process in (stranger, other_project, other_server):
        path = write_pid(tmp_path, "mlflow", process.pid)
        assert servers.running(tmp_path, "mlflow") is None
        assert not path.exists()
        write_pid(tmp_path, "mlflow", process.pid)
        assert servers.stop(tmp_path, "mlflow", timeout=1) is False
        assert not path.exists()
        assert process.poll() is None  # still alive: stop never touches what is not ours


def test_stop_ends_our_whole_group_and_a_killed_leaders_workers(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    marker = layout._marker(tmp_path, "mlflow")
    leader = sleeper(sleepers, marker, worker=True)
    wait_for(lambda: len(members(leader.pid)) == 2)
    write_pid(tmp_path, "mlflow", leader.pid)
    assert servers.running(tmp_path, "mlflow") == leader.pid
    assert servers.stop(tmp_path, "mlflow", timeout=5) is True
    leader.wait(timeout=5)
    wait_for(lambda: not members(leader.pid))
    assert not servers.pid_file(tmp_path, "mlflow").exists()

    # kill -9 of the main process alone leaves its worker: not running, but stop still finds it
    leader = sleeper(sleepers, marker, worker=True)
    wait_for(lambda: len(members(leader.pid)) == 2)
    write_pid(tmp_path, "mlflow", leader.pid)
    leader.kill()
    leader.wait()
    assert servers.running(tmp_path, "mlflow") is None
    assert servers.pid_file(tmp_path, "mlflow").exists()  # kept: a worker of ours is left
    assert servers.stop(tmp_path, "mlflow", timeout=5) is True
    wait_for(lambda: not members(leader.pid))
    assert not servers.pid_file(tmp_path, "mlflow").exists()


def test_a_server_whose_pid_file_was_deleted_is_found_again(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    server = sleeper(sleepers, layout._marker(tmp_path, "prefect"))
    wait_for(lambda: processes._is_ours(server.pid, tmp_path, "prefect"))
    assert servers.running(tmp_path, "prefect") == server.pid  # e.g. after `make clean`
    assert servers.pid_file(tmp_path, "prefect").read_text() == f"{server.pid}\n"
    servers.pid_file(tmp_path, "prefect").unlink()
    assert servers.stop(tmp_path, "prefect", timeout=5) is True
    assert server.wait(timeout=5) == -signal.SIGTERM
    assert servers.running(tmp_path, "prefect") is None


def test_a_server_running_on_another_port_is_not_silently_reused(
    tmp_path: Path, ports: dict[str, int], sleepers: list[subprocess.Popen[bytes]]
) -> None:
    elsewhere = ("--host", "127.0.0.1", "--port", str(ports["mlflow"] + 1))
    server = sleeper(sleepers, layout._marker(tmp_path, "mlflow"), args=elsewhere)
    wait_for(lambda: processes._is_ours(server.pid, tmp_path, "mlflow"))
    write_pid(tmp_path, "mlflow", server.pid)
    with pytest.raises(servers.ServerError, match=f"already runs on 127.0.0.1:{ports['mlflow'] + 1}"):
        servers.start(tmp_path, "mlflow", timeout=5)
    assert server.poll() is None
    assert servers.status(tmp_path)[1].url == f"http://127.0.0.1:{ports['mlflow'] + 1}"


def test_a_taken_port_is_named(tmp_path: Path, ports: dict[str, int]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports["mlflow"]))
        taken.listen()
        with pytest.raises(servers.ServerError, match=f"port {ports['mlflow']} .* already in use"):
            servers.start(tmp_path, "mlflow", timeout=5)
    assert servers.running(tmp_path, "mlflow") is None


def test_settings_and_external_prefect(
    tmp_path: Path, ports: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert servers.prefect_url(tmp_path) == f"http://127.0.0.1:{ports['prefect']}/api"
    assert servers.mlflow_url(tmp_path) == f"http://127.0.0.1:{ports['mlflow']}"
    monkeypatch.setenv("REPROML_MLFLOW_PORT", "http")
    with pytest.raises(servers.ServerError, match="REPROML_MLFLOW_PORT"):
        servers.mlflow_url(tmp_path)
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    with pytest.raises(servers.ServerError, match="does not answer"):
        servers.ensure_prefect(tmp_path)
    assert not servers.state_dir(tmp_path).exists()  # nothing was started


# --- integration: the real servers --------------------------------------------------------------


def make_store(root: Path) -> tuple[str, str]:
    """An MLflow store in `root` with one experiment and one finished run: (experiment id, run id)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment_id = client.create_experiment("servers", artifact_location=(root / "mlartifacts").as_uri())
    run = client.create_run(experiment_id, run_name="one")
    client.log_metric(run.info.run_id, "auc", 0.75)
    client.set_terminated(run.info.run_id, "FINISHED")
    return experiment_id, run.info.run_id


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "project"
    root.mkdir()
    yield root
    for name in servers.NAMES:  # whatever the test did, leave no server behind
        servers.stop(root, name, timeout=5)


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_servers_start_answer_are_reused_and_stop(project: Path, ports: dict[str, int]) -> None:
    began = time.monotonic()
    with ThreadPoolExecutor(1) as pool:  # Prefect starts while the MLflow store is made
        prefect = pool.submit(servers.start, project, "prefect")
        experiment_id, run_id = make_store(project)
        pids = {"mlflow": servers.start(project, "mlflow"), "prefect": prefect.result()}
    print(f"store made and both servers answered in {time.monotonic() - began:.1f} s")
    assert {name: servers.running(project, name) for name in servers.NAMES} == pids
    # what the kernel says, not what the command line asked for: every listening socket of each
    # server's process group is on loopback, and its own port is among them
    for name, pid in pids.items():
        sockets = listening(pid)
        assert ports[name] in {number for _, number in sockets}, (name, sockets)
        assert {address for address, _ in sockets} <= LOOPBACK, (name, sockets)
    assert servers.start(project, "prefect") == pids["prefect"]  # idempotent
    assert servers.start(project, "mlflow") == pids["mlflow"]

    _, body = fetch(
        f"{servers.mlflow_url(project)}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]}
    )
    runs = json.loads(body)["runs"]
    assert [(run["info"]["run_id"], run["info"]["status"]) for run in runs] == [(run_id, "FINISHED")]

    api = servers.prefect_url(project)
    assert api == f"http://127.0.0.1:{ports['prefect']}/api"
    assert json.loads(fetch(f"{api}/health")[1]) is True
    content_type, page = fetch(f"http://127.0.0.1:{ports['prefect']}/")
    assert content_type.startswith("text/html") and b"<html" in page.lower()
    assert (project / ".reproml" / "prefect").is_dir()  # the project's own Prefect home

    for name in servers.NAMES:
        assert servers.log_file(project, name).stat().st_size > 0
        assert servers.stop(project, name) is True
        with pytest.raises(ProcessLookupError):
            os.killpg(pids[name], 0)
        assert not servers.pid_file(project, name).exists()
        assert servers.running(project, name) is None
        assert servers.stop(project, name) is False
