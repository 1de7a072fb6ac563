"""User datasets: a ``module:function`` loader returning ``train_x, train_y, test_x, test_y``, checked and converted."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._imports import import_callable
from .data import BUILTIN_DATASETS, DATASETS, RawSplits
from .errors import DataError, first_line


def check_importable(name: str) -> None:
    """Refuse a dataset that a fresh process (a Ray trial worker) could not load, before the first trial.

    A loader registered with ``register_dataset`` in a notebook or script exists only in that process, and a
    ``__main__:function`` cannot be imported by another one; the fix is a ``module:function`` in a file.
    """
    if name.partition(":")[0] == "__main__" or (":" not in name and name in DATASETS and name not in BUILTIN_DATASETS):
        raise DataError(
            f"dataset {name!r} exists only in this process (registered in a notebook or script, or __main__); "
            "Ray trial workers are other processes and cannot load it: write a function that returns train_x, "
            "train_y, test_x, test_y in a file, e.g. my_data.py in the working folder, and use dataset.name: "
            "my_data:FUNCTION"
        )


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
    elif isinstance(out, (tuple, list)) and len(out) == 4:
        parts = list(out)
    else:
        raise DataError(
            f"dataset {spec!r} returned {type(out).__name__}; return a dict with {', '.join(keys)} "
            "(and optionally num_classes) or a 4-tuple in that order"
        )
    tensors = {k: _as_tensor(spec, k, v) for k, v in zip(keys, parts, strict=True)}
    for split in ("train", "test"):
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
    if tensors["train_x"].shape[1:] != tensors["test_x"].shape[1:]:
        raise DataError(
            f"dataset {spec!r}: train_x samples are shaped {tuple(tensors['train_x'].shape[1:])} but test_x "
            f"samples {tuple(tensors['test_x'].shape[1:])}"
        )
    train_x, test_x = tensors["train_x"].to(torch.float32), tensors["test_x"].to(torch.float32)
    train_y, test_y = tensors["train_y"].to(torch.int64), tensors["test_y"].to(torch.int64)
    for split, x in (("train", train_x), ("test", test_x)):
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"dataset {spec!r}: {split}_x holds NaN or infinite values")
    low = int(min(train_y.min(), test_y.min()))
    high = int(max(train_y.max(), test_y.max()))
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
    return RawSplits(train_x, train_y, test_x, test_y, num_classes)


def _as_tensor(spec: str, key: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise DataError(f"dataset {spec!r}: {key} is a numpy array of Python objects; give a numeric array")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise DataError(f"dataset {spec!r}: {key} must be a torch.Tensor or numpy array, got {type(value).__name__}")
