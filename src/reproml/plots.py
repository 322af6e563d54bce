"""PNG renderings of the evaluation frames, for the MLflow UI (DVC renders the CSVs itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from reproml.io import atomic_path


def _figure() -> tuple[Any, Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    return plt, fig, ax


def _save(plt: Any, fig: Any, ax: Any, target: Path, title: str) -> Path:
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target


def line(
    frame: pd.DataFrame, x: str, ys: list[str], target: Path, title: str, diagonal: bool = False
) -> Path:
    plt, fig, ax = _figure()
    for y in ys:
        ax.plot(frame[x], frame[y], label=y)
    if diagonal:
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel(x)
    ax.set_ylabel(ys[0] if len(ys) == 1 else "value")
    if len(ys) > 1:
        ax.legend()
    return _save(plt, fig, ax, target, title)


def confusion(frame: pd.DataFrame, target: Path, title: str, labels: list[Any] | None = None) -> Path:
    """Counts of actual (rows) by predicted (columns), for `labels` in their order (default: binary
    0/1)."""
    plt, fig, ax = _figure()
    table = pd.crosstab(frame["actual"], frame["predicted"])
    labels = [0, 1] if labels is None else labels
    counts = table.reindex(index=labels, columns=labels, fill_value=0).to_numpy()
    ax.imshow(counts, cmap="Blues")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{counts[i, j]:,}", ha="center", va="center")
    ax.set_xticks(range(len(labels)), [str(v) for v in labels])
    ax.set_yticks(range(len(labels)), [str(v) for v in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    return _save(plt, fig, ax, target, title)


def bars(frame: pd.DataFrame, label: str, value: str, target: Path, title: str, top: int = 20) -> Path:
    plt, fig, ax = _figure()
    head = frame.head(top).iloc[::-1]
    ax.barh(head[label].astype(str), head[value])
    ax.set_xlabel(value)
    return _save(plt, fig, ax, target, title)


def scatter(frame: pd.DataFrame, x: str, y: str, target: Path, title: str) -> Path:
    plt, fig, ax = _figure()
    ax.scatter(frame[x], frame[y], s=4, alpha=0.4)
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    return _save(plt, fig, ax, target, title)


def lines_by(
    frame: pd.DataFrame, x: str, y: str, group: str, target: Path, title: str, diagonal: bool = False
) -> Path:
    """One line per value of `group` (e.g. each class's one-vs-rest curve)."""
    plt, fig, ax = _figure()
    for value, part in frame.groupby(group, sort=True):
        ax.plot(part[x], part[y], label=str(value))
    if diagonal:
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if len(frame):
        ax.legend(title=group)
    return _save(plt, fig, ax, target, title)


def grouped_bars(frame: pd.DataFrame, label: str, values: list[str], target: Path, title: str) -> Path:
    """Side-by-side bars of several `values` per `label` (e.g. precision, recall, F1 per class)."""
    plt, fig, ax = _figure()
    width = 0.8 / max(len(values), 1)
    positions = range(len(frame))
    for i, value in enumerate(values):
        ax.bar([p + i * width for p in positions], frame[value], width=width, label=value)
    ax.set_xticks([p + width * (len(values) - 1) / 2 for p in positions], frame[label].astype(str))
    ax.set_xlabel(label)
    ax.legend()
    return _save(plt, fig, ax, target, title)
