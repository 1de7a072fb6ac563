"""Importance criteria: element-wise scores of a layer's weights, higher = more important.

A criterion is a small pure function ``(weight, grad_statistic) -> score`` with the weight's shape, so it is
testable on a bare tensor; ``CRITERIA`` is the registry the configuration names.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autoprune.config import CRITERIA as CRITERION_NAMES
from autoprune.errors import AutoPruneError, ConfigError, DataError, ModelError
from autoprune.pruning.units import prunable_weights

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


# The names are config's (it validates a configuration without importing torch); each is ``NAME_importance`` here,
# so a name without its function fails at import.
CRITERIA: dict[str, Criterion] = {name: globals()[f"{name}_importance"] for name in CRITERION_NAMES}


def gradient_statistics(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    weights: Mapping[str, Tensor] | Iterable[str] | None = None,
) -> dict[str, Tensor]:
    """Mean over ``batches`` of ``|dL/dw|`` (cross-entropy) for each prunable weight tensor, by unit name.

    ``weights``: the tensors by unit name (``units.prunable_weights``), or names among the default selection's,
    or None for all of them. Runs in eval mode, so BatchNorm running statistics and dropout are left alone; the
    model's mode is restored, its ``.grad`` fields are cleared and its parameters are not changed.
    """
    if weights is None or not isinstance(weights, Mapping):
        every = prunable_weights(model)
        names = list(every) if weights is None else list(weights)
        unknown = [n for n in names if n not in every]
        if unknown:
            raise ModelError(f"no prunable weight named {unknown[0]!r}; prunable weights: {', '.join(every)}")
        weights = {n: every[n] for n in names}
    names = list(weights)
    if not names:
        raise ModelError("gradient statistics need at least one prunable weight; the model has none")
    tensors = [weights[n] for n in names]
    frozen = [w for w in tensors if not w.requires_grad]
    sums = [torch.zeros_like(w, memory_format=torch.contiguous_format) for w in tensors]
    device = tensors[0].device
    was_training = model.training
    n_batches = 0
    # cuDNN's recurrent kernels have no backward pass in eval mode; the native ones do
    recurrent = any(isinstance(m, nn.RNNBase) for m in model.modules())
    no_cudnn = functools.partial(torch.backends.cudnn.flags, enabled=False) if recurrent else contextlib.nullcontext
    try:
        model.eval()
        for w in frozen:
            w.requires_grad_(True)
        for inputs, targets in batches:
            with torch.enable_grad(), no_cudnn():
                loss = F.cross_entropy(model(inputs.to(device)), targets.to(device))
                grads = torch.autograd.grad(loss, tensors)
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


def layer_scores(
    model: nn.Module,
    criterion: str,
    grads: dict[str, Tensor] | None,
    *,
    weights: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Element-wise importance of every prunable weight tensor (``weights``; default: all), by unit name."""
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown pruning criterion {criterion!r}; known criteria: {', '.join(CRITERIA)}")
    fn = CRITERIA[criterion]
    scores = {}
    for name, weight in (prunable_weights(model) if weights is None else weights).items():
        grad = None if grads is None else grads.get(name)
        try:
            scores[name] = fn(weight.detach(), grad)
        except AutoPruneError as exc:
            raise type(exc)(f"layer {name!r}: {exc}") from None
    return scores
