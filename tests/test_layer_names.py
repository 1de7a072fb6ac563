"""Layer names with dots (``block.conv1``, torchvision-style ``layer1.0.conv1``) on a residual net written as a user
writes one: in ``auto``, in per-layer keys of a space file, in ``--set``, as Optuna parameters, in a trial, in the
reports and in the exported file; structured pruning names its channel groups the same way."""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from autoprune.errors import ConfigError
from autoprune.io.export import load_model
from autoprune.pipeline.trial import run_trial
from autoprune.report.render import front_table
from autoprune.report.trials_csv import write_csv
from autoprune.searching.space import define_by_run, load_space, load_yaml, parse_space

RESIDUAL = """
import torch
from torch import nn

class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))

class Net(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.block = Block(6)
        self.layer1 = nn.Sequential(Block(6))
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        x = self.layer1(self.block(torch.relu(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))

def net(*, input_shape, num_classes):
    return Net(input_shape[0], num_classes)
"""
LAYERS = ("stem", "block.conv1", "block.conv2", "layer1.0.conv1", "layer1.0.conv2", "fc")


@pytest.fixture(scope="module")
def model_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("user")
    module = f"ap_residual_{uuid.uuid4().hex[:8]}"
    (folder / f"{module}.py").write_text(RESIDUAL)
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(folder))
    yield f"{module}:net"
    mp.undo()


def _space(model_name: str, prune: str, tmp_path: Path | None = None) -> str:
    text = (
        f"dataset: {{name: synthetic, val_fraction: 0.2}}\n"
        f"model: {{name: '{model_name}'}}\n"
        "budget: {train_epochs: 1, finetune_epochs: 1, batch_size: 64}\n"
        "train: {lr: 0.05, lambda_max: 1.0e-5}\n"
        f"prune: {prune}\n"
    )
    if tmp_path is not None:
        (tmp_path / "space.yaml").write_text(text)
    return text


def test_auto_searches_every_layer_by_its_dotted_name_and_optuna_names_follow(model_name: str) -> None:
    space = parse_space(load_yaml(_space(model_name, "{sparsity: auto}")), source="space.yaml")
    assert space.layers == LAYERS
    assert [d.path for d in space.dims] == [f"prune.sparsity.{name}" for name in LAYERS]
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    define_by_run(trial, space.dims)
    assert set(trial.params) == {f"prune.sparsity.{name}" for name in LAYERS}
    cfg = space.config_for(trial.params)
    assert cfg.prune.sparsity == {name: trial.params[f"prune.sparsity.{name}"] for name in LAYERS}
    # the frozen copy a run directory keeps reads back identically
    assert parse_space(load_yaml(yaml.safe_dump(space.document)), source="frozen").digest == space.digest


def test_per_layer_keys_with_dots_in_yaml_and_in_set(model_name: str, tmp_path: Path) -> None:
    prune = "{sparsity: {'layer1.0.conv1': 0.5, block.conv2: {low: 0.1, high: 0.9}}}"
    space = parse_space(load_yaml(_space(model_name, prune)), source="space.yaml")
    assert [d.path for d in space.dims] == ["prune.sparsity.block.conv2"]
    assert space.config_for({"prune.sparsity.block.conv2": 0.3}).prune.sparsity == {
        "layer1.0.conv1": 0.5,
        "block.conv2": 0.3,
    }
    _space(model_name, "{sparsity: auto}", tmp_path)
    sets = [
        "prune.sparsity.layer1.0.conv1=0.5",
        "prune.sparsity.block.conv1=0.25",
        "train.lr_multipliers.layer1.0.conv2=2",
    ]
    space = load_space(tmp_path / "space.yaml", sets)
    cfg = space.default_config()
    assert cfg.prune.sparsity == {"layer1.0.conv1": 0.5, "block.conv1": 0.25}
    assert cfg.train.lr_multipliers == {"layer1.0.conv2": 2}
    assert space.dims == ()


@pytest.mark.parametrize("key", ["prune.sparsity.block", "prune.sparsity.layer1.0.conv9", "train.lr_multipliers.x.y"])
def test_an_unknown_dotted_layer_lists_the_prunable_ones(model_name: str, tmp_path: Path, key: str) -> None:
    _space(model_name, "{sparsity: auto}", tmp_path)
    layer = key.split(".", 2)[2]
    with pytest.raises(ConfigError, match=rf"unknown layer '{layer}'; prunable layers: {', '.join(LAYERS)}$"):
        load_space(tmp_path / "space.yaml", [f"{key}=0.5"])


def test_structured_pruning_names_the_residual_nets_channel_groups_by_dotted_layer(
    model_name: str, tmp_path: Path
) -> None:
    # the residual adds couple stem, block.conv2 and layer1.0.conv2: one group, named by its first producer
    space = parse_space(load_yaml(_space(model_name, "{structured: true, sparsity: auto}")), source="space.yaml")
    assert [d.path for d in space.dims] == [
        f"prune.sparsity.{name}" for name in ("stem", "block.conv1", "layer1.0.conv1")
    ]
    _space(model_name, "{structured: true, sparsity: auto}", tmp_path)
    overrides = ["prune.sparsity.stem=0.5", "prune.sparsity.block.conv1=0.5", "prune.sparsity.layer1.0.conv1=0"]
    result = run_trial(load_space(tmp_path / "space.yaml", overrides).default_config(), device="cpu")
    shapes = {name: tuple(m.weight.shape) for name, m in result.model.named_modules() if hasattr(m, "weight")}
    assert shapes == {
        "stem": (3, 1, 3, 3),
        "block.conv1": (3, 3, 3, 3),
        "block.conv2": (3, 3, 3, 3),
        "layer1.0.conv1": (6, 3, 3, 3),
        "layer1.0.conv2": (3, 6, 3, 3),
        "fc": (4, 3),
    }
    loaded = load_model(result.save(tmp_path / "model.pt"), allow_modules=[model_name.partition(":")[0]])
    x = torch.randn(7, 1, 8, 8)
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(x), result.model(x))


def test_a_trial_prunes_dotted_layers_and_reports_and_exports_them(model_name: str, tmp_path: Path) -> None:
    _space(model_name, "{sparsity: auto}", tmp_path)
    rates = dict(zip(LAYERS, (0.0, 0.5, 0.75, 0.5, 0.25, 0.0), strict=True))
    overrides = [f"prune.sparsity.{name}={rate}" for name, rate in rates.items()]
    result = run_trial(load_space(tmp_path / "space.yaml", overrides).default_config(), device="cpu")
    assert result.layer_sparsity == pytest.approx(rates, abs=0.01)

    record = {"trial": 0, **result.record(), "model_path": "models/trial_0.pt"}
    write_csv([record], tmp_path / "trials.csv")
    with open(tmp_path / "trials.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    for name, rate in rates.items():
        assert float(row[f"sparsity.{name}"]) == pytest.approx(result.layer_sparsity[name])
        assert float(row[f"config.prune.sparsity.{name}"]) == rate
    assert "layer1.0.conv1 50" in front_table([record])

    loaded = load_model(result.save(tmp_path / "model.pt"), allow_modules=[model_name.partition(":")[0]])
    assert {name.removesuffix(".weight") for name in loaded.masks if name.endswith(".weight")} >= {
        name for name, rate in rates.items() if rate > 0
    }
    for name, rate in rates.items():
        weight = loaded.model.get_submodule(name).weight
        assert float((weight == 0).float().mean()) == pytest.approx(rate, abs=0.01)
    x = torch.randn(7, 1, 8, 8)
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(x), result.model(x))
