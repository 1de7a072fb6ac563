"""Model registry and discovery of prunable layers.

Built-in models are ``nn.Sequential`` with named children (``fc1``, ``conv2``, ...): the names are stable,
so a space file can refer to them, and the chain shape is what structured pruning and the self-describing
export rely on. A user model comes from ``module:function``; any ``nn.Module`` works for unstructured pruning,
and its layers are named by module path (``block.conv1``, ``layer1.0.conv1``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from ._imports import call_factory, factory_arguments, import_callable
from .errors import ModelError, first_line

ModelFactory = Callable[..., nn.Module]
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a model factory under ``name``; it is called like a ``module:function`` one (see ``build_model``).

    A registration lives in the process that made it: a search refuses such a name (see ``check_importable``).
    """

    def deco(factory: ModelFactory) -> ModelFactory:
        MODELS[name] = factory
        return factory

    return deco


def _flat(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@register_model("lenet-300-100")
def lenet_300_100(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """LeNet-300-100: two hidden fully connected layers (266,610 parameters on 28x28 inputs)."""
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(_flat(input_shape), 300),
            relu1=nn.ReLU(),
            fc2=nn.Linear(300, 100),
            relu2=nn.ReLU(),
            fc3=nn.Linear(100, num_classes),
        )
    )


@register_model("lenet-5")
def lenet_5(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """LeNet-5, Caffe variant: conv20-conv50-fc500-fc10 (431,080 parameters on 28x28 inputs)."""
    channels, height, width = _image_shape("lenet-5", input_shape)
    if min(height, width) < 16:
        raise ModelError(f"lenet-5 needs images of at least 16x16, got {height}x{width}; use lenet-300-100 or bn-cnn")
    h, w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(channels, 20, 5),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(20, 50, 5),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(50 * h * w, 500),
            relu3=nn.ReLU(),
            fc2=nn.Linear(500, num_classes),
        )
    )


@register_model("bn-cnn")
def bn_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """A small CNN with BatchNorm, made for structured (channel) pruning."""
    channels, height, width = _image_shape("bn-cnn", input_shape)
    if min(height, width) < 4:
        raise ModelError(f"bn-cnn needs images of at least 4x4, got {height}x{width}")
    h, w = height // 4, width // 4
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(channels, 32, 3, padding=1),
            bn1=nn.BatchNorm2d(32),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(32, 64, 3, padding=1),
            bn2=nn.BatchNorm2d(64),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(64 * h * w, 128),
            relu3=nn.ReLU(),
            fc2=nn.Linear(128, num_classes),
        )
    )


def _image_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ModelError(f"{model} needs image inputs shaped (channels, height, width), got {tuple(input_shape)}")
    return input_shape[0], input_shape[1], input_shape[2]


BUILTIN_MODELS = frozenset(MODELS)  # what every process knows; anything registered later is local to its process


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a registry model or a user model from ``module:function``.

    The factory is called with the keyword arguments it names among ``input_shape``, ``num_classes``,
    ``in_channels`` (image data) and ``num_features`` / ``in_features`` (flat data): ``def net(*, input_shape,
    num_classes)``, ``def net(num_features=30, num_classes=2)``, ``def net(num_classes=10, **kw)`` and ``def net()``
    all work. Its errors, and a result that is not an ``nn.Module``, are one-line ``ModelError``s.
    """
    if ":" in name:
        factory = import_callable(name, what="model")
    elif name in MODELS:
        factory = MODELS[name]
    else:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}, or module:function")
    model = call_factory(factory, name, factory_arguments(input_shape, num_classes), what="model")
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {name} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def check_importable(name: str) -> None:
    """Refuse a model that a fresh process (a Ray trial worker, a later ``evaluate``) could not build.

    A name registered with ``register_model`` in a notebook or script exists only in that process, and so does a
    ``__main__:function``; the fix is a ``module:function`` in a file. Shipping the function to the workers would
    still leave exported models that nothing can rebuild later, so it is refused, before the first trial.
    """
    module = name.partition(":")[0] if ":" in name else None
    if module == "__main__":
        raise ModelError(
            f"model {name!r} lives in the running script or notebook (__main__), which trial workers cannot import; "
            "put the function in a file, e.g. my_models.py in the working folder, and use model.name: "
            "my_models:FUNCTION"
        )
    if module is not None or name in BUILTIN_MODELS or name not in MODELS:
        return  # module:function is imported by the space's validation; unknown names fail there
    factory = MODELS[name]
    where = getattr(factory, "__module__", None)
    hint = (
        f"use model.name: {where}:{factory.__qualname__} (its factory, importable from its file)"
        if where and where != "__main__" and "<" not in factory.__qualname__
        else "put the factory in a file, e.g. my_models.py in the working folder, and use model.name: "
        "my_models:FUNCTION"
    )
    raise ModelError(
        f"model {name!r} was registered with register_model in this process only; Ray trial workers are other "
        f"processes and do not know it: {hint}"
    )


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Linear`` and ``nn.Conv2d`` by its module path, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def layer_positions(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """How many output positions each prunable layer computes per sample (H*W for a conv, 1 for a linear).

    A weight contributes one multiply-accumulate per position, so MACs = nonzero weights * positions.
    """
    positions: dict[str, int] = {}
    hooks = []
    for name, layer in prunable_layers(model).items():

        def hook(mod: nn.Module, args: object, out: torch.Tensor, name: str = name) -> None:
            positions[name] = _flat(tuple(out.shape[2:])) if out.dim() > 2 else 1

        hooks.append(layer.register_forward_hook(hook))
    try:
        _forward_one(model, input_shape)
    finally:
        for h in hooks:
            h.remove()
    return positions


def check_fits(model: nn.Module, name: str, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Run one zero sample through ``model``: one that does not fit the data fails here, in one line, not mid-trial."""
    out = _forward_one(model, input_shape, name)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (1, num_classes):
        raise ModelError(
            f"model {name} gives {shape} for one sample shaped {tuple(input_shape)}, but the data has {num_classes} "
            f"classes: it must give a tensor shaped (batch, {num_classes}); check how its factory uses num_classes"
        )


def _forward_one(model: nn.Module, input_shape: tuple[int, ...], name: str = "") -> object:
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        device, dtype = (param.device, param.dtype) if param is not None else ("cpu", torch.float32)
        with torch.inference_mode():
            return model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    except Exception as exc:  # user code: one line that says what did not fit, not a traceback
        raise ModelError(
            f"model {name or type(model).__name__} does not run on a sample shaped {tuple(input_shape)}: "
            f"{first_line(exc)}; check how its factory uses input_shape, in_channels or num_features"
        ) from None
    finally:
        model.train(was_training)
