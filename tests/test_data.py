from __future__ import annotations

import gzip
import os
import pathlib
import uuid

import numpy as np
import pytest
import torch

from autoprune.config import DatasetConfig
from autoprune.errors import DataError
from autoprune.io.data import (
    DATASETS,
    FASHION_MEAN,
    FASHION_STD,
    Datasets,
    batch_indices,
    fashion_mnist_dir,
    load_datasets,
    stratified_split,
)
from autoprune.io.idx import _decode_idx, read_idx

REAL_FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------------------------------------
# helpers


def idx_bytes(array: np.ndarray, *, magic: int | None = None) -> bytes:
    """An IDX ubyte file for ``array``; ``magic`` overrides the first four bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    if magic is not None:
        header = magic.to_bytes(4, "big") + header[4:]
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: pathlib.Path, array: np.ndarray, *, magic: int | None = None, cut: int = 0) -> pathlib.Path:
    data = idx_bytes(array, magic=magic)
    if cut:
        data = data[:-cut]
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_fashion(folder: pathlib.Path, *, n_train: int = 40, n_test: int = 20, gz: bool = True, seed: int = 0):
    """Four small, consistent Fashion-MNIST-style IDX files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / f"{stem}{suffix}", array)
    return arrays


def normalized(images: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(images).double() / 255.0 - FASHION_MEAN) / FASHION_STD).float().unsqueeze(1)


def write_module(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    # a fresh module name per test: imported modules stay in sys.modules for the whole session
    name = f"autoprune_userdata_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


# ---------------------------------------------------------------------------------------------------------
# the real Fashion-MNIST files


def test_read_idx_real_fashion_files():
    train_images = read_idx(REAL_FASHION / "train-images-idx3-ubyte.gz", magic=0x00000803)
    train_labels = read_idx(REAL_FASHION / "train-labels-idx1-ubyte.gz", magic=0x00000801)
    test_images = read_idx(REAL_FASHION / "t10k-images-idx3-ubyte.gz")
    test_labels = read_idx(REAL_FASHION / "t10k-labels-idx1-ubyte.gz")
    assert train_images.shape == (60000, 28, 28) and train_images.dtype == torch.uint8
    assert test_images.shape == (10000, 28, 28)
    assert train_labels.shape == (60000,) and test_labels.shape == (10000,)
    assert int(train_labels.min()) == 0 and int(train_labels.max()) == 9
    assert torch.bincount(train_labels.long()).tolist() == [6000] * 10
    assert torch.bincount(test_labels.long()).tolist() == [1000] * 10
    # the published normalization constants describe the training images
    scaled = train_images.double() / 255.0
    assert abs(scaled.mean().item() - FASHION_MEAN) < 5e-4
    assert abs(scaled.std().item() - FASHION_STD) < 5e-4


def test_load_real_fashion_normalized_split_and_cached():
    cfg = DatasetConfig(name="fashion-mnist", val_fraction=0.1, data_dir=str(REAL_FASHION))
    data = load_datasets(cfg, seed=0)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10 and data.name == "fashion-mnist"
    assert data.train_x.shape == (54000, 1, 28, 28) and data.val_x.shape == (6000, 1, 28, 28)
    assert data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert torch.bincount(data.val_y).tolist() == [600] * 10
    everything = torch.cat([data.train_x, data.val_x]).double()
    assert abs(everything.mean().item()) < 5e-3
    assert abs(everything.std().item() - 1.0) < 5e-3

    # same key: the very same tensors; another seed: a new split, but the files are not decoded again
    assert load_datasets(cfg, seed=0) is data
    misses = _decode_idx.cache_info().misses
    other = load_datasets(cfg, seed=1)
    assert _decode_idx.cache_info().misses == misses
    assert not torch.equal(other.val_x, data.val_x)
    assert torch.equal(other.test_x, data.test_x)


# ---------------------------------------------------------------------------------------------------------
# small IDX files: location, validation, caching


def test_data_dir_from_environment(tmp_path, monkeypatch):
    arrays = write_fashion(tmp_path / "fm", n_train=40, n_test=20)
    monkeypatch.setenv("AUTOPRUNE_DATA_DIR", str(tmp_path / "fm"))
    data = load_datasets(DatasetConfig(name="fashion-mnist", val_fraction=0.25), seed=3)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (30, 10, 20)
    train_idx, val_idx = stratified_split(torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long(), 0.25, 3)
    images = normalized(arrays["train-images-idx3-ubyte"])
    torch.testing.assert_close(data.val_x, images[val_idx])
    torch.testing.assert_close(data.train_x, images[train_idx])
    torch.testing.assert_close(data.test_x, normalized(arrays["t10k-images-idx3-ubyte"]))
    assert data.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_uncompressed_files_are_accepted(tmp_path):
    arrays = write_fashion(tmp_path, n_train=20, n_test=10, gz=False)
    data = load_datasets(DatasetConfig(name="fashion-mnist", val_fraction=0.5, data_dir=str(tmp_path)), seed=0)
    torch.testing.assert_close(data.test_x, normalized(arrays["t10k-images-idx3-ubyte"]))


def test_fashion_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOPRUNE_DATA_DIR", raising=False)
    assert fashion_mnist_dir() == pathlib.Path("/usr/share/datasets/fashion-mnist")
    monkeypatch.setenv("AUTOPRUNE_DATA_DIR", str(tmp_path / "env"))
    assert fashion_mnist_dir() == tmp_path / "env"
    assert fashion_mnist_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"


def test_missing_folder_names_path_and_fix(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_datasets(DatasetConfig(name="fashion-mnist", data_dir=str(missing)), seed=0)
    message = str(err.value)
    assert str(missing) in message
    assert "apt-get install -y dataset-fashion-mnist" in message and "AUTOPRUNE_DATA_DIR" in message

    monkeypatch.setenv("AUTOPRUNE_DATA_DIR", str(missing))
    with pytest.raises(DataError, match="AUTOPRUNE_DATA_DIR") as err:
        load_datasets(DatasetConfig(name="fashion-mnist"), seed=0)
    assert str(missing) in str(err.value)


def test_missing_file_is_named(tmp_path):
    write_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as err:
        load_datasets(DatasetConfig(name="fashion-mnist", data_dir=str(tmp_path)), seed=0)
    assert "apt-get install" in str(err.value)


def _wrong_magic(folder):
    images = np.zeros((40, 28, 28), np.uint8)
    return write_idx(folder / "train-images-idx3-ubyte.gz", images, magic=0x12340803), "invalid magic"


def _labels_as_images(folder):
    return write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros(40, np.uint8)), "0x00000801"


def _truncated_payload(folder):
    return write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((20, 28, 28), np.uint8), cut=7), "truncated"


def _truncated_gzip(folder):
    path = folder / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    return path, "gzip"


def _count_mismatch(folder):
    return write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8)), "disagree"


def _wrong_image_size(folder):
    return write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((20, 27, 27), np.uint8)), "28x28"


def _label_out_of_range(folder):
    return write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(20, 10, np.uint8)), "label 10"


@pytest.mark.parametrize(
    "corrupt",
    [
        _wrong_magic,
        _labels_as_images,
        _truncated_payload,
        _truncated_gzip,
        _count_mismatch,
        _wrong_image_size,
        _label_out_of_range,
    ],
)
def test_corrupt_files_are_reported_by_name(tmp_path, corrupt):
    write_fashion(tmp_path)
    path, what = corrupt(tmp_path)
    with pytest.raises(DataError, match=what) as err:
        load_datasets(DatasetConfig(name="fashion-mnist", data_dir=str(tmp_path)), seed=0)
    assert str(path) in str(err.value)


def test_read_idx_rejects_short_files(tmp_path):
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match=r"tiny.*truncated"):
        read_idx(tiny)
    header = tmp_path / "header"
    header.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 1]))
    with pytest.raises(DataError, match=r"header.*header"):
        read_idx(header)
    with pytest.raises(DataError, match="absent"):
        read_idx(tmp_path / "absent")


def test_read_idx_longer_payload_is_rejected(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(np.zeros(5, np.uint8)) + b"\x00")
    with pytest.raises(DataError, match="longer than its header"):
        read_idx(path)


def test_read_idx_rereads_a_rewritten_file(tmp_path):
    path = write_idx(tmp_path / "labels.gz", np.arange(6, dtype=np.uint8))
    first = read_idx(path)
    assert first.tolist() == list(range(6))
    assert read_idx(path) is first  # cached
    write_idx(path, np.arange(6, 12, dtype=np.uint8))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert read_idx(path).tolist() == list(range(6, 12))


# ---------------------------------------------------------------------------------------------------------
# split and batches


def test_stratified_split_proportions_and_partition():
    counts = [100, 50, 7, 2, 1]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(5))]
    train_idx, val_idx = stratified_split(labels, 0.2, seed=11)
    assert train_idx.dtype == torch.int64 and val_idx.dtype == torch.int64
    assert torch.equal(torch.sort(torch.cat([train_idx, val_idx])).values, torch.arange(len(labels)))
    # round(n * 0.2): 20, 10, 1 (1.4), 0 (0.4), 0 (0.2)
    assert torch.bincount(labels[val_idx], minlength=5).tolist() == [20, 10, 1, 0, 0]
    assert torch.bincount(labels[train_idx], minlength=5).tolist() == [80, 40, 6, 2, 1]

    # a large fraction still leaves one sample per class in training, and a lone sample stays there
    train_idx, val_idx = stratified_split(labels, 0.9, seed=11)
    assert torch.bincount(labels[train_idx], minlength=5).tolist() == [10, 5, 1, 1, 1]


def test_stratified_split_is_seeded():
    labels = torch.arange(300) % 3
    a = stratified_split(labels, 0.3, seed=1)
    b = stratified_split(labels, 0.3, seed=1)
    c = stratified_split(labels, 0.3, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert set(a[0].tolist()).isdisjoint(a[1].tolist())


def test_stratified_split_rejects_bad_fraction():
    with pytest.raises(DataError, match="val_fraction"):
        stratified_split(torch.arange(10) % 2, 1.0, seed=0)


def test_batch_indices_cover_each_index_once():
    batches = batch_indices(103, 10, generator=torch.Generator().manual_seed(0), device="cpu")
    assert [len(b) for b in batches] == [10] * 10 + [3]
    flat = torch.cat(batches)
    assert flat.dtype == torch.int64
    assert torch.equal(torch.sort(flat).values, torch.arange(103))
    assert not torch.equal(flat, torch.arange(103))  # shuffled


def test_batch_indices_determinism():
    gen = torch.Generator().manual_seed(42)
    epoch1 = torch.cat(batch_indices(50, 8, generator=gen, device="cpu"))
    epoch2 = torch.cat(batch_indices(50, 8, generator=gen, device="cpu"))
    again = torch.cat(batch_indices(50, 8, generator=torch.Generator().manual_seed(42), device="cpu"))
    assert torch.equal(epoch1, again)
    assert not torch.equal(epoch1, epoch2)  # the generator advances from epoch to epoch
    assert batch_indices(0, 8, generator=gen, device="cpu") == []


# ---------------------------------------------------------------------------------------------------------
# built-in small datasets


def test_digits_shapes_and_fixed_test_split():
    a = load_datasets(DatasetConfig(name="digits", val_fraction=0.1), seed=0)
    b = load_datasets(DatasetConfig(name="digits", val_fraction=0.1), seed=1)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10 and a.train_x.shape[1:] == (1, 8, 8)
    assert len(a.train_y) + len(a.val_y) + len(a.test_y) == 1797
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.val_x, b.val_x)
    # the test split is a stratified 20%: every class contributes round(0.2 * its count)
    all_y = torch.cat([a.train_y, a.val_y, a.test_y])
    expected = torch.floor(torch.bincount(all_y).double() * 0.2 + 0.5).long()
    assert torch.equal(torch.bincount(a.test_y), expected)
    pool = torch.cat([a.train_x, a.val_x])
    assert abs(pool.mean().item()) < 1e-4 and abs(pool.std().item() - 1.0) < 1e-3


def test_synthetic_is_fixed_and_learnable():
    raw = DATASETS["synthetic"](DatasetConfig(name="synthetic"))
    again = DATASETS["synthetic"](DatasetConfig(name="synthetic"))
    assert torch.equal(raw.train_x, again.train_x) and torch.equal(raw.test_y, again.test_y)
    data = load_datasets(DatasetConfig(name="synthetic", val_fraction=0.1), seed=0)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 4
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (1080, 120, 300)
    # nearest class mean, fitted on train: far above the 25% chance level
    flat = data.train_x.flatten(1)
    centroids = torch.stack([flat[data.train_y == c].mean(0) for c in range(4)])
    predicted = torch.cdist(data.test_x.flatten(1), centroids).argmin(1)
    assert (predicted == data.test_y).float().mean().item() > 0.8


def test_limit_keeps_the_first_training_samples():
    raw = DATASETS["synthetic"](DatasetConfig(name="synthetic"))
    data = load_datasets(DatasetConfig(name="synthetic", val_fraction=0.2, limit=100), seed=4)
    train_idx, val_idx = stratified_split(raw.train_y[:100], 0.2, seed=4)
    assert torch.equal(data.train_x, raw.train_x[:100][train_idx])
    assert torch.equal(data.val_y, raw.train_y[:100][val_idx])
    assert len(data.test_y) == 300


def test_empty_validation_split_is_an_error():
    with pytest.raises(DataError, match="empty validation split"):
        load_datasets(DatasetConfig(name="synthetic", val_fraction=0.1, limit=3), seed=0)


def test_device_cache_and_to():
    cfg = DatasetConfig(name="synthetic", val_fraction=0.15)
    data = load_datasets(cfg, seed=7, device="cpu")
    assert load_datasets(cfg, seed=7, device=torch.device("cpu")) is data
    assert load_datasets(cfg, seed=8) is not data
    moved = data.to("cpu")
    assert isinstance(moved, Datasets) and moved.input_shape == data.input_shape
    assert all(t.is_contiguous() and t.device.type == "cpu" for t in (moved.train_x, moved.val_x, moved.test_x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_placement():
    data = load_datasets(DatasetConfig(name="synthetic"), seed=0, device="cuda")
    assert all(getattr(data, f).is_cuda for f in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"))
    cpu = load_datasets(DatasetConfig(name="synthetic"), seed=0, device="cpu")
    assert torch.equal(data.val_x.cpu(), cpu.val_x)
    batches = batch_indices(100, 32, generator=torch.Generator().manual_seed(0), device="cuda")
    assert all(b.is_cuda for b in batches)
    assert data.to("cpu").train_x.device.type == "cpu"


# ---------------------------------------------------------------------------------------------------------
# user datasets and errors

USER_SOURCE = """
import numpy as np
import torch

def as_dict():
    rng = np.random.default_rng(0)
    return {
        "train_x": rng.normal(size=(50, 6)),
        "train_y": (np.arange(50) % 3).astype(np.int32),
        "test_x": rng.normal(size=(12, 6)),
        "test_y": (np.arange(12) % 3).astype(np.int32),
        "num_classes": 5,
    }

def as_tuple():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(40, 2, 4, 4, generator=g), torch.arange(40) % 4,
            torch.randn(8, 2, 4, 4, generator=g), torch.arange(8) % 4)

def float_labels():
    return torch.randn(10, 3), torch.zeros(10), torch.randn(4, 3), torch.zeros(4)

def short_labels():
    return torch.randn(10, 3), torch.arange(9) % 2, torch.randn(4, 3), torch.arange(4) % 2

def out_of_range():
    d = as_dict()
    d["test_y"][0] = 5
    return d

def missing_key():
    return {"train_x": torch.randn(4, 2), "train_y": torch.zeros(4, dtype=torch.long)}

def not_data():
    return "nope"

def with_nan():
    x = torch.randn(10, 3)
    x[3, 1] = float("nan")
    return x, torch.arange(10) % 2, torch.randn(4, 3), torch.arange(4) % 2

def broken():
    raise RuntimeError("disk on fire")
"""


def test_user_dataset_dict_and_tuple(tmp_path, monkeypatch):
    module = write_module(tmp_path, monkeypatch, USER_SOURCE)
    data = load_datasets(DatasetConfig(name=f"{module}:as_dict", val_fraction=0.2), seed=0)
    assert data.input_shape == (6,) and data.num_classes == 5 and data.name == f"{module}:as_dict"
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert (len(data.train_y) + len(data.val_y), len(data.test_y)) == (50, 12)

    data = load_datasets(DatasetConfig(name=f"{module}:as_tuple", val_fraction=0.2), seed=0)
    assert data.input_shape == (2, 4, 4) and data.num_classes == 4
    assert torch.bincount(data.val_y).tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("float_labels", "integer"),
        ("short_labels", "10 samples but train_y has 9"),
        ("out_of_range", r"\[0, 5\), found 0\.\.5"),
        ("missing_key", "without test_x, test_y"),
        ("not_data", "returned str"),
        ("with_nan", "NaN"),
        ("broken", "RuntimeError: disk on fire"),
        ("absent", "no attribute 'absent'"),
    ],
)
def test_user_dataset_errors(tmp_path, monkeypatch, function, message):
    module = write_module(tmp_path, monkeypatch, USER_SOURCE)
    with pytest.raises(DataError, match=message) as err:
        load_datasets(DatasetConfig(name=f"{module}:{function}"), seed=0)
    assert module in str(err.value)


def test_user_dataset_import_failure():
    with pytest.raises(DataError, match="cannot import module 'no_such_module_for_autoprune'"):
        load_datasets(DatasetConfig(name="no_such_module_for_autoprune:load"), seed=0)


def test_unknown_dataset_lists_known_names():
    with pytest.raises(DataError) as err:
        load_datasets(DatasetConfig(name="mnist"), seed=0)
    message = str(err.value)
    assert "'mnist'" in message
    assert all(name in message for name in ("digits", "fashion-mnist", "synthetic", "module:function"))
