"""`reproml compare`: two runs' params, metrics, data and code versions side by side (pure)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reproml.reproduce.checks import close
from reproml.reproduce.record import DATA_PREFIX, PREDICTIONS_TAG

if TYPE_CHECKING:
    from reproml.stores.mlflow.runs import Run


@dataclass(frozen=True)
class RunView:
    """What `compare` reads of a run, as plain data (tests build these without MLflow)."""

    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @classmethod
    def of(cls, run: Run) -> RunView:
        return cls(
            run_id=run.run_id,
            name=run.name or run.run_id[:8],
            params=dict(run.params),
            metrics=dict(run.metrics),
            tags=dict(run.tags),
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
        same = x is not None and y is not None and close(x, y)
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
