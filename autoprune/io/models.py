"""Model registry and discovery of prunable layers.

Built-in models are ``nn.Sequential`` with named children (``fc1``, ``conv2``, ...): the names are stable,
so a space file can refer to them, and the chain shape is what structured pruning and the self-describing
export rely on. A user model comes from ``module:function``; any ``nn.Module`` works for unstructured pruning,
and its weights are named by module or parameter path (``layer1.0.conv1``, ``rnn.weight_hh_l0``: see
``pruning.units``). A model may start from trained weights: ``load_weights`` reads a ``state_dict`` file as data
and refuses one that does not fit in one line.
"""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from autoprune._bounds import check_tree
from autoprune.errors import ModelError, first_line
from autoprune.io._imports import call_factory, factory_arguments, import_callable
from autoprune.io._paths import check_input_file

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


# ---------------------------------------------------------------------------------------------- trained weights

_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")  # where common checkpoint dicts keep the weights


def state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every ``state_dict`` entry's shape."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def state_mismatch(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> str | None:
    """One-line description of how two state-dict layouts differ (the first few of each kind), or None."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    shape = [k for k in expected if k in found and expected[k] != found[k]]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    if extra:
        problems.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
    if shape:
        k = shape[0]
        problems.append(f"{k} is {list(found[k])} but the architecture needs {list(expected[k])}")
    return "; ".join(problems) or None


def load_torch_data(path: Path, *, what: str, device: str | torch.device, objects: str) -> object:
    """``torch.load(weights_only=True)`` of a file received as data: tensors and plain containers only, never a
    pickled object. Each way it can fail is one ``ModelError`` line; ``objects`` says what to do about a file that
    holds Python objects."""
    check_input_file(path, what=what, error=ModelError)  # /dev/zero or a FIFO would hang the reader
    if not zipfile.is_zipfile(path):
        # torch.save writes a zip archive; a truncated one has lost its directory at the end.
        raise ModelError(f"cannot read {what} {path}: not a complete torch file (truncated or another format)")
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelError(f"cannot read {what} {path}: {first_line(exc, 160)}") from None
    if unpacked > size:  # torch.save stores, never compresses: more than the file holds is a zip bomb
        raise ModelError(
            f"cannot read {what} {path}: it unpacks to {unpacked:,} bytes from {size:,}, a compressed archive, which "
            "torch.save never writes"
        )
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        if "weights only load failed" in str(exc).lower():
            raise ModelError(
                f"cannot read {what} {path}: it holds Python objects, not only data and tensors; {objects}"
            ) from None
        raise ModelError(f"cannot read {what} {path}: {first_line(exc, 160)}") from None
    _check_tensors(data, f"{what} {path}", size)
    return data


def _overlaps(tensor: torch.Tensor) -> bool:
    """Whether two elements share a place in storage (stride 0, or strides that interleave). A view that does not
    overlap holds at most as many elements as its storage, which the file holds; any order of dimensions and gaps
    between them (channels-last, a slice) are fine."""
    reach = 0  # the largest offset the dimensions so far can reach
    for stride, length in sorted((st, n) for st, n in zip(tensor.stride(), tensor.shape, strict=True) if n != 1):
        if stride <= reach:
            return True
        reach += stride * (length - 1)
    return False


def _check_tensors(data: object, where: str, size: int) -> None:
    """Refuse, before anything is computed, a file whose tensors are more than it holds: stride-0 or overlapping
    views (a 6 kB file can hold a "30000x30000" weight, every element the same four bytes), storages larger than the
    file, sparse or meta tensors; and plain data nested too deep or too large once shared values are expanded."""
    check_tree(data, f"cannot read {where}", ModelError)
    stored, stack = 0, [data]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, torch.Tensor):
            if node.layout != torch.strided or node.is_meta or node.is_quantized:
                raise ModelError(
                    f"cannot read {where}: it holds a {node.layout} {node.device} tensor, not plain weights"
                )
            if node.numel() and _overlaps(node):
                raise ModelError(
                    f"cannot read {where}: a tensor shaped {list(node.shape)} is a view with strides "
                    f"{list(node.stride())}, whose elements share their storage; torch.save(model.state_dict()) "
                    "writes none"
                )
            storage = node.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                stored += storage.nbytes()
    if stored > size:
        raise ModelError(f"cannot read {where}: its tensors take {stored:,} bytes, more than the file's {size:,}")


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A ``state_dict`` read from a file as data (``weights_only``: a file never runs code), on the CPU.

    The file holds ``model.state_dict()`` as ``torch.save`` writes it, or a checkpoint dict that keeps one under
    ``state_dict``, ``model_state_dict`` or ``model``. Anything else is refused in one line.
    """
    path = Path(path).expanduser()
    objects = "a pickled model? save the weights with torch.save(model.state_dict(), PATH)"
    data = load_torch_data(path, what="weights file", device="cpu", objects=objects)
    if isinstance(data, Mapping) and not any(isinstance(v, torch.Tensor) for v in data.values()):
        nested = next((data[k] for k in _NESTED_STATE_KEYS if isinstance(data.get(k), Mapping)), None)
        data = nested if nested is not None else data
    if not isinstance(data, Mapping) or not data:
        raise ModelError(
            f"weights file {path} holds {type(data).__name__}, not a state_dict; save the weights with "
            "torch.save(model.state_dict(), PATH)"
        )
    bad = [k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(
            f"weights file {path} is not a state_dict: entry {bad[0]!r} is not a tensor; save the weights with "
            "torch.save(model.state_dict(), PATH)"
        )
    return dict(data)


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, name: str) -> None:
    """Copy ``state`` into ``model`` (every entry, each shape exact), or refuse in one line naming what differs."""
    found = {k: tuple(v.shape) for k, v in state.items()}
    problem = state_mismatch(state_shapes(model), found)
    if problem:
        raise ModelError(
            f"weights {source} do not fit model {name} ({problem}); they must come from "
            "torch.save(model.state_dict(), PATH) on a model this factory builds with the same input shape and classes"
        )
    try:
        with torch.no_grad():
            model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # e.g. complex values for a real parameter
        raise ModelError(f"weights {source} do not load into model {name}: {first_line(exc, 160)}") from None
