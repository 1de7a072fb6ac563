"""Structured pruning by a configuration: which channels of each group go, and the masks that remove them.

The groups and what each channel owns are ``channels.ChannelGraph``'s. Here: the channels a group keeps by a
criterion (``structured_removal``: the lowest-scoring ``round(rate * channels)`` go, channels already removed
first), the one rate every group loses under ``uniform`` (``uniform_rate``), the masks ``compute_masks`` returns
for a structured configuration, and which channels a set of masks has removed (``removed_by_masks``), which the
trial's last step hands to ``channels.shrink``. Rates are keyed by group name (the root layer's module path);
the output layer keeps its outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from autoprune.errors import ConfigError
from autoprune.pruning.channels import ChannelGraph, removed_channels


def structured_removal(
    graph: ChannelGraph,
    scores: Mapping[str, Tensor],
    rates: Mapping[str, float],
    current: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Channels each group loses (sorted indices): the ``round(rate * channels)`` lowest by the L2 norm of
    ``scores`` (parameter path -> element score) over each channel's slices. With ``current`` (the masks in
    force), channels already removed rank lowest, so they stay removed as a rate rises."""
    rates = graph.check_rates(rates)
    per_channel = graph.channel_scores(scores)
    dead = removed_by_masks(graph, current) if current is not None else {}
    out = {}
    for name, group in graph.groups.items():
        k = removed_channels(rates.get(name, 0.0), group.channels)
        score = per_channel[name].clone()
        if name in dead and len(dead[name]):
            score[dead[name].to(score.device)] = float("-inf")
        order = torch.argsort(score, stable=True)
        out[name] = torch.sort(order[:k].cpu()).values
    return out


def removed_by_masks(graph: ChannelGraph, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """Channels of each group whose every slice is masked (sorted indices; groups with none removed are absent)."""
    if not masks:
        return {}
    alive = graph.channel_scores({path: m.ne(0).float() for path, m in masks.items()})
    touched = {m.path for g in graph.groups.values() for m in g.members if m.path in masks}
    out = {}
    for name, group in graph.groups.items():
        if not any(m.path in touched for m in group.members):
            continue
        gone = (alive[name] == 0).nonzero().flatten().cpu()
        if len(gone):
            out[name] = gone
    return out


def kept_prunable(graph: ChannelGraph, model: nn.Module, weights: Mapping[str, Tensor], rate: float) -> int:
    """Entries of the prunable ``weights`` (by parameter path) left when every group loses ``rate``."""
    removed = {n: torch.arange(k) for n, k in graph.removal(dict.fromkeys(graph.groups, rate)).items() if k}
    masks = graph.masks(model, removed)
    return sum(int(masks[p].count_nonzero()) if p in masks else w.numel() for p, w in weights.items())


def uniform_rate(graph: ChannelGraph, model: nn.Module, weights: Mapping[str, Tensor], kept: int) -> float:
    """The one rate all groups lose that leaves the prunable ``weights`` nearest to ``kept`` entries (the smaller
    on a tie); refuses a count below what one channel per group leaves."""
    if not graph.groups:
        raise ConfigError(
            "structured pruning found no channel group to prune in this model; use prune.structured: false"
        )
    top = max(g.channels for g in graph.groups.values())
    floor = kept_prunable(graph, model, weights, 1.0 - 1.0 / (2 * top))
    if kept < floor:
        total = sum(w.numel() for w in weights.values())
        least = math.ceil(1000 * floor / total) / 1000
        raise ConfigError(
            f"structured pruning keeps at least {floor} of the {total} prunable weights (one channel in each group, "
            f"the groups it cannot prune whole), more than the {kept} asked: give prune.density {least} or more "
            f"(prune.nonzero_params {floor - kept} more)"
        )
    lo, hi = 0.0, 1.0 - 1.0 / (2 * top)  # kept_prunable falls as the rate rises
    for _ in range(40):
        mid = (lo + hi) / 2
        if kept_prunable(graph, model, weights, mid) > kept:
            lo = mid
        else:
            hi = mid
    near_lo, near_hi = kept_prunable(graph, model, weights, lo), kept_prunable(graph, model, weights, hi)
    return lo if abs(near_lo - kept) <= abs(near_hi - kept) else hi
