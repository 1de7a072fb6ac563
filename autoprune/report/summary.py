"""The few lines ``autoprune trial`` prints about one trial record (``--json`` prints the record itself)."""

from __future__ import annotations

from typing import Any

from autoprune.report._format import fmt_acc, fmt_share, wrap_sparsity
from autoprune.report.notes import at_chance

__all__ = ["trial_summary"]


def _speed_lines(record: dict) -> list[str]:
    """How fast the final model runs against the dense one: MACs as it executes, and its latency."""
    lines = []
    macs, dense = record.get("macs"), record.get("macs_dense")
    if macs is not None and dense:
        lines.append(f"MACs as run    {macs} of {dense} per sample ({fmt_share(macs, dense)})")
    ms, dense_ms, batch = record.get("latency_ms"), record.get("latency_dense_ms"), record.get("latency_batch")
    if ms is not None:
        versus = f" against {dense_ms:.3g} ms dense: {dense_ms / ms:.2f}x" if dense_ms else ""
        others = record.get("latency_by_batch_ms") or {}
        rest = "".join(f", {v:.3g} ms at batch {b}" for b, v in others.items() if str(b) != str(batch))
        lines.append(f"latency        {ms:.3g} ms at batch {batch}{versus}{rest}")
    return lines


def _fmt_not_pruned(groups: dict, total: Any) -> str:
    from autoprune.pruning.units import not_pruned_line

    try:
        return not_pruned_line({str(k): int(v) for k, v in groups.items()}, int(total)).removeprefix("not pruned: ")
    except (TypeError, ValueError):
        return "-"


def trial_summary(record: dict) -> str:
    """A few lines describing one trial record (``autoprune trial`` without ``--json``)."""
    sec = record.get("seconds") or {}
    phases = ", ".join(f"{k} {float(v):.1f}s" for k, v in sec.items())
    dense, eff = record.get("flops_dense"), record.get("flops_effective")
    lines = [
        f"val accuracy   {fmt_acc(record.get('val_accuracy'))}"
        f"  (trained {fmt_acc(record.get('val_accuracy_trained'))},"
        f" pruned {fmt_acc(record.get('val_accuracy_pruned'))})",
        f"test accuracy  {fmt_acc(record.get('test_accuracy'))}",
        f"parameters     {record.get('params_nonzero')} nonzero of {record.get('params_total')}"
        f" ({fmt_share(record.get('params_nonzero'), record.get('params_total'))})",
    ]
    sparsity = wrap_sparsity(record.get("layer_sparsity"))
    lines += [f"sparsity %     {sparsity[0]}", *(f"{'':15}{more}" for more in sparsity[1:])]
    if dense:
        other = record.get("macs_other") or 0
        rest = f"; {other} more outside them (attention products, weights left dense)" if other else ""
        lines.append(f"MACs/sample    {eff} of {dense} ({fmt_share(eff, dense)}) in the pruned weights{rest}")
    lines += _speed_lines(record)
    if at_chance(record):
        lr = "train.lr" if at_chance(record, "val_accuracy_trained") else "finetune.lr"
        lines.append(
            f"collapsed      no better than chance ({fmt_acc(record.get('val_chance'))} answering one class):"
            f" its updates diverged; lower {lr}"
        )
    if record.get("not_pruned"):
        lines.append(f"left dense     {_fmt_not_pruned(record['not_pruned'], record.get('params_total'))}")
    lines.append(f"time           {phases} on {record.get('device', '?')}")
    if record.get("model_path"):
        lines.append(f"model          {record['model_path']}")
    return "\n".join(lines)
