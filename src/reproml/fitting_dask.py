"""`train.backend: dask`: the final XGBoost fit on a Dask cluster, with `xgboost.dask`.

Only the boosting is distributed. The preprocessing is fit on the train split in this process,
exactly as `fitting.fit_model` fits it (its category codes need every training value's count), and
is then applied to each Parquet partition on the workers. The train and valid splits are read with
`dask.dataframe` (one partition per Parquet row group or file), split further so every worker holds
a share, and boosting runs with the same parameters, seed, evaluation metrics and early stopping on
the validation split as the local fit. The booster comes back into an ordinary
`xgboost.XGBClassifier` / `XGBRegressor` inside the same `Pipeline` (multiclass: inside
`models.ClassLabels`), so what is saved, logged, registered, served and monitored is the same kind
of model whichever backend trained it.

The cluster is the scheduler at `DASK_SCHEDULER_ADDRESS` (what the team stack's env file exports),
or, when that is unset, a LocalCluster started for the run and closed after it. Dask, distributed
and `xgboost.dask` are imported here only, inside the functions: the local backend never pays for
them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from reproml import metrics
from reproml.config import Params
from reproml.errors import ReproError
from reproml.features import FeatureSpec, build_preprocessor
from reproml.fitting import TrainedModel
from reproml.models import CLASSIFICATION_TASKS, ClassLabels, class_order, make_estimator

if TYPE_CHECKING:
    from distributed import Client

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
CONNECT_TIMEOUT_S = 10
TARGET = "__target__"  # the label's column in the transformed partitions


@contextlib.contextmanager
def dask_client(
    address: str | None = None, n_workers: int | None = None, processes: bool = True
) -> Iterator[Client]:
    """A client of the scheduler at `address` (default: `$DASK_SCHEDULER_ADDRESS`), or, when there is
    none, of a LocalCluster started for the block: `n_workers` (default: the machine's cores)
    single-threaded workers on 127.0.0.1, no dashboard, closed when the block ends.

    An address that cannot be reached is a ReproError naming the variable, not a stack trace from
    deep inside distributed."""
    from distributed import Client, LocalCluster

    if address is None:
        address = os.environ.get(SCHEDULER_ENV) or None
    if address is None:
        with (
            LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=n_workers or os.cpu_count() or 1,
                threads_per_worker=1,
                processes=processes,
                host="127.0.0.1" if processes else None,  # threads talk in-process, not over TCP
                dashboard_address=None,
                # no dashboard; the scheduler's health and metrics routes on a free local port, not 8787
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            ) as cluster,
            Client(cluster, set_as_default=False) as local,  # type: ignore[no-untyped-call]
        ):
            yield local
        return
    try:
        timeout = f"{CONNECT_TIMEOUT_S}s"
        client = Client(address, timeout=timeout, set_as_default=False)  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError, ValueError) as exc:
        raise ReproError(
            f"{SCHEDULER_ENV}={address!r}: no Dask scheduler answered within {CONNECT_TIMEOUT_S} s "
            f"({type(exc).__name__}: {exc}); start it (`make team-up`, then `source .reproml/team/env`) "
            f"or unset {SCHEDULER_ENV} to train on a LocalCluster started for the run"
        ) from None
    try:
        yield client
    finally:
        client.close()  # type: ignore[no-untyped-call]


def n_workers(client: Client) -> int:
    return len(client.scheduler_info().get("workers", {}))


def wait_for_a_worker(client: Client, timeout_s: float = CONNECT_TIMEOUT_S) -> int:
    """The number of workers, once there is one: a scheduler without workers would take the job
    and never run it, so after `timeout_s` that is a ReproError naming the scheduler."""
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except TimeoutError:
        raise ReproError(
            f"the Dask scheduler at {client.scheduler.address if client.scheduler else '?'} has no "
            f"workers after {timeout_s} s: start some (`dask worker <address>`), or unset "
            f"{SCHEDULER_ENV} to train on a LocalCluster started for the run"
        ) from None
    return n_workers(client)


def _transformed(
    part: pd.DataFrame,
    prep: Any,
    columns: list[str],
    target: str,
    classes: list[Any] | None,
    names: list[str],
) -> pd.DataFrame:
    """One partition as the model sees it: the fitted preprocessing's output, and the label last
    (multiclass: its code in `classes`), all float64."""
    out = pd.DataFrame(
        np.asarray(prep.transform(part[columns]), dtype="float64"), columns=names, index=part.index
    )
    labels = part[target].to_numpy()
    out[TARGET] = (metrics.encode(labels, classes) if classes is not None else labels).astype("float64")
    return out


def _partitions(
    client: Client,
    path: Path,
    prep: Any,
    spec: FeatureSpec,
    target: str,
    classes: list[Any] | None,
    at_least: int,
) -> tuple[Any, Any]:
    """(X, y) as dask arrays of the split at `path` (a Parquet file or a folder of them), transformed
    on the workers and kept there; at least `at_least` partitions."""
    import dask.dataframe as dd

    columns = list(spec.input_columns)
    frame = dd.read_parquet(str(path), columns=[*columns, target])
    if frame.npartitions < at_least:
        frame = frame.repartition(npartitions=at_least)
    names = [f"x{i}" for i in range(len(prep.get_feature_names_out()))]
    meta = pd.DataFrame({name: pd.Series(dtype="float64") for name in [*names, TARGET]})
    transformed = frame.map_partitions(_transformed, prep, columns, target, classes, names, meta=meta)
    # Partition i is transformed and kept on worker i mod n: left to itself, the scheduler keeps the
    # pieces of one Parquet file where it was read, and the other workers would boost on nothing.
    addresses = sorted(client.scheduler_info()["workers"])
    kept = [
        client.persist(  # type: ignore[no-untyped-call]
            transformed.partitions[i], workers=[addresses[i % len(addresses)]]
        )
        for i in range(transformed.npartitions)
    ]
    counted = client.compute([part.shape[0] for part in kept])  # type: ignore[no-untyped-call]
    lengths = tuple(int(n) for n in client.gather(counted))  # type: ignore[no-untyped-call]
    ready = dd.concat(kept)  # type: ignore[no-untyped-call]
    return ready[names].to_dask_array(lengths=lengths), ready[TARGET].to_dask_array(lengths=lengths)


def _as_local(trained: Any, template: Any, n_jobs: int) -> Any:
    """The Dask model's booster in `template`, an unfitted `XGBClassifier` / `XGBRegressor` built
    with the same parameters, through XGBoost's own model file (which keeps the best iteration and
    the feature types)."""
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "model.ubj"
        trained.save_model(file)
        template.load_model(file)
    template.get_booster().set_param({"nthread": n_jobs})  # predict as the local model does
    return template


def fit_model_dask(
    client: Client,
    train_path: Path,
    valid_path: Path,
    spec: FeatureSpec,
    params: Params,
    classes: Sequence[Any] | None = None,
) -> TrainedModel:
    """`fitting.fit_model` for `train.model: xgboost`, with the boosting on `client`'s cluster.

    The preprocessing is fit here on the train split's input columns (read whole, as the local fit
    reads them); the splits are then read, transformed and trained on by the workers."""
    import xgboost.dask as dxgb

    task, target = params.data.task, params.data.target
    if params.train.model != "xgboost":
        raise ValueError(f"train.backend 'dask' trains xgboost only, got train.model={params.train.model!r}")
    started = time.perf_counter()
    prep = build_preprocessor(spec, "xgboost", params.features.max_categories)
    local_train = pd.read_parquet(train_path, columns=[*spec.input_columns, target])
    prep.fit(local_train[spec.input_columns])
    order = class_order(local_train[target].to_numpy(), classes) if task == "multiclass" else None
    if order is not None:  # ClassLabels' checks, before the cluster does any work
        ClassLabels(None, order).training_codes(local_train[target].to_numpy())
    del local_train
    workers = wait_for_a_worker(client)
    X_train, y_train = _partitions(client, train_path, prep, spec, target, order, workers)
    X_valid, y_valid = _partitions(client, valid_path, prep, spec, target, order, workers)

    template = make_estimator(params.train, task, params.seed, spec.categorical_mask("xgboost"))
    settings = template.get_params()
    settings["n_jobs"] = None  # each worker boosts with its own threads
    dask_cls = dxgb.DaskXGBClassifier if task in CLASSIFICATION_TASKS else dxgb.DaskXGBRegressor
    model = dask_cls(**settings)
    model.client = client
    # xgboost.dask asks distributed for the current client even when given one: make it this one.
    with client.as_current():
        model.fit(X_train, y_train, eval_set=[(X_train, y_train), (X_valid, y_valid)], verbose=False)
    rounds = model.evals_result()
    key = metrics.METRICS[metrics.CURVE[task]].xgboost[task]
    history = {"train": rounds["validation_0"][key], "valid": rounds["validation_1"][key]}
    best = int(model.best_iteration)

    fitted = _as_local(model, template, params.train.n_jobs)
    estimator: Any = ClassLabels.around(fitted, order) if order is not None else fitted
    return TrainedModel(
        pipeline=Pipeline([("preprocess", prep), ("model", estimator)]),
        spec=spec,
        history_metric=metrics.CURVE[task],
        history={k: [float(v) for v in vals] for k, vals in history.items()},
        best_iteration=best,
        fit_seconds=time.perf_counter() - started,
    )
