"""What DVC, MLflow and the stage boundaries cost on top of the modelling work itself.

Two targets from the project's issue, each printed as a ratio of medians against a bare baseline
measured side by side (machines are noisy, so runs alternate and medians are compared):

* a full `dvc repro --force evaluate` (ingest -> prepare -> tune, switched off -> train ->
  evaluate) against one bare Python process doing the same load, fit and scoring with no DVC, no
  MLflow and no stage files: target 1.3 or less;
* `reproml --help` against `python -c "import pandas"`: target 1.5 or less.

Why a copy: the pipeline runs in a scratch copy of the *current working tree* (tracked files plus
untracked, not-ignored ones, committed into a fresh git repository there), so the numbers are for
the code you are looking at, and your workspace's data, models, `mlflow.db` and DVC cache are never
touched. `PYTHONPATH` points at the copy's `src/` so the copy's code wins over an editable install.

The bare baseline (`--bare`, run as its own process by this script) calls reproml's pure functions
(`reproml.data.ingest.ingest`, `reproml.data.split.split`, `reproml.fitting.fit_model`,
`reproml.scoring`), so both sides run the same algorithms with the same params and must produce
the same metrics; the script checks that they do. See benchmarks/README.md for how to read it.

Where the time goes is read from the standard library's profiler over the real CLI (`python -m
cProfile ... reproml STAGE`), grouped by the library each function lives in: nothing is patched.

Run: `.venv/bin/python benchmarks/pipeline_overhead.py [--repeats N | --quick]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Only the standard library is imported at module level: the bare baseline runs this file as its
# own process, and Rich's import time must not be charged to it.

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_TARGET = 1.3
CLI_TARGET = 1.5
STAGES = ("ingest", "prepare", "tune", "train", "evaluate")
SPLITS = ("train", "valid", "test")

# Where the time goes: each stage is run once more through the real CLI under the standard
# library's profiler (`python -m cProfile -o FILE <venv>/bin/reproml STAGE`), and so is the bare
# script; nothing is patched and no function of reproml is named. Each profiled function's own time
# goes to the group of the file it lives in; time in the standard library and in builtins goes to
# whoever called it (weighted by the calls' times), so `time.sleep` in MLflow's code counts as
# MLflow and `hashlib` in reproml's as reproml. Module bodies and the import machinery are "imports".
IMPORTS = "imports (module loading + module bodies)"
SUBPROCESS = "subprocesses (git)"
CLI_GROUP = "CLI (typer, rich, click)"
PARAMS_GROUP = "params (pydantic, yaml)"
REPROML = "reproml's own code (lineage, hashing, glue)"
MLFLOW_GROUP = "MLflow + its store (sqlalchemy, alembic, skops)"
XGBOOST = "XGBoost"
SKLEARN = "scikit-learn + scipy (preprocess, metrics, importance)"
DATA = "pandas + numpy + pyarrow (frames, parquet, CSV)"
PLOTS_GROUP = "matplotlib (PNGs)"
JOBLIB = "joblib (model file)"
OTHER = "other libraries and unattributed"
OUTSIDE = "interpreter start-up + exit (outside the profile)"
GROUP_ORDER = (
    OUTSIDE, IMPORTS, CLI_GROUP, PARAMS_GROUP, DATA, XGBOOST, SKLEARN, PLOTS_GROUP, JOBLIB, REPROML,
    SUBPROCESS, MLFLOW_GROUP, OTHER,
)  # fmt: skip
# The modelling work the bare script does as well; every other group is what the pipeline adds.
SHARED_WORK = (DATA, XGBOOST, SKLEARN, PLOTS_GROUP)
PACKAGE_GROUPS = {
    "mlflow": MLFLOW_GROUP, "sqlalchemy": MLFLOW_GROUP, "alembic": MLFLOW_GROUP, "skops": MLFLOW_GROUP,
    "cloudpickle": MLFLOW_GROUP, "opentelemetry": MLFLOW_GROUP, "google": MLFLOW_GROUP,
    "cachetools": MLFLOW_GROUP, "sqlparse": MLFLOW_GROUP, "packaging": MLFLOW_GROUP,
    "importlib_metadata": MLFLOW_GROUP, "mako": MLFLOW_GROUP, "graphene": MLFLOW_GROUP,
    "xgboost": XGBOOST, "sklearn": SKLEARN, "scipy": SKLEARN, "threadpoolctl": SKLEARN,
    "pandas": DATA, "numpy": DATA, "pyarrow": DATA, "dateutil": DATA, "pytz": DATA,
    "matplotlib": PLOTS_GROUP, "PIL": PLOTS_GROUP, "kiwisolver": PLOTS_GROUP, "pyparsing": PLOTS_GROUP,
    "joblib": JOBLIB, "typer": CLI_GROUP, "rich": CLI_GROUP, "click": CLI_GROUP,
    "pydantic": PARAMS_GROUP, "pydantic_core": PARAMS_GROUP, "yaml": PARAMS_GROUP,
    "reproml": REPROML,
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

    from reproml import decisions
    from reproml import scoring as ev
    from reproml.config import load_params
    from reproml.data.ingest import SchemaRecord, ingest
    from reproml.data.split import split
    from reproml.fitting import fit_model
    from reproml.stages.common import feature_spec

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
    schema: SchemaRecord = {
        "source": result.source,
        "target": target,
        "task": task,
        "positive_class": None,
        "numeric": result.numeric_columns,
        "categorical": result.categorical_columns,
        "time_column": params.data.time_column,
    }
    spec = feature_spec(params, schema)
    lap("split")
    trained = fit_model(parts["train"], parts["valid"], spec, params)
    columns = spec.input_columns
    # The served model: calibration and the decision threshold chosen on validation, as `train` does.
    served, decided = decisions.decide(
        trained.pipeline, parts["valid"], columns, target, task,
        calibration=params.train.calibration, rule=params.evaluate.threshold,
        cost_fp=params.evaluate.cost_fp, cost_fn=params.evaluate.cost_fn,
    )  # fmt: skip
    lap("fit")
    threshold = decisions.threshold_of(served)
    scores = {name: ev.predict_scores(served, parts[name][columns], task) for name in SPLITS}
    ys = {name: parts[name][target].to_numpy() for name in SPLITS}
    by_split = {
        name: ev.compute_metrics(ys[name], scores[name], task, threshold=threshold) for name in SPLITS
    }
    ev.overfit_check(by_split, task, params.evaluate.overfit_margin)
    digest = ev.predictions_digest(scores["test"])
    lap("score")
    # Everything below is the evaluate stage's extra work; it must stay last (see docstring).
    valid = parts["valid"]
    sample = valid.sample(n=min(params.evaluate.importance_rows, len(valid)), random_state=seed)
    importance = ev.permutation_importance_frame(
        served, sample[columns], sample[target].to_numpy(), task,
        params.evaluate.importance_repeats, seed,
    )  # fmt: skip
    lap("importance")
    from reproml.stages.evaluate import curve_frames, decision_frames, draw

    y_test: np.ndarray = ys["test"]
    frames: dict[str, pd.DataFrame] = curve_frames(
        task, y_test, scores["test"], trained.history, importance, seed, None, threshold
    )
    raw_scores = {name: scores[name] for name in ("valid", "test")}
    if decided.calibration != "none":
        raw = decisions.uncalibrated(served)
        raw_scores = {name: ev.predict_scores(raw, parts[name][columns], task) for name in raw_scores}
    frames |= decision_frames(task, ys, scores, raw_scores, params.evaluate.cost_fp, params.evaluate.cost_fn)
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


Func = tuple[str, int, str]


def _own_group(func: Func, stdlib: str) -> str | None:
    """The group a function's own time belongs to, or None: inherited from its callers."""
    filename, _, name = func
    if name == "<module>" or "importlib._bootstrap" in filename or filename.startswith("<frozen"):
        return IMPORTS
    if filename == "~":  # a builtin: whoever called it
        return None
    path = filename.replace("\\", "/")
    if "/site-packages/" in path:
        package = path.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
        return PACKAGE_GROUPS.get(package, OTHER)
    if "/reproml/" in path:
        return REPROML
    if path.startswith(stdlib) and Path(path).name == "subprocess.py":
        return SUBPROCESS
    if path.startswith(stdlib):
        return None
    return OTHER


def profile_groups(profile: Path) -> dict[str, float]:
    """Seconds per group in a cProfile file; see the comment above IMPORTS for the rules."""
    import pstats
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"].replace("\\", "/")
    stats: dict[Func, Any] = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    shares: dict[Func, dict[str, float]] = {}

    def share_of(func: Func, seen: frozenset[Func]) -> dict[str, float]:
        if func in shares:
            return shares[func]
        own = _own_group(func, stdlib)
        if own is not None:
            result = {own: 1.0}
        else:
            callers = stats[func][4] if func in stats else {}
            weights = {c: edge[2] + edge[3] * 1e-9 for c, edge in callers.items() if c not in seen}
            total = sum(weights.values())
            if not weights or total <= 0:
                result = {OTHER: 1.0}
            else:
                result = {}
                for caller, weight in weights.items():
                    for group, part in share_of(caller, seen | {func}).items():
                        result[group] = result.get(group, 0.0) + part * weight / total
        shares[func] = result  # inside a cycle this depends on the path taken; close enough
        return result

    groups: dict[str, float] = {}
    for func, (_, _, own_time, _, _) in stats.items():
        for group, part in share_of(func, frozenset()).items():
            groups[group] = groups.get(group, 0.0) + own_time * part
    return groups


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


def tuning_off(params_file: Path) -> None:
    """Set `tune.enabled: false` in the copy: the target is stated with tuning off (a study's trials
    are modelling work the bare script does not do); the `tune` stage still runs, as a no-op."""
    from ruamel.yaml import YAML

    yaml = YAML()
    data = yaml.load(params_file.read_text())
    data["tune"]["enabled"] = False
    with params_file.open("w") as out:
        yaml.dump(data, out)


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
    tuning_off(dest / "params.yaml")
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


def run_profiled(ws: Workspace, command: Sequence[str], env: dict[str, str], what: str) -> dict[str, float]:
    """One run of `command` (a Python script and its arguments) under cProfile: seconds per group,
    plus `wall`. Time outside the profile (interpreter start-up and exit) is its own group."""
    profile = ws.scratch / "profile.out"
    profile.unlink(missing_ok=True)
    wall, _ = _run([sys.executable, "-m", "cProfile", "-o", str(profile), *command], ws.repo, env, what)
    groups = profile_groups(profile)
    groups[OUTSIDE] = max(0.0, wall - sum(groups.values()))
    groups["wall"] = wall
    return groups


def run_attributed(ws: Workspace, stage: str) -> dict[str, float]:
    """`reproml STAGE` through the real CLI, outside DVC, profiled."""
    return run_profiled(ws, [str(ws.bin_dir / "reproml"), stage], ws.env, f"profiled reproml {stage}")


def run_bare_profiled(ws: Workspace) -> dict[str, float]:
    report = ws.scratch / "bare-profiled.json"
    command = [str(Path(__file__).resolve()), "--bare", "--report", str(report)]
    return run_profiled(ws, command, ws.bare_env, "profiled bare baseline")


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

    console = Console(width=None if sys.stdout.isatty() else 200)  # a log file keeps whole rows
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
        "dvc repro --force evaluate (5 stages, DVC + MLflow)", _s(_med(pipe)), _s(min(pipe)), _s(max(pipe))
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
        bare_groups = attributed.get("bare", {})
        where = Table(
            title="Where the time goes, seconds (one profiled run of each stage through the CLI, "
            "outside DVC, and one of the bare script; cProfile slows Python-heavy code, so compare "
            "columns, not these seconds with the timed ones)"
        )
        where.add_column("group (by the file the time is spent in)")
        for stage in STAGES:
            where.add_column(stage, justify="right")
        where.add_column("pipeline", justify="right")
        where.add_column("bare", justify="right")
        where.add_column("pipeline - bare", justify="right")
        for group in GROUP_ORDER:
            values = [attributed.get(stage, {}).get(group, 0.0) for stage in STAGES]
            bare_value = bare_groups.get(group, 0.0)
            if not any(abs(v) >= 0.005 for v in [*values, bare_value]):
                continue
            label = f"[dim]{group}[/dim]" if group in SHARED_WORK else group
            where.add_row(
                label,
                *(f"{v:.2f}" if abs(v) >= 0.005 else "" for v in values),
                f"{sum(values):.2f}",
                _s(bare_value),
                f"{sum(values) - bare_value:+.2f}",
            )
        walls = [attributed.get(stage, {}).get("wall", 0.0) for stage in STAGES]
        bare_wall = bare_groups.get("wall", 0.0)
        where.add_row(
            "[bold]wall[/bold]",
            *(f"{w:.2f}" for w in walls),
            f"{sum(walls):.2f}",
            _s(bare_wall),
            f"{sum(walls) - bare_wall:+.2f}",
        )
        console.print(where)
        console.print(
            "[dim]Dimmed groups are the modelling work the bare script does too; every other row is "
            "what stage processes, files, lineage and MLflow add. DVC's own time is not in this "
            "table: see 'DVC itself' above.[/dim]",
            highlight=False,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each side (default 5)")
    parser.add_argument("--quick", action="store_true", help="3 runs of each side, 5 CLI runs")
    parser.add_argument("--cli-repeats", type=int, default=10, help="timed runs of each CLI command")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the instrumented per-stage runs")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy and print its path")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare:
        if args.report is None:
            parser.error("--report is required")
        bare_main(args.report)
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
                log.log(f"profiled {stage}: {attributed[stage]['wall']:.1f} s")
            attributed["bare"] = run_bare_profiled(ws)
            log.log(f"profiled bare: {attributed['bare']['wall']:.1f} s")
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
