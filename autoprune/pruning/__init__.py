"""Pruning: importance criteria, allocation of a density among layers, masks, gradual schedules, structured removal.

- ``criteria``: element-wise importance (magnitude, gradient, Taylor) and the gradient statistics they use.
- ``allocation``: how many weights each layer keeps (uniform, ERK, global, LAMP, shares), summing exactly.
- ``masks``: 0/1 masks from scores and counts; ``compute_masks`` and ``planned_params`` for a model and config;
  ``MaskSet``, masks held on a model; what masks leave (``layer_sparsity``, ``count_params``).
- ``schedules``: AGP gradual pruning as lists of events; ``PruningSchedule``, one trial's pruning as state.
- ``channels``: channel groups of any model (Torch-Pruning's dependency graph), their masks, the smaller model.
- ``structured``: which channels a structured configuration removes.
"""

from __future__ import annotations

from autoprune.pruning.allocation import (
    ALLOCATIONS,
    capped_proportional,
    global_counts,
    kept_count,
    lamp_scores,
    layer_counts,
)
from autoprune.pruning.channels import ChannelGraph, Structure, channel_graph, rebuild, removed_channels, shrink
from autoprune.pruning.criteria import (
    CRITERIA,
    gradient_importance,
    gradient_statistics,
    layer_scores,
    magnitude_importance,
    taylor_importance,
)
from autoprune.pruning.masks import (
    MaskSet,
    compute_masks,
    count_masks,
    count_params,
    kept_weights,
    layer_sparsity,
    nonzero_weights,
    per_layer_masks,
    planned_params,
)
from autoprune.pruning.schedules import PruningSchedule, agp_events, agp_fraction, agp_sparsity, gradual_event_steps
from autoprune.pruning.structured import removed_by_masks, structured_removal, uniform_rate

__all__ = [
    "ALLOCATIONS",
    "CRITERIA",
    "ChannelGraph",
    "MaskSet",
    "PruningSchedule",
    "Structure",
    "agp_events",
    "agp_fraction",
    "agp_sparsity",
    "capped_proportional",
    "channel_graph",
    "compute_masks",
    "count_masks",
    "count_params",
    "global_counts",
    "gradient_importance",
    "gradient_statistics",
    "gradual_event_steps",
    "kept_count",
    "kept_weights",
    "lamp_scores",
    "layer_counts",
    "layer_scores",
    "layer_sparsity",
    "magnitude_importance",
    "nonzero_weights",
    "per_layer_masks",
    "planned_params",
    "rebuild",
    "removed_by_masks",
    "removed_channels",
    "shrink",
    "structured_removal",
    "taylor_importance",
    "uniform_rate",
]
