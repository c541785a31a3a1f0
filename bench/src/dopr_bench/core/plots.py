"""Plot helpers of every bench: one colour per base (DoPr and its base share it), x for base arms, o for DoPr."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def arm_colors(arms: list[str]) -> dict[str, Any]:
    cmap = pyplot().get_cmap("tab10")
    bases = sorted({a.removeprefix("dopr-") for a in arms})
    return {a: cmap(bases.index(a.removeprefix("dopr-")) % 10) for a in arms}


def line_style(arm: str) -> str:
    return "-" if arm.startswith("dopr-") else "--"


def scatter_by_arm(ax: Any, arms: list[str], points: Callable[[str], tuple[list[float], list[float]]],
                   **style: Any) -> None:
    """One scatter series per arm (``points(arm) -> (xs, ys)``): base arms as x, DoPr arms as o, log x axis."""
    col = arm_colors(arms)
    for arm in arms:
        xs, ys = points(arm)
        ax.scatter(xs, ys, color=col[arm], label=arm, marker="o" if arm.startswith("dopr-") else "x", **style)
    ax.set_xscale("log")
    ax.legend(fontsize=8)


def scatter_figure(path: Path, arms: list[str], points: Callable[[str], tuple[list[float], list[float]]],
                   style: dict[str, Any], **axes: Any) -> Path:
    """A figure of one validation-against-test scatter (:func:`scatter_by_arm`) saved to ``path``."""
    fig, ax = pyplot().subplots(figsize=(6, 4.5))
    scatter_by_arm(ax, arms, points, **style)
    ax.set(**axes)
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
