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


def confusion(frame: pd.DataFrame, target: Path, title: str) -> Path:
    plt, fig, ax = _figure()
    table = pd.crosstab(frame["actual"], frame["predicted"])
    counts = table.reindex(index=[0, 1], columns=[0, 1], fill_value=0).to_numpy()
    ax.imshow(counts, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{counts[i, j]:,}", ha="center", va="center")
    ax.set_xticks([0, 1])
    ax.set_yticks([0, 1])
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
