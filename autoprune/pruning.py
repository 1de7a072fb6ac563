"""Pruning: importance criteria, allocation of sparsity to layers, masks, gradual schedules, structured removal.

Pruning is mask-based. A mask is a 0/1 tensor with the shape, device and dtype of one parameter, keyed by the
parameter's name in ``model.named_parameters()`` (``"fc1.weight"``); the training loop keeps masked entries at
exactly zero. Allocation functions work on plain ``layer -> score`` dicts (layer = module path from
``models.prunable_layers``) so they are testable on bare tensors; ``compute_masks`` is the one entry that ties
them to a model and a ``PruneConfig``.

Structured pruning removes whole output units (rows of a Linear weight, output channels of a Conv2d weight).
``structured_param_masks`` expresses the removal as masks on the full model; ``shrink_sequential`` builds the
physically smaller model that computes the same function.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .config import PruneConfig
from .errors import AutoPruneError, ConfigError, DataError, ModelError
from .models import prunable_layers

__all__ = [
    "CRITERIA",
    "agp_sparsity",
    "apply_masks",
    "compute_masks",
    "count_params",
    "global_masks",
    "gradient_importance",
    "gradient_statistics",
    "gradual_event_steps",
    "gradual_plan",
    "layer_scores",
    "layer_sparsity",
    "magnitude_importance",
    "per_layer_masks",
    "shrink_sequential",
    "structured_keep",
    "structured_param_masks",
    "taylor_importance",
    "uniform_masks",
    "unit_scores",
]

Criterion = Callable[[Tensor, "Tensor | None"], Tensor]

# ---------------------------------------------------------------------------------------------------------------
# Importance criteria: element-wise scores, higher = more important.


def _need_grad(name: str, weight: Tensor, grad: Tensor | None) -> Tensor:
    if grad is None:
        raise ConfigError(
            f"criterion '{name}' needs gradient statistics, got none; "
            "pass grads=gradient_statistics(model, batches) or use criterion 'magnitude'"
        )
    if grad.shape != weight.shape:
        raise ModelError(
            f"criterion '{name}': gradient statistics of shape {tuple(grad.shape)} do not match the weight shape "
            f"{tuple(weight.shape)}; recompute them on this model"
        )
    return grad


def magnitude_importance(weight: Tensor, grad: Tensor | None = None) -> Tensor:
    """``|w|``: the classic magnitude criterion (``grad`` is ignored)."""
    return weight.detach().abs()


def gradient_importance(weight: Tensor, grad: Tensor | None) -> Tensor:
    """``mean |dL/dw|``: ``grad`` is the mean absolute gradient from ``gradient_statistics``."""
    return _need_grad("gradient", weight, grad).detach().abs()


def taylor_importance(weight: Tensor, grad: Tensor | None) -> Tensor:
    """``|w| * mean |dL/dw|``: first-order Taylor estimate of the loss change when ``w`` is removed."""
    return weight.detach().abs() * _need_grad("taylor", weight, grad).detach().abs()


CRITERIA: dict[str, Criterion] = {
    "magnitude": magnitude_importance,
    "gradient": gradient_importance,
    "taylor": taylor_importance,
}


def gradient_statistics(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    layers: Iterable[str] | None = None,
) -> dict[str, Tensor]:
    """Mean over ``batches`` of ``|dL/dw|`` (cross-entropy) for the weight of each layer (default: all prunable).

    Runs in eval mode, so BatchNorm running statistics and dropout are left alone; the model's mode is restored,
    its ``.grad`` fields are cleared and its parameters are not changed.
    """
    all_layers = prunable_layers(model)
    names = list(all_layers) if layers is None else list(layers)
    unknown = [n for n in names if n not in all_layers]
    if unknown:
        raise ModelError(f"no prunable layer named {unknown[0]!r}; prunable layers: {', '.join(all_layers)}")
    if not names:
        raise ModelError("gradient statistics need at least one Linear or Conv2d layer; the model has none")
    weights = [all_layers[n].weight for n in names]
    frozen = [w for w in weights if not w.requires_grad]
    sums = [torch.zeros_like(w, memory_format=torch.contiguous_format) for w in weights]
    device = weights[0].device
    was_training = model.training
    n_batches = 0
    try:
        model.eval()
        for w in frozen:
            w.requires_grad_(True)
        for inputs, targets in batches:
            with torch.enable_grad():
                loss = F.cross_entropy(model(inputs.to(device)), targets.to(device))
                grads = torch.autograd.grad(loss, weights)
            for total, g in zip(sums, grads, strict=True):
                total.add_(g.abs())
            n_batches += 1
    finally:
        for w in frozen:
            w.requires_grad_(False)
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    if n_batches == 0:
        raise DataError("gradient statistics need at least one batch, got none; pass a non-empty iterable of batches")
    return {name: total.div_(n_batches) for name, total in zip(names, sums, strict=True)}


def layer_scores(model: nn.Module, criterion: str, grads: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """Element-wise importance of the weight of every prunable layer, by layer name."""
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown pruning criterion {criterion!r}; known criteria: {', '.join(CRITERIA)}")
    fn = CRITERIA[criterion]
    scores = {}
    for name, layer in prunable_layers(model).items():
        grad = None if grads is None else grads.get(name)
        try:
            scores[name] = fn(layer.weight.detach(), grad)
        except AutoPruneError as exc:
            raise type(exc)(f"layer {name!r}: {exc}") from None
    return scores


# ---------------------------------------------------------------------------------------------------------------
# Unstructured allocation: which weights of which layers to zero.


def _check_rate(where: str, rate: object) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ConfigError(f"{where} must be a fraction in [0, 1], got {rate!r}")
    return float(rate)


def _check_rates(scores: dict[str, Tensor], rates: dict[str, float]) -> dict[str, float]:
    unknown = [name for name in rates if name not in scores]
    if unknown:
        raise ConfigError(f"prune.sparsity names unknown layer {unknown[0]!r}; prunable layers: {', '.join(scores)}")
    return {name: _check_rate(f"prune.sparsity.{name}", rate) for name, rate in rates.items()}


def _ranked(score: Tensor, current: Tensor | None) -> Tensor:
    """Flattened scores with currently masked entries forced below everything, so they are removed first."""
    flat = score.detach().reshape(-1)
    if not flat.is_floating_point():
        flat = flat.float()
    if current is not None:
        if current.shape != score.shape:
            raise ModelError(
                f"current mask of shape {tuple(current.shape)} does not match the score shape {tuple(score.shape)}"
            )
        flat = flat.masked_fill(current.reshape(-1).to(flat.device) == 0, float("-inf"))
    return flat


def _lowest_k_mask(flat: Tensor, k: int) -> Tensor:
    """A flat 0/1 mask with zeros at the ``k`` lowest entries; ties go to the lower index (stable sort)."""
    mask = torch.ones_like(flat)
    if k > 0:
        order = torch.argsort(flat, stable=True)
        mask[order[:k]] = 0
    return mask


def per_layer_masks(
    scores: dict[str, Tensor], rates: dict[str, float], current: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Weight masks with exactly ``round(rates[layer] * numel)`` zeros in each layer (absent layers: none).

    ``current`` (layer -> weight mask) ranks already-masked entries lowest, so raising a rate keeps them pruned.
    """
    rates = _check_rates(scores, rates)
    masks = {}
    for name, score in scores.items():
        flat = _ranked(score, None if current is None else current.get(name))
        k = round(rates.get(name, 0.0) * flat.numel())
        masks[name] = _lowest_k_mask(flat, k).view(score.shape).to(score.dtype)
    return masks


def global_masks(
    scores: dict[str, Tensor], amount: float, current: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Weight masks from one ranking across all layers: exactly ``round(amount * total)`` zeros overall."""
    amount = _check_rate("prune.amount", amount)
    if not scores:
        return {}
    flats = [_ranked(s, None if current is None else current.get(n)) for n, s in scores.items()]
    device = flats[0].device
    joined = torch.cat([f.to(device) for f in flats])
    mask = _lowest_k_mask(joined, round(amount * joined.numel()))
    sizes = [f.numel() for f in flats]
    return {
        name: part.view(score.shape).to(device=score.device, dtype=score.dtype)
        for (name, score), part in zip(scores.items(), torch.split(mask, sizes), strict=True)
    }


def uniform_masks(
    scores: dict[str, Tensor], amount: float, current: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Weight masks with every layer at the same rate ``amount``."""
    amount = _check_rate("prune.amount", amount)
    return per_layer_masks(scores, dict.fromkeys(scores, amount), current)


# ---------------------------------------------------------------------------------------------------------------
# Structured pruning: whole output units.


def unit_scores(score: Tensor) -> Tensor:
    """Group L2 norm of an element score over each output unit (dim 0): one value per row / output channel."""
    return score.detach().reshape(score.shape[0], -1).float().norm(dim=1)


def structured_keep(
    scores: dict[str, Tensor], rates: dict[str, float], current: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Sorted indices of the output units each layer keeps, removing the ``round(rate * units)`` lowest-norm ones.

    At least one unit always stays. Layers absent from ``rates`` keep all units. ``current`` (layer -> weight
    mask) ranks units whose weights are entirely masked lowest, so they stay removed when a rate rises.
    """
    rates = _check_rates(scores, rates)
    keep = {}
    for name, score in scores.items():
        units = unit_scores(score)
        n = units.numel()
        mask = None if current is None else current.get(name)
        if mask is not None:
            dead = mask.detach().reshape(n, -1).ne(0).sum(dim=1).to(units.device) == 0
            units = units.masked_fill(dead, float("-inf"))
        n_remove = min(round(rates.get(name, 0.0) * n), n - 1)
        order = torch.argsort(units, stable=True)
        keep[name] = torch.sort(order[n_remove:]).values
    return keep


# One entry per child of the chain: (name, module, kept input indices, kept output indices); None = all kept.
_Plan = list[tuple[str, nn.Module, "Tensor | None", "Tensor | None"]]

_CHAIN_HINT = (
    "structured pruning supports nn.Sequential chains of Linear/Conv2d/BatchNorm/activation/pooling layers; "
    "use unstructured pruning (prune.structured: false) for this model"
)


def _check_keep(name: str, idx: Tensor, n_out: int) -> Tensor:
    idx = torch.as_tensor(idx)
    if idx.dim() != 1 or idx.numel() == 0 or idx.is_floating_point() or idx.dtype == torch.bool:
        raise ConfigError(f"kept units of layer {name!r} must be a non-empty 1-D integer tensor, got {idx!r}")
    idx = torch.unique(idx.long().cpu())  # sorted
    if idx[0] < 0 or idx[-1] >= n_out:
        raise ConfigError(f"kept units of layer {name!r} must lie in [0, {n_out}), got indices up to {int(idx[-1])}")
    return idx


def _map_input(kept: Tensor, width: int, flattened: bool, n_in: int, name: str) -> Tensor:
    """Kept unit indices of the previous layer, expressed in the input features of ``name``."""
    if n_in == width:
        return kept
    if flattened and n_in % width == 0:
        # Flatten is channel-major: channel c of C with S spatial positions owns columns c*S:(c+1)*S.
        spatial = n_in // width
        return (kept[:, None] * spatial + torch.arange(spatial)).reshape(-1)
    raise ModelError(f"cannot match the {width} output units feeding {name!r} to its {n_in} inputs; " + _CHAIN_HINT)


def _chain_plan(model: nn.Module, keep: dict[str, Tensor]) -> _Plan:
    if not isinstance(model, nn.Sequential):
        raise ModelError(f"got a {type(model).__name__}; " + _CHAIN_HINT)
    children = list(model.named_children())
    prunable = [name for name, m in children if isinstance(m, (nn.Linear, nn.Conv2d))]
    for name in keep:
        if name not in prunable:
            raise ModelError(
                f"structured pruning can remove units only from Linear/Conv2d children of the chain, got {name!r} "
                f"(children: {', '.join(prunable) or 'none'}); " + _CHAIN_HINT
            )
    classifier = prunable[-1] if prunable else None
    plan: _Plan = []
    kept: Tensor | None = None  # surviving output units of the latest Linear/Conv2d, None = all
    width = 0  # the size of the axis `kept` indexes
    flattened = False
    for name, m in children:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if isinstance(m, nn.Conv2d) and m.groups != 1 and (kept is not None or name in keep):
                raise ModelError(f"layer {name!r} is a grouped Conv2d (groups={m.groups}); " + _CHAIN_HINT)
            if isinstance(m, nn.Linear):
                n_in, n_out = m.in_features, m.out_features
            else:
                n_in, n_out = m.in_channels, m.out_channels
            in_idx = None if kept is None else _map_input(kept, width, flattened, n_in, name)
            out_idx = None
            if name in keep:
                idx = _check_keep(name, keep[name], n_out)
                if idx.numel() < n_out:
                    if name == classifier:
                        raise ConfigError(
                            f"layer {name!r} is the classifier output ({n_out} classes) and cannot lose output "
                            f"units, asked to keep {idx.numel()}; give it sparsity 0 or leave it out"
                        )
                    out_idx = idx
            plan.append((name, m, in_idx, out_idx))
            kept, width, flattened = out_idx, n_out, False
        elif isinstance(m, _BatchNorm):
            if kept is not None:
                kept = _map_input(kept, width, flattened, m.num_features, name)
                width, flattened = m.num_features, False
            plan.append((name, m, kept, kept))
        elif isinstance(m, nn.Flatten):
            flattened = flattened or kept is not None
            plan.append((name, m, None, None))
        elif kept is not None and any(True for _ in m.parameters()):
            raise ModelError(f"child {name!r} ({type(m).__name__}) follows a pruned layer; " + _CHAIN_HINT)
        else:  # parameter-free (activation, pooling, dropout) or untouched by the removal
            plan.append((name, m, None, None))
    return plan


def _selector(n: int, idx: Tensor, like: Tensor) -> Tensor:
    sel = torch.zeros(n, device=like.device, dtype=like.dtype)
    sel[idx.to(like.device)] = 1
    return sel


def structured_param_masks(model: nn.Sequential, keep: dict[str, Tensor]) -> dict[str, Tensor]:
    """Parameter masks that make ``model`` compute what ``shrink_sequential(model, keep)`` computes.

    A removed unit loses its weight row / output channel and bias entry, and the weight and bias of the
    BatchNorm that follows it (so it outputs exactly 0 after the BatchNorm in either mode); the next layer loses
    the matching input columns / channels, which then only ever multiply zeros.
    """
    masks: dict[str, Tensor] = {}
    for name, m, in_idx, out_idx in _chain_plan(model, keep):
        if isinstance(m, (nn.Linear, nn.Conv2d)) and (name in keep or in_idx is not None):
            w = m.weight
            mask = torch.ones_like(w)
            extra = (1,) * (w.dim() - 2)
            if out_idx is not None:
                mask.mul_(_selector(w.shape[0], out_idx, w).view(-1, 1, *extra))
            if in_idx is not None:
                mask.mul_(_selector(w.shape[1], in_idx, w).view(1, -1, *extra))
            masks[f"{name}.weight"] = mask
            if m.bias is not None:
                b = m.bias
                masks[f"{name}.bias"] = torch.ones_like(b) if out_idx is None else _selector(b.numel(), out_idx, b)
        elif isinstance(m, _BatchNorm) and in_idx is not None:
            for pname in ("weight", "bias"):
                p = getattr(m, pname)
                if p is not None:
                    masks[f"{name}.{pname}"] = _selector(p.numel(), in_idx, p)
    return masks


def _sliced(t: Tensor, out_idx: Tensor | None, in_idx: Tensor | None) -> Tensor:
    t = t.detach()
    if out_idx is not None:
        t = t.index_select(0, out_idx.to(t.device))
    if in_idx is not None:
        t = t.index_select(1, in_idx.to(t.device))
    return t.clone()


def _set_param(module: nn.Module, pname: str, value: Tensor) -> None:
    old = getattr(module, pname)
    setattr(module, pname, nn.Parameter(value, requires_grad=old.requires_grad))


def shrink_sequential(model: nn.Sequential, keep: dict[str, Tensor]) -> nn.Sequential:
    """A new, physically smaller ``nn.Sequential`` with the same child names and the removed units gone.

    Each layer in ``keep`` loses its other output units; the next Linear/Conv2d loses the matching inputs (across
    an ``nn.Flatten`` a channel owns its block of spatial columns); a BatchNorm in between loses the matching
    entries. The last Linear/Conv2d (the classifier) cannot lose units. ``model`` is not modified.
    """
    children: OrderedDict[str, nn.Module] = OrderedDict()
    for name, m, in_idx, out_idx in _chain_plan(model, keep):
        new = copy.deepcopy(m)
        if isinstance(m, (nn.Linear, nn.Conv2d)) and (in_idx is not None or out_idx is not None):
            _set_param(new, "weight", _sliced(m.weight, out_idx, in_idx))
            if m.bias is not None:
                _set_param(new, "bias", _sliced(m.bias, out_idx, None))
            n_out, n_in = new.weight.shape[0], new.weight.shape[1]
            if isinstance(m, nn.Linear):
                new.out_features, new.in_features = n_out, n_in
            else:
                new.out_channels, new.in_channels = n_out, n_in
        elif isinstance(m, _BatchNorm) and in_idx is not None:
            for pname in ("weight", "bias"):
                if getattr(m, pname) is not None:
                    _set_param(new, pname, _sliced(getattr(m, pname), in_idx, None))
            for bname in ("running_mean", "running_var"):
                if getattr(m, bname) is not None:
                    setattr(new, bname, _sliced(getattr(m, bname), in_idx, None))
            new.num_features = int(in_idx.numel())
        children[name] = new
    shrunk = nn.Sequential(children)
    shrunk.training = model.training
    return shrunk


# ---------------------------------------------------------------------------------------------------------------
# Gradual schedule (AGP, Zhu & Gupta 2017).


def agp_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0) -> float:
    """Automated gradual pruning: ``final + (initial - final) * (1 - t / T) ** 3`` with ``t`` clipped to [0, T]."""
    if total_steps < 0:
        raise ConfigError(f"gradual pruning needs total_steps >= 0, got {total_steps}")
    if total_steps == 0:
        return float(final)
    t = min(max(step, 0), total_steps)
    return float(final + (initial - final) * (1.0 - t / total_steps) ** 3)


def gradual_plan(final_rates: dict[str, float], n_steps: int) -> list[dict[str, float]]:
    """Per-layer rates at each of ``n_steps`` pruning events: AGP from 0, non-decreasing, the last equals final."""
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ConfigError(f"prune.gradual_steps must be an integer >= 1, got {n_steps!r}")
    return [{name: agp_sparsity(i, n_steps, rate) for name, rate in final_rates.items()} for i in range(1, n_steps + 1)]


def gradual_event_steps(total_steps: int, n_steps: int, end_fraction: float) -> list[int]:
    """Optimizer steps (0-based, non-decreasing) at which the ``n_steps`` events of ``gradual_plan`` happen.

    The first event is at step 0 and the last at ``end_fraction`` of ``total_steps`` (within the phase), evenly
    spaced in between.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ConfigError(f"prune.gradual_steps must be an integer >= 1, got {n_steps!r}")
    if not 0.0 < end_fraction <= 1.0:
        raise ConfigError(f"prune.gradual_end must be in (0, 1], got {end_fraction!r}")
    last = min(round(end_fraction * total_steps), max(total_steps - 1, 0))
    if n_steps == 1:
        return [last]
    return [round(i * last / (n_steps - 1)) for i in range(n_steps)]


# ---------------------------------------------------------------------------------------------------------------
# The pipeline's entry points.


def _param_name(layer: str, pname: str) -> str:
    return f"{layer}.{pname}" if layer else pname


def compute_masks(
    model: nn.Module,
    cfg: PruneConfig,
    *,
    rates: dict[str, float] | None = None,
    amount: float | None = None,
    grads: dict[str, Tensor] | None = None,
    current: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Parameter-name masks (``"fc1.weight"``...) for ``cfg.criterion`` and ``cfg.allocation``.

    ``rates`` default to ``cfg.sparsity`` and ``amount`` to ``cfg.amount`` (a gradual schedule passes its
    intermediate values); ``current`` holds the masks in force, whose zeros stay zeros when the rates rise. With
    ``cfg.structured`` the masks remove whole units (see ``structured_param_masks``; uniform allocation leaves the
    classifier whole).
    """
    layers = prunable_layers(model)
    rates = dict(cfg.sparsity) if rates is None else rates
    amount = cfg.amount if amount is None else amount
    scores = layer_scores(model, cfg.criterion, grads)
    layer_current = None
    if current is not None:
        layer_current = {
            name: current[_param_name(name, "weight")] for name in layers if _param_name(name, "weight") in current
        }
    if cfg.structured:
        if cfg.allocation == "global":
            raise ConfigError("prune.allocation 'global' is unstructured only; use per_layer or uniform")
        if cfg.allocation == "uniform":
            rates = {name: amount for name in list(layers)[:-1]}
        keep = structured_keep(scores, rates, layer_current)
        return structured_param_masks(model, keep)
    if cfg.allocation == "per_layer":
        weight_masks = per_layer_masks(scores, rates, layer_current)
    elif cfg.allocation == "global":
        weight_masks = global_masks(scores, amount, layer_current)
    elif cfg.allocation == "uniform":
        weight_masks = uniform_masks(scores, amount, layer_current)
    else:
        raise ConfigError(f"unknown prune.allocation {cfg.allocation!r}; known: per_layer, global, uniform")
    masks = {}
    for name, mask in weight_masks.items():
        w = layers[name].weight
        masks[_param_name(name, "weight")] = mask.to(device=w.device, dtype=w.dtype)
    return masks


def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Multiply each named parameter by its mask, in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            if name not in params:
                raise ModelError(f"mask for unknown parameter {name!r}; the model's parameters: {', '.join(params)}")
            p = params[name]
            if mask.shape != p.shape:
                raise ModelError(
                    f"mask for {name!r} has shape {tuple(mask.shape)}, the parameter {tuple(p.shape)}; "
                    "recompute the masks on this model"
                )
            p.mul_(mask.to(device=p.device, dtype=p.dtype))


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero weight entries of each prunable layer."""
    layers = prunable_layers(model)
    if not layers:
        return {}
    # integer counts divided on the host give exact fractions (0.8, not float32's 0.800000011920929)
    zeros = torch.stack([(m.weight.detach() == 0).sum().cpu() for m in layers.values()]).tolist()
    return {name: z / m.weight.numel() for (name, m), z in zip(layers.items(), zeros, strict=True)}


def count_params(model: nn.Module) -> tuple[int, int]:
    """``(nonzero, total)`` over all parameters: weights, biases and normalisation parameters."""
    params = [p.detach() for p in model.parameters()]
    if not params:
        return 0, 0
    nonzero = torch.stack([torch.count_nonzero(p).cpu() for p in params]).sum()
    return int(nonzero), sum(p.numel() for p in params)
