"""Structured pruning: whole output units (rows of a Linear weight, output channels of a Conv2d weight).

``structured_keep`` chooses the units each layer keeps; ``structured_param_masks`` expresses the removal as masks on
the full model; ``shrink_sequential`` builds the physically smaller model that computes the same function. The
rules of structured pruning are the configuration's: ``config.unit_prunable`` (the output layer keeps its units)
and ``config.STRUCTURED_ALLOCATIONS`` (a ranking across layers is unstructured only).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..config import unit_prunable
from ..errors import ConfigError, ModelError
from .allocation import check_rates


def removed_units(rate: float, units: int) -> int:
    """Units a layer of ``units`` loses at ``rate``: ``round(rate * units)``, always leaving at least one."""
    return min(round(rate * units), units - 1)


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
    rates = check_rates(scores, rates)
    keep = {}
    for name, score in scores.items():
        units = unit_scores(score)
        n = units.numel()
        mask = None if current is None else current.get(name)
        if mask is not None:
            dead = mask.detach().reshape(n, -1).ne(0).sum(dim=1).to(units.device) == 0
            units = units.masked_fill(dead, float("-inf"))
        n_remove = removed_units(rates.get(name, 0.0), n)
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
    may_lose = set(unit_prunable(prunable))
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
                    if name not in may_lose:
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


def kept_weights_structured(model: nn.Sequential, rates: Mapping[str, float]) -> int:
    """Linear/Conv2d weights left once each layer in ``rates`` loses ``removed_units`` of its units (shapes only)."""
    units = {name: m.weight.shape[0] for name, m in model.named_children() if isinstance(m, (nn.Linear, nn.Conv2d))}
    keep = {name: torch.arange(n - removed_units(rates[name], n)) for name, n in units.items() if name in rates}
    masks = structured_param_masks(model, keep)
    return sum(
        int(torch.count_nonzero(masks[f"{name}.weight"])) if f"{name}.weight" in masks else m.weight.numel()
        for name, m in model.named_children()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    )


def uniform_unit_rate(model: nn.Sequential, kept: int) -> float:
    """The one rate of units, taken from every layer but the output, whose kept weights come nearest ``kept``.

    Removing a unit takes a row of one layer and a column block of the next, so a weight count is met only as
    nearly as whole units allow; the kept count is monotone in the rate, which bisection uses.
    """
    layers = unit_prunable([n for n, m in model.named_children() if isinstance(m, (nn.Linear, nn.Conv2d))])

    def count(rate: float) -> int:
        return kept_weights_structured(model, dict.fromkeys(layers, rate))

    lo, hi = 0.0, 1.0  # count(lo) >= kept > count(hi) unless an end already meets it
    if count(lo) <= kept:
        return lo
    if count(hi) >= kept:
        return hi
    for _ in range(40):
        mid = (lo + hi) / 2
        if count(mid) >= kept:
            lo = mid
        else:
            hi = mid
    return lo if count(lo) - kept <= kept - count(hi) else hi
