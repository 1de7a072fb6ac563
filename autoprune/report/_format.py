"""How a record's numbers read in the terminal: the report's table, the notes under it, a trial's summary."""

from __future__ import annotations

import math
from typing import Any

MAX_TABLE_LAYERS = 8  # beyond this the sparsity column shows "+N more" instead of every layer


def fmt_acc(value: Any) -> str:
    """An accuracy (a fraction) to four places; ``-`` for none or a non-finite one."""
    if value is None or not math.isfinite(float(value)):
        return "-"
    return f"{float(value):.4f}"


def fmt_share(nonzero: Any, total: Any) -> str:
    """``nonzero`` as a percentage of ``total``; ``-`` without both."""
    if nonzero is None or not total:
        return "-"
    return f"{100.0 * float(nonzero) / float(total):.1f}%"


def fmt_sparsity(layers: dict | None) -> str:
    """Each layer's sparsity in percent, at most ``MAX_TABLE_LAYERS`` of them; ``-`` for none."""
    if not layers:
        return "-"
    items = [f"{name} {100.0 * float(frac):.0f}" for name, frac in layers.items()]
    if len(items) > MAX_TABLE_LAYERS:
        items = [*items[: MAX_TABLE_LAYERS - 1], f"+{len(items) - MAX_TABLE_LAYERS + 1} more"]
    return " ".join(items)
