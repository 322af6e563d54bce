"""What DVC, MLflow and the stage boundaries cost on top of the modelling work itself.

Two targets from the project's issue, each printed as a ratio of medians against a bare baseline
measured side by side (machines are noisy, so runs alternate and medians are compared):

* a full `dvc repro --force` (ingest -> prepare -> train -> evaluate) against one bare Python
  process doing the same load, fit and scoring with no DVC, no MLflow and no stage files:
  target 1.3 or less;
* `reproml --help` against `python -c "import pandas"`: target 1.5 or less.

Why a copy: the pipeline runs in a scratch copy of the *current working tree* (tracked files plus
untracked, not-ignored ones, committed into a fresh git repository there), so the numbers are for
the code you are looking at, and your workspace's data, models, `mlflow.db` and DVC cache are never
touched. `PYTHONPATH` points at the copy's `src/` so the copy's code wins over an editable install.

The bare baseline (`--bare`, run as its own process by this script) calls reproml's pure functions
(`reproml.data.ingest.ingest`, `reproml.data.split.split`, `reproml.train.fit_model`,
`reproml.evaluate`), so both sides run the same algorithms with the same params and must produce
the same metrics; the script checks that they do. See benchmarks/README.md for how to read it.

Run: `.venv/bin/python benchmarks/pipeline_overhead.py [--repeats N | --quick]`.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Only the standard library is imported at module level: the bare baseline runs this file as its
# own process, and Rich's import time must not be charged to it.

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_TARGET = 1.3
CLI_TARGET = 1.5
STAGES = ("ingest", "prepare", "train", "evaluate")
SPLITS = ("train", "valid", "test")

# Buckets of the per-stage attribution table, in display order.
STARTUP = "start-up + imports (python, pandas, sklearn...)"
PARAMS = "params.yaml load + validation"
W_LOAD = "work: read CSVs, join, validate"
W_SPLIT = "work: time split"
W_FIT = "work: fit (preprocess + XGBoost)"
W_SCORE = "work: scores + metrics"
W_IMPORTANCE = "work: permutation importance"
W_PLOTS = "work: plot frames + PNGs"
IO_READ = "I/O: read stage inputs"
IO_WRITE = "I/O: write stage outputs"
LINEAGE = "lineage: git, md5/sha256, versions"
ML_IMPORT = "MLflow: imports (mlflow, SQLAlchemy store, skops)"
ML_SETUP = "MLflow: store setup + run lookup"
ML_RUN = "MLflow: run start/end"
ML_BATCH = "MLflow: params, tags, metrics"
ML_DATASETS = "MLflow: dataset inputs"
ML_MODEL = "MLflow: model logging"
ML_ARTIFACTS = "MLflow: plot artifacts + table"
OTHER = "other (CLI, spinner, untimed calls)"
EXIT = "interpreter exit"
BUCKETS = (
    STARTUP, PARAMS, W_LOAD, W_SPLIT, W_FIT, W_SCORE, W_IMPORTANCE, W_PLOTS, IO_READ, IO_WRITE,
    LINEAGE, ML_IMPORT, ML_SETUP, ML_RUN, ML_BATCH, ML_DATASETS, ML_MODEL, ML_ARTIFACTS, OTHER, EXIT,
)  # fmt: skip
WORK = (W_LOAD, W_SPLIT, W_FIT, W_SCORE, W_IMPORTANCE, W_PLOTS)
MLFLOW = (ML_IMPORT, ML_SETUP, ML_RUN, ML_BATCH, ML_DATASETS, ML_MODEL, ML_ARTIFACTS)

# The functions each stage calls, by (module, attribute, bucket). A name that no longer exists is
# skipped, so after a refactor its time shows up under "other" instead of breaking the benchmark.
PATCHES: dict[str, list[tuple[str, str, str]]] = {
    "ingest": [
        ("reproml.stages.ingest", "load", PARAMS),
        ("reproml.data.ingest", "ingest", W_LOAD),
        ("reproml.stages.ingest", "write_parquet", IO_WRITE),
        ("reproml.stages.ingest", "write_json", IO_WRITE),
    ],
    "prepare": [
        ("reproml.stages.prepare", "load", PARAMS),
        ("pandas", "read_parquet", IO_READ),
        ("reproml.data.split", "split", W_SPLIT),
        ("reproml.stages.prepare", "write_parquet", IO_WRITE),
        ("reproml.stages.prepare", "write_json", IO_WRITE),
    ],
    "train": [
        ("reproml.stages.train", "load", PARAMS),
        ("reproml.stages.train", "read_json", IO_READ),
        ("pandas", "read_parquet", IO_READ),
        ("reproml.train", "fit_model", W_FIT),
        ("reproml.stages.train", "write_with", IO_WRITE),
        ("reproml.stages.train", "write_json", IO_WRITE),
        ("reproml.stages.train", "file_md5", LINEAGE),
        ("reproml.lineage", "git_state", LINEAGE),
        ("reproml.lineage", "sha256_file", LINEAGE),
        ("reproml.lineage", "library_versions", LINEAGE),
        ("reproml.tracking", "setup", ML_SETUP),
        ("mlflow", "start_run", ML_RUN),
        ("mlflow", "end_run", ML_RUN),
        ("reproml.tracking", "log_batch", ML_BATCH),
        ("reproml.tracking", "log_metric_series", ML_BATCH),
        ("reproml.tracking", "log_dataset", ML_DATASETS),
        ("reproml.stages.train", "_requirements", ML_MODEL),
        ("reproml.tracking", "log_sklearn_model", ML_MODEL),
    ],
    "evaluate": [
        ("reproml.stages.evaluate", "load", PARAMS),
        ("reproml.stages.evaluate", "read_json", IO_READ),
        ("pandas", "read_parquet", IO_READ),
        ("joblib", "load", IO_READ),
        ("reproml.stages.evaluate", "file_md5", LINEAGE),
        ("reproml.evaluate", "predictions_digest", LINEAGE),
        ("reproml.evaluate", "predict_scores", W_SCORE),
        ("reproml.evaluate", "compute_metrics", W_SCORE),
        ("reproml.evaluate", "overfit_check", W_SCORE),
        ("reproml.evaluate", "permutation_importance_frame", W_IMPORTANCE),
        ("reproml.stages.evaluate", "curve_frames", W_PLOTS),
        ("reproml.stages.evaluate", "draw", W_PLOTS),
        ("reproml.stages.evaluate", "_write_csv", IO_WRITE),
        ("reproml.stages.evaluate", "write_parquet", IO_WRITE),
        ("reproml.stages.evaluate", "write_json", IO_WRITE),
        ("reproml.tracking", "setup", ML_SETUP),
        ("reproml.tracking", "find_run_for_model", ML_SETUP),
        ("mlflow", "start_run", ML_RUN),
        ("mlflow", "end_run", ML_RUN),
        ("reproml.tracking", "log_batch", ML_BATCH),
        ("mlflow", "log_artifacts", ML_ARTIFACTS),
        ("mlflow", "log_table", ML_ARTIFACTS),
    ],
}
# What each stage imports, lazily or not, imported up front in the instrumented run so that import
# time lands in the import buckets rather than in whichever call happens to trigger it. MLflow's
# share (mlflow itself, its SQLAlchemy store with alembic, skops for the model) comes second, so
# its bucket holds only what MLflow adds on top of the libraries the work needs anyway.
PRELOAD: dict[str, list[str]] = {
    "ingest": ["reproml.stages.ingest", "reproml.data.ingest"],
    "prepare": ["reproml.stages.prepare", "reproml.data.split", "pyarrow.parquet"],
    "train": [
        "reproml.stages.train", "reproml.train", "reproml.lineage", "joblib", "pyarrow.parquet",
        "xgboost", "sklearn.pipeline",
    ],
    "evaluate": [
        "reproml.stages.evaluate", "reproml.evaluate", "reproml.plots", "joblib", "pyarrow.parquet",
        "xgboost", "sklearn.pipeline", "matplotlib.pyplot", "sklearn.inspection", "sklearn.calibration",
    ],
}  # fmt: skip
PRELOAD_MLFLOW: dict[str, list[str]] = {
    "ingest": [],
    "prepare": [],
    "train": [
        "reproml.tracking", "mlflow.store.tracking.sqlalchemy_store", "mlflow.data.pandas_dataset",
        "mlflow.models", "mlflow.sklearn", "skops.io",
    ],
    "evaluate": ["reproml.tracking", "mlflow.store.tracking.sqlalchemy_store"],
}  # fmt: skip

SHIM = """#!/usr/bin/env bash
# Written by benchmarks/pipeline_overhead.py: stamps each stage's start and end, then runs reproml.
printf 'start %s %s\\n' "$1" "${{EPOCHREALTIME:-$(date +%s.%N)}}" >> "$REPROML_BENCH_STAGE_LOG"
{reproml} "$@"
rc=$?
printf 'end %s %s\\n' "$1" "${{EPOCHREALTIME:-$(date +%s.%N)}}" >> "$REPROML_BENCH_STAGE_LOG"
exit $rc
"""


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Child modes: the bare baseline and the instrumented stage. Both write a JSON report.
# --------------------------------------------------------------------------------------------


def bare_main(report: Path) -> None:
    """The baseline: load, fit and score in one process, then importance and plots.

    Same functions, params and data as the stages, but nothing goes through parquet, MLflow, git
    or DVC, and only the PNGs are written (to a temporary folder). Phases are timed so the parent
    can report "load + fit + score" as this process's wall time minus the importance and plots
    phases, which come last for that reason.
    """
    phases: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    import numpy as np
    import pandas as pd

    from reproml import evaluate as ev
    from reproml.config import load_params
    from reproml.data.ingest import ingest
    from reproml.data.split import split
    from reproml.stages.common import feature_spec
    from reproml.train import fit_model

    imported_at = time.time()
    lap("imports (after interpreter start)")
    params = load_params(Path("params.yaml"))
    task, target, seed = params.data.task, params.data.target, params.seed
    lap("params")
    result = ingest(params.data, params.prepare.exclude_columns, params.seed, Path("."))
    frame = result.frame
    if task == "classification":  # the positive-class encoding stages/ingest.py applies
        positive = sorted(frame[target].unique().tolist())[-1]
        frame[target] = (frame[target] == positive).astype("int8")
    lap("load")
    parts = split(frame, params.data.time_column, params.prepare, seed)
    schema = {
        "numeric": result.numeric_columns,
        "categorical": result.categorical_columns,
        "time_column": params.data.time_column,
    }
    spec = feature_spec(params, schema)
    lap("split")
    trained = fit_model(parts["train"], parts["valid"], spec, params)
    lap("fit")
    columns = spec.input_columns
    scores = {name: ev.predict_scores(trained.pipeline, parts[name][columns], task) for name in SPLITS}
    by_split = {
        name: ev.compute_metrics(parts[name][target].to_numpy(), scores[name], task) for name in SPLITS
    }
    ev.overfit_check(by_split, task, params.evaluate.overfit_margin)
    digest = ev.predictions_digest(scores["test"])
    lap("score")
    # Everything below is the evaluate stage's extra work; it must stay last (see docstring).
    valid = parts["valid"]
    sample = valid.sample(n=min(params.evaluate.importance_rows, len(valid)), random_state=seed)
    importance = ev.permutation_importance_frame(
        trained.pipeline, sample[columns], sample[target].to_numpy(), task,
        params.evaluate.importance_repeats, seed,
    )  # fmt: skip
    lap("importance")
    from reproml.stages.evaluate import curve_frames, draw

    y_test: np.ndarray = parts["test"][target].to_numpy()
    frames: dict[str, pd.DataFrame] = curve_frames(
        task, y_test, scores["test"], {"curves": trained.history}, importance, seed
    )
    with tempfile.TemporaryDirectory(prefix="bare-plots-") as images:
        draw(frames, trained.history_metric, Path(images))
    lap("plots")
    payload = {
        "imported_at": imported_at,
        "phases": phases,
        "metrics": by_split,
        "best_iteration": trained.best_iteration,
        "test_predictions_sha256": digest,
        "finished_at": time.time(),
    }
    report.write_text(json.dumps(payload))


def _timer(
    original: Callable[..., Any], bucket: str, totals: dict[str, float], depth: list[int]
) -> Callable[..., Any]:
    """Wrap `original` so its time adds to `bucket`; calls nested in another timed call don't."""

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if depth[0]:
            return original(*args, **kwargs)
        depth[0] += 1
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            depth[0] -= 1
            totals[bucket] = totals.get(bucket, 0.0) + time.perf_counter() - started

    return timed


def attribute_main(stage: str, report: Path) -> None:
    """Run one stage through the real CLI with its main calls timed by bucket."""
    try:
        from reproml.env import keep_inside

        keep_inside(Path("."))  # as the CLI callback does, before matplotlib and MLflow load
    except ImportError:
        pass

    def preload(names: list[str]) -> float:
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError:
                continue
        return time.time()

    libraries_at = preload(["reproml.cli", "pandas", "reproml.stages.common", *PRELOAD[stage]])
    ready_at = preload(PRELOAD_MLFLOW[stage])
    totals: dict[str, float] = {}
    depth = [0]
    patched = []
    for module_name, attr, bucket in PATCHES[stage]:
        try:
            owner = importlib.import_module(module_name)
        except ImportError:
            continue
        original = getattr(owner, attr, None)
        if callable(original):
            setattr(owner, attr, _timer(original, bucket, totals, depth))
            patched.append(f"{module_name}.{attr}")
    gc_seconds = [0.0, 0.0]  # total, start of the current collection

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_seconds[1] = time.perf_counter()
        else:
            gc_seconds[0] += time.perf_counter() - gc_seconds[1]

    gc.callbacks.append(on_gc)
    from reproml.cli import app

    try:
        app(args=[stage], prog_name="reproml")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    gc.callbacks.remove(on_gc)
    payload = {
        "libraries_at": libraries_at,
        "ready_at": ready_at,
        "buckets": totals,
        "gc_seconds": gc_seconds[0],
        "patched": patched,
        "finished_at": time.time(),
    }
    report.write_text(json.dumps(payload))


# --------------------------------------------------------------------------------------------
# The benchmark itself.
# --------------------------------------------------------------------------------------------


@dataclass
class Workspace:
    scratch: Path
    repo: Path
    bin_dir: Path
    env: dict[str, str]
    bare_env: dict[str, str]
    stage_log: Path | None
    source: str


@dataclass
class PipelineRun:
    wall: float
    stages: dict[str, float] = field(default_factory=dict)


@dataclass
class BareRun:
    full: float
    fit_score: float
    startup: float
    exit: float
    phases: dict[str, float]
    report: dict[str, Any]


def _run(
    cmd: Sequence[str], cwd: Path, env: dict[str, str], what: str
) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = "\n".join((done.stdout + "\n" + done.stderr).strip().splitlines()[-40:])
        raise BenchError(f"{what} failed (exit {done.returncode}) in {cwd}:\n{tail}")
    return wall, done


def _venv_bin() -> Path:
    for candidate in (Path(sys.executable).parent, Path(sys.prefix) / "bin", ROOT / ".venv" / "bin"):
        if (candidate / "dvc").exists() and (candidate / "reproml").exists():
            return candidate
    raise BenchError(
        "no `dvc` and `reproml` next to this Python; run with the project's venv: "
        ".venv/bin/python benchmarks/pipeline_overhead.py"
    )


def snapshot(root: Path, dest: Path) -> str:
    """Copy the working tree (tracked + untracked, not ignored) to `dest` and commit it there."""
    git = ["git", "-C", str(root)]
    try:
        listed = subprocess.run(
            [*git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BenchError(f"{root} must be a git checkout with git on PATH: {exc}") from None
    copied = 0
    for rel in sorted({p for p in listed.decode().split("\0") if p}):
        src = root / rel
        if not (src.is_file() or src.is_symlink()):
            continue  # deleted in the working tree, or a submodule
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
        copied += 1
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    status = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
    changed = len([line for line in status.stdout.splitlines() if line.strip()])
    identity = ["-c", "user.name=reproml benchmark", "-c", "user.email=benchmark@reproml.invalid"]
    for args in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-q", "--no-verify", "-m", "snapshot"]):
        subprocess.run(
            ["git", "-c", "commit.gpgsign=false", *args], cwd=dest, check=True, capture_output=True
        )
    commit = head.stdout.strip() or "no commit"
    return (
        f"{root} @ {commit}"
        + (f" + {changed} uncommitted change(s)" if changed else "")
        + f", {copied} files"
    )


def prepare_workspace(scratch: Path) -> Workspace:
    bin_dir = _venv_bin()
    repo = scratch / "repo"
    source = snapshot(ROOT, repo)
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # never a real server
    base |= {"DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(repo / "src")}
    stage_log: Path | None = None
    path = [str(bin_dir), base.get("PATH", "")]
    bash = shutil.which("bash")
    if bash:
        shim_dir = scratch / "shim"
        shim_dir.mkdir()
        shim = shim_dir / "reproml"
        shim.write_text(SHIM.format(reproml=str(bin_dir / "reproml")))
        shim.chmod(0o755)
        stage_log = scratch / "stages.log"
        base["REPROML_BENCH_STAGE_LOG"] = str(stage_log)
        path.insert(0, str(shim_dir))
    env = base | {"PATH": os.pathsep.join(path)}
    local = repo / ".reproml"
    (local / "tmp").mkdir(parents=True, exist_ok=True)
    # The bare process gets what `reproml`'s CLI callback sets for the stages (env.keep_inside).
    bare_env = env | {
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": str((local / "matplotlib").resolve()),
        "TMPDIR": str((local / "tmp").resolve()),
    }
    # Byte-compile the copy once, as a first import would in a normal checkout, so no run pays it
    # (this environment may set PYTHONDONTWRITEBYTECODE).
    _run([sys.executable, "-m", "compileall", "-q", "src"], repo, env, "compileall")
    site_cache = str(repo / ".dvc" / "site_cache")
    _run(
        [str(bin_dir / "dvc"), "config", "--local", "core.site_cache_dir", site_cache],
        repo,
        env,
        "dvc config",
    )
    return Workspace(scratch, repo, bin_dir, env, bare_env, stage_log, source)


def _stage_times(log: Path | None) -> dict[str, float]:
    if log is None or not log.exists():
        return {}
    starts: dict[str, float] = {}
    out: dict[str, float] = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        try:
            stamp = float(parts[2].replace(",", "."))
        except ValueError:
            return {}
        if parts[0] == "start":
            starts[parts[1]] = stamp
        elif parts[0] == "end" and parts[1] in starts:
            out[parts[1]] = stamp - starts[parts[1]]
    return out


def run_pipeline(ws: Workspace) -> PipelineRun:
    if ws.stage_log is not None:
        ws.stage_log.write_text("")
    # `evaluate` as the target: ingest to evaluate, as the target is stated (register, which only
    # talks to the registry, is not part of the work the bare script does)
    command = [str(ws.bin_dir / "dvc"), "repro", "--force", "evaluate"]
    wall, _ = _run(command, ws.repo, ws.env, "dvc repro --force evaluate")
    return PipelineRun(wall, _stage_times(ws.stage_log))


def run_bare(ws: Workspace) -> BareRun:
    report = ws.scratch / "bare.json"
    report.unlink(missing_ok=True)
    spawned = time.time()
    wall, _ = _run(
        [sys.executable, str(Path(__file__).resolve()), "--bare", "--report", str(report)],
        ws.repo, ws.bare_env, "bare baseline",
    )  # fmt: skip
    ended = time.time()
    data = json.loads(report.read_text())
    phases: dict[str, float] = data["phases"]
    extras = phases.get("importance", 0.0) + phases.get("plots", 0.0)
    startup = data["imported_at"] - spawned
    return BareRun(
        full=wall,
        fit_score=wall - extras,
        startup=startup,
        exit=ended - data["finished_at"],
        phases=phases,
        report=data,
    )


def run_attributed(ws: Workspace, stage: str) -> dict[str, float]:
    """One instrumented run of `stage` (outside DVC); seconds per bucket, plus the wall time."""
    report = ws.scratch / f"attribute-{stage}.json"
    report.unlink(missing_ok=True)
    env = ws.env | {"PATH": os.pathsep.join([str(ws.bin_dir), os.environ.get("PATH", "")])}
    spawned = time.time()
    _run(
        [sys.executable, str(Path(__file__).resolve()), "--attribute", stage, "--report", str(report)],
        ws.repo, env, f"instrumented reproml {stage}",
    )  # fmt: skip
    ended = time.time()
    data = json.loads(report.read_text())
    buckets: dict[str, float] = dict(data["buckets"])
    buckets[STARTUP] = data["libraries_at"] - spawned
    buckets[ML_IMPORT] = data["ready_at"] - data["libraries_at"]
    buckets[EXIT] = ended - data["finished_at"]
    buckets[OTHER] = (ended - spawned) - sum(buckets.values())
    buckets["wall"] = ended - spawned
    buckets["gc"] = data["gc_seconds"]
    return buckets


def time_cli(ws: Workspace, repeats: int) -> tuple[list[float], list[float]]:
    help_cmd = [str(ws.bin_dir / "reproml"), "--help"]
    pandas_cmd = [sys.executable, "-c", "import pandas"]
    _run(help_cmd, ws.repo, ws.env, "reproml --help")  # warm the file cache, untimed
    _run(pandas_cmd, ws.repo, ws.env, "import pandas")
    helps: list[float] = []
    pandas: list[float] = []
    for _ in range(repeats):
        helps.append(_run(help_cmd, ws.repo, ws.env, "reproml --help")[0])
        pandas.append(_run(pandas_cmd, ws.repo, ws.env, "import pandas")[0])
    return helps, pandas


def compare_results(ws: Workspace, bare: BareRun) -> tuple[bool, str]:
    """Do the bare baseline and the last `dvc repro` agree on every metric and the best round?"""
    recorded = json.loads((ws.repo / "metrics" / "metrics.json").read_text())
    history = json.loads((ws.repo / "models" / "history.json").read_text())
    ours: dict[str, dict[str, float]] = bare.report["metrics"]
    worst = 0.0
    count = 0
    for split, values in ours.items():
        for key, value in values.items():
            worst = max(worst, abs(float(recorded[split][key]) - float(value)))
            count += 1
    same_round = history.get("best_iteration") == bare.report["best_iteration"]
    same = worst == 0.0 and same_round
    text = (
        f"{count} metrics on {', '.join(ours)}: max |difference| {worst:.3g}; best iteration "
        f"{bare.report['best_iteration']} (bare) vs {history.get('best_iteration')} (pipeline)"
    )
    return same, text


# --------------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------------


def _med(values: Sequence[float]) -> float:
    return statistics.median(values)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{0.0 if abs(value) < 0.005 else value:.2f}"


def _verdict(ratio: float, target: float) -> str:
    return "[green]PASS[/green]" if ratio <= target else "[red]MISS[/red]"


def report(
    ws: Workspace,
    first: PipelineRun,
    pipes: list[PipelineRun],
    bares: list[BareRun],
    cli: tuple[list[float], list[float]] | None,
    attributed: dict[str, dict[str, float]],
    same: tuple[bool, str],
    load: tuple[tuple[float, float, float], tuple[float, float, float]],
    elapsed: float,
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    n = len(pipes)
    pipe = [p.wall for p in pipes]
    full = [b.full for b in bares]
    fit = [b.fit_score for b in bares]

    console.print()
    console.print(f"[bold]reproml pipeline overhead[/bold]  source: {ws.source}")
    console.print(
        f"copy: {ws.repo}  python {sys.version.split()[0]}  cpus: {os.cpu_count()}  "
        f"load avg (1/5/15 min) before {load[0][0]:.2f}/{load[0][1]:.2f}/{load[0][2]:.2f}, "
        f"after {load[1][0]:.2f}/{load[1][1]:.2f}/{load[1][2]:.2f}  total {elapsed / 60:.1f} min",
        highlight=False,
    )

    timing = Table(title=f"Full pipeline vs bare script, seconds ({n} runs each, alternated)")
    for header in ("run", "median", "min", "max"):
        timing.add_column(header, justify="left" if header == "run" else "right")
    timing.add_row(
        "dvc repro --force evaluate (4 stages, DVC + MLflow)", _s(_med(pipe)), _s(min(pipe)), _s(max(pipe))
    )
    timing.add_row("bare: load + fit + score (one process)", _s(_med(fit)), _s(min(fit)), _s(max(fit)))
    timing.add_row("bare: + permutation importance + plots", _s(_med(full)), _s(min(full)), _s(max(full)))
    timing.add_row("[dim]first dvc repro in the fresh copy (untimed warm-up)[/dim]", _s(first.wall), "", "")
    console.print(timing)

    ratios = Table(title="Pipeline overhead: ratio of medians")
    for header in ("pipeline / baseline", "ratio", "target", "result"):
        ratios.add_column(header, justify="left" if header.startswith("pipeline") else "right")
    headline = _med(pipe) / _med(full)
    literal = _med(pipe) / _med(fit)
    ratios.add_row(
        "[bold]headline[/bold]: vs bare doing the same work (incl. importance + plots)",
        f"[bold]{headline:.2f}[/bold]",
        f"<= {PIPELINE_TARGET}",
        _verdict(headline, PIPELINE_TARGET),
    )
    ratios.add_row(
        "strict: vs bare load + fit + score only",
        f"{literal:.2f}",
        f"<= {PIPELINE_TARGET}",
        _verdict(literal, PIPELINE_TARGET),
    )
    console.print(ratios)
    mark = (
        "[green]identical[/green]"
        if same[0]
        else "[red]DIFFERENT: the baseline is not doing the same work[/red]"
    )
    console.print(f"Results, bare vs last dvc repro: {mark} ({same[1]})", highlight=False)

    if cli is not None:
        helps, pandas = cli
        table = Table(title=f"CLI start-up, seconds ({len(helps)} runs each, alternated)")
        for header in ("command", "median", "min", "max"):
            table.add_column(header, justify="left" if header == "command" else "right")
        table.add_row("reproml --help", _s(_med(helps)), _s(min(helps)), _s(max(helps)))
        table.add_row('python -c "import pandas"', _s(_med(pandas)), _s(min(pandas)), _s(max(pandas)))
        ratio = _med(helps) / _med(pandas)
        table.add_row(
            "[bold]ratio[/bold]",
            f"[bold]{ratio:.2f}[/bold]",
            f"target <= {CLI_TARGET}",
            _verdict(ratio, CLI_TARGET),
        )
        console.print(table)

    if all(p.stages for p in pipes):
        stages = Table(title="Per stage inside the timed dvc repro runs, seconds")
        for header in ("stage", "first run", "median", "min", "max", "share of median repro"):
            stages.add_column(header, justify="left" if header == "stage" else "right")
        total = _med(pipe)
        for stage in STAGES:
            values = [p.stages.get(stage, 0.0) for p in pipes]
            stages.add_row(
                stage,
                _s(first.stages.get(stage)),
                _s(_med(values)),
                _s(min(values)),
                _s(max(values)),
                f"{_med(values) / total:.0%}",
            )
        dvc_self = [p.wall - sum(p.stages.values()) for p in pipes]
        first_dvc = first.wall - sum(first.stages.values()) if first.stages else None
        stages.add_row(
            "DVC itself (repro minus stages)",
            _s(first_dvc),
            _s(_med(dvc_self)),
            _s(min(dvc_self)),
            _s(max(dvc_self)),
            f"{_med(dvc_self) / total:.0%}",
        )
        stages.add_row(
            "[bold]dvc repro --force[/bold]", _s(first.wall), _s(total), _s(min(pipe)), _s(max(pipe)), "100%"
        )
        console.print(stages)
    else:
        dvc_self = []
        console.print("[yellow]No per-stage times (needs bash for the timing shim).[/yellow]")

    if attributed:
        # The bare run with the median wall time, so its column is one real run that adds up.
        typical = sorted(bares, key=lambda b: b.full)[(len(bares) - 1) // 2]
        bare_phase = {
            STARTUP: typical.startup,
            PARAMS: typical.phases.get("params", 0.0),
            W_LOAD: typical.phases.get("load", 0.0),
            W_SPLIT: typical.phases.get("split", 0.0),
            W_FIT: typical.phases.get("fit", 0.0),
            W_SCORE: typical.phases.get("score", 0.0),
            W_IMPORTANCE: typical.phases.get("importance", 0.0),
            W_PLOTS: typical.phases.get("plots", 0.0),
            EXIT: typical.exit,
        }
        bare_phase[OTHER] = typical.full - sum(bare_phase.values())
        where = Table(
            title="Where the time goes, seconds (one instrumented run per stage, outside DVC; "
            f"bare: its median run of {n})"
        )
        where.add_column("bucket")
        for stage in STAGES:
            where.add_column(stage, justify="right")
        where.add_column("pipeline", justify="right")
        where.add_column("bare", justify="right")
        for bucket in BUCKETS:
            values = [attributed.get(stage, {}).get(bucket, 0.0) for stage in STAGES]
            if not any(abs(v) >= 0.005 for v in values) and bucket not in bare_phase:
                continue
            label = f"[dim]{bucket}[/dim]" if bucket in WORK else bucket
            where.add_row(
                label,
                *(f"{v:.2f}" if v else "" for v in values),
                f"{sum(values):.2f}",
                _s(bare_phase.get(bucket)),
            )
        walls = [attributed.get(stage, {}).get("wall", 0.0) for stage in STAGES]
        where.add_row(
            "[bold]wall[/bold]", *(f"{w:.2f}" for w in walls), f"{sum(walls):.2f}", _s(typical.full)
        )
        console.print(where)
        gcs = ", ".join(f"{stage} {attributed[stage].get('gc', 0.0):.2f} s" for stage in STAGES)
        console.print(
            f"[dim]Python garbage collection inside those runs, already counted in the buckets above: "
            f"{gcs}. The interpreter-exit row is mostly the final collection over every imported "
            f"module's objects.[/dim]",
            highlight=False,
        )

        overhead = _med(pipe) - _med(full)

        def extra(buckets: Sequence[str], minus_bare: bool = True) -> float:
            piped = sum(attributed[s].get(b, 0.0) for s in STAGES for b in buckets)
            return piped - (sum(bare_phase.get(b, 0.0) for b in buckets) if minus_bare else 0.0)

        total_of = {
            "DVC itself (median, from the timed repro runs)": _med(dvc_self) if dvc_self else 0.0,
            "process start-ups + imports (4 stages vs 1)": extra([STARTUP]),
            "interpreter exits (4 vs 1)": extra([EXIT]),
            "MLflow (imports + all calls)": extra(MLFLOW, minus_bare=False),
            "stage file I/O (parquet, json, csv, joblib)": extra([IO_READ, IO_WRITE], minus_bare=False),
            "lineage (git, hashes, versions)": extra([LINEAGE], minus_bare=False),
            "params x4 vs x1, CLI, untimed calls": extra([PARAMS, OTHER]),
        }
        total_of["unattributed (run-to-run noise, mostly in the fit)"] = overhead - sum(total_of.values())
        account = Table(
            title=f"Overhead accounting: median pipeline - median bare (same work) = {overhead:.2f} s"
        )
        account.add_column("component")
        account.add_column("seconds", justify="right")
        account.add_column("% of median bare", justify="right")
        for name, value in total_of.items():
            account.add_row(name, f"{value:.2f}", f"{value / _med(full):+.0%}")
        console.print(account)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each side (default 5)")
    parser.add_argument("--quick", action="store_true", help="3 runs of each side, 5 CLI runs")
    parser.add_argument("--cli-repeats", type=int, default=10, help="timed runs of each CLI command")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the instrumented per-stage runs")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy and print its path")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--attribute", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare or args.attribute:
        if args.report is None:
            parser.error("--report is required")
        if args.bare:
            bare_main(args.report)
        else:
            attribute_main(args.attribute, args.report)
        return 0

    from rich.console import Console

    log = Console(stderr=True)
    repeats = 3 if args.quick else args.repeats
    cli_repeats = 5 if args.quick else args.cli_repeats
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    started = time.perf_counter()
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="reproml-bench-"))
    try:
        ws = prepare_workspace(scratch)
        log.log(f"copied {ws.source} to {ws.repo}")
        cli = None
        if cli_repeats > 0:
            cli = time_cli(ws, cli_repeats)
            log.log(f"CLI: reproml --help {_med(cli[0]):.2f} s, import pandas {_med(cli[1]):.2f} s")
        log.log("first dvc repro (creates mlflow.db, fills the DVC cache; untimed warm-up)")
        first = run_pipeline(ws)
        log.log(f"first run: {first.wall:.1f} s")
        pipes: list[PipelineRun] = []
        bares: list[BareRun] = []
        for i in range(1, repeats + 1):
            pipes.append(run_pipeline(ws))
            bares.append(run_bare(ws))
            log.log(
                f"run {i}/{repeats}: dvc repro {pipes[-1].wall:.1f} s, bare {bares[-1].full:.1f} s "
                f"(load + fit + score {bares[-1].fit_score:.1f} s)"
            )
        same = compare_results(ws, bares[-1])
        attributed: dict[str, dict[str, float]] = {}
        if not args.no_breakdown:
            for stage in STAGES:
                attributed[stage] = run_attributed(ws, stage)
                log.log(f"instrumented {stage}: {attributed[stage]['wall']:.1f} s")
        report(
            ws,
            first,
            pipes,
            bares,
            cli,
            attributed,
            same,
            (load_before, os.getloadavg()),
            time.perf_counter() - started,
        )
    except BenchError as exc:
        log.print(f"[bold red]benchmark failed:[/bold red] {exc}", highlight=False)
        return 1
    finally:
        if args.keep:
            log.log(f"scratch copy kept at {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
