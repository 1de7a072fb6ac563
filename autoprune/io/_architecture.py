"""The layer-by-layer description of a plain ``nn.Sequential``, as a model file stores it (``export.py``): plain
data a file carries instead of pickled code, rebuilt from a fixed list of layer types, each with the constructor
arguments that reproduce it exactly. Any other model is rebuilt by its ``module:function`` factory.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn

from autoprune.errors import ModelError

__all__ = ["describe_architecture", "rebuild_architecture"]

# Layers an architecture spec may hold, each with the constructor arguments that reproduce it exactly.
_LAYERS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "Linear": (nn.Linear, ("in_features", "out_features", "bias")),
    "Conv2d": (
        nn.Conv2d,
        ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "bias", "padding_mode"),
    ),
    "BatchNorm1d": (nn.BatchNorm1d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
    "BatchNorm2d": (nn.BatchNorm2d, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
    "ReLU": (nn.ReLU, ("inplace",)),
    "MaxPool2d": (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    "AvgPool2d": (
        nn.AvgPool2d,
        ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    ),
    "Flatten": (nn.Flatten, ("start_dim", "end_dim")),
    "Dropout": (nn.Dropout, ("p", "inplace")),
    "Identity": (nn.Identity, ()),
}


def _layer_kwargs(module: nn.Module) -> dict[str, Any] | None:
    """Constructor arguments of a supported layer, or None when the layer cannot be described."""
    kind = type(module).__name__
    if kind not in _LAYERS or type(module) is not _LAYERS[kind][0]:  # a subclass may change forward()
        return None
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return None
    if isinstance(module, nn.MaxPool2d) and module.return_indices:
        return None
    kwargs: dict[str, Any] = {}
    for arg in _LAYERS[kind][1]:
        value = getattr(module, arg)
        if arg == "bias":
            value = value is not None
        kwargs[arg] = list(value) if isinstance(value, tuple) else value
    return kwargs


def describe_architecture(model: nn.Module) -> list[dict[str, Any]] | None:
    """The layer-by-layer spec of a plain ``nn.Sequential`` of supported layers, else None."""
    if type(model) is not nn.Sequential:
        return None
    spec = []
    for name, child in model.named_children():
        kwargs = _layer_kwargs(child)
        if kwargs is None:
            return None
        spec.append({"name": name, "type": type(child).__name__, "kwargs": kwargs})
    return spec


def rebuild_architecture(spec: Any) -> nn.Sequential:
    """Build the ``nn.Sequential`` described by a spec from ``describe_architecture`` (fresh weights)."""
    if not isinstance(spec, list) or not spec:
        raise ModelError(f"architecture must be a non-empty list of layers, got {type(spec).__name__}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, layer in enumerate(spec):
        if not isinstance(layer, dict) or not {"name", "type", "kwargs"} <= set(layer):
            raise ModelError(f"architecture layer {i} must be a dict with name, type and kwargs, got {layer!r}")
        name, kind, kwargs = layer["name"], layer["type"], layer["kwargs"]
        if not isinstance(name, str) or not name or "." in name or name in layers:
            raise ModelError(f"architecture layer {i} has an invalid or repeated name {name!r}")
        if kind not in _LAYERS:
            raise ModelError(
                f"architecture layer {i} ({name!r}) has unknown layer type {kind!r}; known: {', '.join(_LAYERS)}"
            )
        cls, allowed = _LAYERS[kind]
        if not isinstance(kwargs, dict) or not set(kwargs) <= set(allowed):
            raise ModelError(f"architecture layer {i} ({name!r}): invalid {kind} arguments {kwargs!r}")
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        try:
            layers[name] = cls(**args)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ModelError(f"architecture layer {i} ({name!r}): cannot build {kind}({args}): {exc}") from None
    return nn.Sequential(layers)
