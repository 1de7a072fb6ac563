"""Datasets as resident tensors: a registry, Fashion-MNIST (its IDX files read by ``idx``), the stratified split,
index batches.

A ``module:function`` dataset is loaded and checked by ``_user_data``, which also holds ``RawSplits``.

A trial gets a ``Datasets`` whose tensors already live on its device. Batches are index tensors into them
(``x[idx]``), so an epoch costs no per-sample Python and no DataLoader workers.

Tensors are cached per process (one worker runs many trials in a row): decoded IDX files per path and
modification time, and the final device tensors for the two most recent ``(config, seed, device)`` keys.
Every tensor handed out may therefore be shared with a later trial: callers must never modify it in place.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from autoprune.config import DatasetConfig
from autoprune.errors import ConfigError, DataError
from autoprune.io._user_data import RawSplits, user_dataset
from autoprune.io.idx import read_idx

DEFAULT_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MEAN = 0.2860
FASHION_STD = 0.3530
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_FASHION_FIX = (
    "install it with `apt-get install -y dataset-fashion-mnist` or set AUTOPRUNE_DATA_DIR "
    "to a folder with the four IDX files"
)
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0  # fixed, so every trial is tested on the same held-out digits whatever its own seed
SYNTHETIC_SEED = 20240501


@dataclass(frozen=True)
class Datasets:
    """Train / validation / test tensors of one trial, all on the same device.

    ``*_x`` are float32 shaped ``(N, *input_shape)``, ``*_y`` int64 class indices in ``[0, num_classes)``.
    The tensors may be shared through the per-process cache: never modify them in place.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    val_source: str = "carved"  # "carved" from the training data by val_fraction, or the "loader"'s own split

    def to(self, device: torch.device | str) -> Datasets:
        """A copy with every tensor on ``device`` (asynchronous where the source memory allows it)."""
        dev = torch.device(device)
        moved = {f: getattr(self, f).to(dev, non_blocking=True) for f in _TENSOR_FIELDS}
        return dataclasses.replace(self, **moved)


_TENSOR_FIELDS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")


DatasetLoader = Callable[[DatasetConfig], RawSplits]
DATASETS: dict[str, DatasetLoader] = {}


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Register ``loader(cfg: DatasetConfig) -> RawSplits`` under ``name``."""

    def deco(loader: DatasetLoader) -> DatasetLoader:
        DATASETS[name] = loader
        return loader

    return deco


def fashion_mnist_dir(cfg_dir: str | None = None) -> pathlib.Path:
    """The Fashion-MNIST folder: ``cfg_dir``, else ``$AUTOPRUNE_DATA_DIR``, else the Debian package's path."""
    chosen = cfg_dir or os.environ.get("AUTOPRUNE_DATA_DIR") or DEFAULT_FASHION_DIR
    return pathlib.Path(chosen).expanduser()


def _fashion_files(cfg_dir: str | None) -> dict[str, pathlib.Path]:
    folder = fashion_mnist_dir(cfg_dir)
    if not folder.is_dir():
        raise DataError(f"Fashion-MNIST folder {folder} does not exist; {_FASHION_FIX}")
    files = {}
    for key, stem in FASHION_FILES.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                files[key] = candidate
                break
        else:
            raise DataError(f"Fashion-MNIST file {stem}.gz (or {stem}) is missing in {folder}; {_FASHION_FIX}")
    return files


def _fashion_pair(images_path: pathlib.Path, labels_path: pathlib.Path) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(images_path, magic=0x00000803)
    labels = read_idx(labels_path, magic=0x00000801)
    if tuple(images.shape[1:]) != (28, 28):
        raise DataError(
            f"IDX file {images_path} holds {images.shape[1]}x{images.shape[2]} images, Fashion-MNIST needs 28x28"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"IDX files {images_path} ({images.shape[0]} images) and {labels_path} ({labels.shape[0]} labels) "
            "disagree on the sample count; use files from the same release"
        )
    if images.shape[0] == 0:
        raise DataError(f"IDX file {images_path} holds no images")
    top = int(labels.max())
    if top > 9:
        raise DataError(f"IDX file {labels_path} holds label {top}, Fashion-MNIST labels are 0..9")
    return images, labels


def _fashion_normalize(images: torch.Tensor) -> torch.Tensor:
    # (x / 255 - mean) / std in one scale and one shift over the whole block
    x = images.to(torch.float32).unsqueeze(1)
    return x.mul_(1.0 / (255.0 * FASHION_STD)).sub_(FASHION_MEAN / FASHION_STD)


@register_dataset("fashion-mnist")
def fashion_mnist(cfg: DatasetConfig) -> RawSplits:
    """Fashion-MNIST from its four IDX files, scaled to [0, 1] and normalized with mean 0.2860 / std 0.3530."""
    files = _fashion_files(cfg.data_dir)
    train_images, train_labels = _fashion_pair(files["train_images"], files["train_labels"])
    test_images, test_labels = _fashion_pair(files["test_images"], files["test_labels"])
    return RawSplits(
        _fashion_normalize(train_images),
        train_labels.to(torch.int64),
        _fashion_normalize(test_images),
        test_labels.to(torch.int64),
        10,
    )


# ---------------------------------------------------------------------------------------------------------
# Small built-in datasets


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # late: sklearn costs start-up time for every other dataset

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


@register_dataset("digits")
def digits(cfg: DatasetConfig) -> RawSplits:
    """scikit-learn's 1797 8x8 digits with a fixed stratified 20% test split, standardized by training statistics."""
    x, y, train_idx, test_idx = _digits_split()
    mean, std = digits_standardization()
    train_x, test_x = x[train_idx], x[test_idx]
    return RawSplits((train_x - mean) / std, y[train_idx], (test_x - mean) / std, y[test_idx], 10)


def _digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    images, target = _digits_arrays()
    x = torch.from_numpy(images).div(16.0).unsqueeze(1)
    y = torch.from_numpy(target)
    train_idx, test_idx = stratified_split(y, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    return x, y, train_idx, test_idx


@functools.lru_cache(maxsize=1)
def digits_standardization() -> tuple[float, float]:
    """Mean and std of the digits training split after scaling to [0, 1]: what ``digits`` standardizes with."""
    x, _, train_idx, _ = _digits_split()
    train_x = x[train_idx]
    return float(train_x.mean()), float(train_x.std())


@register_dataset("synthetic")
def synthetic(cfg: DatasetConfig) -> RawSplits:
    """A fixed, learnable 4-class set of 8x8 inputs: random class prototypes plus gaussian noise."""
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    num_classes, n_train, n_test = 4, 1200, 300
    # a prototype scale of 0.4 against unit noise leaves a few percent of Bayes error: learnable, not trivial
    prototypes = 0.4 * torch.randn(num_classes, 1, 8, 8, generator=gen)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n, dtype=torch.int64).remainder_(num_classes)[torch.randperm(n, generator=gen)]
        return prototypes[y] + torch.randn(n, 1, 8, 8, generator=gen), y

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return RawSplits(train_x, train_y, test_x, test_y, num_classes)


BUILTIN_DATASETS = frozenset(DATASETS)  # what every process knows; anything registered later is local to it


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


# ---------------------------------------------------------------------------------------------------------
# Splits and batches


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into ``(train_idx, val_idx)``, both sorted int64, disjoint and together complete.

    Every class puts ``round(n_c * val_fraction)`` of its ``n_c`` samples into validation, but a class with
    at least two samples always keeps one in training (and a single-sample class stays in training).
    The choice within each class is random but fixed by ``seed``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction!r}")
    if labels.dim() != 1:
        raise DataError(f"labels must be a 1-D tensor, got shape {tuple(labels.shape)}")
    labels = labels.detach().cpu()
    n = labels.shape[0]
    _, classes = torch.unique(labels, return_inverse=True)
    gen = torch.Generator().manual_seed(int(seed))
    # a random order, then a stable sort by class: each class's samples end up contiguous and shuffled
    order = torch.randperm(n, generator=gen)
    order = order[torch.sort(classes[order], stable=True).indices]
    counts = torch.bincount(classes)
    starts = torch.cumsum(counts, 0) - counts
    n_val = torch.floor(counts.to(torch.float64) * val_fraction + 0.5).to(torch.int64)
    n_val = torch.minimum(n_val, (counts - 1).clamp_min(0))
    sorted_classes = classes[order]
    rank = torch.arange(n) - starts[sorted_classes]
    is_val = rank < n_val[sorted_classes]
    return torch.sort(order[~is_val]).values, torch.sort(order[is_val]).values


def batch_indices(
    n: int, batch_size: int, *, generator: torch.Generator, device: torch.device | str
) -> list[torch.Tensor]:
    """One epoch of shuffled index batches over ``range(n)``; the last batch may be smaller.

    The permutation is drawn with ``generator`` on the generator's device, then moved to ``device``.
    """
    if n < 0 or batch_size < 1:
        raise DataError(f"batch_indices needs n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    if n == 0:
        return []  # split() would yield one empty batch
    perm = torch.randperm(n, generator=generator, device=generator.device)
    return list(perm.to(device, non_blocking=True).split(batch_size))


# ---------------------------------------------------------------------------------------------------------
# Loading


def load_datasets(cfg: DatasetConfig, *, seed: int, device: torch.device | str = "cpu") -> Datasets:
    """Load ``cfg.name``, hold out a stratified validation split chosen by ``seed`` (unless the loader gives its own),
    and place it on ``device``.

    The test split comes from the dataset itself and never enters the validation split. Results are cached
    for the two most recent ``(cfg, seed, device)`` keys: treat the returned tensors as read-only.
    """
    dev = resolve_device(device)
    return _load_cached(cfg, int(seed), str(dev), _source_key(cfg))


def resolve_device(spec: torch.device | str | None) -> torch.device:
    """``auto``/None → cuda when available, else cpu; ``cuda`` → the current CUDA device (``cuda:N``).

    The one place a device is chosen: an unknown name or an unavailable CUDA device is a ConfigError.
    """
    if spec is None or str(spec) == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid device {str(spec)!r} ({exc}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(spec)!r} requested but CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())  # "cuda" and "cuda:0" share one cache entry
    return dev


def _source_key(cfg: DatasetConfig) -> tuple[Any, ...] | None:
    # the folder may come from the environment and the files may change: both belong in the cache key
    if cfg.name != "fashion-mnist":
        return None
    key = []
    for path in _fashion_files(cfg.data_dir).values():
        st = path.stat()
        key.append((str(path.resolve()), st.st_mtime_ns, st.st_size))
    return tuple(key)


@functools.lru_cache(maxsize=2)
def _load_cached(cfg: DatasetConfig, seed: int, device: str, source_key: tuple[Any, ...] | None) -> Datasets:
    raw = _load_raw(cfg)
    train_x, train_y = raw.train_x, raw.train_y
    if cfg.limit is not None:
        train_x, train_y = train_x[: cfg.limit], train_y[: cfg.limit]
    if raw.val_x is not None and raw.val_y is not None:  # the loader's own held-out split: used as it is
        split = {"train_x": train_x, "train_y": train_y, "val_x": raw.val_x, "val_y": raw.val_y}
    else:
        train_idx, val_idx = stratified_split(train_y, cfg.val_fraction, seed)
        if val_idx.numel() == 0:
            raise DataError(
                f"dataset {cfg.name!r}: val_fraction {cfg.val_fraction} of {train_y.shape[0]} training samples "
                "leaves an empty validation split; raise dataset.val_fraction or dataset.limit"
            )
        split = {
            "train_x": train_x[train_idx],
            "train_y": train_y[train_idx],
            "val_x": train_x[val_idx],
            "val_y": train_y[val_idx],
        }
    parts = {**split, "test_x": raw.test_x, "test_y": raw.test_y}
    dev = torch.device(device)
    for key, tensor in parts.items():
        tensor = tensor.contiguous()
        if dev.type == "cuda":
            tensor = tensor.pin_memory()  # lets the copy below run asynchronously
        parts[key] = tensor.to(dev, non_blocking=True)
    return Datasets(
        **parts,
        num_classes=raw.num_classes,
        input_shape=tuple(int(s) for s in raw.train_x.shape[1:]),
        name=cfg.name,
        val_source="loader" if raw.val_x is not None else "carved",
    )


def _load_raw(cfg: DatasetConfig) -> RawSplits:
    if cfg.name in DATASETS:
        return DATASETS[cfg.name](cfg)
    if ":" in cfg.name:
        return user_dataset(cfg.name)
    raise DataError(f"unknown dataset {cfg.name!r}; known datasets: {', '.join(sorted(DATASETS))}, or module:function")
