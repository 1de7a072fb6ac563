"""User datasets: a ``module:function`` loader returning ``train_x, train_y, test_x, test_y`` (and optionally its own
validation split ``val_x, val_y``, e.g. data a trained checkpoint has not seen), checked and converted into the
``RawSplits`` every dataset loader returns. The registry that calls it lives in ``data``."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from autoprune.errors import DataError, first_line
from autoprune.io._imports import import_callable


class RawSplits(NamedTuple):
    """What a dataset loader returns: normalized CPU tensors before the validation split (or with the loader's own
    validation split, ``val_x``/``val_y``, which is then used as it is)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None


def user_dataset(spec: str) -> RawSplits:
    """Call the user's loader ``module:function`` and check what it returns, in one-line ``DataError``s."""
    factory = import_callable(spec, what="dataset")
    try:
        out = factory()
    except DataError:
        raise
    except Exception as exc:  # user code: report it in one line rather than a traceback from inside autoprune
        raise DataError(f"dataset {spec!r} raised {first_line(exc)}") from None
    keys = ("train_x", "train_y", "test_x", "test_y")
    num_classes: Any = None
    if isinstance(out, dict):
        missing = [k for k in keys if k not in out]
        if missing:
            raise DataError(
                f"dataset {spec!r} returned a dict without {', '.join(missing)}; it needs {', '.join(keys)}"
            )
        parts = [out[k] for k in keys]
        num_classes = out.get("num_classes")
        if ("val_x" in out) != ("val_y" in out):
            raise DataError(f"dataset {spec!r} returned only one of val_x and val_y; return both, or neither")
        if "val_x" in out:
            keys = (*keys, "val_x", "val_y")
            parts += [out["val_x"], out["val_y"]]
    elif isinstance(out, (tuple, list)) and len(out) == 4:
        parts = list(out)
    else:
        raise DataError(
            f"dataset {spec!r} returned {type(out).__name__}; return a dict with {', '.join(keys)} "
            "(and optionally num_classes) or a 4-tuple in that order"
        )
    tensors = {k: _as_tensor(spec, k, v) for k, v in zip(keys, parts, strict=True)}
    splits = ("train", "test", "val") if "val_x" in tensors else ("train", "test")
    for split in splits:
        x, y = tensors[f"{split}_x"], tensors[f"{split}_y"]
        if x.dim() < 2 or x.shape[0] == 0:
            raise DataError(
                f"dataset {spec!r}: {split}_x must be shaped (N, features...) with N >= 1, got {tuple(x.shape)}"
            )
        if x.is_complex() or x.dtype == torch.bool:
            raise DataError(f"dataset {spec!r}: {split}_x must be real numbers, got dtype {x.dtype}")
        if y.dim() != 1 or y.dtype.is_floating_point or y.is_complex() or y.dtype == torch.bool:
            raise DataError(
                f"dataset {spec!r}: {split}_y must be a 1-D integer tensor of class indices, got dtype {y.dtype} "
                f"shape {tuple(y.shape)}; convert with .long()"
            )
        if x.shape[0] != y.shape[0]:
            raise DataError(f"dataset {spec!r}: {split}_x has {x.shape[0]} samples but {split}_y has {y.shape[0]}")
    for split in splits[1:]:
        if tensors["train_x"].shape[1:] != tensors[f"{split}_x"].shape[1:]:
            raise DataError(
                f"dataset {spec!r}: train_x samples are shaped {tuple(tensors['train_x'].shape[1:])} but {split}_x "
                f"samples {tuple(tensors[f'{split}_x'].shape[1:])}"
            )
    xs = {split: tensors[f"{split}_x"].to(torch.float32) for split in splits}
    ys = {split: tensors[f"{split}_y"].to(torch.int64) for split in splits}
    for split, x in xs.items():
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"dataset {spec!r}: {split}_x holds NaN or infinite values")
    low = min(int(y.min()) for y in ys.values())
    high = max(int(y.max()) for y in ys.values())
    if num_classes is None:
        num_classes = high + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise DataError(f"dataset {spec!r}: num_classes must be an integer >= 2, got {num_classes!r}")
    num_classes = int(num_classes)
    if low < 0 or high >= num_classes:
        raise DataError(
            f"dataset {spec!r}: labels must lie in [0, {num_classes}), found {low}..{high}; "
            "map them to class indices 0..K-1 (or return a larger num_classes)"
        )
    if num_classes < 2:
        raise DataError(f"dataset {spec!r}: labels hold a single class {high}; classification needs at least 2")
    return RawSplits(xs["train"], ys["train"], xs["test"], ys["test"], num_classes, xs.get("val"), ys.get("val"))


def _as_tensor(spec: str, key: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise DataError(f"dataset {spec!r}: {key} is a numpy array of Python objects; give a numeric array")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise DataError(f"dataset {spec!r}: {key} must be a torch.Tensor or numpy array, got {type(value).__name__}")
