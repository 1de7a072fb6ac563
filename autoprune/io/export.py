"""Self-describing saved models that load without unpickling code.

A model file is one ``torch.save``'d dict of plain data and tensors, so ``torch.load(weights_only=True)``
reads it and opening a file from someone else cannot run code. It carries the architecture, the weights
with pruning applied, the masks, the trial's configuration and metrics, the input shape and class count
needed to run it, and the preprocessing from raw inputs (``preprocess.Preprocessing``; files written before
it was stored lack it, and ``autoprune.load_model`` derives it from their dataset's name). A plain
``nn.Sequential`` of common layers is described layer by layer, with the shapes taken from the modules
themselves, so a model made physically smaller by structured pruning rebuilds at its smaller size. Any other
model is rebuilt by its ``module:function`` factory; a structured one then has the recorded removal
(``pruning.channels.Structure``: which channels of which group, as plain data) replayed on it before its weights
load, so no module is ever unpickled. A mask that is just ``weight != 0`` is not stored: the file lists those
parameters under ``masked`` and loading derives their masks from the weights.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from autoprune._bounds import INT64_MAX
from autoprune.errors import ModelError, first_line
from autoprune.io._architecture import describe_architecture, rebuild_architecture
from autoprune.io._io import atomic_open, plain
from autoprune.io._packbits import file_shape, pack_mask, unpack_mask
from autoprune.io._paths import as_path, check_output_file
from autoprune.io._trust import check_allowed
from autoprune.io.models import check_fits, load_torch_data
from autoprune.io.models import state_mismatch as _mismatch
from autoprune.io.models import state_shapes as _shapes
from autoprune.pruning.masks import MaskSet

FORMAT = "autoprune-model"
VERSION = 1

_REQUIRED_KEYS = ("architecture", "state_dict", "masks", "config", "metrics", "input_shape", "num_classes")


@dataclass
class LoadedModel:
    """A model read back from a file: ``model`` is in eval mode with its masks applied."""

    model: nn.Module
    masks: dict[str, Tensor]
    config: dict
    metrics: dict
    input_shape: tuple[int, ...]
    num_classes: int
    preprocessing: dict | None = None  # raw input -> model input (``preprocess.Preprocessing``); None: not stored


# ---------------------------------------------------------------------------------------------- saving


def _plain(value: Any, where: str) -> Any:
    """A copy that ``weights_only`` loading accepts: plain containers, scalars, strings and tensors."""
    try:
        return plain(value, where=where, tensors=True)
    except TypeError as exc:
        raise ModelError(f"cannot save {exc}") from None


def _is_model_file(path: Path) -> bool:
    try:
        data = _read(path, "cpu")
    except ModelError:
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def _factory_name(config: dict) -> str | None:
    model = config.get("model") if isinstance(config, dict) else None
    name = model.get("name") if isinstance(model, dict) else None
    if isinstance(name, str) and ":" in name:
        module, _, attr = name.partition(":")
        if module and attr:
            return name
    return None


def check_model_output(path: str | os.PathLike) -> Path:
    """``path`` as a place to write a model file: not a folder, in a folder that exists, and not replacing
    anything but an autoprune model file.
    """
    path = Path(path)
    check_output_file(path, what="model file", example="model.pt", guard_runs=False, error=ModelError)
    if path.exists() and not _is_model_file(path):
        raise ModelError(f"refusing to overwrite {path}: not an autoprune model file; choose another output file")
    return path


def save_model(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    masks: dict[str, Tensor] | None,
    config: dict,
    metrics: dict,
    input_shape: tuple[int, ...],
    num_classes: int,
    preprocessing: dict | None = None,
    structure: list | None = None,
) -> Path:
    """Write ``model`` with its masks applied, and what is needed to rebuild and run it, to ``path``.

    ``masks`` maps parameter names (``fc1.weight``) to tensors whose nonzero entries are kept. The file is
    written to a temporary sibling and moved into place, so ``path`` always holds either the old or the new
    complete file. An existing file is replaced only when it is itself an autoprune model file. The caller's
    model is not modified. ``structure`` (a factory model made smaller by structured pruning) is the removal that
    rebuilds its shapes from the factory's dense model.
    """
    path = check_model_output(path)
    state, packed_masks, derived = _masked_state(model, masks)
    architecture, expected = _architecture_of(model, config, tuple(input_shape), int(num_classes), structure)
    problem = _mismatch(expected, {k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise ModelError(f"cannot save {path}: the weights would not load into the rebuilt architecture ({problem})")

    document = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": architecture,
        "state_dict": state,
        "masks": packed_masks,
        "masked": derived,
        "config": _plain(config, "config"),
        "metrics": _plain(metrics, "metrics"),
        "input_shape": [int(s) for s in input_shape],
        "num_classes": int(num_classes),
        "preprocessing": _plain(preprocessing, "preprocessing"),
        "torch_version": str(torch.__version__),
    }
    with atomic_open(path) as fh:
        torch.save(document, fh)
    return path


def _masked_state(
    model: nn.Module, masks: dict[str, Tensor] | None
) -> tuple[dict[str, Tensor], dict[str, Any], list[str]]:
    """The model's state on the CPU with ``masks`` applied, the masks to store (packed), and the names of those
    that equal the weight's own nonzero pattern (not stored)."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    param_names = {name for name, _ in model.named_parameters()}
    packed_masks, derived = {}, []
    for name, mask in (masks or {}).items():
        if name not in param_names or name not in state:
            raise ModelError(
                f"mask {name!r} names no parameter of the model; mask keys are parameter names such as "
                f"{next(iter(sorted(param_names)), 'fc1.weight')!r}"
            )
        if tuple(mask.shape) != tuple(state[name].shape):
            raise ModelError(
                f"mask {name!r} has shape {list(mask.shape)} but the parameter is {list(state[name].shape)}"
            )
        keep = mask.to(device=state[name].device) != 0
        state[name] = state[name] * keep
        if bool(torch.equal(keep, state[name] != 0)):
            derived.append(name)  # the mask is the weight's own nonzero pattern: nothing to store
        else:
            packed_masks[name] = pack_mask(keep)
    return {k: v.cpu() for k, v in state.items()}, packed_masks, derived


def _architecture_of(
    model: nn.Module, config: dict, input_shape: tuple[int, ...], num_classes: int, structure: list | None
) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """What rebuilds ``model`` (a layer-by-layer description, or its factory plus the channels removed) and the
    parameter shapes that rebuilding gives."""
    architecture: Any = describe_architecture(model)
    if architecture is not None:
        with torch.device("meta"):
            return architecture, _shapes(rebuild_architecture(architecture))
    factory = _factory_name(config)
    if factory is None:
        kinds = ", ".join(sorted({type(m).__name__ for m in model.children()})) or type(model).__name__
        raise ModelError(
            f"cannot describe the architecture of {type(model).__name__} ({kinds}) and config model.name "
            "is not module:function; use an nn.Sequential of Linear/Conv2d/BatchNorm/ReLU/pooling/Flatten/"
            "Dropout layers, or a model factory module:function"
        )
    from autoprune.io.models import build_model

    dense = build_model(factory, input_shape, num_classes)
    architecture = {"factory": factory}
    if structure:
        from autoprune.pruning.channels import Structure, rebuild

        rebuild(dense, Structure.from_data(structure), input_shape)
        architecture["structure"] = Structure.from_data(structure).to_data()
    return architecture, _shapes(dense)


# ---------------------------------------------------------------------------------------------- loading


def _read(path: Path, device: str | torch.device) -> Any:
    objects = "it is not an autoprune model file (these are never unpickled)"
    return load_torch_data(path, what="model file", device=device, objects=objects)


def _document(path: Path, device: str | torch.device) -> dict[str, Any]:
    """The content of a model file, its format, version and keys checked, and what it says of its own shape
    (data only: nothing is sized or built)."""
    data = _read(path, device)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelError(f"{path} is a torch file but not an autoprune model file (no format {FORMAT!r} entry)")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelError(f"{path} is damaged: invalid format version {version!r}")
    if version > VERSION:
        raise ModelError(
            f"{path} uses model format version {version}, newer than this autoprune reads ({VERSION}); "
            "upgrade autoprune"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise ModelError(f"{path} is damaged: missing {', '.join(missing)}")
    state = data["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelError(f"{path} is damaged: state_dict is not a mapping of tensors")
    # Read as data: what the file says is checked before it sizes or builds anything.
    file_shape(data["input_shape"], f"{path} is damaged: input_shape", low=1)
    num_classes = data["num_classes"]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= INT64_MAX:
        raise ModelError(f"{path} is damaged: num_classes must be a whole number >= 1, got {num_classes!r:.80}")
    for key in ("config", "metrics"):
        if not isinstance(data[key], dict):
            raise ModelError(f"{path} is damaged: {key} must be a mapping, got {type(data[key]).__name__}")
    return data


def load_model(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", allow_modules: Collection[str] = ()
) -> LoadedModel:
    """Read a file written by ``save_model`` and rebuild the model on ``device``, in eval mode.

    A model that is not a plain ``nn.Sequential`` names its ``module:function`` factory; that module is imported
    only when it is in ``allow_modules`` (a file is data: opening one must not run code it names).
    """
    path = as_path(path, "model file", ModelError)
    data = _document(path, device)
    state = data["state_dict"]
    input_shape = file_shape(data["input_shape"], f"{path} is damaged: input_shape", low=1)
    num_classes = data["num_classes"]

    architecture = data["architecture"]
    try:
        if isinstance(architecture, dict) and isinstance(architecture.get("factory"), str):
            from autoprune.io.models import build_model

            check_allowed(architecture["factory"], allow_modules, what="architecture.factory", source="the file")

            model = build_model(architecture["factory"], input_shape, num_classes)
            if "structure" in architecture:
                from autoprune.pruning.channels import Structure, rebuild

                rebuild(model, Structure.from_data(architecture["structure"], f"{path}: structure"), input_shape)
        else:
            # Built on the meta device: no memory is spent on initial weights that are replaced right away.
            with torch.device("meta"):
                model = rebuild_architecture(architecture)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    problem = _mismatch(_shapes(model), {k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise ModelError(f"{path}: the weights do not fit the architecture ({problem})")
    # assign=True below keeps a file's dtypes: a float64 or complex weight would fail only in the forward pass.
    holds = {k: v.dtype for k, v in model.state_dict().items()}
    for name, tensor in state.items():
        if tensor.dtype != holds[name]:
            raise ModelError(
                f"{path} is damaged: {name} is {tensor.dtype} but the architecture holds {holds[name]} (autoprune "
                "writes the weights as the model holds them)"
            )
    # assign=True keeps the saved tensors (and their dtype) instead of copying into fresh ones.
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: the weights do not load into the architecture ({first_line(exc, 160)})") from None
    model.to(device)

    masks: dict[str, Tensor] = {}
    if not isinstance(data["masks"], dict):
        raise ModelError(f"{path} is damaged: masks is not a mapping")
    params = dict(model.named_parameters())
    for name, packed in data["masks"].items():
        mask = unpack_mask(packed, f"{path}: mask {name!r}")
        if name not in params or tuple(params[name].shape) != tuple(mask.shape):
            raise ModelError(f"{path} is damaged: mask {name!r} does not match a parameter")
        masks[name] = mask.to(params[name].device)
    derived = data.get("masked", [])
    if not isinstance(derived, list) or not all(isinstance(n, str) and n in params for n in derived):
        raise ModelError(f"{path} is damaged: masked must list parameters of the model")
    for name in derived:
        masks[name] = params[name].detach() != 0
    MaskSet(model, masks).apply_()  # already zero in the file; re-applied so the model holds the invariant
    model.eval()
    return LoadedModel(
        model=model,
        masks=masks,
        config=data["config"],
        metrics=data["metrics"],
        input_shape=input_shape,
        num_classes=num_classes,
        preprocessing=data.get("preprocessing") if isinstance(data.get("preprocessing"), dict) else None,
    )


def check_runs(loaded: LoadedModel, path: str | os.PathLike) -> None:
    """One zero sample through a loaded model: an architecture that cannot run on its own input shape (a layer
    missing, such as its Flatten) or gives another number of classes is a damaged file, said in one line."""
    try:
        check_fits(loaded.model, "of the file", loaded.input_shape, loaded.num_classes)
    except ModelError as exc:
        raise ModelError(f"{path} is damaged: {str(exc).partition('; check')[0]}") from None


def copy_model(source: str | os.PathLike, out: str | os.PathLike, *, metrics: dict) -> Path:
    """Re-export the model in ``source`` to ``out`` with ``metrics`` as its record (``pick``'s export).

    A plain ``nn.Sequential`` is rebuilt from its description and saved again, which checks every tensor. A model
    built by a factory is copied as data, its factory not imported (a run directory may come from someone else):
    its masks are checked against its tensors and its factory must be the model its own configuration names;
    loading the copy (``evaluate --allow-module``) imports the factory and checks the rest.
    """
    source = Path(source)
    data = _document(source, "cpu")
    factory = data["architecture"].get("factory") if isinstance(data["architecture"], dict) else None
    if not isinstance(factory, str):
        loaded = load_model(source)
        return save_model(
            out,
            loaded.model,
            masks=loaded.masks,
            config=loaded.config,
            metrics=metrics,
            input_shape=loaded.input_shape,
            num_classes=loaded.num_classes,
            preprocessing=loaded.preprocessing,
        )
    if factory != _factory_name(data["config"]):
        raise ModelError(
            f"{source} is damaged: its architecture names factory {factory!r}, which is not the model its "
            "configuration names (the file was altered)"
        )
    if not isinstance(data["masks"], dict):
        raise ModelError(f"{source} is damaged: masks is not a mapping")
    for name, packed in data["masks"].items():
        mask = unpack_mask(packed, f"{source}: mask {name!r}")
        if name not in data["state_dict"] or tuple(data["state_dict"][name].shape) != tuple(mask.shape):
            raise ModelError(f"{source} is damaged: mask {name!r} does not match a tensor")
    out = check_model_output(out)
    kept = (
        *_REQUIRED_KEYS,
        "format",
        "version",
        "preprocessing",
        "torch_version",
        "masked",
    )  # nothing else of the file
    document = {k: data[k] for k in kept if k in data}
    document["metrics"] = _plain(metrics, "metrics")
    with atomic_open(out) as fh:
        torch.save(document, fh)
    return out
