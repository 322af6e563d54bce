"""Secrets stay secret (issue 12): one redaction for every URI and credential, at every edge.

Units: each form of credential is masked (`reproml.redaction`), and each edge applies it: the study
storage shown in tags and errors, params.yaml validation, MLflow params/tags, the CLI's errors and
`runs` table, log records, flow commands, failed trials. Then the canary: a whole pipeline, a
promotion and a monitoring batch against a real MLflow server whose URI carries a canary password,
an Optuna RDB storage whose URI carries another, and canary tokens in the environment; afterwards
no file the run could write, and none of its output, holds any of them.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from reproml import cli
from reproml.config import parse_params
from reproml.errors import ConfigError
from reproml.redaction import (
    MASK,
    find_credential,
    install_scrubbing,
    redact_url,
    scrub,
    secret_values,
    split_userinfo,
)
from reproml.stores import optuna as storage
from reproml.stores.mlflow import connection, runs
from reproml.tuning import study
from tests.conftest import default_params, free_port
from tests.project import Project, sampled_params
from tests.test_tune import journal, make_spec

# ----------------------------------------------------------------------------------------------
# the redaction function

MASKED_URLS = {
    # password with `/`: the form the old pattern let through
    "postgresql://me:pa/ss@db/optuna": "postgresql://me:***@db/optuna",
    "postgresql://me:p@ss@db:5432/optuna": "postgresql://me:***@db:5432/optuna",
    "postgresql+psycopg2://me:p%40s%2Fs@db/optuna?sslmode=require": (
        "postgresql+psycopg2://me:***@db/optuna?sslmode=require"
    ),
    "mysql+pymysql://me:a:b:c@db/optuna": "mysql+pymysql://me:***@db/optuna",
    "postgresql://me:pa?ss@db/optuna": "postgresql://me:***@db/optuna",  # SQLAlchemy's reading
    "http://reproml:hunter2@127.0.0.1:5000": "http://reproml:***@127.0.0.1:5000",
    "https://user:tok/en@mlflow.example.com/": "https://user:***@mlflow.example.com/",
    "s3://AKIA:se/cret@bucket/dvc": "s3://AKIA:***@bucket/dvc",
    "redis://:hunter2@cache:6379/0": "redis://:***@cache:6379/0",
    "https:/me:hunter2@files.example.com/x.csv": "https:/me:***@files.example.com/x.csv",  # via Path
    "sqlite:////tmp/s.db?password=hunter2&timeout=5": "sqlite:////tmp/s.db?password=***&timeout=5",
    "sqlite:////tmp/s.db?PassWord=hunter2": "sqlite:////tmp/s.db?PassWord=***",
    "https://b.s3.amazonaws.com/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=abc&X-Amz-Date=1": (
        "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Date=1"
    ),
    "https://acct.blob.core.windows.net/c/f?sv=2022&sig=abc%3D": "https://acct.blob.core.windows.net/c/f?sv=2022&sig=***",
    "http://h/api?api_key=k1&access_token=t1&client_secret=s1&auth=a1&pwd=p1": (
        "http://h/api?api_key=***&access_token=***&client_secret=***&auth=***&pwd=***"
    ),
}
UNCHANGED_URLS = [
    "sqlite:////home/me/project/mlflow.db",
    "sqlite:////home/me/proj@2/optuna.db",
    "postgresql://me@db/optuna",
    "postgresql://db:5432/optuna?sslmode=require",
    "http://127.0.0.1:5000",
    "http://127.0.0.1:5000/#/experiments/1/runs/abc",
    "http://127.0.0.1:5000/api?email=me@example.com",
    "ssh://git@github.com:22/me/repo.git",
    "s3://bucket/path/model@v2",
    "file:///tmp/mlartifacts/1",
    "file:/tmp/a:b/c@d",
    "C:/Users/me/x:y@z",
    "models:/flights-late@champion",
    "/home/me/project/optuna/studies.journal",
    "optuna/studies.journal",
]


@pytest.mark.parametrize("url", sorted(MASKED_URLS))
def test_every_form_of_credential_in_a_url_is_masked(url: str) -> None:
    shown = redact_url(url)
    assert shown == MASKED_URLS[url]
    parsed = _sqlalchemy(shown)
    assert parsed is None or parsed.password in (None, MASK)  # SQLAlchemy sees no password either


def _sqlalchemy(url: str) -> Any:
    try:
        return make_url(url)
    except Exception:
        return None


@pytest.mark.parametrize("url", UNCHANGED_URLS)
def test_a_uri_without_credentials_is_left_exactly_as_it_was(url: str) -> None:
    assert redact_url(url) == url
    assert scrub(url, environ={}) == url


def test_free_text_loses_url_passwords_dsn_passwords_and_environment_secrets() -> None:
    env = {
        "MLFLOW_TRACKING_TOKEN": "tok-1234567",
        "AWS_SECRET_ACCESS_KEY": "aws/Secret+Key",
        "MY_SERVICE_SECRET_VALUE": "svc-secret-9",
        "PREFECT_API_AUTH_STRING": "admin:prefect-pw-1",
        "REPROML_TUNE_STORAGE": "postgresql://me:tune-pw-1@db/optuna",
        "OTHER_URL": "https://h/x?token=urltoken-1",
        "DB_PASSWORD_FILE": "/run/secrets/db-password",  # where a secret is, not the secret
        "SHORT_TOKEN": "abc",  # too short to look for in free text
        "PATH": "/usr/bin",
    }
    text = (
        "connect failed: postgresql://me:pa/ss@db/x (host=db password=dsn-pw-1 user=me); "
        "header Bearer tok-1234567, key aws%2FSecret%2BKey, svc-secret-9, prefect-pw-1, "
        "tune-pw-1 and urltoken-1 seen; secrets under /run/secrets/db-password; abc"
    )
    clean = scrub(text, environ=env)
    for secret in ("pa/ss", "dsn-pw-1", "tok-1234567", "aws%2FSecret%2BKey", "svc-secret-9",
                   "prefect-pw-1", "tune-pw-1", "urltoken-1"):  # fmt: skip
        assert secret not in clean, clean
    assert "/run/secrets/db-password" in clean and clean.endswith("; abc")
    assert "host=db" in clean and "user=me" in clean
    assert "/usr/bin" not in secret_values(env)


def test_nested_values_are_scrubbed_like_free_text_with_the_environment_read_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reproml import redaction

    env = {"MLFLOW_TRACKING_TOKEN": "tok-1234567", "PATH": "/usr/bin"}
    record = {
        "why tok-1234567": ["postgresql://me:pa/ss@db/x", ("tok-1234567", 3)],
        "nested": {"ok": "nothing secret", "n": 1.5, "none": None},
    }
    reads: list[int] = []
    listed = redaction.secret_values

    def counted(environ: Any = None) -> list[str]:
        reads.append(1)
        return listed(environ)

    monkeypatch.setattr(redaction, "secret_values", counted)
    clean = redaction.scrub_obj(record, environ=env)
    assert len(reads) == 1  # a record holds hundreds of strings: the environment is walked once
    assert clean == {
        f"why {redaction.MASK}": [scrub("postgresql://me:pa/ss@db/x", environ=env), (redaction.MASK, 3)],
        "nested": {"ok": "nothing secret", "n": 1.5, "none": None},
    }
    assert "pa/ss" not in str(clean) and "tok-1234567" not in str(clean)
    assert isinstance(clean["why " + redaction.MASK][1], tuple)


def test_userinfo_is_split_off_percent_decoded() -> None:
    clean, user, password = split_userinfo("http://reproml:c%2Fa%40n%3Ab@127.0.0.1:5000/")
    assert (clean, user, password) == ("http://127.0.0.1:5000/", "reproml", "c/a@n:b")
    assert split_userinfo("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", None, None)


def test_a_found_credential_is_described_without_repeating_it() -> None:
    what = find_credential("see https://u:hunter22@h/x", environ={})
    assert what is not None and "hunter22" not in what
    assert "token" in str(find_credential("a?token=zzz", environ={}))
    assert "MY_API_KEY" in str(find_credential("key k-123456789", environ={"MY_API_KEY": "k-123456789"}))
    assert find_credential("sqlite:////tmp/x.db", environ={}) is None


# ----------------------------------------------------------------------------------------------
# the edges


def test_the_study_storage_is_shown_without_password_or_secret_parameter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for url in ("postgresql://me:pa/ss-hunter2@db/optuna", "sqlite:////tmp/s.db?password=hunter2"):
        monkeypatch.setenv(storage.STORAGE_ENV, url)
        info = storage.resolve(Path("."), None)
        assert info.location == url  # what Optuna connects with is untouched
        assert "hunter2" not in info.shown and MASK in info.shown


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (("tune", "storage"), "postgresql://me:pa/ss-hunter2@db/optuna"),
        (("tune", "storage"), "sqlite:///optuna.db?password=hunter2"),
        (("data", "path"), "https://me:hunter2@files.example.com/flights.csv"),
        (("mlflow", "experiment_name"), "x?token=hunter2"),
    ],
)
def test_params_refuse_a_credential_in_any_value_without_echoing_it(key: tuple[str, str], value: str) -> None:
    raw = default_params()
    raw[key[0]][key[1]] = value
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    message = str(caught.value)
    assert ".".join(key) in message and "environment variable" in message
    assert "hunter2" not in message
    if key == ("tune", "storage"):
        assert "REPROML_TUNE_STORAGE" in message


def test_params_refuse_an_environment_secret_and_never_echo_a_secret_named_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-hunter2-xyz")
    raw = default_params()
    raw["register"]["model_name"] = "tok-hunter2-xyz"
    with pytest.raises(ConfigError, match=r"register\.model_name.*MLFLOW_TRACKING_TOKEN") as caught:
        parse_params(raw)
    assert "hunter2" not in str(caught.value)
    raw = default_params()
    raw["tune"]["password"] = "hunter2"
    with pytest.raises(ConfigError, match=r"tune\.password: unknown key") as caught:
        parse_params(raw)
    assert "hunter2" not in str(caught.value)


def test_mlflow_params_and_tags_are_scrubbed_as_they_are_logged(tmp_path: Path) -> None:
    experiment_id = connection.setup(tmp_path, "secrets")
    run = MlflowClient().create_run(experiment_id)
    runs.log_batch(
        run.info.run_id,
        params={"storage": "postgresql://me:pa/ss-hunter2@db/optuna"},
        tags={"reproml.storage": "sqlite:///s.db?password=hunter2", "plain": "sqlite:///s.db"},
    )
    child = runs.log_child_run(
        experiment_id, run.info.run_id, "trial-0", "FAILED", 0, 1, {}, {},
        {"reproml.error": "OperationalError: http://u:hunter2@h refused"},
    )  # fmt: skip
    client = MlflowClient()
    logged = client.get_run(run.info.run_id).data
    assert logged.params["storage"] == "postgresql://me:***@db/optuna"
    assert logged.tags["reproml.storage"] == "sqlite:///s.db?password=***"
    assert logged.tags["plain"] == "sqlite:///s.db"
    assert "hunter2" not in client.get_run(child).data.tags["reproml.error"]


def test_tracking_uri_credentials_go_to_mlflows_variables_not_its_uri(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(connection.USERNAME_ENV, raising=False)
    monkeypatch.delenv(connection.PASSWORD_ENV, raising=False)
    uri = f"http://reproml:{quote('pa/ss@hunter2', safe='')}@127.0.0.1:5999"
    assert connection._credentials_to_env(uri) == "http://127.0.0.1:5999"
    assert os.environ[connection.USERNAME_ENV] == "reproml"
    assert os.environ[connection.PASSWORD_ENV] == "pa/ss@hunter2"
    for kept in ("http://127.0.0.1:5999", "sqlite:////tmp/m.db"):
        assert connection._credentials_to_env(kept) == kept


def test_cli_errors_and_the_runs_table_never_print_the_tracking_password(
    make_project: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_project()
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'm.db'}?password=hunter2pw")
    runs = CliRunner().invoke(cli.app, ["runs"])
    assert runs.exit_code == 0, runs.output
    assert "hunter2pw" not in runs.output and "m.db?password=***" in runs.output
    refused = CliRunner().invoke(cli.app, ["reproduce", "no-such-run"])
    assert refused.exit_code == 2, refused.output
    assert "no-such-run" in refused.output and "hunter2pw" not in refused.output


def test_a_stage_error_is_scrubbed_by_the_cli(make_project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ReproError quoting a credential (here: a data path that is a URL with a password, refused
    by params validation) reaches the terminal masked."""
    params = default_params()
    params["data"]["path"] = "https://me:hunter2pw@files.example.com/flights.csv"
    monkeypatch.chdir(make_project(params))
    result = CliRunner().invoke(cli.app, ["ingest"])
    assert result.exit_code == 2 and "data.path" in result.output
    assert "hunter2pw" not in result.output


def test_log_records_and_their_tracebacks_are_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_KEY", "pfx-hunter2-key")
    install_scrubbing()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("reproml.test.secrets")
    logger.addHandler(handler)
    try:
        logger.warning("storage %s, key %s", "postgresql://me:pa/ss-hunter2@db/x", "pfx-hunter2-key")
        try:
            raise RuntimeError("API request to http://u:hunter2@h/api failed")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "hunter2" not in out and "postgresql://me:***@db/x" in out and "RuntimeError" in out


def test_uncaught_tracebacks_of_the_cli_are_scrubbed(tmp_path: Path) -> None:
    probe = (
        "from reproml.redaction import install_scrubbing; install_scrubbing(); "
        "raise RuntimeError('cannot reach postgresql://me:pa/ss-hunter2@db/x')"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1 and "RuntimeError" in done.stderr
    assert "hunter2" not in done.stderr and "postgresql://me:***@db/x" in done.stderr


def test_a_failed_flow_command_is_reported_and_logged_without_its_secrets() -> None:
    from reproml.orchestration.commands import CommandError, run

    with pytest.raises(CommandError) as caught:
        run(["sh", "-c", "echo connecting to https://u:hunter2@h/x?token=tok-hunter2; exit 3"], Path("."))
    assert "hunter2" not in str(caught.value) and "exited with 3" in str(caught.value)


@pytest.mark.integration
def test_prefect_run_logs_and_states_on_the_server_hold_no_secret(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flow's run logs (its own, and the output of the commands it runs) and a failed task's
    state message, as the Prefect server stores them."""
    from prefect import flow, get_run_logger, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows.common  # noqa: F401  (the flows' edge: command output into the run's log, scrubbed)
    from reproml.orchestration.commands import CommandError, run

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-hunter2-key")
    echo = "echo 'fetching https://u:hunter2pw@h/x with key aws-hunter2-key'"

    @task
    def step(fail: bool) -> str:
        get_run_logger().info("storage is postgresql://me:pa/ss-hunter2@db/optuna")
        return run(["sh", "-c", f"{echo}; exit {3 if fail else 0}"], Path("."))

    @flow
    def leaky(fail: bool) -> str:
        return step(fail)

    with temporary_settings({PREFECT_API_URL: prefect_api}):
        state = leaky(False, return_state=True)
        failed = leaky(True, return_state=True)
        ok_id, failed_id = state.state_details.flow_run_id, failed.state_details.flow_run_id
        assert ok_id is not None and failed_id is not None
        with get_client(sync_client=True) as client:
            logs: list[Any] = []
            for _ in range(50):  # the server stores logs a moment after they are sent
                logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[ok_id, failed_id])))
                if sum("fetching" in log.message for log in logs) >= 2:
                    break
                time.sleep(0.2)
            tasks = client.read_task_runs()
    with pytest.raises(CommandError):
        failed.result()
    stored = "\n".join(log.message for log in logs)
    assert "fetching https://u:***@h/x with key ***" in stored  # the command's output, as logged
    assert "postgresql://me:***@db/optuna" in stored  # the task's own log line
    states = "\n".join([str(t.state.message) for t in tasks if t.state is not None] + [str(failed.message)])
    assert "exited with 3" in states
    assert "hunter2" not in stored + states


def test_a_failed_trial_keeps_its_error_without_secrets(tmp_path: Path) -> None:
    info = journal(tmp_path)
    the_study, _ = study.open_study(storage.open_storage(info), make_spec(), info.shown)

    def broken(trial: optuna.Trial) -> float:
        raise ValueError("cannot open postgresql://me:pa/ss-hunter2@db/features")

    with pytest.raises(storage.TuneError) as caught:
        study.run_trials(the_study, broken, study.Budget(n_trials=10, deadline=None), info)
    assert "hunter2" not in str(caught.value)
    assert all("hunter2" not in t.user_attrs["error"] for t in the_study.trials)


# ----------------------------------------------------------------------------------------------
# the canary


def _leaks(folders: list[Path], canary: bytes) -> list[str]:
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                at = data.find(canary)
                if at >= 0:
                    found.append(f"{path}: ...{data[max(0, at - 80) : at + 40]!r}...")
    return found


@pytest.mark.integration
def test_canary_secrets_reach_no_store_file_log_or_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dvc repro + promote + one monitoring batch + `runs` + a refused `reproduce`, against a real
    MLflow server reached with `user:<canary>@` (its password holding `/`, `@` and `:`), an
    Optuna RDB storage on SQLite with `?password=<canary>` (SQLite ignores it), and canary
    tokens in MLFLOW_TRACKING_TOKEN, AWS_SECRET_ACCESS_KEY and PREFECT_API_KEY."""
    from reproml import servers

    canary = f"c4n4ry{uuid.uuid4().hex[:12]}"
    params = sampled_params(6000)
    params["promote"]["floor"] = 0.0  # the sample's first model is promoted whatever its score
    params["monitor"].update({"min_rows": 200, "bootstrap_samples": 200})
    project = Project(tmp_path, params)
    root = project.root
    (root / ".reproml").mkdir(exist_ok=True)
    tune_db = root / ".reproml" / "studies.db"
    monkeypatch.setenv("REPROML_MLFLOW_PORT", str(free_port()))
    servers.start(root, "mlflow", timeout=180)
    try:
        server = servers.mlflow_url(root).rstrip("/")
        host = server.removeprefix("http://")
        password = quote(f"{canary}-trk/A@b:c", safe="")
        project.env.update(
            {
                "MLFLOW_TRACKING_URI": f"http://reproml:{password}@{host}",
                "REPROML_TUNE_STORAGE": f"sqlite:///{tune_db}?password={canary}-tune",
                "MLFLOW_TRACKING_TOKEN": f"{canary}-token",
                "AWS_SECRET_ACCESS_KEY": f"{canary}-aws",
                "PREFECT_API_KEY": f"{canary}-prefect",
            }
        )
        outputs = [project.run("dvc", "repro", timeout=900)]
        outputs.append(project.run("reproml", "promote"))
        outputs.append(project.run("reproml", "monitor", "--batch", "2013-07", timeout=600))
        outputs.append(project.run("reproml", "runs"))
        outputs.append(project.run("reproml", "reproduce", "no-such-run", check=False))
        # it really went through the server and the RDB storage
        client = MlflowClient(tracking_uri=server)
        pipeline = client.get_experiment_by_name("reproml")
        monitoring = client.get_experiment_by_name("reproml-monitoring")
        assert pipeline is not None and monitoring is not None
        assert client.search_runs([pipeline.experiment_id], "tags.`reproml.stage` = 'train'")
        assert client.search_runs([monitoring.experiment_id])
        assert client.get_model_version_by_alias("flights-late", "champion")  # register.model_name: null
    finally:
        servers.stop(root, "mlflow")
    text = "\n".join(done.stdout + done.stderr for done in outputs)
    leaks = [f"output: {line}" for line in text.splitlines() if canary in line]
    leaks += _leaks([root, project.home, project.tmp], canary.encode())
    assert not leaks, "\n".join(leaks)
    for checked in (root / "mlflow.db", root / "mlartifacts", root / "monitoring", root / ".reproml"):
        assert checked.exists(), checked  # the places the issue names were there to be searched
    assert optuna.get_all_study_names(f"sqlite:///{tune_db}")
    assert f"{server}/#/experiments" in text  # MLflow printed its run links, without the password
    assert outputs[-1].returncode == 2 and "no-such-run" in outputs[-1].stderr


def test_scrub_survives_another_thread_changing_the_environment() -> None:
    """MLflow's telemetry thread sets and unsets a variable while a stage logs its params; reading
    os.environ during that raised KeyError in a fresh-clone `make run`."""
    import threading

    stop = threading.Event()

    def toggle() -> None:
        while not stop.is_set():
            os.environ["_REPROML_TOGGLED"] = "x"
            os.environ.pop("_REPROML_TOGGLED", None)

    thread = threading.Thread(target=toggle, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 3
        calls = 0
        while time.monotonic() < deadline:
            assert scrub("postgresql://u:pw-canary-77@h/db") == "postgresql://u:***@h/db"
            calls += 1
    finally:
        stop.set()
        thread.join()
    assert calls > 100
