"""`reproml reproduce` and `reproml compare`: rebuild a recorded run, or set two runs side by side.

A run records its lineage as tags (stages/train.py). Reproducing it rebuilds the model from exactly
that lineage: the commit, checked out in a throw-away git worktree under `.reproml/reproduce/`; the
data versions, fetched by md5 from the DVC cache or the project's DVC remote; the run's own params
(its `params.json` artifact) and so its seed. The rebuild runs the commit's own `train` and
`evaluate` (PYTHONPATH=<worktree>/src) against an MLflow store inside the worktree, so the project's
store is only read. Then what the rebuild recorded is compared with what the run recorded.

DVC is driven through its executable, never imported (it is slow to import and not a library).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reproml import paths
from reproml.env import environ_snapshot
from reproml.errors import ReproError
from reproml.redaction import scrub

# What each aspect means for the verdict. A run reproduces when its lineage (code, data, params)
# and its outcome (metrics, predictions) are the same; a different environment (library versions,
# lock file) is named only when the outcome differs, because it may explain the difference.
LINEAGE = ("code", "data", "params")
ENVIRONMENT = ("libraries", "uv.lock")
OUTCOME = ("metrics", "predictions")
ASPECTS = (*LINEAGE, *ENVIRONMENT, *OUTCOME)

DATA_PREFIX = "reproml.data."
PREDICTIONS_TAG = "reproml.test_predictions_sha256"
REQUIRED_TAGS = {
    "reproml.git_commit": "the git commit it was trained from",
    "reproml.git_dirty": "whether the working tree had uncommitted changes",
    "reproml.params_sha256": "the hash of its params",
    "reproml.code_sha256": "the hash of its code",
    "reproml.seed": "its seed",
    PREDICTIONS_TAG: "the hash of its test predictions (was it evaluated?)",
}
# The data files train and evaluate read; a run must name a version of each to be rebuilt.
REBUILD_INPUTS = (paths.SCHEMA, *(paths.split_file(s) for s in ("train", "valid", "test")))
# The only uncommitted change a run may have had: params.yaml, when its exact params were logged.
PARAMS_FILE = "params.yaml"
TOLERANCE = 1e-12
WORK_DIR = Path(".reproml/reproduce")
# MLflow settings that would send the rebuild's run into the project's store (or another one).
MLFLOW_REDIRECTS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_RUN_ID",
)

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    return None


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Check:
    """One compared item: what the run recorded against what the rebuild gave."""

    aspect: str  # one of ASPECTS
    item: str  # e.g. a data path, a metric name, "sha256"
    recorded: str
    rebuilt: str
    same: bool
    detail: str = ""


@dataclass(frozen=True)
class Reproduction:
    """The outcome of `reproduce`: every check, notes, and the failure of the rebuild if any."""

    run_id: str
    commit: str
    checks: tuple[Check, ...]
    notes: tuple[str, ...] = ()
    failure: str | None = None  # the rebuild itself failed: which stage, with its output's tail
    kept: Path | None = None  # the worktree, when asked to keep it

    @property
    def outcome_same(self) -> bool:
        return self.failure is None and all(c.same for c in self.checks if c.aspect in OUTCOME)

    @property
    def differences(self) -> list[str]:
        """Differing aspects in report order; `rebuild` last when the rebuild failed."""
        differing = {c.aspect for c in self.checks if not c.same}
        named = [a for a in ASPECTS if a in differing and (a not in ENVIRONMENT or not self.outcome_same)]
        return [*named, "rebuild"] if self.failure else named

    @property
    def identical(self) -> bool:
        return not self.differences

    def of(self, aspect: str) -> list[Check]:
        return [c for c in self.checks if c.aspect == aspect]


# --------------------------------------------------------------------------------------------
# The recorded run


@dataclass(frozen=True)
class Recorded:
    """What the run recorded that a rebuild needs or is compared against."""

    run_id: str
    commit: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    data: dict[str, str]  # path -> md5
    dirty_paths: list[str]
    has_params_json: bool


def load_run(root: Path, ref: str) -> Any:
    """The MLflow run `ref` names (a run id, or `@alias` of the registered model) from the
    project's tracking store; a ReproError naming the store when there is none."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from reproml import tracking
    from reproml.config import load_params

    params = load_params(root / "params.yaml")
    tracking.setup(root, params.mlflow.experiment_name)
    client = MlflowClient()
    uri = tracking.shown_tracking_uri(root)
    run_id = ref
    if ref.startswith("@"):
        name = params.register_.model_name
        try:
            run_id = str(client.get_model_version_by_alias(name, ref[1:]).run_id)
        except MlflowException:
            raise ReproError(f"model {name!r} has no version aliased {ref[1:]!r} in {uri}") from None
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise ReproError(f"no MLflow run with id {run_id!r} in the tracking store {uri}") from None


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise ReproError(f"`git {' '.join(args)}` failed in {root}: {done.stderr.strip()}")
    return done


def _safe_relative(path: str) -> bool:
    parts = Path(path).parts
    return bool(parts) and not Path(path).is_absolute() and ".." not in parts


def check_lineage(root: Path, run: Any) -> Recorded:
    """Everything a rebuild needs, or a ReproError saying what the run lacks.

    A run is rebuildable when it names a commit of this repository, a version of every input data
    file, and its params; a working tree with uncommitted changes other than params.yaml (whose
    exact content the run logged as params.json) cannot be recovered: refused.
    """
    run_id = str(run.info.run_id)
    tags: dict[str, str] = dict(run.data.tags)
    refuse = f"run {run_id} cannot be rebuilt:"
    missing = [f"{tag} ({why})" for tag, why in REQUIRED_TAGS.items() if not tags.get(tag)]
    if missing:
        raise ReproError(f"{refuse} it lacks the lineage tags {', '.join(missing)}")
    data = {k.removeprefix(DATA_PREFIX): v for k, v in tags.items() if k.startswith(DATA_PREFIX)}
    absent = [str(p) for p in REBUILD_INPUTS if str(p) not in data]
    if absent:
        raise ReproError(f"{refuse} it records no version (md5) of the data files {', '.join(absent)}")
    unsafe = [p for p in data if not _safe_relative(p)]
    if unsafe:
        raise ReproError(f"{refuse} its data paths {unsafe} are not inside the project")
    commit = tags["reproml.git_commit"]
    known = re.fullmatch(r"[0-9a-f]{7,64}", commit) is not None
    if not known or _git(root, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode != 0:
        raise ReproError(
            f"{refuse} its commit {commit} is not in the git repository at {root.resolve()} "
            "(fetch it, or reproduce from a clone that has it)"
        )
    dirty_paths = _dirty_paths(tags.get("reproml.git_dirty_paths"))
    has_params_json = _has_params_artifact(run_id)
    if tags["reproml.git_dirty"] == "true":
        uncommitted = [p for p in dirty_paths if not _recoverable(p)] if dirty_paths else ["(not recorded)"]
        if uncommitted:
            raise ReproError(
                f"{refuse} it was trained from a working tree with uncommitted changes to "
                f"{', '.join(uncommitted)}; they were never committed, so what ran is unknown"
            )
        if PARAMS_FILE in dirty_paths and not has_params_json:
            raise ReproError(
                f"{refuse} params.yaml had uncommitted changes and the run logged no params.json, "
                "so its exact params are unknown"
            )
    return Recorded(
        run_id=run_id,
        commit=commit,
        tags=tags,
        params=dict(run.data.params),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        data=data,
        dirty_paths=dirty_paths,
        has_params_json=has_params_json,
    )


def _recoverable(dirty_path: str) -> bool:
    """An uncommitted change a rebuild does not need: params.yaml, when the run logged its exact
    params. (`.gitignore` edits never count as dirty: see lineage.git_state.)"""
    return dirty_path == PARAMS_FILE


def _dirty_paths(recorded: str | None) -> list[str]:
    try:
        paths = json.loads(recorded or "[]")
    except ValueError:
        return [f"(unreadable: {recorded!r})"]
    return [str(p) for p in paths] if isinstance(paths, list) else [str(paths)]


def _has_params_artifact(run_id: str) -> bool:
    from mlflow.tracking import MlflowClient

    from reproml.tracking import PARAMS_ARTIFACT

    return any(f.path == PARAMS_ARTIFACT for f in MlflowClient().list_artifacts(run_id))


def _download_params(run_id: str, into: Path) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from reproml.tracking import PARAMS_ARTIFACT

    into.mkdir(parents=True, exist_ok=True)
    from reproml.env import overridden

    with overridden("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"):  # a bar for one small file is noise
        local = MlflowClient().download_artifacts(run_id, PARAMS_ARTIFACT, dst_path=str(into))
    loaded: dict[str, Any] = json.loads(Path(local).read_text())
    return loaded


# --------------------------------------------------------------------------------------------
# Data from the DVC cache or remote


def dvc_executable() -> str:
    """The `dvc` installed beside this Python (the project's), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    if beside.is_file():
        return str(beside)
    found = shutil.which("dvc")
    if found is None:
        raise ReproError("the `dvc` executable was not found beside Python or on PATH")
    return found


@dataclass(frozen=True)
class DvcStore:
    """Where the project's DVC keeps data: its cache folder and its remotes (URLs absolute)."""

    cache: Path
    remotes: dict[str, dict[str, str]]  # name -> options (url, ...), as `dvc config` resolves them
    default: str | None
    cache_options: dict[str, str] = field(default_factory=dict)

    def ordered_remotes(self) -> list[str]:
        return sorted(self.remotes, key=lambda name: (name != self.default, name))


def parse_dvc_config(listing: str, root: Path) -> DvcStore:
    """A DvcStore from `dvc config --list --show-origin` (later levels override earlier ones;
    DVC itself resolves relative local paths against the config file that set them)."""
    values: dict[str, str] = {}
    for line in listing.splitlines():
        _, _, setting = line.partition("\t")
        key, sep, value = setting.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    remotes: dict[str, dict[str, str]] = {}
    for key, value in values.items():
        match = re.fullmatch(r"remote\.(.+)\.([^.]+)", key)
        if match:
            remotes.setdefault(match.group(1), {})[match.group(2)] = value
    cache_options = {k.removeprefix("cache."): v for k, v in values.items() if k.startswith("cache.")}
    cache = Path(cache_options.pop("dir", "cache"))
    if not cache.is_absolute():
        cache = root / ".dvc" / cache
    return DvcStore(cache.resolve(), remotes, values.get("core.remote"), cache_options)


def dvc_store(root: Path) -> DvcStore:
    done = subprocess.run(
        [dvc_executable(), "config", "--list", "--show-origin"], cwd=root, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise ReproError(f"`dvc config --list` failed in {root}: {done.stderr.strip()}")
    return parse_dvc_config(done.stdout, root.resolve())


def cache_object(cache: Path, md5: str) -> Path | None:
    """Where the cached copy of a file with this md5 lies (DVC 3 layout, then DVC 2's), if there is
    one. Not checked: read data through `verified_objects` / `verified_cache_object`, never this."""
    for candidate in (cache / "files" / "md5" / md5[:2] / md5[2:], cache / md5[:2] / md5[2:]):
        if candidate.is_file():
            return candidate
    return None


class CorruptCacheError(ReproError):
    """A DVC cache object whose bytes do not hash to the md5 it is filed under."""


def verified_cache_object(cache: Path, md5: str, path: str, origin: str = "DVC cache") -> Path | None:
    """The cached copy of `path` version `md5`, its bytes hashed and found to be that md5; None when
    the cache has no such object; CorruptCacheError when it holds other bytes.

    DVC files an object under the md5 it had when it was added and never looks again: a flipped
    bit, a truncated copy or a hand edit of the (read-only) object would otherwise be read as the
    recorded version. DVC 3's md5 of a file is the plain md5 of its bytes (`reproml.io.file_md5`).
    """
    from reproml.io import file_md5

    found = cache_object(cache, md5)
    if found is None:
        return None
    actual = file_md5(found)
    if actual != md5:
        raise CorruptCacheError(
            f"the DVC cache object {found} for {path} (from the {origin}) is corrupt: expected md5 {md5}, "
            f"its bytes have md5 {actual}; delete it (`rm -f {found}`) and run again to fetch it "
            "from the DVC remote, or restore it with `dvc fetch` / `dvc pull`"
        )
    return found


def _scratch_config(store: DvcStore, scratch: Path) -> str:
    """A DVC repo config for the fetch folder: no git, the project's cache and its remotes."""
    lines = ["[core]", "    no_scm = true", f"    site_cache_dir = {scratch / '.dvc' / 'site_cache'}"]
    if store.default:
        lines.append(f"    remote = {store.default}")
    lines += ["[cache]", f"    dir = {store.cache}"]
    lines += [f"    {k} = {v}" for k, v in store.cache_options.items()]
    for name, options in store.remotes.items():
        lines.append(f"['remote \"{name}\"']")
        lines += [f"    {k} = {v}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


def _fetch(store: DvcStore, remote: str, wanted: dict[str, str], scratch: Path) -> str | None:
    """`dvc fetch` of the wanted md5s from one remote into the project's cache.

    Returns None, or DVC's error when it failed as a whole (an unreachable remote). DVC exits 0
    when some objects are simply absent from the remote; the caller looks in the cache after.
    """
    paths.site_cache(scratch)  # .dvc/ and a private site cache, before DVC makes it world-writable
    (scratch / ".dvc" / "config").write_text(_scratch_config(store, scratch))
    outs = [{"md5": md5, "path": path, "hash": "md5"} for path, md5 in wanted.items()]
    (scratch / "fetch.dvc").write_text(yaml.safe_dump({"outs": outs}, sort_keys=False))
    done = subprocess.run(
        [dvc_executable(), "fetch", "-r", remote, "fetch.dvc"], cwd=scratch, capture_output=True, text=True
    )
    if done.returncode == 0:
        return None
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return lines[-1] if lines else f"dvc fetch exited {done.returncode}"


@dataclass(frozen=True)
class CacheObject:
    """A data version in the DVC cache whose bytes were hashed and match its md5."""

    path: Path  # the object in the cache: read it, never write it
    source: str  # "DVC cache", or "DVC remote '<name>'" when it had to be fetched


def verified_objects(
    store: DvcStore, data: dict[str, str], scratch: Path, progress: Progress = _quiet, refuse: str = ""
) -> dict[str, CacheObject]:
    """`path -> verified cache object` for every `path -> md5`, fetching what the cache lacks.

    Every read of the DVC cache goes through here (or `verified_cache_object`): the cache first
    (no DVC at all), then `dvc fetch` of what is missing from the project's remotes, default first.
    Every object is hashed before it is handed out: a corrupt one, cached or just fetched, is
    refused (CorruptCacheError, naming the object, both md5s and the fix), never used; a version
    available nowhere is refused naming the file, md5 and remotes tried.
    """
    found: dict[str, CacheObject] = {}

    def take(path: str, origin: str) -> None:
        try:
            cached = verified_cache_object(store.cache, data[path], path, origin)
        except CorruptCacheError as exc:
            raise CorruptCacheError(f"{refuse} {exc}" if refuse else str(exc)) from None
        if cached is not None:
            found[path] = CacheObject(cached, origin)

    for path in data:
        take(path, "DVC cache")
    tried: list[str] = []
    for remote in store.ordered_remotes():
        wanted = {p: md5 for p, md5 in data.items() if p not in found}
        if not wanted:
            break
        url = store.remotes[remote].get("url", "?")
        progress(f"fetching {len(wanted)} data file(s) from DVC remote {remote!r}")
        error = _fetch(store, remote, wanted, scratch)
        tried.append(scrub(f"{remote!r} ({url}{'; ' + error if error else ''})"))  # a URL may hold a password
        for path in wanted:
            take(path, f"DVC remote {remote!r}")
    missing = {p: md5 for p, md5 in data.items() if p not in found}
    if missing:
        listed = ", ".join(f"{p} (md5 {md5})" for p, md5 in missing.items())
        where = f"nor on the DVC remote {', '.join(tried)}" if tried else "and the project has no DVC remote"
        raise ReproError(
            f"{refuse + ' ' if refuse else ''}the data version {listed} is neither in the DVC cache "
            f"{store.cache} {where}; push it from a clone that has it (`dvc push`)"
        )
    return {p: found[p] for p in data}


def place_data(
    store: DvcStore, data: dict[str, str], objects: dict[str, CacheObject], worktree: Path, scratch: Path
) -> list[Check]:
    """Copy each recorded version into the worktree and check the copy's md5 against the record.

    Each object is verified again as it is read (a concurrent `dvc gc` may have removed it since,
    and then it is fetched again); the copy is hashed too, so what the rebuild reads is the record.
    """
    from reproml.io import file_md5

    checks = []
    for path, md5 in data.items():
        source = verified_objects(store, {path: md5}, scratch)[path]
        target = worktree / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.path, target)
        got = file_md5(target)
        detail = objects[path].source if got == md5 else f"{source.path} changed while it was copied"
        checks.append(Check("data", path, md5, got, got == md5, detail))
    return checks


# --------------------------------------------------------------------------------------------
# The worktree and the rebuild


def _remove_work(root: Path, work: Path) -> None:
    """Remove the worktree (and git's record of it) and everything else under `work`."""
    worktree = work / "wt"
    if worktree.exists():
        _git(root, "worktree", "remove", "--force", str(worktree), check=False)
    shutil.rmtree(work, ignore_errors=True)
    _git(root, "worktree", "prune", check=False)
    with contextlib.suppress(OSError):
        work.parent.rmdir()  # .reproml/reproduce, when no other reproduction is under way


def add_worktree(root: Path, worktree: Path, commit: str) -> None:
    worktree.parent.mkdir(parents=True, exist_ok=True)
    _git(root, "worktree", "add", "--detach", "--force", str(worktree), commit)


def _flat(raw: Any) -> dict[str, str]:
    """Params as `section.key` strings: validated and resolved when this code can, else as given."""
    from reproml.config import flat_params, flatten, parse_params

    try:
        return flat_params(parse_params(raw))
    except ReproError:
        return flatten(raw if isinstance(raw, dict) else {})


def _diff_keys(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def place_params(root: Path, recorded: Recorded, worktree: Path, work: Path) -> list[str]:
    """Write the run's exact params into the worktree (from params.json when it logged one).

    Returns notes: when the run's params are not the commit's params.yaml, it was an experiment
    (`dvc exp run -S`, or an edit before `dvc repro`) and is rebuilt with the run's own params.
    """
    if not recorded.has_params_json:
        return []
    logged = _download_params(recorded.run_id, work / "record")
    target = worktree / PARAMS_FILE
    committed = yaml.safe_load(target.read_text()) if target.is_file() else {}
    target.write_text(yaml.safe_dump(logged, sort_keys=False))
    changed = _diff_keys(_flat(logged), _flat(committed))
    if not changed:
        return []
    shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
    return [
        f"the run's params differ from params.yaml at {recorded.commit[:7]} in {shown} "
        "(an experiment, as `dvc exp run -S` makes); rebuilt with the run's own params.json"
    ]


def _stage_env(worktree: Path) -> dict[str, str]:
    env = {k: v for k, v in environ_snapshot().items() if k not in MLFLOW_REDIRECTS}
    env["PYTHONPATH"] = str(worktree / "src")
    return env


STAGES = ("train", "evaluate")
# Runs the commit's CLI whether or not its cli.py has a `__main__` guard.
STAGE_LAUNCHER = "import sys; sys.argv[0] = 'reproml'; from reproml.cli import app; app()"


def run_stages(worktree: Path, progress: Progress, stages: Iterable[str] = STAGES) -> str | None:
    """Run the commit's own stages in the worktree; None, or what failed with its output's tail."""
    env = _stage_env(worktree)
    for stage in stages:
        progress(f"rebuilding: {stage}")
        done = subprocess.run(
            [sys.executable, "-c", STAGE_LAUNCHER, stage],
            cwd=worktree,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip()[-2000:]
            return f"`reproml {stage}` of commit's code exited {done.returncode}:\n{tail}"
    return None


def rebuilt_run(worktree: Path) -> Any | None:
    """The one run the rebuild logged into the worktree's own MLflow store, if any.

    Read through a store whose connections are closed afterwards: MLflow caches one engine per
    database URI, and the same run rebuilt again in this process (same worktree path, new file)
    would otherwise be read from the deleted database of the previous rebuild.
    """
    from mlflow.entities import ViewType
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    database = worktree / "mlflow.db"
    if not database.is_file():
        return None
    store_class: Any = SqlAlchemyStore  # untyped in MLflow
    store = store_class(f"sqlite:///{database.resolve()}", (worktree / "mlartifacts").resolve().as_uri())
    try:
        experiments = [e.experiment_id for e in store.search_experiments(view_type=ViewType.ALL)]
        found = store.search_runs(
            experiments, "", ViewType.ALL, max_results=1, order_by=["attributes.start_time DESC"]
        )
        return found[0] if found else None
    finally:
        store.engine.dispose()


# --------------------------------------------------------------------------------------------
# Comparisons (pure)


def _short(value: str, width: int = 12) -> str:
    return value if len(value) <= width else value[:width]


def compare_code(recorded: Recorded, rebuilt_hash: str) -> Check:
    same = recorded.tags["reproml.code_sha256"] == rebuilt_hash
    detail = "" if same else f"{recorded.commit[:7]} does not hold the code that ran"
    return Check("code", "sha256", recorded.tags["reproml.code_sha256"], rebuilt_hash, same, detail)


def compare_params(
    recorded: Recorded, rebuilt_hash: str, rebuilt_seed: str, rebuilt_params: dict[str, str]
) -> list[Check]:
    """Hash, seed and every logged key: a run whose params.json no longer matches what MLflow
    logged (and what produced its metrics) differs by key even where the hashes agree."""
    recorded_hash, recorded_seed = recorded.tags["reproml.params_sha256"], recorded.tags["reproml.seed"]
    checks = [
        Check("params", "sha256", recorded_hash, rebuilt_hash or "-", recorded_hash == rebuilt_hash),
        Check("params", "seed", recorded_seed, rebuilt_seed or "-", recorded_seed == rebuilt_seed),
    ]
    for key in _diff_keys(recorded.params, rebuilt_params) if rebuilt_params else []:
        a, b = recorded.params.get(key, "(absent)"), rebuilt_params.get(key, "(absent)")
        checks.append(Check("params", key, a, b, False, "logged by the run vs used by the rebuild"))
    return checks


def compare_libraries(recorded_json: str | None, rebuilt: dict[str, str]) -> Check:
    if not recorded_json:
        return Check("libraries", "versions", "(not recorded)", f"{len(rebuilt)} packages", True)
    before: dict[str, str] = json.loads(recorded_json)
    differ = _diff_keys(before, rebuilt)
    shown = ", ".join(f"{n} {before.get(n, '-')} -> {rebuilt.get(n, '-')}" for n in differ)
    counts = f"{len(before)} packages", f"{len(rebuilt)} packages"
    return Check("libraries", "versions", counts[0], counts[1], not differ, shown)


def compare_uv_lock(recorded: str | None, current: str | None) -> Check:
    """The run's uv.lock against the one this environment (which runs the rebuild) came from."""
    same = (recorded or "") == (current or "")
    detail = "" if same else "this environment was installed from another uv.lock"
    return Check("uv.lock", "sha256", recorded or "(not recorded)", current or "(none)", same, detail)


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOLERANCE


def compare_metrics(recorded: dict[str, float], rebuilt: dict[str, float]) -> list[Check]:
    """Every test-split metric, equal within 1e-12."""
    names = sorted(k for k in set(recorded) | set(rebuilt) if k.startswith("test_"))
    checks = []
    for name in names:
        a, b = recorded.get(name), rebuilt.get(name)
        same = a is not None and b is not None and _close(a, b)
        text = ["-" if v is None else f"{v:.10g}" for v in (a, b)]
        delta = "" if same or a is None or b is None else f"{b - a:+.3g}"
        checks.append(Check("metrics", name, text[0], text[1], same, delta))
    return checks


def compare_predictions(recorded: str, rebuilt: str) -> Check:
    return Check("predictions", "test sha256", recorded, rebuilt or "-", recorded == rebuilt)


def compare_rebuild(recorded: Recorded, rebuilt: Any, worktree: Path, root: Path) -> list[Check]:
    """Recorded against rebuilt: what the rebuild logged, measured by the commit's own code."""
    from reproml import lineage

    tags: dict[str, str] = dict(rebuilt.data.tags)
    params: dict[str, str] = dict(rebuilt.data.params)
    metrics = {k: float(v) for k, v in rebuilt.data.metrics.items()}
    libraries = json.loads(tags["reproml.libraries"]) if tags.get("reproml.libraries") else None
    return [
        compare_code(recorded, tags.get("reproml.code_sha256") or lineage.code_hash(worktree)),
        *compare_params(
            recorded, tags.get("reproml.params_sha256", ""), tags.get("reproml.seed", ""), params
        ),
        compare_libraries(recorded.tags.get("reproml.libraries"), libraries or lineage.library_versions()),
        compare_uv_lock(recorded.tags.get("reproml.uv_lock_sha256"), lineage.sha256_file(root / "uv.lock")),
        *compare_metrics(recorded.metrics, metrics),
        compare_predictions(recorded.tags[PREDICTIONS_TAG], tags.get(PREDICTIONS_TAG, "")),
    ]


def compare_unbuilt(recorded: Recorded, worktree: Path, root: Path) -> list[Check]:
    """What can be compared when the rebuild failed: code and params, measured by this code."""
    from reproml import lineage

    try:
        params = _flat(yaml.safe_load((worktree / PARAMS_FILE).read_text()))
    except (OSError, yaml.YAMLError):
        params = {}
    return [
        compare_code(recorded, lineage.code_hash(worktree)),
        *compare_params(recorded, lineage.params_hash(params), params.get("seed", ""), params),
        compare_libraries(recorded.tags.get("reproml.libraries"), lineage.library_versions()),
        compare_uv_lock(recorded.tags.get("reproml.uv_lock_sha256"), lineage.sha256_file(root / "uv.lock")),
    ]


# --------------------------------------------------------------------------------------------
# reproduce


def reproduce(root: Path, ref: str, keep: bool = False, progress: Progress = _quiet) -> Reproduction:
    """Rebuild run `ref` from its recorded lineage and compare; a ReproError when it cannot be.

    Everything is done under `.reproml/reproduce/<run id>/` (git-ignored) and removed afterwards
    unless `keep`; the project's working tree, params, data and MLflow store are left as they are
    (fetched data lands in the project's DVC cache, as `dvc fetch` would put it).
    """
    root = root.resolve()
    progress("reading the run's lineage")
    recorded = check_lineage(root, load_run(root, ref))
    work = root / WORK_DIR / recorded.run_id
    _remove_work(root, work)  # a previous reproduction of this run that was interrupted or kept
    try:
        result = _rebuild_and_compare(root, recorded, work, progress)
    except BaseException:
        _remove_work(root, work)
        raise
    if keep:
        return _with_environment_notes(dataclasses.replace(result, kept=work / "wt"))
    _remove_work(root, work)
    return _with_environment_notes(result)


def _rebuild_and_compare(root: Path, recorded: Recorded, work: Path, progress: Progress) -> Reproduction:
    """Fetch the data, check out the commit, place params and data, run the stages, compare."""
    worktree = work / "wt"
    store = dvc_store(root)
    refuse = f"run {recorded.run_id} cannot be rebuilt:"
    objects = verified_objects(store, recorded.data, work / "fetch", progress, refuse)
    progress(f"checking out {recorded.commit[:7]} in a worktree")
    add_worktree(root, worktree, recorded.commit)
    notes = place_params(root, recorded, worktree, work)
    data_checks = place_data(store, recorded.data, objects, worktree, work / "fetch")
    failure = run_stages(worktree, progress)
    rebuilt = None if failure else rebuilt_run(worktree)
    if failure is None and rebuilt is None:
        failure = "the rebuild logged no MLflow run in the worktree's store"
    progress("comparing")
    if rebuilt is None:
        checks = compare_unbuilt(recorded, worktree, root)
    else:
        checks = compare_rebuild(recorded, rebuilt, worktree, root)
    return Reproduction(
        run_id=recorded.run_id,
        commit=recorded.commit,
        checks=(*data_checks, *checks),
        notes=tuple(notes),
        failure=failure,
    )


def _with_environment_notes(result: Reproduction) -> Reproduction:
    """When the outcome is the same, a different environment is worth a note, not a verdict."""
    if not result.outcome_same:
        return result
    extra = [
        f"{c.aspect} differ but the outcome is the same: {c.detail}"
        for c in result.checks
        if c.aspect in ENVIRONMENT and not c.same
    ]
    return dataclasses.replace(result, notes=(*result.notes, *extra))


def reproduction_table(result: Reproduction) -> Any:
    """Rich table: one row per check, differing rows highlighted."""
    from rich.table import Table

    table = Table(title=f"Reproduction of run {result.run_id} (commit {result.commit[:7]})")
    for header in ("aspect", "item", "recorded", "rebuilt", "same?", "detail"):
        table.add_column(header, overflow="fold")
    for c in result.checks:
        style = None if c.same else "bold red"
        table.add_row(
            c.aspect,
            c.item,
            _short(c.recorded),
            _short(c.rebuilt),
            "yes" if c.same else "NO",
            c.detail,
            style=style,
        )
    return table


# --------------------------------------------------------------------------------------------
# compare


@dataclass(frozen=True)
class RunView:
    """What `compare` reads of a run, as plain data (tests build these without MLflow)."""

    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @classmethod
    def of(cls, run: Any) -> RunView:
        return cls(
            run_id=str(run.info.run_id),
            name=str(run.info.run_name or run.info.run_id[:8]),
            params=dict(run.data.params),
            metrics={k: float(v) for k, v in run.data.metrics.items()},
            tags=dict(run.data.tags),
        )


@dataclass(frozen=True)
class Row:
    """One line of `compare`: a param, metric, data version or code version of both runs."""

    section: str  # params | metrics | data | code | environment
    key: str
    a: str
    b: str
    same: bool


KEY_METRIC_SPLITS = ("test_", "valid_")


def _metric_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _metric_rows(a: RunView, b: RunView, everything: bool) -> list[Row]:
    names = {k for k in (*a.metrics, *b.metrics) if not k.startswith("curve_")}
    if not everything:
        names = {k for k in names if k.startswith(KEY_METRIC_SPLITS)}
    order = {split: i for i, split in enumerate(("test_", "valid_", "train_"))}
    ranked = sorted(names, key=lambda k: (order.get(k[: k.find("_") + 1], 9), k))
    rows = []
    for name in ranked:
        x, y = a.metrics.get(name), b.metrics.get(name)
        same = x is not None and y is not None and _close(x, y)
        rows.append(Row("metrics", name, _metric_text(x), _metric_text(y), same))
    x_pred, y_pred = a.tags.get(PREDICTIONS_TAG, "-"), b.tags.get(PREDICTIONS_TAG, "-")
    rows.append(Row("metrics", "test predictions sha256", x_pred, y_pred, x_pred == y_pred))
    return rows


def _value_row(section: str, key: str, a: dict[str, str], b: dict[str, str]) -> Row:
    return Row(section, key, a.get(key, "-"), b.get(key, "-"), a.get(key) == b.get(key))


def _tag_row(section: str, key: str, tag: str, a: RunView, b: RunView) -> Row:
    x, y = a.tags.get(tag, "-"), b.tags.get(tag, "-")
    return Row(section, key, x, y, x == y)


def _commit(view: RunView) -> str:
    commit = view.tags.get("reproml.git_commit", "-")[:12]
    if view.tags.get("reproml.git_dirty") == "true":
        commit += " +dirty: " + ", ".join(json.loads(view.tags.get("reproml.git_dirty_paths") or "[]"))
    return commit


def compare_runs(a: RunView, b: RunView, everything: bool = False) -> list[Row]:
    """Params, metrics, data and code versions of two runs side by side.

    By default: the differing params, the test and validation metrics, every data and code row and
    the library versions that differ; `everything` adds equal params and libraries and all metrics.
    """
    rows = [
        row
        for key in sorted(set(a.params) | set(b.params))
        if (row := _value_row("params", key, a.params, b.params)) and (everything or not row.same)
    ]
    rows.append(_tag_row("params", "params sha256", "reproml.params_sha256", a, b))
    rows += _metric_rows(a, b, everything)
    data_tags = sorted({k for k in (*a.tags, *b.tags) if k.startswith(DATA_PREFIX)})
    rows += [_tag_row("data", tag.removeprefix(DATA_PREFIX), tag, a, b) for tag in data_tags]
    commits = _commit(a), _commit(b)
    rows.append(Row("code", "git commit", commits[0], commits[1], commits[0] == commits[1]))
    rows.append(_tag_row("code", "code sha256", "reproml.code_sha256", a, b))
    rows.append(_tag_row("environment", "uv.lock sha256", "reproml.uv_lock_sha256", a, b))
    libs_a = json.loads(a.tags.get("reproml.libraries") or "{}")
    libs_b = json.loads(b.tags.get("reproml.libraries") or "{}")
    for name in sorted(set(libs_a) | set(libs_b)):
        row = _value_row("environment", name, libs_a, libs_b)
        if everything or not row.same:
            rows.append(row)
    return rows
