"""Masks: from scores and counts to 0/1 tensors, the entry points that tie them to a model and a config, and
``MaskSet``, which holds them on a model during training.

A mask is a 0/1 tensor with the shape, device and dtype of one parameter, keyed by the parameter's name in
``model.named_parameters()`` (``"fc1.weight"``, ``"rnn.weight_hh_l0"``); the training loop keeps masked entries
at exactly zero. Scores, counts and rates are keyed by unit name (``fc1``, ``rnn.weight_hh_l0``: see ``units``).
``compute_masks`` is the one function that turns a ``PruneConfig`` into masks for a model, and ``planned_params``
says, before any training, how many nonzero parameters those masks leave; ``nonzero_weights``, ``layer_sparsity``
and ``count_params`` count what they left.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from autoprune.config import PruneConfig
from autoprune.errors import ConfigError, ModelError
from autoprune.pruning.allocation import check_rates, kept_count, layer_counts, ranked
from autoprune.pruning.channels import ChannelGraph
from autoprune.pruning.criteria import layer_scores
from autoprune.pruning.structured import structured_removal, uniform_rate
from autoprune.pruning.units import Selection, parameter_paths, prunable_weights

__all__ = [
    "MaskSet",
    "compute_masks",
    "count_masks",
    "count_params",
    "floor_counts",
    "kept_weights",
    "layer_sparsity",
    "nonzero_weights",
    "per_layer_masks",
    "planned_params",
]


def _lowest_k_mask(flat: Tensor, k: int) -> Tensor:
    """A flat 0/1 mask with zeros at the ``k`` lowest entries; ties go to the lower index (stable sort)."""
    mask = torch.ones_like(flat)
    if k > 0:
        order = torch.argsort(flat, stable=True)
        mask[order[:k]] = 0
    return mask


def count_masks(
    scores: dict[str, Tensor], counts: dict[str, int], current: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Weight masks keeping exactly ``counts[layer]`` entries of each layer, the highest-scoring ones.

    ``current`` (layer -> weight mask) ranks already-masked entries lowest, so a tighter count keeps them pruned.
    """
    masks = {}
    for name, score in scores.items():
        flat = ranked(score, None if current is None else current.get(name))
        keep = counts[name]
        if not 0 <= keep <= flat.numel():
            raise ConfigError(f"layer {name!r} cannot keep {keep} of its {flat.numel()} weights")
        masks[name] = _lowest_k_mask(flat, flat.numel() - keep).view(score.shape).to(score.dtype)
    return masks


def per_layer_masks(
    scores: dict[str, Tensor], rates: dict[str, float], current: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Weight masks with exactly ``round(rates[layer] * numel)`` zeros in each layer (absent layers: none)."""
    rates = check_rates(scores, rates)
    counts = {name: s.numel() - round(rates.get(name, 0.0) * s.numel()) for name, s in scores.items()}
    return count_masks(scores, counts, current)


# ---------------------------------------------------------------------------------------------------------------
# The pipeline's entry points.


def kept_weights(model: nn.Module, cfg: PruneConfig) -> int:
    """Prunable weights (see ``units``) that ``cfg`` keeps on ``model``, from shapes alone.

    ``per_layer``: the sum over layers of ``numel - round(rate * numel)``. Any other allocation:
    ``round(density * prunable weights)``, or with ``nonzero_params`` what is left of it once every parameter
    outside the prunable weights (biases, normalisation) is counted. Structured pruning meets the count as nearly
    as whole channels allow (``planned_params`` gives the exact result).
    """
    numels = {name: w.numel() for name, w in prunable_weights(model, Selection.of(cfg)).items()}
    prunable = sum(numels.values())
    if cfg.allocation == "per_layer":
        rates = check_rates(numels, cfg.sparsity)
        return sum(n - round(rates.get(name, 0.0) * n) for name, n in numels.items())
    if cfg.nonzero_params is None:
        return kept_count(cfg.density, prunable)
    others = sum(p.numel() for p in model.parameters()) - prunable
    if not others <= cfg.nonzero_params <= others + prunable:
        raise ConfigError(
            f"prune.nonzero_params must lie in [{others}, {others + prunable}] for this model (its {others} "
            f"parameters outside the pruned weights always stay), got {cfg.nonzero_params}"
        )
    return cfg.nonzero_params - others


def _graph(graph: ChannelGraph | None) -> ChannelGraph:
    if graph is None:
        raise ModelError("structured pruning needs the model's channel groups: pass graph=channel_graph(model, shape)")
    return graph


def _structured_rates(
    model: nn.Module, cfg: PruneConfig, graph: ChannelGraph, rates: Mapping[str, float] | None, kept: int | None
) -> dict[str, float]:
    """Each group's rate: ``cfg.sparsity`` (or ``rates``) for ``per_layer``; under ``uniform`` one rate, the one
    that leaves the prunable weights nearest to ``kept`` (default: ``kept_weights``)."""
    if cfg.allocation == "uniform":
        weights = prunable_weights(model, Selection.of(cfg))
        by_path = {parameter_paths(model, weights)[n]: w for n, w in weights.items()}
        rate = uniform_rate(graph, model, by_path, kept_weights(model, cfg) if kept is None else kept)
        return dict.fromkeys(graph.groups, rate)
    return graph.check_rates(dict(cfg.sparsity) if rates is None else rates)


def planned_params(model: nn.Module, cfg: PruneConfig, graph: ChannelGraph | None = None) -> int:
    """Nonzero parameters ``model`` will have once pruned by ``cfg``: a pure function of shapes and config.

    Unstructured pruning zeroes weights only, so this is every parameter minus the weights removed. Structured
    pruning also removes every slice coupled to a removed channel (biases, normalisation entries, the next
    layers' inputs; ``graph`` holds the groups): the count is that of the smaller model. Training keeps kept
    weights nonzero, so the trial's measured ``params_nonzero`` equals this.
    """
    params_total = sum(p.numel() for p in model.parameters())
    if not cfg.enabled:
        return params_total
    weights = prunable_weights(model, Selection.of(cfg))
    if cfg.structured:
        graph = _graph(graph)
        return graph.planned_nonzero(model, graph.removal(_structured_rates(model, cfg, graph, None, None)))
    prunable = sum(w.numel() for w in weights.values())
    return params_total - prunable + kept_weights(model, cfg)


def floor_counts(numels: Mapping[str, int], kept: int, floor: float) -> dict[str, int]:
    """The weights each tensor keeps at least under a global ranking: ``ceil(floor * density * numel)``, and at
    least one, where ``density = kept / sum(numels)``; none with ``floor`` 0 (a ranking may then empty a tensor).
    """
    total = sum(numels.values())
    if floor <= 0 or total == 0:
        return {}
    density = kept / total
    floors = {n: min(c, max(1, math.ceil(floor * density * c))) for n, c in numels.items()}
    if sum(floors.values()) > kept:
        raise ConfigError(
            f"prune.floor={floor!r} keeps at least {sum(floors.values())} weights (one or more in each of "
            f"{len(floors)} tensors), more than the {kept} the size keeps; keep more weights or set prune.floor: 0"
        )
    return floors


def compute_masks(
    model: nn.Module,
    cfg: PruneConfig,
    *,
    rates: dict[str, float] | None = None,
    kept: int | None = None,
    grads: dict[str, Tensor] | None = None,
    current: dict[str, Tensor] | None = None,
    graph: ChannelGraph | None = None,
) -> dict[str, Tensor]:
    """Parameter-name masks (``"fc1.weight"``...) for ``cfg.criterion`` and ``cfg.allocation``.

    ``rates`` (``per_layer``) default to ``cfg.sparsity`` and ``kept`` (the prunable weights kept, any other
    allocation) to ``kept_weights(model, cfg)``; a gradual schedule passes its intermediate values. ``current``
    holds the masks in force, whose zeros stay zeros when the count tightens. With ``cfg.structured`` the masks
    remove whole channel groups of ``graph`` (``channels.ChannelGraph``), every coupled slice of them.
    """
    weights = prunable_weights(model, Selection.of(cfg))
    paths = parameter_paths(model, weights)
    scores = layer_scores(model, cfg.criterion, grads, weights=weights)
    if cfg.structured:
        graph = _graph(graph)
        by_path = {paths[name]: score for name, score in scores.items()}
        removed = structured_removal(graph, by_path, _structured_rates(model, cfg, graph, rates, kept), current)
        return graph.masks(model, removed)
    layer_current = None
    if current is not None:
        layer_current = {name: current[path] for name, path in paths.items() if path in current}
    if cfg.allocation == "per_layer":
        weight_masks = per_layer_masks(scores, dict(cfg.sparsity) if rates is None else rates, layer_current)
    else:
        kept = kept_weights(model, cfg) if kept is None else kept
        floors = (
            floor_counts({n: s.numel() for n, s in scores.items()}, kept, cfg.floor)
            if cfg.allocation in ("global", "lamp")
            else None
        )
        counts = layer_counts(cfg.allocation, scores, kept, shares=cfg.shares, current=layer_current, floors=floors)
        weight_masks = count_masks(scores, counts, layer_current)
    masks = {}
    for name, mask in weight_masks.items():
        w = weights[name]
        masks[paths[name]] = mask.to(device=w.device, dtype=w.dtype)
    return masks


def nonzero_weights(model: nn.Module, select: Selection | None = None) -> dict[str, int]:
    """Nonzero entries of each prunable weight tensor, by unit name."""
    return {name: int(torch.count_nonzero(w)) for name, w in prunable_weights(model, select).items()}


def layer_sparsity(
    model: nn.Module, select: Selection | None = None, *, dense_numel: Mapping[str, int] | None = None
) -> dict[str, float]:
    """Fraction of each prunable weight tensor's entries that are zero, by unit name.

    ``dense_numel`` (unit name -> entries of the dense tensor) counts the entries structured pruning removed as
    well: the fraction of the dense tensor's entries that are zero or gone.
    """
    nonzero = nonzero_weights(model, select)
    if dense_numel is None:
        dense_numel = {name: w.numel() for name, w in prunable_weights(model, select).items()}
    # integer counts divided on the host give exact fractions (0.8, not float32's 0.800000011920929)
    return {name: 1.0 - nonzero[name] / numel for name, numel in dense_numel.items()}


def count_params(model: nn.Module) -> tuple[int, int]:
    """``(nonzero, total)`` over all parameters: weights, biases and normalisation parameters."""
    params = [p.detach() for p in model.parameters()]
    if not params:
        return 0, 0
    nonzero = torch.stack([torch.count_nonzero(p).cpu() for p in params]).sum()
    return int(nonzero), sum(p.numel() for p in params)


class MaskSet:
    """Parameter masks (1 keeps, 0 prunes), applied in place to weights, gradients and momentum buffers."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        for name, mask in masks.items():
            if name not in params:
                raise ModelError(f"mask for unknown parameter {name!r}; the model's parameters: {', '.join(params)}")
            if mask.shape != params[name].shape:
                raise ModelError(
                    f"mask for {name!r} has shape {tuple(mask.shape)}, the parameter {tuple(params[name].shape)}; "
                    "recompute the masks on this model"
                )
        self.masks = dict(masks)
        self.params = [params[name] for name in self.masks]
        self.values = [
            m.to(device=p.device, dtype=p.dtype) for m, p in zip(self.masks.values(), self.params, strict=True)
        ]

    def __bool__(self) -> bool:
        return bool(self.params)

    @torch.no_grad()
    def apply_(self) -> None:
        if self.params:
            torch._foreach_mul_(self.params, self.values)

    @torch.no_grad()
    def mask_grads_(self) -> None:
        pairs = [(p.grad, m) for p, m in zip(self.params, self.values, strict=True) if p.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    @torch.no_grad()
    def mask_momentum_(self, optimizer: object) -> None:
        """Zero the masked entries of each parameter's momentum (``optimizer.momentum_buffer(p)``, None: none)."""
        for p, m in zip(self.params, self.values, strict=True):
            buf = optimizer.momentum_buffer(p)  # type: ignore[attr-defined]
            if buf is not None:
                buf.mul_(m)
