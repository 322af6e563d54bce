"""`reproml simulate`: the held-back production periods (July-December 2013 for the bundled
flights; by default every period a user's dated production rows reach into) replayed as
production through the monitoring flow.

Each period goes through the same monitoring flow the daily schedule runs; a `retrain` verdict
hands the batch to the training flow (new DVC data version on the simulation's own branch,
`reproml/<model>/simulation`, `dvc repro`, challenger, gate). The steps (clean start, report) are
`reproml.orchestration.replay`.

`labels="late"`: before period t is judged, the labels of period t-1 arrive (the path `reproml
monitor --labels` takes): t-1 is judged again on them, and a `retrain` verdict on them hands its
labelled window to the training flow then, before t is judged. Period t is judged without its own
labels (on the estimate), and a retrain it starts learns the newest labelled window that has
arrived after what the champion learned, never t's rows. The last period's labels arrive after
it, so every period's quality is realised, as in the labels-now replay.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from flows.monitoring import hand_off_labels, monitoring
from reproml.monitoring.records import BatchSummary
from reproml.orchestration import replay

reset = task(name="reset")(replay.reset)
report = task(name="report")(replay.report)
compare = task(name="compare")(replay.compare)
arrive_labels = task(name="arrive_labels")(replay.arrive_labels)


@flow(name="simulate", log_prints=True)
def simulate(
    root: str = ".",
    every: str = "month",
    start: str | None = None,
    end: str | None = None,
    branch: str | None = None,
    policies: list[str] | None = None,
    labels: str = "now",
) -> dict[str, Any]:
    """Replay the periods `start`..`end` (default: every period of the held-back production rows)
    on `branch` (default: `reproml/<model>/simulation`) under each retrain policy in `policies`
    (`never`, `always`, `reproml`; default: `reproml` alone), each from the same clean start.
    Checked before anything moves: the data is dated and the periods lie in its production rows.
    With more than one policy, `comparison` holds the table written to policies.md/.html.
    `labels`: `now` (each period judged with its labels) or `late` (they arrive with the next
    period; see the module's docstring)."""
    import time

    from reproml.config import simulation_branch
    from reproml.monitoring.batches import replay_periods
    from reproml.paths import branch_name, project_root
    from reproml.simulation import REPROML, parse_labels, parse_policies
    from reproml.stages.common import load

    log = get_run_logger()
    home = project_root(root, "root")
    params = load(home)
    chosen = parse_policies(",".join(policies or [REPROML]))
    mode = parse_labels(labels)
    late = mode == "late"
    spans = replay_periods(home, params.data.time_column, start, end, every)
    replay_branch = branch_name(branch or simulation_branch(params.register_.model_name))
    results: list[replay.ReplayReport] = []

    def arrived(period: str, outcome: BatchSummary, policy: str) -> None:
        """Period's labels arrive; the verdict on them may retrain (kept on its `outcome`)."""
        record = arrive_labels(home, period)
        if record is None:
            log.warning("labels of %s: the period was not scored, nothing to label", period)
            return
        realised = record.get("realised")
        log.info(
            "labels of %s arrived: realised %s %s",
            period,
            None if realised is None else realised["metric"],
            None if realised is None else realised["value"],
        )
        handed = hand_off_labels(home, record, True, replay_branch, policy)
        if "labels_retrain" in handed:
            outcome["labels_retrain"] = handed["labels_retrain"]
            outcome["labels_retrain_seconds"] = handed.get("labels_retrain_seconds", 0.0)
            outcome["champion_after"] = replay.champion_version(home)

    for number, policy in enumerate(chosen):
        started = time.perf_counter()
        baseline_version = reset(home, replay_branch, keep_reports=number > 0)
        outcomes: list[BatchSummary] = []
        for index, period in enumerate(spans):
            if late and index > 0:
                arrived(spans[index - 1].label, outcomes[index - 1], policy)
            outcome = monitoring(
                root=str(home),
                batch=period.label,
                every=every,
                branch=replay_branch,
                policy=policy,
                withhold_labels=late,
            )
            outcome["champion_after"] = replay.champion_version(home)
            log.info(
                "%s %s: %s, champion v%s",
                policy,
                period.label,
                outcome.get("verdict"),
                outcome["champion_after"],
            )
            outcomes.append(outcome)
        if late:
            arrived(spans[-1].label, outcomes[-1], policy)  # the last period's labels come after it
            outcomes = [replay.with_realised(home, outcome) for outcome in outcomes]
        result = report(home, outcomes, baseline_version, None if len(chosen) == 1 else policy, mode)
        results.append({**result, "policy": policy, "seconds": time.perf_counter() - started})
    last = next((r for r in results if r["policy"] == REPROML), results[-1])
    out: dict[str, Any] = {**last, "start": spans[0].label, "end": spans[-1].label, "policies": chosen}
    out["labels"] = mode
    if len(chosen) > 1:
        out["comparison"] = compare(home, results)
    return out
