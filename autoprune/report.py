"""Rendering of a search's results: terminal table, CSV, JSON document and Pareto plot.

Everything here reads records and the front computed by ``pareto.py``; nothing is decided here. pandas and
matplotlib load only inside the functions that need them, so importing this module stays cheap. Files are
written atomically: a temporary file in the target folder, then ``os.replace``, so a reader never sees a
half-written report and an interrupted run leaves the previous one intact.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._io import atomic_open, plain

# Column groups of the CSV, in this order; within a group columns keep their first-seen order.
_LEAD_COLUMNS = ("trial", "val_accuracy", "test_accuracy", "params_nonzero", "params_total")
_TAIL_COLUMNS = ("model_path",)
_MAX_TABLE_LAYERS = 8  # beyond this the sparsity column shows "+N more" instead of every layer


def _fmt_acc(value: Any) -> str:
    if value is None or not math.isfinite(float(value)):
        return "-"
    return f"{float(value):.4f}"


def _fmt_share(nonzero: Any, total: Any) -> str:
    if nonzero is None or not total:
        return "-"
    return f"{100.0 * float(nonzero) / float(total):.1f}%"


def _fmt_sparsity(layers: dict | None) -> str:
    if not layers:
        return "-"
    items = [f"{name} {100.0 * float(frac):.0f}" for name, frac in layers.items()]
    if len(items) > _MAX_TABLE_LAYERS:
        items = [*items[: _MAX_TABLE_LAYERS - 1], f"+{len(items) - _MAX_TABLE_LAYERS + 1} more"]
    return " ".join(items)


def _table_row(record: dict, label: str | None = None) -> list[str]:
    trial = record.get("trial")
    return [
        label if label is not None else ("-" if trial is None else str(trial)),
        str(record.get("params_nonzero", "-")),
        _fmt_share(record.get("params_nonzero"), record.get("params_total")),
        _fmt_acc(record.get("val_accuracy")),
        _fmt_acc(record.get("test_accuracy")),
        _fmt_sparsity(record.get("layer_sparsity")),
    ]


def front_table(
    front: Sequence[dict], *, total: int | None = None, failed: int = 0, baseline: dict | None = None
) -> str:
    """An aligned plain-text table of the front, smallest model first, for a terminal.

    Columns: trial number, nonzero parameters, their share of the dense count, validation and test accuracy,
    and the zero fraction of each layer in percent. ``total`` is the number of finished trials; ``baseline``
    (the dense reference) is shown under a rule when given, and marked ``dense`` where it is on the front; a
    seeded baseline trial carries its label (``global@0.01``).
    """
    title = f"Pareto front: {len(front)} model{'s' if len(front) != 1 else ''}"
    if total is not None:
        title += f" of {total} finished trial{'s' if total != 1 else ''}"
    if failed:
        title += f", {failed} failed"
    header = ["trial", "params", "% dense", "val acc", "test acc", "sparsity % (per layer)"]
    dense = baseline.get("trial") if baseline is not None else None

    def label(r: dict) -> str | None:
        if dense is not None and r.get("trial") == dense:
            return f"{r['trial']} dense"
        return f"{r['trial']} {r['baseline']}" if r.get("baseline") else None  # a seeded baseline

    rows = [_table_row(r, label(r)) for r in front]
    base_rows = []
    if baseline is not None:
        trial = baseline.get("trial")
        base_rows = [_table_row(baseline, "dense" if trial is None else f"dense ({trial})")]
    widths = [max(len(row[i]) for row in [header, *rows, *base_rows]) for i in range(len(header))]
    right = (False, True, True, True, True, False)  # numbers right-aligned, text left-aligned

    def line(row: list[str]) -> str:
        cells = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [title, line(header), rule, *(line(r) for r in rows)]
    if not rows:
        out.append("(no finished trials yet)")
    if base_rows:
        out += [rule, *(line(r) for r in base_rows)]
    return "\n".join(out)


def trial_summary(record: dict) -> str:
    """A few lines describing one trial record (``autoprune trial`` without ``--json``)."""
    sec = record.get("seconds") or {}
    phases = ", ".join(f"{k} {float(v):.1f}s" for k, v in sec.items())
    dense, eff = record.get("flops_dense"), record.get("flops_effective")
    lines = [
        f"val accuracy   {_fmt_acc(record.get('val_accuracy'))}"
        f"  (trained {_fmt_acc(record.get('val_accuracy_trained'))},"
        f" pruned {_fmt_acc(record.get('val_accuracy_pruned'))})",
        f"test accuracy  {_fmt_acc(record.get('test_accuracy'))}",
        f"parameters     {record.get('params_nonzero')} nonzero of {record.get('params_total')}"
        f" ({_fmt_share(record.get('params_nonzero'), record.get('params_total'))})",
        f"sparsity %     {_fmt_sparsity(record.get('layer_sparsity'))}",
    ]
    if dense:
        lines.append(f"MACs/sample    {eff} of {dense} ({_fmt_share(eff, dense)})")
    lines.append(f"time           {phases} on {record.get('device', '?')}")
    if record.get("model_path"):
        lines.append(f"model          {record['model_path']}")
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, paths to strings, non-finite floats to None."""
    return plain(value, where="record", json_safe=True, strict=False)


def baseline_front(trials: Sequence[dict]) -> list[dict]:
    """The Pareto front of the seeded baseline trials alone (records marked ``baseline``)."""
    from .pareto import pareto_front

    return pareto_front([r for r in trials if r.get("baseline")])


def report_document(front: Sequence[dict], trials: Sequence[dict], failed: int) -> dict:
    """The ``report --json`` document: ``{"front": [...], "trials": [...], "failed": N, "baseline_front": [...]}``,
    JSON-safe; ``baseline_front`` is the front of the seeded baselines alone, to set the searched front against.
    """
    document = {"front": _plain(list(front)), "trials": _plain(list(trials)), "failed": int(failed)}
    return {**document, "baseline_front": _plain(baseline_front(trials))}


def front_hypervolume(front: Sequence[dict]) -> dict[str, Any] | None:
    """The front's hypervolume (``pareto.hypervolume``: log10 parameters × val accuracy) against the reference
    point (dense parameter count, accuracy 0): one number to compare searches of the same model by.
    """
    from .pareto import hypervolume

    totals = [r["params_total"] for r in front if r.get("params_total")]
    if not totals:
        return None
    ref = max(totals)
    return {
        "value": hypervolume(front, ref_params=ref, ref_accuracy=0.0),
        "ref_params": ref,
        "ref_accuracy": 0.0,
        "x": "log10(params_nonzero)",
        "y": "val_accuracy",
    }


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = json.dumps(_plain(value))  # one cell; lists have no natural column split
    else:
        out[prefix] = _plain(value)


def _flat_record(record: dict) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if key == "layer_sparsity":
            _flatten(value, "sparsity", flat)
        else:
            _flatten(value, key, flat)
    return flat


def _column_group(column: str) -> int:
    if column in _LEAD_COLUMNS:
        return 0
    if column in _TAIL_COLUMNS:
        return 5
    for rank, prefix in ((2, "seconds."), (3, "sparsity."), (4, "config.")):
        if column.startswith(prefix):
            return rank
    return 1  # flops, intermediate accuracies and any other scalar


def write_csv(records: Sequence[dict], path: str | os.PathLike) -> None:
    """Write one row per record with flat columns, atomically.

    Columns: trial, val_accuracy, test_accuracy, params_nonzero, params_total, the other scalars (flops_*,
    val_accuracy_trained, ...), ``seconds.<phase>``, ``sparsity.<layer>``, the configuration as dotted
    columns (``config.train.lr``), then model_path.
    """
    import pandas as pd

    rows = [_flat_record(r) for r in records]
    seen: dict[str, None] = dict.fromkeys(_LEAD_COLUMNS)
    for row in rows:
        seen.update(dict.fromkeys(row))
    columns = sorted(seen, key=_column_group)  # stable: first-seen order within a group
    frame = pd.DataFrame(rows, columns=columns)
    for col in columns:
        # Integer columns with gaps would turn into floats ("7.0"); the nullable integer type keeps them whole.
        values = [row[col] for row in rows if row.get(col) is not None]
        if values and len(values) < len(rows) and all(type(v) is int for v in values):
            frame[col] = frame[col].astype("Int64")
    with atomic_open(Path(path), "w") as fh:
        frame.to_csv(fh, index=False)


def _key(record: dict) -> tuple:
    return (record.get("trial"), record.get("params_nonzero"), record.get("val_accuracy"))


def plot_front(
    trials: Sequence[dict],
    front: Sequence[dict],
    path: str | os.PathLike,
    *,
    baseline: dict | None = None,
    title: str = "",
) -> None:
    """Write a PNG of validation accuracy against nonzero parameters (log scale).

    Dominated trials are grey dots; the front is a step line with filled markers labelled by trial number,
    the same models' test accuracy is drawn as hollow markers, the seeded baselines' own front as a dashed line,
    and ``baseline`` (the dense model) as a star.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    on_front = {_key(r) for r in front}

    def xs(records: Sequence[dict]) -> list[float]:
        return [max(float(r["params_nonzero"]), 1.0) for r in records]  # a log axis cannot show 0

    dominated = [r for r in trials if _key(r) not in on_front and r.get("val_accuracy") is not None]
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
        fx, fy = xs(front), [float(r["val_accuracy"]) for r in front]
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
    seeded = baseline_front(trials)
    if seeded:
        bx, by = xs(seeded), [float(r["val_accuracy"]) for r in seeded]
        ax.step(bx, by, where="post", color="0.3", linestyle="--", linewidth=1.0, label="baselines' front")
    if baseline is not None and baseline.get("val_accuracy") is not None:
        ax.scatter(
            xs([baseline]),
            [baseline["val_accuracy"]],
            marker="*",
            s=180,
            color="tab:red",
            zorder=4,
            label="dense baseline",
        )
    if not trials and not front:
        ax.text(0.5, 0.5, "no finished trials yet", transform=ax.transAxes, ha="center", va="center")
    else:
        ax.set_xscale("log")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("nonzero parameters (log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "accuracy vs. parameters")
    ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    with atomic_open(Path(path), "wb") as fh:
        fig.savefig(fh, format="png")


def write_report(
    run_dir: str | os.PathLike,
    front: Sequence[dict],
    trials: Sequence[dict],
    failed: int,
    *,
    baseline: dict | None = None,
) -> dict[str, Path]:
    """Write ``run_dir/report/{front.csv, trials.csv, report.json, pareto.png}`` atomically.

    report.json is the ``report --json`` document plus the front's ``hypervolume`` (see ``front_hypervolume``).
    Model paths in the files are relative to ``run_dir``, so the report stays true when the run directory is
    moved or read from another working directory. Returns the paths under the keys ``front_csv``,
    ``trials_csv``, ``json`` and ``plot``.
    """
    folder = Path(run_dir) / "report"
    paths = {
        "front_csv": folder / "front.csv",
        "trials_csv": folder / "trials.csv",
        "json": folder / "report.json",
        "plot": folder / "pareto.png",
    }
    front, trials = _relative_paths(front, run_dir), _relative_paths(trials, run_dir)
    write_csv(front, paths["front_csv"])
    write_csv(trials, paths["trials_csv"])
    document = {**report_document(front, trials, failed), "hypervolume": front_hypervolume(front)}
    with atomic_open(paths["json"], "w") as fh:
        json.dump(document, fh, indent=2, allow_nan=False)
        fh.write("\n")
    plot_front(trials, front, paths["plot"], baseline=baseline, title=f"{Path(run_dir).name}: Pareto front")
    return paths


def _relative_paths(records: Sequence[dict], run_dir: str | os.PathLike) -> list[dict]:
    from .rundir import relative_to_run

    return [
        {**r, "model_path": relative_to_run(r["model_path"], run_dir)} if r.get("model_path") else r for r in records
    ]


# ------------------------------------------------------------------------------------------- search progress


@dataclass
class Progress:
    """Progress lines of a search on stderr: counts, elapsed time, the front size and its best points."""

    log: Callable[[str], None]
    requested: int  # trials this launch runs
    already: int  # counted trials before this launch
    records: list[dict[str, Any]]  # finished records so far (earlier launches included)
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    failed: int = 0
    cut: int = 0
    running: set[Any] = field(default_factory=set)  # keys of trials whose process started and did not end

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"

    def trial_started(self, key: Any) -> None:
        self.running.add(key)

    def finished(
        self, number: int, outcome: str, record: dict | None, reason: str | None, *, counted: bool, key: Any = None
    ) -> None:
        """One line for a trial the study has recorded; ``counted``: it counts toward the requested number."""
        from .pareto import pareto_front

        self.running.discard(key)
        if outcome == "complete" and record is not None:
            self.done += 1
            self.records.append({"trial": number, **record})
            what = f"trial {number}: val {record['val_accuracy']:.4f}, {record['params_nonzero']} params"
        elif counted:
            self.failed += 1
            what = f"trial {number} failed ({outcome}): {reason}"
        else:
            self.cut += 1
            what = f"trial {number} stopped ({outcome})"
        front = pareto_front(self.records)
        shown = front if len(front) <= 4 else [front[round(i * (len(front) - 1) / 3)] for i in range(4)]
        points = " ".join(f"{r['val_accuracy']:.4f}@{_short(r['params_nonzero'])}" for r in reversed(shown))
        finished = self.already + self.done + self.failed
        total = self.already + self.requested
        self.log(
            f"[{self.elapsed()}] {finished}/{total} done, {len(self.running)} running, {self.failed} failed | {what} | "
            f"front {len(front)}: {points or '-'}"
        )


def _short(n: float) -> str:
    n = float(n)
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{int(n)}"
