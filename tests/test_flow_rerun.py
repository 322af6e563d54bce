"""A training flow run lost with its worker is run again as the same flow run (same id): the rerun
takes the gate's decision, and the refit's, from what the lost attempt left (the version's
decision tags, or the audit trail when it died between writing the record and tagging), never
judging or recording the same (version, flow run) twice (issue 15: "its work is retried and
nothing is counted twice").

The steps the training flow runs (`reproml.orchestration.training`: earlier_decision, promote,
earlier_refit, refit), called in-process on test_registry's tiny project (its own worktree),
against real MLflow (SQLite) and the file audit trail. A loss is the process ending at that line:
an exception no `except Exception` catches, raised where the lost attempt would have been killed;
the one loss inside the alias move is a real SIGKILL of a child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, NoReturn

import pytest
from mlflow.tracking import MlflowClient

from reproml import fitting, gate, registry
from reproml.orchestration import training as steps
from reproml.orchestration.training import FLOW_RUN_TAG
from reproml.stages.register import DATA_SOURCE_TAG
from reproml.stores.mlflow import versions as mlflow_versions
from reproml.stores.records import RECORDS_URL_ENV, REGISTRY, SqlRecords
from tests.test_registry import NAME, alias, pipeline, project  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration
RUN = "0b9c3f1e-5d2a-4c6e-9f00-000000000001"  # the flow run's id (Prefect's are UUIDs)
OTHER = "0b9c3f1e-5d2a-4c6e-9f00-000000000002"


class Lost(BaseException):
    """The worker killed at this line: nothing after it runs, no `except Exception` sees it."""


def lost(*_: Any, **__: Any) -> NoReturn:
    raise Lost


def not_judged(*_: Any, **__: Any) -> NoReturn:
    raise AssertionError("judged (or fit) again")


def tags_of(version: int) -> dict[str, str]:
    return dict(MlflowClient().get_model_version(NAME, str(version)).tags)


@pytest.mark.parametrize(
    ("records", "resumed_by"),
    [
        ("files", "rerun"),
        pytest.param("database", "rerun", marks=pytest.mark.slow),  # suite time: the same look-up, SqlRecords
        pytest.param("files", "retried task", marks=pytest.mark.slow),  # suite time: the same look-up, first
    ],
)
def test_a_rerun_after_a_loss_between_the_record_and_the_tags_takes_the_recorded_decision(
    project: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    records: str,
    resumed_by: str,
) -> None:
    """`database`: the audit trail in a records database (`SqlRecords`, the team's backend; here
    on SQLite, where PostgreSQL differs only in its lock and upsert dialect). `retried task`: the
    flow's promote task run again by its own retries (a transient failure after the record) rather
    than by a rerun of the flow."""
    if records == "database":
        monkeypatch.setenv(RECORDS_URL_ENV, f"sqlite:///{tmp_path / 'records.db'}")
    registered = pipeline(project)
    version = registered["version"]
    assert steps.earlier_decision(project, project, RUN) is None
    with monkeypatch.context() as patched:
        patched.setattr(registry, "_tag_decision", lost)
        with pytest.raises(Lost):
            steps.promote(project, project, RUN)
    [recorded] = registry.history(project)
    assert (recorded["action"], recorded["status"], recorded["flow_run"]) == ("promote", "done", RUN)
    assert "reproml.decision" not in tags_of(version)  # the window: recorded, not tagged
    with monkeypatch.context() as patched:
        patched.setattr(gate, "decide", not_judged)
        if resumed_by == "rerun":
            again = steps.earlier_decision(project, project, RUN)
        else:
            again = steps.promote(project, project, RUN)
    assert again == recorded  # the recorded decision, not a new one
    assert registry.history(project) == [recorded]
    if records == "database":  # the rows are the record; the files only mirror them
        assert os.environ[RECORDS_URL_ENV].startswith("sqlite:///")
        assert len(SqlRecords(os.environ[RECORDS_URL_ENV]).all(REGISTRY, NAME, tmp_path / "none")) == 1
    tags = tags_of(version)
    assert (tags["reproml.decision"], tags["reproml.decision_record"]) == ("promote", recorded["record"])
    assert alias("champion") == version
    # the key is (version, flow run): another flow run's rerun finds no decision of its own
    assert steps.earlier_decision(project, project, OTHER) is None


KILLED_WHILE_MOVING = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from reproml import registry
    from reproml.orchestration import training as steps

    moving = registry._move_aliases

    def killed(*args):
        moving(*args)  # the aliases moved; the record still says `pending`
        os.kill(os.getpid(), signal.SIGKILL)

    registry._move_aliases = killed
    root = Path(sys.argv[1])
    steps.earlier_decision(root, root, sys.argv[2])
    steps.promote(root, root, sys.argv[2])
    """
)


@pytest.mark.slow  # suite time: a real SIGKILL mid-promotion; the record look-up runs in CI above
def test_a_rerun_after_a_kill_while_the_aliases_moved_settles_and_takes_that_decision(
    project: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registered = pipeline(project)
    version = registered["version"]
    env = {**os.environ, "TMPDIR": str(project)}
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_MOVING, str(project), RUN], env=env, timeout=300, check=False
    )
    assert done.returncode == -9, done
    [pending] = registry.history(project)
    assert (pending["action"], pending["status"], pending["flow_run"]) == ("promote", "pending", RUN)
    assert alias("champion") == version and "reproml.decision" not in tags_of(version)
    monkeypatch.setattr(gate, "decide", not_judged)
    again = steps.earlier_decision(project, project, RUN)
    assert again is not None
    assert (again["action"], again["status"], again["record"]) == ("promote", "done", pending["record"])
    assert "took effect" in again["settled"]
    assert [r["record"] for r in registry.history(project)] == [pending["record"]]
    assert tags_of(version)["reproml.decision"] == "promote"


@pytest.mark.parametrize(
    "lost_at",
    ["tags", pytest.param("registration", marks=pytest.mark.slow)],  # suite time
)
def test_a_rerun_takes_the_decision_its_tags_hold_and_the_refit_it_registered(
    project: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    lost_at: str,
) -> None:
    """The decision-reuse path (the lost attempt tagged its decision), then a refit lost before
    tagging its decision (`tags`: its record is written) or right after its version was created
    (`registration`: no data-source tag, no record): neither the gate nor the refit runs again,
    nothing is recorded twice, and the rerun's promotion is the first attempt's."""
    assert steps.FLOW_RUN_TAG == registry.FLOW_RUN_TAG
    registered = pipeline(project)
    version = registered["version"]
    assert steps.earlier_decision(project, project, RUN) is None  # the first attempt: judge
    assert tags_of(version)[FLOW_RUN_TAG] == RUN  # tagged before the gate decides
    first = steps.promote(project, project, RUN)
    assert first["action"] == "promote", first["reason"]
    assert first["flow_run"] == RUN
    trail = registry.history(project)
    assert [r["record"] for r in trail] == [first["record"]]
    with monkeypatch.context() as patched:
        patched.setattr(gate, "decide", not_judged)
        again = steps.earlier_decision(project, project, RUN)  # a rerun: lost after the gate
    assert again is not None
    assert again["challenger"] == first["challenger"]
    shown = ("action", "reason", "record")
    assert {k: again.get(k) for k in shown} == {k: first.get(k) for k in shown}
    assert registry.history(project) == trail  # no second entry
    assert steps.earlier_refit(project, project, again, RUN) is None  # nothing refit yet
    with monkeypatch.context() as patched:
        if lost_at == "tags":
            patched.setattr(registry, "_tag_decision", lost)
        else:  # the first call after registry.register: the refit's data-source tag
            patched.setattr(mlflow_versions, "set_version_tag", lost)
        with pytest.raises(Lost):
            steps.refit(project, project, again, RUN)
    (refit_version,) = (
        int(v.version)
        for v in MlflowClient().search_model_versions(f"name='{NAME}'")
        if int(v.version) != version
    )
    refit_tags = tags_of(refit_version)
    assert json.loads(refit_tags["reproml.refit_of"])["version"] == version
    assert refit_tags[FLOW_RUN_TAG] == RUN  # tagged as it was created
    assert "reproml.decision" not in refit_tags  # the window: not tagged (nor recorded: `promote`)
    assert [r["action"] for r in registry.history(project)] == (
        ["promote", "refit"] if lost_at == "tags" else ["promote"]
    )
    assert alias("champion") == (refit_version if lost_at == "tags" else version)
    assert (DATA_SOURCE_TAG in refit_tags) == (lost_at == "tags")
    with monkeypatch.context() as patched:
        patched.setattr(fitting, "refit_model", not_judged)  # nothing is fit again
        refitted = steps.earlier_refit(project, project, again, RUN)  # the rerun: no second refit
    assert refitted is not None
    assert refitted["version"] == refit_version
    trail = registry.history(project)
    refit_record = trail[-1]
    assert [r["action"] for r in trail] == ["promote", "refit"]
    assert (refit_record["flow_run"], refit_record["status"]) == (RUN, "done")
    assert refit_record["challenger"] is not None
    assert refit_record["challenger"]["version"] == refit_version
    assert refitted["decision"] == {
        "action": "refit",
        "reason": refit_record["reason"],
        "record": refit_record["record"],
    }
    assert tags_of(refit_version)["reproml.decision"] == "refit"
    assert tags_of(refit_version)[DATA_SOURCE_TAG] == tags_of(version)[DATA_SOURCE_TAG]
    assert alias("champion") == refit_version
    assert len(MlflowClient().search_model_versions(f"name='{NAME}'")) == 2
    assert steps.earlier_refit(project, project, again, RUN) == refitted | {
        "rounds": None,
        "fit_seconds": 0.0,
    }
    assert registry.history(project) == trail
