"""Rendering of a search's results: terminal table, JSON document, the report's files (the CSV is
``trials_csv.py``'s, the plot ``plot.py``'s; live
progress lines are ``progress.py``'s; what ``autoprune trial`` prints, ``summary.py``'s).

Everything here reads records and the front computed by ``pareto.py``; nothing is decided here. pandas and
matplotlib load only inside the functions that need them, so importing this module stays cheap. Files are
written atomically: a temporary file in the target folder, then ``os.replace``, so a reader never sees a
half-written report and an interrupted run leaves the previous one intact.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune.io._io import atomic_open
from autoprune.io._layout import REPORT_DIR, relative_to_run
from autoprune.report._format import fmt_acc, fmt_share, fmt_sparsity
from autoprune.report.plot import plot_front
from autoprune.report.trials_csv import LEAD_COLUMNS, plain_value, write_csv
from autoprune.searching.pareto import LATENCY, MACS, PARAMS

if TYPE_CHECKING:
    from autoprune.rundir.ledger import Results

_DENSE_OF = {PARAMS: "params_total", MACS: "macs_dense", LATENCY: "latency_dense_ms"}  # the dense model's size
_HEADERS = {MACS: "MACs", LATENCY: "latency ms"}  # the table's column of a searched objective other than params


def drop_points(record: dict, reference: dict | None) -> float | None:
    """Test accuracy lost against the dense reference, in points (positive: worse); None without one."""
    if reference is None:
        return None
    try:
        drop = 100.0 * (float(reference["test_accuracy"]) - float(record["test_accuracy"]))
    except (KeyError, TypeError, ValueError):
        return None
    return drop if math.isfinite(drop) else None


def _fmt_drop(record: dict, reference: dict | None) -> str:
    drop = drop_points(record, reference)
    return "-" if drop is None else f"{0.0 - drop:+.2f}"


def _fmt_speed(record: dict, column: str) -> str:
    value = record.get(column)
    if value is None:
        return "-"
    return f"{float(value):.2f}x" if column == "speedup" else f"{float(value):.3g}" if column == LATENCY else str(value)


def _table_row(
    record: dict, label: str | None = None, reference: dict | None = None, speed: Sequence[str] = ()
) -> list[str]:
    trial = record.get("trial")
    return [
        label if label is not None else ("-" if trial is None else str(trial)),
        str(record.get("params_nonzero", "-")),
        fmt_share(record.get("params_nonzero"), record.get("params_total")),
        *(_fmt_speed(record, column) for column in speed),
        fmt_acc(record.get("val_accuracy")),
        fmt_acc(record.get("test_accuracy")),
        _fmt_drop(record, reference),
        fmt_sparsity(record.get("layer_sparsity")),
    ]


def _shrunk(record: dict) -> bool:
    """Whether the record's model was pruned channel by channel (smaller tensors), not weight by weight."""
    prune = (record.get("config") or {}).get("prune") or {}
    return bool(prune.get("enabled", True) and prune.get("structured"))


def front_table(
    front: Sequence[dict],
    *,
    total: int | None = None,
    failed: int = 0,
    baseline: dict | None = None,
    key: str = PARAMS,
) -> str:
    """An aligned plain-text table of the front, smallest model first (by ``key``, the searched objective's), for
    a terminal.

    Columns: trial number, nonzero parameters, their share of the dense count, the objective (MACs or latency
    in ms) when it is not parameters, the speed-up over the dense model where measured and where it can differ
    from 1x (the search's objective is speed, or a front model lost channels), validation and test accuracy, the
    test accuracy against the dense reference's in points, and the zero fraction of each layer in percent.
    ``total`` is the number of finished trials; ``baseline`` (the dense reference: the checkpoint a search started
    from, else its best dense trial) is shown under a rule when given, and marked ``dense`` where it is on the
    front; a seeded baseline trial carries its label (``global@0.01``), a front refinement the trial whose settings
    it carries (``from 17``).
    """
    title = f"Pareto front: {len(front)} model{'s' if len(front) != 1 else ''}"
    if total is not None:
        title += f" of {total} finished trial{'s' if total != 1 else ''}"
    if failed:
        title += f", {failed} failed"
    speed = [key] if key in _HEADERS else []
    if any(r.get("speedup") is not None for r in front) and (key != PARAMS or any(map(_shrunk, front))):
        speed.append("speedup")  # a model pruned weight by weight runs as fast as the dense one: no column of noise
    header = ["trial", "params", "% dense", *(_HEADERS.get(c, "speed-up") for c in speed)]
    header += ["val acc", "test acc", "vs dense", "sparsity % (per layer)"]
    dense = baseline.get("trial") if baseline is not None else None

    def label(r: dict) -> str | None:
        if dense is not None and r.get("trial") == dense:
            return f"{r['trial']} dense"
        if r.get("baseline"):  # a seeded baseline
            return f"{r['trial']} {r['baseline']}"
        return f"{r['trial']} from {r['refined_from']}" if r.get("refined_from") is not None else None

    rows = [_table_row(r, label(r), baseline, speed) for r in front]
    base_rows = []
    if baseline is not None:
        trial = baseline.get("trial")
        name = baseline.get("reference") or "dense"  # checkpoint, dense start
        base_rows = [_table_row(baseline, name if trial is None else f"dense ({trial})", baseline, speed)]
    widths = [max(len(row[i]) for row in [header, *rows, *base_rows]) for i in range(len(header))]
    right = (False, *[True] * (len(header) - 2), False)  # numbers right-aligned, text left-aligned

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


def sizes_table(front: Sequence[dict], sizes: Sequence[float], trials: Sequence[dict] = ()) -> str | None:
    """For each size a space declares (``search.sizes``: fractions of the dense parameters, or counts), the
    model ``pick --max-params`` returns there (``pareto.pick_max_params`` over ``trials``, else the front), and
    how it stands among the models validation cannot tell apart (``pareto.indistinct``). None without sizes."""
    from autoprune.errors import SearchError
    from autoprune.searching.pareto import pick_max_params
    from autoprune.searching.refine import size_count

    totals = [r["params_total"] for r in front if r.get("params_total")]
    if not sizes or not totals:
        return None
    lines = ["At the declared sizes (autoprune pick RUN --max-params N):"]
    for size in sizes:
        limit = size_count(size, totals[0])
        name = f"  <= {limit} params" + (f" ({100 * size:g}%)" if size <= 1 else "")
        try:
            r = pick_max_params(list(trials) or front, limit)
            acc = f"val {fmt_acc(r.get('val_accuracy'))}, test {fmt_acc(r.get('test_accuracy'))}"
            lines.append(
                f"{name}: trial {r.get('trial')}, {r['params_nonzero']} params, {acc}{_close_calls(trials, r, limit)}"
            )
        except SearchError:
            lines.append(f"{name}: no model yet")
    return "\n".join(lines)


def _trials(close: Sequence[dict]) -> str:
    shown = ", ".join(str(r.get("trial", "?")) for r in close[:4]) + (", ..." if len(close) > 4 else "")
    return f"trial{'s' if len(close) > 1 else ''} {shown}"


def _close_calls(trials: Sequence[dict], chosen: dict, limit: int) -> str:
    """How the pick at a size stands among the trials validation cannot tell from the most accurate one there:
    ``; validation cannot tell it from trials 36, 13 (...)`` or ``; the largest of 4 models within ...``."""
    from autoprune.searching.pareto import indistinct

    close, margin = indistinct(trials, chosen, limit)
    if not close or margin is None:
        return ""
    top = close[0]
    if float(top["val_accuracy"]) <= float(chosen["val_accuracy"]):
        return f"; validation cannot tell it from {_trials(close)} (within one standard error, {100 * margin:.2f} pt)"
    return (
        f"; the largest of {len(close) + 1} models within one standard error ({100 * margin:.2f} pt) of the most "
        f"accurate on validation, trial {top.get('trial', '?')} ({top['params_nonzero']} params, val "
        f"{fmt_acc(top['val_accuracy'])})"
    )


def indistinct_note(chosen: dict) -> str | None:
    """A note for ``pick --max-params``: the trials (``chosen["indistinct"]``) validation cannot tell from the
    most accurate one, and whether the chosen model is that one or the largest of them."""
    from autoprune.searching.pareto import val_standard_error

    close = chosen.get("indistinct")
    if not close:
        return None
    top = max([chosen, *close], key=lambda r: float(r["val_accuracy"]))
    margin = val_standard_error({**chosen, "val_accuracy": top["val_accuracy"]})
    if margin is None:
        return None
    named = ", ".join(
        f"{r['trial']} ({r['params_nonzero']} params, val {fmt_acc(r['val_accuracy'])})" for r in close[:5]
    )
    more = f" and {len(close) - 5} more" if len(close) > 5 else ""
    within = f"one standard error ({100 * margin:.2f} pt on {chosen['val_samples']} samples)"
    if top is chosen:
        return (
            f"note: validation cannot tell it from trial{'s' if len(close) > 1 else ''} {named}{more}: within "
            f"{within} of its val accuracy; compare them on data of your own (pick --trial N exports another)"
        )
    return (
        f"note: the largest of the {len(close) + 1} models within {within} of the most accurate on validation, "
        f"trial {top['trial']}: validation cannot rank them, and with the same pipeline more parameters are the "
        f"better bet; the others: {named}{more} (--most-accurate takes trial {top['trial']}, --trial N another)"
    )


def report_document(results: Results) -> dict:
    """The ``report --json`` document of a run's results: ``{"front": [...], "trials": [...], "failed": N,
    "stopped": [...], "baseline_front": [...], "calibration": str | None, "dense": record | None}``, JSON-safe,
    the front sorted by the searched objective's key; a search whose ``search.objective`` is not ``params`` also
    has ``"objective"`` (``macs`` or ``latency``).
    ``dense`` is the dense reference (the checkpoint a search started from, else its most accurate dense trial).
    ``stopped`` lists the trials early stopping stopped (trial, rung, epoch, val_accuracy, reason);
    ``baseline_front`` is the front of the seeded baselines alone, to set the searched front against;
    ``calibration`` says what the calibration of the baselines chose and from which probes (None without one).
    """
    from autoprune.searching.pareto import baseline_front

    trials = list(results.trials)
    document = {"front": plain_value(list(results.front)), "trials": plain_value(trials), "failed": int(results.failed)}
    calibration = results.calibration if isinstance(results.calibration, str) else None
    document.update(
        stopped=plain_value(list(results.stopped)), baseline_front=plain_value(baseline_front(trials, results.key))
    )
    document.update(calibration=calibration, dense=plain_value(results.baseline))
    return document if results.objective == "params" else {**document, "objective": results.objective}


def front_hypervolume(front: Sequence[dict], key: str = PARAMS) -> dict[str, Any] | None:
    """The front's hypervolume (``pareto.hypervolume``: log10 parameters, or ``key``, × val accuracy) against the
    reference point (the dense model's parameter count, or its ``key``, and accuracy 0): one number to compare
    searches of the same model by.
    """
    from autoprune.searching.pareto import hypervolume

    totals = [r[_DENSE_OF[key]] for r in front if r.get(_DENSE_OF[key])]
    if not totals:
        return None
    ref = max(totals)
    return {
        "value": hypervolume(front, ref_params=ref, ref_accuracy=0.0, key=key),
        "ref_params": ref,
        "ref_accuracy": 0.0,
        "x": f"log10({key})",
        "y": "val_accuracy",
    }


def check_extra_outputs(
    run_dir: str | os.PathLike, *, csv: str | os.PathLike | None, plot: str | os.PathLike | None
) -> None:
    """Refuse ``report``'s ``--csv`` and ``--plot`` files before anything is read or written: never onto the run's
    own files, a folder, or a place that cannot be written (``check_output_file``), and, as ``pick`` refuses to
    replace anything but a model file, never over an existing file autoprune did not write there: a trials CSV
    (its header starts with our columns), a PNG autoprune drew (its Software text)."""
    from autoprune.errors import SearchError
    from autoprune.io._paths import check_output_file
    from autoprune.report.plot import SOFTWARE

    outputs = [
        check_output_file(path, what=what, protected_dirs=[run_dir], example=example)
        for path, what, example in ((csv, "--csv", "trials.csv"), (plot, "--plot", "front.png"))
        if path
    ]
    if len(outputs) == 2 and outputs[0] == outputs[1]:
        raise SearchError(f"--csv and --plot are the same file {csv}; give two file names")
    for path, what, kind in ((csv, "--csv", "trials CSV"), (plot, "--plot", "plot")):
        if not path or not Path(path).is_file():
            continue
        try:
            with open(path, "rb") as fh:
                head = fh.read(4096)
        except OSError:
            head = b""
        ours = head.startswith(b"\x89PNG") and f"Software\0{SOFTWARE}".encode() in head
        if what == "--csv":
            ours = head.startswith(",".join(LEAD_COLUMNS).encode())
        if not ours:
            raise SearchError(f"refusing to overwrite {path}: not an autoprune {kind}; choose another {what} file")


def write_report(run_dir: str | os.PathLike, results: Results) -> dict[str, Path]:
    """Write a run's ``results`` to ``run_dir/report/{front.csv, trials.csv, report.json, pareto.png}`` atomically.

    report.json is the ``report --json`` document plus the front's ``hypervolume`` (see ``front_hypervolume``).
    Model paths in the files are relative to ``run_dir``, so the report stays true when the run directory is
    moved or read from another working directory. Returns the paths under the keys ``front_csv``,
    ``trials_csv``, ``json`` and ``plot``.
    """
    folder = Path(run_dir) / REPORT_DIR
    paths = {
        "front_csv": folder / "front.csv",
        "trials_csv": folder / "trials.csv",
        "json": folder / "report.json",
        "plot": folder / "pareto.png",
    }
    front, trials = _relative_paths(results.front, run_dir), _relative_paths(results.trials, run_dir)
    write_csv(front, paths["front_csv"])
    write_csv(trials, paths["trials_csv"])
    document = report_document(replace(results, front=front, trials=trials))
    document["hypervolume"] = front_hypervolume(front, results.key)
    with atomic_open(paths["json"], "w") as fh:
        json.dump(document, fh, indent=2, allow_nan=False)
        fh.write("\n")
    title = f"{Path(run_dir).name}: Pareto front"
    plot_front(trials, front, paths["plot"], baseline=results.baseline, title=title, key=results.key)
    return paths


def write_extra_outputs(
    run_dir: str | os.PathLike,
    results: Results,
    *,
    csv: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
) -> None:
    """Write the extra copies ``--csv`` (every trial, with ``on_front``) and ``--plot`` ask for, once
    ``check_extra_outputs`` has allowed them."""
    if csv is not None:
        front = {id(r) for r in results.front}
        write_csv([{**r, "on_front": id(r) in front} for r in results.trials], csv)
    if plot is not None:
        title = f"{Path(run_dir).name}: Pareto front"
        plot_front(results.trials, results.front, plot, baseline=results.baseline, title=title, key=results.key)


def _relative_paths(records: Sequence[dict], run_dir: str | os.PathLike) -> list[dict]:
    return [
        {**r, "model_path": relative_to_run(r["model_path"], run_dir)} if r.get("model_path") else r for r in records
    ]
