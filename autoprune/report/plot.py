"""The Pareto plot of a search: validation accuracy against nonzero parameters (or the searched objective), as a
PNG.

matplotlib loads only inside ``plot_front``; the figure is drawn off-screen (Agg) and written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoprune.io._io import atomic_open
from autoprune.searching.pareto import LATENCY, MACS, PARAMS

SOFTWARE = "autoprune"  # the PNG's Software text: how `report --plot` knows a file it may replace
_LABELS = {PARAMS: "nonzero parameters", MACS: "MACs per sample as run", LATENCY: "latency per forward pass, ms"}
_FLOOR = {PARAMS: 1.0, MACS: 1.0, LATENCY: 1e-6}  # a log axis cannot show 0


def _key(record: dict) -> tuple:
    return (record.get("trial"), record.get("params_nonzero"), record.get("val_accuracy"))


def plot_front(
    trials: Sequence[dict],
    front: Sequence[dict],
    path: str | os.PathLike,
    *,
    baseline: dict | None = None,
    title: str = "",
    key: str = PARAMS,
) -> None:
    """Write a PNG of validation accuracy against nonzero parameters (log scale), or against ``key``: the record
    key the search minimized (``macs``, ``latency_ms``).

    Dominated trials are grey dots; the front is a step line with filled markers labelled by trial number,
    the same models' test accuracy is drawn as hollow markers, the seeded baselines' own front as a dashed line,
    and ``baseline`` (the dense model) as a star.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from autoprune.searching.pareto import baseline_front

    fig = Figure(figsize=(8, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    on_front = {_key(r) for r in front}

    def xs(records: Sequence[dict]) -> list[float]:  # a log axis cannot show 0
        return [max(float(r[key]), _FLOOR[key]) for r in records]

    dominated = [r for r in trials if _key(r) not in on_front and None not in (r.get("val_accuracy"), r.get(key))]
    if dominated:
        ax.scatter(
            xs(dominated),
            [r["val_accuracy"] for r in dominated],
            s=14,
            color="0.65",
            alpha=0.7,
            linewidths=0,
            label=f"dominated trials ({len(dominated)})",
        )
    if front:
        _draw_front(ax, front, xs(front))
    seeded = baseline_front(trials, key)
    if seeded:
        bx, by = xs(seeded), [float(r["val_accuracy"]) for r in seeded]
        ax.step(bx, by, where="post", color="0.3", linestyle="--", linewidth=1.0, label="baselines' front")
    if baseline is not None and None not in (baseline.get("val_accuracy"), baseline.get(key)):
        _draw_dense(ax, baseline, xs([baseline])[0])
    if not trials and not front:
        ax.text(0.5, 0.5, "no finished trials yet", transform=ax.transAxes, ha="center", va="center")
    else:
        ax.set_xscale("log")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(f"{_LABELS[key]} (log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or f"accuracy vs. {'parameters' if key == PARAMS else _LABELS[key]}")
    ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    with atomic_open(Path(path), "wb") as fh:
        fig.savefig(fh, format="png", metadata={"Software": SOFTWARE})


def _draw_front(ax: Any, front: Sequence[dict], fx: list[float]) -> None:
    """The front as a step line of filled markers labelled by trial, and its test accuracy as hollow ones."""
    fy = [float(r["val_accuracy"]) for r in front]
    ax.step(fx, fy, where="post", color="tab:blue", linewidth=1.5, alpha=0.8)
    ax.scatter(fx, fy, s=36, color="tab:blue", zorder=3, label=f"Pareto front, val accuracy ({len(front)})")
    tested = [
        (x, float(r["test_accuracy"])) for x, r in zip(fx, front, strict=True) if r.get("test_accuracy") is not None
    ]
    if tested:
        ax.scatter(
            [t[0] for t in tested],
            [t[1] for t in tested],
            s=36,
            facecolors="none",
            edgecolors="tab:orange",
            linewidths=1.3,
            zorder=3,
            label="front, test accuracy",
        )
    for x, y, r in zip(fx, fy, front, strict=True):
        if r.get("trial") is not None:
            ax.annotate(
                str(r["trial"]), (x, y), textcoords="offset points", xytext=(4, 5), fontsize=8, color="tab:blue"
            )


def _draw_dense(ax: Any, baseline: dict, x: float) -> None:
    """The dense model as a star, and a line at its accuracy: every model's drop reads against it."""
    ax.scatter(
        [x],
        [baseline["val_accuracy"]],
        marker="*",
        s=180,
        color="tab:red",
        zorder=4,
        label=f"{baseline['reference']} (dense)" if baseline.get("reference") else "dense baseline",
    )
    ax.axhline(float(baseline["val_accuracy"]), color="tab:red", linestyle=":", linewidth=0.8, zorder=1)
