"""`reproml`: one subcommand per DVC stage, plus the verbs people type.

Only Typer and Rich are imported at start-up; each command imports the heavy libraries it needs,
so `reproml --help` stays as quick as importing pandas. Prefect is imported only by the commands
that run a flow (retrain, serve, simulate), and the flows are the project's own `flows/` package,
found in the project root (`_flows`), not an installed one.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(
    help="Reproducible training, tuning, tracking and monitoring for tabular models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Off a terminal (make run | tee, CI logs) Rich would squeeze tables into 80 columns.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(width=_WIDTH)
err = Console(stderr=True, width=_WIDTH)
ROOT = Path(".")


@app.callback()
def main() -> None:
    from reproml.env import keep_inside
    from reproml.redaction import install_scrubbing

    keep_inside(ROOT)
    install_scrubbing()  # log records and uncaught tracebacks lose any password or token


def _clean(value: Any) -> Any:
    """What the terminal (and every CI log) gets: no password, token or signed URL."""
    from reproml.redaction import scrub_obj

    return scrub_obj(value)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it was raised from, outermost first."""
    links: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in links):
        links.append(current)
        current = current.__cause__ or current.__context__
    return links


def _through_mlflow(exc: BaseException) -> bool:
    """Whether `exc` was raised inside MLflow's code (so a SQLite message is about its store)."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("mlflow."):
            return True
        tb = tb.tb_next
    return False


def _known_fault(exc: BaseException) -> Exception | None:
    """A full disk or a locked MLflow store met below the library's own checks, as the clear
    error it deserves (naming the file or the store); None for anything else, which is a bug
    and keeps its traceback."""
    from reproml.io import DiskFullError, disk_full_error, is_disk_full

    for link in _chain(exc):
        if isinstance(link, OSError) and is_disk_full(link):
            # a copy (shutil: MLflow's artifacts) names its destination second
            return disk_full_error(link.filename2 or link.filename, link, atomic=False)
        text = str(link)
        if ("database is locked" in text or "database or disk is full" in text) and _through_mlflow(link):
            from reproml.stores.mlflow import connection

            uri = connection.tracking_uri(ROOT)
            if "locked" in text:
                return connection.store_locked_error(uri)
            return DiskFullError(
                f"MLflow store {connection.store_name(uri)}: database or disk is full. Free space where it "
                "lives and run again; a run left RUNNING is ended when the next run starts"
            )
    return None


def _failed(what: str, exc: BaseException | str) -> typer.Exit:
    """Print `what:` and the error's message (scrubbed; rich markup in it shown as text) and return
    the exit to raise (status 2)."""
    from rich.markup import escape

    err.print(f"[bold red]{what}:[/bold red] {escape(_clean(str(exc)))}", highlight=False)
    return typer.Exit(2)


@contextlib.contextmanager
def _clear_errors(name: str) -> Iterator[None]:
    """User errors, a full disk and a locked store end the command with a message and exit 2."""
    from reproml.errors import ReproError

    try:
        yield
    except ReproError as exc:
        raise _failed(f"reproml {name} failed", exc) from None
    except Exception as exc:
        clear = _known_fault(exc)
        if clear is None:
            raise
        raise _failed(f"reproml {name} failed", clear) from None


def _training(name: str) -> contextlib.AbstractContextManager[Any]:
    """The workspace's training lock (one training at a time; see reproml.training_lock)."""
    from reproml.training_lock import training_lock

    def notify(message: str) -> None:
        err.print(f"reproml {name}: {message}", highlight=False)

    return training_lock(ROOT, notify=notify)


def _run_stage(name: str, stage: Callable[[Path], Mapping[str, Any]], training: bool = False) -> None:
    locked = _training(name) if training else contextlib.nullcontext()
    with _clear_errors(name), locked, console.status(f"[bold]{name}[/bold] running"):
        summary = stage(ROOT)
    console.print(f"[green]{name} done[/green]", _clean(summary), highlight=False)
    _skip_exit_collection()


def _skip_exit_collection() -> None:
    """Spare the interpreter's final garbage collection over every imported module.

    With pandas, sklearn, XGBoost and MLflow loaded it takes 0.5-1.5 s per stage, and each DVC
    stage is its own process. Everything the stage wrote is closed and renamed by now; freezing
    only skips finalisers of objects caught in reference cycles, which hold nothing of ours.
    """
    import gc

    gc.freeze()


@app.command()
def ingest() -> None:
    """Load the data source named in params.yaml `data`, validate it, write data/ingested.parquet."""
    from reproml.stages.ingest import run_ingest

    _run_stage("ingest", run_ingest)


@app.command()
def prepare() -> None:
    """Split into train/valid/test (and held-back production) by time, or seeded at random."""
    from reproml.stages.prepare import run_prepare

    _run_stage("prepare", run_prepare)


@app.command()
def tune() -> None:
    """Optuna study over train.model's space on the valid split; writes models/best_params.json."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from reproml.stages.tune import TuneOff, TuneSummary, run_tune

    columns = [
        TextColumn("[bold]tune[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    ]
    with (
        _clear_errors("tune"),
        _training("tune"),
        Progress(*columns, console=console, transient=False) as bar,
    ):
        task = bar.add_task("tune", total=None, detail="starting")

        def show(counts: Any) -> None:
            best = "-" if counts.best is None else f"{counts.best:.5f}"
            detail = f"pruned {counts.pruned} · failed {counts.failed} · best {best}"
            bar.update(task, completed=counts.finished, detail=detail)

        def run(root: Path) -> TuneOff | TuneSummary:
            from reproml.config import load_params

            settings = load_params(root / "params.yaml").tune
            if settings.enabled:
                bar.update(task, total=settings.n_trials)
            else:
                bar.update(task, total=0, detail="off (tune.enabled: false)")
            return run_tune(root, on_counts=show)

        summary = run(ROOT)
    console.print("[green]tune done[/green]", _clean(summary), highlight=False)
    _skip_exit_collection()


@app.command()
def train() -> None:
    """Fit preprocessing + model on train, early-stop on valid; log the run and model to MLflow."""
    from reproml.stages.train import run_train

    _run_stage("train", run_train, training=True)


@app.command()
def evaluate() -> None:
    """Metrics on every split, overfitting check, plots; logged into the training run."""
    from reproml.stages.evaluate import run_evaluate

    _run_stage("evaluate", run_evaluate, training=True)


@app.command()
def register() -> None:
    """Register the evaluated run's model as a new version with alias `challenger`."""
    from reproml.stages.register import run_register

    _run_stage("register", run_register, training=True)


@app.command()
def promote(
    version: int | None = typer.Option(None, help="Force this version to champion (needs --reason)."),
    reason: str | None = typer.Option(None, help="Why a forced promotion skips the gate (recorded)."),
    evidence: str | None = typer.Option(
        None,
        help="test: judge on the test split (+ newest labelled window); production: on the labelled "
        "batches the challenger scored as a shadow beside the champion. Default: promote.evidence.",
    ),
) -> None:
    """Gate the challenger against the champion; move `champion` only if it is clearly better."""
    from reproml.retrain import Promotion
    from reproml.stages.register import run_promote

    def decide(root: Path) -> Promotion:
        record = run_promote(root, version=version, reason=reason, evidence=evidence)
        # the full record (gate numbers, slices) is in the file; the terminal gets the verdict
        return {
            "action": record.get("action"),
            "challenger": record.get("challenger"),
            "champion": record.get("champion"),
            "reason": record.get("reason"),
            "record": record.get("record"),
        }

    _run_stage("promote", decide, training=True)


@app.command()
def refit(
    version: int | None = typer.Option(None, help="The promoted version to refit (default: the champion)."),
) -> None:
    """Refit the promoted model on train + valid + test (its hyperparameters, its best round count)
    and make the refit the champion; the audit trail and its run say what it learned."""
    from reproml.stages.refit import run_refit

    _run_stage("refit", lambda root: run_refit(root, version=version), training=True)


@app.command()
def rollback(reason: str = typer.Option(..., help="Why (recorded in the audit trail).")) -> None:
    """Make `previous` the champion again."""
    from reproml.stages.register import run_rollback

    _run_stage("rollback", lambda root: run_rollback(root, reason=reason))


@app.command("registry")
def registry_history() -> None:
    """Every registry decision (promotions, rejections, forced promotions, rollbacks) as a table."""
    from reproml.report import registry_table

    console.print(registry_table(ROOT))


@app.command()
def monitor(
    batch: str = typer.Option(
        "",
        "--batch",
        help="A CSV/Parquet file under data/ or monitoring/, or a period of "
        "data/prepared/production.parquet: 2013-08, 2013-W33, 2013-08-05 or 2013-08-01..2013-08-14.",
    ),
    feed: bool = typer.Option(
        False,
        "--feed",
        help="Take every batch file that arrived in the feed folder (monitor.feed) since the last "
        "run, once and in time order, and attach the labels files (<batch stem>.labels.csv|parquet) "
        "that arrived for batches already taken. Not with --batch, --labels or --backfill.",
    ),
    backfill: bool = typer.Option(
        False,
        "--backfill",
        help="Judge a batch older than the newest monitored one as usual "
        "(without it, such a batch gets the verdict out_of_order and is not measured).",
    ),
    labels: str = typer.Option(
        "",
        "--labels",
        help="The labels of a batch monitored earlier arrived: a CSV/Parquet file holding that batch "
        "again (same rows, same order) with its labels; --batch names the batch (its id or period). "
        "Its record gains the realised metric, the estimate's error and the shift it shows.",
    ),
) -> None:
    """Check one production batch against the champion: quality gate, drift, quality, retrain verdict.

    Writes monitoring/<model>/records/<batch>.json, the Evidently reports under
    monitoring/<model>/reports/ and one MLflow run in the `<experiment>-monitoring` experiment.
    """
    from reproml.monitoring.batches import batch_spec
    from reproml.report import verdict_table
    from reproml.stages.monitor import run_labels, run_monitor

    if feed:
        _monitor_feed(batch, labels, backfill)
        return
    with _clear_errors("monitor"):
        if not batch:
            from reproml.errors import ReproError

            raise ReproError(
                "--batch is required (a CSV/Parquet file or a period such as 2013-08), or --feed"
            )
        if labels:
            found = batch_spec(ROOT, labels, "--labels")
            with console.status("[bold]monitor --labels[/bold] running"):
                record = run_labels(ROOT, batch=batch, labels=found)
            console.print(verdict_table(record))
            _skip_exit_collection()
            return
        spec = batch_spec(ROOT, batch, "--batch")
        with console.status("[bold]monitor[/bold] running"):
            record = run_monitor(ROOT, batch=spec, backfill=backfill)
    console.print(verdict_table(record))
    _skip_exit_collection()


def _monitor_feed(batch: str, labels: str, backfill: bool) -> None:
    """`reproml monitor --feed`: the feed once, a row per file taken or left; exit 1 when a file
    was refused (content changed under a name already taken), so a scheduler sees it."""
    from reproml.errors import ReproError
    from reproml.orchestration.monitoring import feed
    from reproml.report import feed_table

    with _clear_errors("monitor --feed"):
        given = [
            flag
            for flag, value in (("--batch", batch), ("--labels", labels), ("--backfill", backfill))
            if value
        ]
        if given:
            raise ReproError(
                f"--feed takes every new file of the feed folder (monitor.feed) in time order; it cannot "
                f"be combined with {', '.join(given)}: monitor one file with --batch, without --feed"
            )
        with console.status("[bold]monitor --feed[/bold] running"):
            result = feed(ROOT)
    if result["busy"]:
        console.print(
            f"another feed run is taking the files of {result['feed']}: nothing taken by this one",
            markup=False,
            highlight=False,
        )
    elif not result["rows"]:
        console.print(f"{result['feed']}: nothing new", markup=False, highlight=False)
    else:
        console.print(feed_table(result))
    _skip_exit_collection()
    if result["refused"]:
        raise typer.Exit(1)


@app.command("monitoring")
def monitoring_history() -> None:
    """Every monitored batch of the data in use (verdict, drift, quality) as a table; details in
    monitoring/<model>/records/."""
    from reproml.errors import ReproError
    from reproml.report import monitoring_table
    from reproml.stages.monitor import monitoring_history as records

    try:
        name, found = records(ROOT)
    except ReproError as exc:
        raise _failed("reproml monitoring failed", exc) from None
    console.print(monitoring_table(found, name))


def _flows_root() -> Path:
    """The project root whose `flows/` package holds the Prefect definitions (the wheel installs
    only the library); exit 2 naming the folder when it is not there."""
    from reproml.errors import ReproError
    from reproml.paths import project_root

    try:
        root = project_root(ROOT)
        if not (root / "flows" / "__init__.py").is_file():
            raise ReproError(
                f"{root / 'flows'} is not a package: the Prefect flows live in the project's flows/ "
                "folder (restore it from git)"
            )
    except ReproError as exc:
        raise _failed("no flows", exc) from None
    return root


def _prefect() -> None:
    """Point Prefect at a real server: PREFECT_API_URL, else the project's (`make up`), started
    if needed. Flows never run on Prefect's temporary per-process server. The project's flows/ is
    checked first, so nothing is started for a command that cannot run."""
    import os

    from reproml.servers import ensure_prefect

    _flows_root()
    try:
        os.environ["PREFECT_API_URL"] = ensure_prefect(ROOT.resolve())
    except Exception as exc:  # the message names the server, URL and log
        raise _failed("no Prefect server", exc) from None


def _flows(module: str) -> ModuleType:
    """`flows.<module>` of the project this command runs in (after `_prefect`: Prefect reads its
    settings when imported). The root goes on `sys.path` so the served deployments' module
    entrypoints (`flows.monitoring`) import in their run processes too."""
    import importlib

    root = str(_flows_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(f"flows.{module}")


@app.command()
def retrain(
    labelled: str | None = typer.Option(
        None,
        "--labelled",
        help="A Parquet file of labelled production rows (under data/ or monitoring/) to add as a new "
        "data version.",
    ),
    branch: str | None = typer.Option(None, help="Branch for the data versions (default: retrain.branch)."),
) -> None:
    """The training flow (Prefect): new data version -> dvc repro -> challenger -> promotion gate,
    on its own branch (a worktree under .reproml/worktrees/); your branch stays as it is."""
    from reproml.data.source import check_committed
    from reproml.errors import ReproError
    from reproml.paths import confined
    from reproml.stages.common import load

    try:  # refused before a Prefect server is started for it
        source = None if labelled is None else str(confined(labelled, ROOT, "--labelled"))
        params = load(ROOT)
        if source is not None and params.data.time_column is None:
            raise ReproError(
                "--labelled: data.time_column is null, and a labelled batch joins the data by time "
                "(it becomes the new test window); for an undated data set add the rows to "
                "data.path's file and run `dvc repro` and `reproml promote`, or `reproml retrain` "
                "without --labelled"
            )
        check_committed(ROOT, params, "reproml retrain")
    except ReproError as exc:
        raise _failed("reproml retrain refused", exc) from None
    _prefect()
    training = _flows("training").training
    summary = training(root=str(ROOT.resolve()), labelled=source, branch=branch)
    console.print(_clean(summary["promotion"]), highlight=False)


@app.command()
def serve(
    cron: str = typer.Option("0 6 * * *", help="When the monitoring deployment runs (cron, UTC)."),
    every: str = typer.Option("month", help="Batch size the scheduled monitoring takes: month | week."),
) -> None:
    """Create the deployments (monitoring/daily on `cron`, or monitoring-feed/daily when params.yaml
    names a production feed in monitor.feed; training/on-demand) and run them until stopped;
    `prefect deployment ls` and the Prefect UI list them."""
    _prefect()
    _flows("deploy").serve(ROOT.resolve(), cron, every)


@app.command()
def deploy(
    pool: str = typer.Option(..., "--pool", help="The Prefect work pool whose workers run the flows."),
    repo: str | None = typer.Option(
        None, help="The git repository workers clone (URL or path; default: this project's `origin`)."
    ),
    branch: str | None = typer.Option(None, help="The branch workers run (default: the one checked out)."),
    cron: str = typer.Option("0 6 * * *", help="When the monitoring deployment runs (cron, UTC)."),
    every: str = typer.Option("month", help="Batch size the scheduled monitoring takes: month | week."),
) -> None:
    """Register the deployments (as `serve` does) on a work pool: each flow run is picked up by one
    of the pool's workers, which clones the repository's branch and runs the flow in that clone.
    Also ensures the `reproml-retrain` concurrency limit: one retrain at a time across all workers."""
    from reproml.errors import ReproError
    from reproml.orchestration.deploy import git_source

    try:
        source = git_source(ROOT, repo, branch)
    except ReproError as exc:
        raise _failed("reproml deploy refused", exc) from None
    _prefect()
    try:
        names = _flows("deploy").deploy_to_pool(ROOT.resolve(), pool, source, cron, every)
    except Exception as exc:  # no such pool, an unreachable repository: Prefect's words, scrubbed
        raise _failed(f"reproml deploy to pool {pool} failed", exc) from None
    for name in names:
        console.print(
            f"{name} on pool {pool}, code from {_clean(source.url)}@{source.branch}", highlight=False
        )


@app.command()
def simulate(
    every: str = typer.Option("month", help="month | week"),
    start: str | None = typer.Option(
        None, help="First period replayed, e.g. 2013-07 (default: the first of the production rows)."
    ),
    end: str | None = typer.Option(
        None, help="Last period replayed, e.g. 2013-12 (default: the last of the production rows)."
    ),
    policies: str = typer.Option(
        "reproml",
        help="Retrain policies replayed one after the other from the same start, comma-separated: "
        "never, always, reproml. More than one also writes policies.md/.html/.svg side by side.",
    ),
    labels: str = typer.Option(
        "now",
        help="now: each period is judged with its labels; late: without them (on the estimate), "
        "its labels arriving with the next period (the last one's after it), a retrain learning "
        "the newest labelled window that has arrived.",
    ),
) -> None:
    """Replay the held-back production rows (the bundled flights: July-December 2013) period by
    period through the monitoring flow: drift checks, retrain verdicts, DVC data versions,
    challengers, promotions, refits; then a table and monitoring/<model>/reports/simulation.html
    against the model never retrained. `--policies never,always,reproml` replays the same periods
    under each policy and compares them (quality per period, mean, retrains, compute time).
    `--labels late` withholds each period's labels for one period: judged on the estimate, retrained
    on the labels that have arrived, each period's quality realised once its labels came.
    Needs a dated data set (data.time_column)."""
    from reproml.data.source import check_committed
    from reproml.errors import ReproError
    from reproml.monitoring.batches import replay_periods
    from reproml.simulation import LABEL_MODES, parse_labels, parse_policies
    from reproml.stages.common import load

    try:  # refused before a Prefect server is started for it
        chosen = parse_policies(policies)
        mode = parse_labels(labels)
        params = load(ROOT)
        spans = replay_periods(ROOT, params.data.time_column, start, end, every)
        check_committed(ROOT, params, "reproml simulate")
    except ReproError as exc:
        raise _failed("reproml simulate refused", exc) from None
    _prefect()
    from rich.table import Table

    from reproml.simulation import COLUMNS, cell, headers

    replay = _flows("simulate").simulate

    first, last = spans[0].label, spans[-1].label
    result = replay(
        root=str(ROOT.resolve()), every=every, start=first, end=last, policies=chosen, labels=mode
    )
    table = Table(
        title=f"Production replay {first}..{last} ({result['metric']}; never retrained: "
        f"v{result['baseline_version']}; {LABEL_MODES[mode]})"
    )
    for label in headers(result["metric"]):
        table.add_column(label, justify="right")
    for row in result["rows"]:
        table.add_row(*(cell(row.get(key)) for key in COLUMNS))
    console.print(table)
    console.print(f"final champion: v{result['final_champion']} · report: {result['html']}")
    comparison = result.get("comparison")
    if comparison:
        side = Table(title=f"Retrain policies {first}..{last} ({result['metric']} per period; labels {mode})")
        for label in ["policy", *comparison["batches"], "mean", "vs never", "retrains", "training s"]:
            side.add_column(label, justify="right")
        for line in comparison["policies"]:
            gain = "-" if line["vs_never"] is None else f"{line['vs_never']:+.4f}"
            side.add_row(
                line["policy"],
                *(cell(line["quality"].get(b)) for b in comparison["batches"]),
                cell(line["mean"]),
                gain,
                str(line["retrains"]),
                str(line["training_seconds"]),
            )
        console.print(side)
        console.print(f"policies: {comparison['files']['md']} · {comparison['files']['html']}")


@app.command()
def reproduce(
    run_id: str = typer.Argument(..., help="MLflow run id, or @champion / @challenger."),
    keep: bool = typer.Option(False, "--keep", help="Keep the worktree under .reproml/reproduce/."),
) -> None:
    """Rebuild a run from its recorded lineage; print `identical` (exit 0) or what differs (exit 1)."""
    from reproml.errors import ReproError
    from reproml.reproduce import reproduce as rebuild
    from reproml.reproduce import reproduction_table

    try:
        with console.status("[bold]reproduce[/bold] starting") as status:
            result = rebuild(ROOT, run_id, keep=keep, progress=lambda m: status.update(f"[bold]{m}"))
    except ReproError as exc:
        raise _failed("reproml reproduce refused", exc) from None
    console.print(reproduction_table(result))
    for note in result.notes:
        console.print(f"note: {_clean(note)}", highlight=False)
    if result.failure:
        _failed("rebuild failed", result.failure)
    if result.kept:
        console.print(
            f"worktree kept at {result.kept}; remove it with `git worktree remove --force {result.kept}`",
            highlight=False,
        )
    _skip_exit_collection()
    if result.identical:
        console.print("[bold green]identical[/bold green]")
        return
    console.print(f"[bold red]differs:[/bold red] {', '.join(result.differences)}", highlight=False)
    raise typer.Exit(1)


@app.command()
def compare(
    run_a: str = typer.Argument(..., help="MLflow run id (or @alias)."),
    run_b: str = typer.Argument(..., help="MLflow run id (or @alias)."),
    show_all: bool = typer.Option(False, "--all", help="Include equal params, libraries and all metrics."),
) -> None:
    """Params, metrics, data and code versions of two runs side by side; differences highlighted."""
    from reproml.errors import ReproError
    from reproml.report import compare_table
    from reproml.reproduce import RunView, compare_runs, load_run

    try:
        a, b = (RunView.of(load_run(ROOT, ref)) for ref in (run_a, run_b))
    except ReproError as exc:
        raise _failed("reproml compare failed", exc) from None
    rows = compare_runs(a, b, everything=show_all)
    console.print(compare_table(rows, f"{a.name} ({a.run_id[:8]})", f"{b.name} ({b.run_id[:8]})"))


@app.command()
def runs(limit: int = typer.Option(10, help="How many recent runs to show.")) -> None:
    """Recent pipeline runs with their key metrics, data version and code version."""
    from reproml.config import load_params
    from reproml.errors import ReproError
    from reproml.report import runs_table

    try:
        params = load_params(ROOT / "params.yaml")
    except ReproError as exc:
        raise _failed("reproml runs failed", exc) from None
    console.print(runs_table(ROOT, params.mlflow.experiment_name, limit))


if __name__ == "__main__":
    app()
