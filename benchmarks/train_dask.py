"""`train.backend: dask` against the local fit, on the flights: test ROC-AUC of each, the difference
and the wall times.

Both fits take params.yaml's `train` settings as committed (the fixed `train.xgboost` values, not a
study's best; `n_estimators` and early stopping included) and the pipeline's prepared splits
(`dvc repro prepare` first): train January-April, early stopping on May, scored on June (the test
split). The local side is `fitting.fit_model`; the Dask side `fitting_dask.fit_model_dask` on the
cluster `train` would use: `DASK_SCHEDULER_ADDRESS` when set, else a LocalCluster of one
single-threaded worker process per core started for the run (its start-up is timed apart). Target
from the issue: |difference| <= 0.002. Nothing is logged or written.

Run: `.venv/bin/python benchmarks/train_dask.py [--workers N] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

TARGET = 0.002


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()

    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from reproml import paths
    from reproml.fitting import fit_model
    from reproml.fitting_dask import dask_client, fit_model_dask, n_workers
    from reproml.io import read_json
    from reproml.stages.common import classes_of, feature_spec, load

    root = Path(".")
    params = load(root)
    if params.data.task != "classification":
        raise SystemExit("benchmarks/train_dask.py scores ROC-AUC: data.task must be classification")
    schema = read_json(root / paths.SCHEMA)
    spec = feature_spec(params, schema)
    classes = classes_of(params, schema)
    train = pd.read_parquet(root / paths.split_file("train"))
    valid = pd.read_parquet(root / paths.split_file("valid"))
    test = pd.read_parquet(root / paths.split_file("test"))
    y_test = test[params.data.target].to_numpy()

    def test_auc(model: Any) -> float:
        return float(roc_auc_score(y_test, model.pipeline.predict_proba(test[spec.input_columns])[:, 1]))

    started = time.perf_counter()
    local = fit_model(train, valid, spec, params, classes)
    local_s = time.perf_counter() - started

    started = time.perf_counter()
    with dask_client(n_workers=args.workers) as client:
        cluster_s = time.perf_counter() - started
        workers = n_workers(client)
        started = time.perf_counter()
        dask = fit_model_dask(
            client, root / paths.split_file("train"), root / paths.split_file("valid"), spec, params, classes
        )
        dask_s = time.perf_counter() - started

    local_auc, dask_auc = test_auc(local), test_auc(dask)
    diff = dask_auc - local_auc
    print(f"flights: train {len(train)} rows, valid {len(valid)}, test {len(test)}")
    print(f"local: test ROC-AUC {local_auc:.5f}  best round {local.best_iteration}  fit {local_s:.1f} s")
    print(
        f" dask: test ROC-AUC {dask_auc:.5f}  best round {dask.best_iteration}  fit {dask_s:.1f} s, "
        f"cluster start {cluster_s:.1f} s, {workers} workers"
    )
    verdict = "met" if abs(diff) <= TARGET else "MISSED"
    print(f"difference (dask - local): {diff:+.5f}  target |diff| <= {TARGET}: {verdict}")
    if args.json:
        result = {
            "rows": {"train": len(train), "valid": len(valid), "test": len(test)},
            "local": {"test_roc_auc": local_auc, "best_iteration": local.best_iteration, "wall_s": local_s},
            "dask": {
                "test_roc_auc": dask_auc,
                "best_iteration": dask.best_iteration,
                "wall_s": dask_s,
                "cluster_start_s": cluster_s,
                "workers": workers,
            },
            "difference": diff,
            "target_met": abs(diff) <= TARGET,
        }
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
