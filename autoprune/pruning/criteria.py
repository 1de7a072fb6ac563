"""Importance criteria: element-wise scores of a layer's weights, higher = more important.

A criterion is a small pure function ``(weight, grad_statistic) -> score`` with the weight's shape, so it is
testable on a bare tensor; ``CRITERIA`` is the registry the configuration names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AutoPruneError, ConfigError, DataError, ModelError
from ..models import prunable_layers

Criterion = Callable[[Tensor, "Tensor | None"], Tensor]


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
