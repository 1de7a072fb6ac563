"""A search's dense reference: the unpruned model its trials are measured against (the report's ``vs dense``).

It is the checkpoint a search started from (``model.weights``) or its dense start, measured once and kept as a
study attribute; without either, the most accurate trial that did not prune. Optuna only: nothing here imports
Ray or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autoprune.searching._attrs import DENSE_REFERENCE_ATTR

if TYPE_CHECKING:
    import optuna

REFERENCE_KEYS = ("val_accuracy", "test_accuracy", "params_nonzero", "params_total", "flops_dense", "val_samples")


def reference_of(record: dict[str, Any]) -> dict[str, Any]:
    """What a dense trial's record keeps as a search's dense reference (``DENSE_REFERENCE_ATTR``)."""
    return {k: record[k] for k in REFERENCE_KEYS if k in record}


def checkpoint_reference(study: optuna.Study) -> dict[str, Any] | None:
    """The dense reference of a search from trained weights (``model.weights``, or its dense start), as a record
    without a trial; its ``reference`` says which (``checkpoint`` or ``dense start``)."""
    ref = study.user_attrs.get(DENSE_REFERENCE_ATTR)
    return {"reference": "checkpoint", **ref} if isinstance(ref, dict) and "val_accuracy" in ref else None


def dense_baseline(records: list[dict]) -> dict[str, Any] | None:
    """The most accurate trial that did not prune (``prune.enabled: false``), if any."""
    dense = [r for r in records if not (r.get("config") or {}).get("prune", {}).get("enabled", True)]
    return max(dense, key=lambda r: r["val_accuracy"]) if dense else None
