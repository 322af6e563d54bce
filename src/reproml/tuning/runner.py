"""Workers on one study: this process runs one in a thread, `workers - 1` more run as processes.

Each worker runs Optuna's `study.optimize` to the exact budget (`study.run_trials`); all workers
talk only to the Optuna storage. This process also watches the storage and hands
each newly finished trial and the running counts to callbacks (MLflow logging, the progress bar),
so MLflow sees one writer and the bar is live whatever the number of workers.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

import optuna

from reproml.config import Params
from reproml.metrics import metric_spec
from reproml.redaction import install_scrubbing, scrub
from reproml.stores.optuna import StorageInfo, TuneError, open_storage
from reproml.tuning.objective import Objective, TuneData
from reproml.tuning.study import CLIENT_ATTR, Budget, Counts, StudySpec, counts, pruner, run_trials, sampler

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs, picklable for `spawn`.

    `load` gives a worker its preprocessed rows: a module-level function (with its arguments bound
    by `functools.partial`) of whoever calls the runner, so tuning never imports the stages."""

    load: Callable[[], TuneData]
    params: Params
    spec: StudySpec
    info: StorageInfo
    budget: Budget
    threads: int
    index: int = 0
    client: str = ""  # set by `run_study`: this `reproml tune`, recorded on each of its trials


def _work(config: WorkerConfig, data: TuneData, stop: Callable[[], bool]) -> int:
    # Each worker's sampler gets its own seed, or all would propose the same first trials.
    spec = replace(config.spec, seed=config.spec.seed + config.index)
    storage = open_storage(config.info)
    study = optuna.load_study(
        study_name=spec.name, storage=storage, sampler=sampler(spec), pruner=pruner(spec)
    )
    metric = metric_spec(spec.metric.name, config.params.data.task)
    objective = Objective(data, config.params, metric, config.threads, spec.report_every)
    return run_trials(study, objective, config.budget, config.info, stop, config.client)


def _die_with_parent() -> None:
    """Linux: a worker is killed when the `reproml tune` that started it dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def worker_main(config: WorkerConfig) -> None:
    _die_with_parent()
    install_scrubbing()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        _work(config, config.load(), lambda: False)
    except Exception:  # multiprocessing would print the traceback raw, storage URL and all
        sys.stderr.write(scrub(traceback.format_exc()))
        raise SystemExit(1) from None


def dask_task(config: WorkerConfig, data: TuneData, stop_event: str) -> int:
    """One worker as a Dask task: trials to the budget on whichever Dask worker runs it, against
    the same storage; it stops early once the `reproml tune` that submitted it sets `stop_event`
    (a running Dask task cannot be cancelled from outside)."""
    from distributed import Event

    install_scrubbing()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stopping = Event(stop_event)  # type: ignore[no-untyped-call]
    try:
        return _work(config, data, stopping.is_set)
    except Exception:  # the traceback travels back to the client: no storage URL in it
        raise TuneError(scrub(traceback.format_exc())) from None


def _on_dask(
    config: WorkerConfig, workers: int, data: TuneData, poll: Callable[[], Counts], address: str
) -> None:
    """`workers` Dask tasks, each a worker loop; this process only watches the storage meanwhile."""
    from distributed import Client, Event

    with Client(address, timeout=30) as client:  # type: ignore[no-untyped-call]
        stop_event = f"reproml-tune-stop-{config.client}"
        stopping = Event(stop_event, client=client)  # type: ignore[no-untyped-call]
        # Sent once, shared by this client's tasks, and held by every worker: data scattered to one
        # worker only is lost with it (a SIGKILL), and Dask then cancels every task that needs it
        # instead of running it again elsewhere.
        shared = client.scatter(data, hash=False, broadcast=True)
        futures = [
            client.submit(
                dask_task,
                replace(config, index=i),
                shared,
                stop_event,
                pure=False,
                key=f"reproml-tune-{config.client}-{i}",
            )
            for i in range(workers)
        ]
        try:
            while not all(f.done() for f in futures):
                time.sleep(POLL_SECONDS)
                poll()
            for future in futures:
                future.result()
        finally:
            stopping.set()  # type: ignore[no-untyped-call]
            client.cancel([f for f in futures if not f.done()])


def run_study(
    config: WorkerConfig,
    workers: int,
    data: TuneData,
    on_counts: Callable[[Counts], None],
    on_finished: Callable[[list[optuna.trial.FrozenTrial]], None],
    already_reported: set[int],
    dask_address: str | None = None,
) -> Counts:
    """Run `workers` workers to the budget; report progress and finished trials as they happen.

    On a shared database other clients run trials of the same study at the same time: only this
    client's own trials are reported as they finish (each client logs its own to MLflow). With
    `dask_address` the workers are tasks on that Dask scheduler's workers (`tune.backend: dask`)."""
    config = replace(
        config, client=config.client or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )
    watcher = optuna.load_study(study_name=config.spec.name, storage=open_storage(config.info))
    stopping = threading.Event()
    failure: list[BaseException] = []

    def in_thread() -> None:
        try:
            _work(config, data, stopping.is_set)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=worker_main, args=(replace(config, index=i),), name=f"tune-worker-{i}")
        for i in range(1, workers)
    ]
    thread = threading.Thread(target=in_thread, name="tune-worker-0", daemon=True)
    reported = set(already_reported)

    def poll() -> Counts:
        now = counts(watcher)
        on_counts(now)
        done = [
            t
            for t in watcher.get_trials(deepcopy=False)
            if t.state.is_finished()
            and t.number not in reported
            and (not config.info.shared or t.user_attrs.get(CLIENT_ATTR) == config.client)
        ]
        if done:
            on_finished(done)
            reported.update(t.number for t in done)
        return now

    if dask_address is not None:
        _on_dask(config, workers, data, poll, dask_address)
        return poll()
    try:
        for process in processes:
            process.start()
        thread.start()
        while thread.is_alive() or any(p.is_alive() for p in processes):
            time.sleep(POLL_SECONDS)
            poll()
        thread.join()
        for process in processes:
            process.join()
    finally:
        stopping.set()
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
    final = poll()
    if failure:
        raise failure[0]
    crashed = [p.name for p in processes if p.exitcode not in (0, None)]
    if crashed:
        raise TuneError(f"tune workers {', '.join(crashed)} exited with an error (see their output above)")
    return final
