"""``trials.csv`` and ``front.csv``: one row per record, flat columns in a fixed order of groups."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoprune.io._io import atomic_open, plain
from autoprune.searching.pareto import LATENCY, MACS

# Column groups of the CSV, in this order; within a group columns keep their first-seen order.
LEAD_COLUMNS = ("trial", "val_accuracy", "test_accuracy", "params_nonzero", "params_total")
_SPEED_COLUMNS = (MACS, LATENCY, "speedup")  # after the lead columns, where the records have them
_TAIL_COLUMNS = ("model_path",)


def plain_value(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, paths to strings, non-finite floats to None."""
    return plain(value, where="record", json_safe=True, strict=False)


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = json.dumps(plain_value(value))  # one cell; lists have no natural column split
    else:
        out[prefix] = plain_value(value)


def _flat_record(record: dict) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if key == "layer_sparsity":
            _flatten(value, "sparsity", flat)
        else:
            _flatten(value, key, flat)
    return flat


def _column_group(column: str) -> int:
    if column in LEAD_COLUMNS:
        return 0
    if column in _SPEED_COLUMNS:
        return 1
    if column in _TAIL_COLUMNS:
        return 6
    for rank, prefix in ((3, "seconds."), (4, "sparsity."), (5, "config.")):
        if column.startswith(prefix):
            return rank
    return 2  # flops, intermediate accuracies and any other scalar


def write_csv(records: Sequence[dict], path: str | os.PathLike) -> None:
    """Write one row per record with flat columns, atomically.

    Columns: trial, val_accuracy, test_accuracy, params_nonzero, params_total, macs, latency_ms and speedup where
    the records have them, the other scalars (flops_*,
    val_accuracy_trained, ...), ``seconds.<phase>``, ``sparsity.<layer>``, the configuration as dotted
    columns (``config.train.lr``), then model_path.
    """
    import pandas as pd

    rows = [_flat_record(r) for r in records]
    seen: dict[str, None] = dict.fromkeys(LEAD_COLUMNS)
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
