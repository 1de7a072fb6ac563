"""How a record's numbers read in the terminal: the report's table, the notes under it, a trial's summary."""

from __future__ import annotations

import math
from typing import Any

SPARSITY_WIDTH = 64  # the report's sparsity column: layers while they fit, then "+N more" (names can be long)


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


def _layer_items(layers: dict) -> list[str]:
    return [f"{name} {100.0 * float(frac):.0f}" for name, frac in layers.items()]


def fmt_sparsity(layers: dict | None, width: int = SPARSITY_WIDTH) -> str:
    """Each layer's sparsity in percent, as many layers as fit in ``width`` characters (at least one) and then
    ``+N more``; ``-`` for none. Every layer's is in the record, the CSV and the trial's summary."""
    if not layers:
        return "-"
    items = _layer_items(layers)
    if len(" ".join(items)) <= width:
        return " ".join(items)
    room = width - len(f" +{len(items)} more")
    shown = items[:1]
    for item in items[1:]:
        if len(" ".join([*shown, item])) > room:
            break
        shown.append(item)
    return " ".join([*shown, f"+{len(items) - len(shown)} more"])


def wrap_sparsity(layers: dict | None, width: int = 100) -> list[str]:
    """Every layer's sparsity in percent, in lines of at most ``width`` characters (a longer single layer alone)."""
    if not layers:
        return ["-"]
    lines: list[str] = []
    for item in _layer_items(layers):
        if lines and len(lines[-1]) + 1 + len(item) <= width:
            lines[-1] += " " + item
        else:
            lines.append(item)
    return lines
