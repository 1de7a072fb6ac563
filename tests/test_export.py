from __future__ import annotations

import random
import re
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune.errors import ModelError
from autoprune.io.export import FORMAT, VERSION, load_model, rebuild_architecture, save_model
from autoprune.io.models import build_model
from autoprune.pruning.units import prunable_weights

INPUT = (1, 8, 8)


def trained_like(name: str, seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A registry model with random masks applied and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(name, INPUT, 10)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *INPUT))  # moves BatchNorm running statistics away from their defaults
    gen = torch.Generator().manual_seed(seed + 1)
    masks = {}
    for layer_name, weight in prunable_weights(model).items():
        keep = torch.rand(weight.shape, generator=gen) > 0.7
        masks[f"{layer_name}.weight"] = keep
        with torch.no_grad():
            weight.mul_(keep)
    return model.eval(), masks


def save(path: Path, model: nn.Module, masks: dict | None, name: str = "lenet-300-100") -> Path:
    return save_model(
        path,
        model,
        masks=masks,
        config={"model": {"name": name}, "train": {"lr": 0.05}, "prune": {"sparsity": {"fc1": 0.7}}},
        metrics={"val_accuracy": 0.81, "params_nonzero": 1234},
        input_shape=INPUT,
        num_classes=10,
    )


@pytest.mark.parametrize("name", ["lenet-300-100", "bn-cnn"])
def test_round_trip_is_bit_identical(tmp_path: Path, name: str):
    model, masks = trained_like(name)
    path = save(tmp_path / "model.pt", model, masks, name)
    loaded = load_model(path)
    assert not loaded.model.training
    x = torch.randn(32, *INPUT)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert set(loaded.masks) == set(masks)
    for key, mask in masks.items():
        assert loaded.masks[key].dtype == torch.bool
        assert torch.equal(loaded.masks[key], mask)
        weight = loaded.model.get_parameter(key)
        assert torch.all(weight[~mask] == 0)
        assert torch.equal(weight, model.get_parameter(key))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key  # BatchNorm buffers included
    assert loaded.config["prune"]["sparsity"] == {"fc1": 0.7}
    assert loaded.metrics == {"val_accuracy": 0.81, "params_nonzero": 1234}
    assert loaded.input_shape == INPUT and loaded.num_classes == 10
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left behind


def test_file_is_plain_data_with_compact_masks(tmp_path: Path):
    model, masks = trained_like("lenet-300-100")
    path = save(tmp_path / "model.pt", model, masks)
    data = torch.load(path, weights_only=True)
    assert data["format"] == FORMAT and data["version"] == VERSION
    assert data["torch_version"] == str(torch.__version__)
    assert [layer["type"] for layer in data["architecture"]] == [
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
        "ReLU",
        "Linear",
    ]
    assert data["masks"] == {} and data["masked"] == list(masks)  # the weights' zeros say each mask
    with torch.no_grad():  # a kept weight that is exactly zero: the mask must be stored, as bits
        model.fc1.weight.view(-1)[int(masks["fc1.weight"].view(-1).nonzero()[0])] = 0.0
    data = torch.load(save(tmp_path / "model.pt", model, masks), weights_only=True)
    bits = data["masks"]["fc1.weight"]["bits"]
    assert bits.dtype == torch.uint8 and bits.numel() == -(-masks["fc1.weight"].numel() // 8)
    assert data["masked"] == [n for n in masks if n != "fc1.weight"]


def test_masks_are_applied_to_the_saved_weights_without_touching_the_model(tmp_path: Path):
    torch.manual_seed(0)
    model = build_model("lenet-300-100", INPUT, 10).eval()
    before = model.fc1.weight.detach().clone()
    keep = torch.rand(model.fc1.weight.shape) > 0.5
    loaded = load_model(save(tmp_path / "m.pt", model, {"fc1.weight": keep}))
    assert torch.equal(model.fc1.weight, before)
    assert torch.equal(loaded.model.fc1.weight, before * keep)
    assert torch.equal(loaded.model.fc2.weight, model.fc2.weight)


def test_a_physically_smaller_sequential_rebuilds_at_its_size(tmp_path: Path):
    torch.manual_seed(0)
    model = build_model("bn-cnn", INPUT, 10)
    model.conv1 = nn.Conv2d(1, 8, 3, padding=1)
    model.bn1 = nn.BatchNorm2d(8)
    model.conv2 = nn.Conv2d(8, 12, 3, padding=1)
    model.bn2 = nn.BatchNorm2d(12)
    model.fc1 = nn.Linear(12 * 2 * 2, 20)
    model.fc2 = nn.Linear(20, 10)
    model.eval()
    full = save(tmp_path / "full.pt", build_model("bn-cnn", INPUT, 10), None, "bn-cnn")
    small = save(tmp_path / "small.pt", model, None, "bn-cnn")
    loaded = load_model(small)
    assert loaded.model.conv2.weight.shape == (12, 8, 3, 3)
    assert loaded.model.fc1.weight.shape == (20, 48)
    assert loaded.masks == {}
    x = torch.randn(4, *INPUT)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert small.stat().st_size < full.stat().st_size / 5


def test_rebuild_architecture_rejects_unknown_layers():
    with pytest.raises(ModelError, match="unknown layer type 'Conv3d'"):
        rebuild_architecture([{"name": "c", "type": "Conv3d", "kwargs": {}}])
    with pytest.raises(ModelError, match="invalid Linear arguments"):
        rebuild_architecture([{"name": "fc", "type": "Linear", "kwargs": {"in_features": 2, "bogus": 1}}])
    net = rebuild_architecture(
        [{"name": "fc", "type": "Linear", "kwargs": {"in_features": 3, "out_features": 2, "bias": False}}]
    )
    assert net.fc.weight.shape == (2, 3) and net.fc.bias is None


USER_MODULE = """
import torch
from torch import nn

class Residual(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        n = 1
        for s in input_shape:
            n *= s
        self.fc1 = nn.Linear(n, n)
        self.fc2 = nn.Linear(n, num_classes)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc2(torch.relu(self.fc1(x)) + x)

def build(input_shape, num_classes):
    return Residual(input_shape, num_classes)
"""


def test_user_model_round_trips_through_its_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "ap_user_model.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    model = build_model("ap_user_model:build", INPUT, 10).eval()
    keep = torch.rand(model.fc1.weight.shape) > 0.8
    path = save(tmp_path / "user.pt", model, {"fc1.weight": keep}, "ap_user_model:build")
    assert torch.load(path, weights_only=True)["architecture"] == {"factory": "ap_user_model:build"}
    # The factory is code: imported only from a module the reader allowed.
    with pytest.raises(ModelError, match="--allow-module ap_user_model"):
        load_model(path)
    loaded = load_model(path, allow_modules=["ap_user_model"])
    with torch.no_grad():
        model.fc1.weight.mul_(keep)
        x = torch.randn(5, *INPUT)
        assert torch.equal(loaded.model(x), model(x))
    # Without a factory name such a model cannot be described.
    with pytest.raises(ModelError, match="not module:function"):
        save(tmp_path / "other.pt", model, None, "lenet-300-100")
    assert not (tmp_path / "other.pt").exists()


def test_save_rejects_bad_masks_and_non_plain_config(tmp_path: Path):
    model, _ = trained_like("lenet-300-100")
    with pytest.raises(ModelError, match=r"mask 'fc9\.weight' names no parameter"):
        save(tmp_path / "m.pt", model, {"fc9.weight": torch.ones(3)})
    with pytest.raises(ModelError, match="has shape"):
        save(tmp_path / "m.pt", model, {"fc1.weight": torch.ones(3)})
    with pytest.raises(ModelError, match=r"config\.model\.name: a object value is not plain data"):
        save_model(
            tmp_path / "m.pt",
            model,
            masks=None,
            config={"model": {"name": object()}},
            metrics={},
            input_shape=INPUT,
            num_classes=10,
        )
    assert list(tmp_path.iterdir()) == []


def test_overwrites_only_autoprune_files(tmp_path: Path):
    model, masks = trained_like("lenet-300-100")
    notes = tmp_path / "notes.txt"
    notes.write_text("important\n")
    with pytest.raises(ModelError, match=re.escape(f"refusing to overwrite {notes}: not an autoprune model file")):
        save(notes, model, masks)
    assert notes.read_text() == "important\n"
    path = save(tmp_path / "model.pt", model, masks)
    other, other_masks = trained_like("lenet-300-100", seed=5)
    save(path, other, other_masks)  # replacing our own file is fine
    assert torch.equal(load_model(path).model.fc1.weight, other.fc1.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "notes.txt"]


def _good_file(tmp_path: Path) -> Path:
    model, masks = trained_like("lenet-300-100")
    return save(tmp_path / "good.pt", model, masks)


def test_missing_truncated_and_random_files_are_model_errors(tmp_path: Path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "absent.pt")
    data = _good_file(tmp_path).read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=re.escape(f"cannot read model file {truncated}: not a complete torch file")):
        load_model(truncated)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(ModelError, match="not a complete torch file"):
        load_model(noise)


def test_torch_files_that_are_not_ours_are_model_errors(tmp_path: Path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ModelError, match="torch file but not an autoprune model file"):
        load_model(other)
    pickled = tmp_path / "pickled.pt"
    torch.save(nn.Linear(2, 2), pickled)  # a whole pickled module: refused, never unpickled
    with pytest.raises(ModelError, match="holds Python objects"):
        load_model(pickled)


def _edited(tmp_path: Path, name: str, **changes) -> Path:
    data = torch.load(_good_file(tmp_path), weights_only=True)
    data.update(changes)
    path = tmp_path / name
    torch.save(data, path)
    return path


def test_newer_version_and_unknown_layers_are_model_errors(tmp_path: Path):
    with pytest.raises(ModelError, match="format version 2, newer than this autoprune reads"):
        load_model(_edited(tmp_path, "newer.pt", version=VERSION + 1))
    arch = torch.load(_good_file(tmp_path), weights_only=True)["architecture"]
    arch[1]["type"] = "Conv3d"
    with pytest.raises(ModelError, match="unknown layer type 'Conv3d'") as info:
        load_model(_edited(tmp_path, "unknown.pt", architecture=arch))
    assert "unknown.pt" in str(info.value) and "\n" not in str(info.value)
    arch = torch.load(_good_file(tmp_path), weights_only=True)["architecture"]
    arch[1]["kwargs"]["out_features"] = 7
    with pytest.raises(ModelError, match="weights do not fit the architecture"):
        load_model(_edited(tmp_path, "shape.pt", architecture=arch))
