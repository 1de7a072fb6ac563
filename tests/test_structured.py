"""Structured pruning of any model: channel groups from the dependency graph, masks equal to the smaller model,
the planned count exact, and an exported smaller model that reloads as data into its factory's model."""

from __future__ import annotations

import copy
import re
from collections import OrderedDict

import pytest
import torch
from torch import nn

from autoprune import load_model, run_trial
from autoprune.config import PruneConfig, TrialConfig
from autoprune.errors import ConfigError
from autoprune.io.models import build_model
from autoprune.pruning import (
    channel_graph,
    compute_masks,
    count_params,
    planned_params,
    rebuild,
    removed_by_masks,
    shrink,
)
from autoprune.pruning.masks import MaskSet


class Residual(nn.Module):
    """Two residual blocks, the second with a strided 1x1 convolution on its shortcut, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a1, self.a2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.bn_a, self.bn_b = nn.BatchNorm2d(8), nn.BatchNorm2d(16)
        self.short = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.bn_a(self.a2(torch.relu(self.a1(x)))))
        x = torch.relu(self.short(x) + self.bn_b(self.b2(torch.relu(self.b1(x)))))
        return self.fc(x.mean(dim=(2, 3)))


class Depthwise(nn.Module):
    """An inverted-residual block: expand 1x1, depthwise 3x3, project 1x1, added to its input; concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1), nn.BatchNorm2d(24), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.BatchNorm2d(24), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1), nn.BatchNorm2d(8))
        self.side = nn.Conv2d(1, 6, 3, padding=1)
        self.mix = nn.Conv2d(14, 12, 1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        y = s + self.project(self.depthwise(self.expand(s)))
        y = torch.cat([y, torch.relu(self.side(x))], dim=1)
        return self.fc(torch.relu(self.mix(y)).mean(dim=(2, 3)))


class Attention(nn.Module):
    """Image rows as tokens through a TransformerEncoder layer (its feed-forward width is prunable)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x.flatten(1, -2))).mean(dim=1))


class Recurrent(nn.Module):
    def __init__(self, kind: type[nn.RNNBase] = nn.LSTM, layers: int = 2) -> None:
        super().__init__()
        self.rnn = kind(8, 12, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.flatten(1, -2))
        return self.fc(out[:, -1])


MODELS = {
    "residual": Residual,
    "depthwise": Depthwise,
    "attention": Attention,
    "lstm": lambda: Recurrent(nn.LSTM),
    "gru": lambda: Recurrent(nn.GRU),
    "rnn": lambda: Recurrent(nn.RNN, 1),
    "bn-cnn": lambda: build_model("bn-cnn", (1, 8, 8), 10),
}
SHAPE = (1, 8, 8)


def _perturbed(model: nn.Module) -> nn.Module:
    """Non-trivial weights and batch-norm statistics, in eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("kind", list(MODELS))
def test_the_smaller_model_computes_what_the_masked_model_does(kind: str) -> None:
    model = _perturbed(MODELS[kind]())
    graph = channel_graph(model, SHAPE)
    assert graph.groups and graph.output in ("fc", "head", "fc2")
    assert graph.output not in graph.groups  # the classes are never pruned
    cfg = PruneConfig(structured=True, sparsity=dict.fromkeys(graph.groups, 0.5))
    masks = compute_masks(model, cfg, graph=graph)
    masked = copy.deepcopy(model)
    MaskSet(masked, masks).apply_()
    removed = removed_by_masks(graph, masks)
    assert removed and all(len(r) < graph.groups[n].channels for n, r in removed.items())
    small = copy.deepcopy(masked)
    structure = shrink(small, graph, removed, SHAPE)
    # the planned shapes: each group's channels less the removed ones, every coupled slice gone
    assert count_params(small)[1] == count_params(masked)[0] == planned_params(model, cfg, graph)
    assert count_params(small)[1] < count_params(model)[1]
    x = torch.randn(6, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(masked(x), small(x), atol=1e-5)
    # the removal is data: replayed on a fresh dense model it gives the same shapes, and the weights load
    fresh = rebuild(_perturbed(MODELS[kind]()), type(structure).from_data(structure.to_data()), SHAPE)
    fresh.load_state_dict(small.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), small(x))


def test_coupled_layers_form_one_group_and_their_rates_are_refused_with_the_group_to_rate() -> None:
    graph = channel_graph(Residual(), SHAPE)
    # the stem, both convolutions closing a block and the 1x1 shortcut's input share the first block's channels
    stem = graph.groups["stem.0"]
    assert {"stem.0", "a2", "a1", "b1", "short.0"} <= set(stem.layers)
    assert list(graph.groups) == ["stem.0", "a1", "b1", "b2"]  # in the model's order
    assert {"b2", "short.0", "fc"} <= set(graph.groups["b2"].layers)  # the second block's sum, shortcut included
    with pytest.raises(ConfigError, match=r"prune.sparsity.a2: its channels are coupled with stem.0's"):
        graph.check_rates({"a2": 0.5})
    with pytest.raises(ConfigError, match="the output layer keeps its outputs"):
        graph.check_rates({"fc": 0.5})


def test_what_is_not_pruned_is_said_attention_width_and_normalised_channels() -> None:
    graph = channel_graph(Attention(), SHAPE)
    assert list(graph.groups) == ["encoder.layers.0.linear1"]  # the feed-forward width
    line = graph.kept_whole_line()
    assert line is not None and "LayerNorm" in line and "MultiheadAttention" in line


def test_a_density_below_what_whole_channels_allow_is_refused_with_the_least_that_works() -> None:
    model = Attention()  # its attention and embedding widths are kept whole: most weights cannot go
    graph = channel_graph(model, SHAPE)
    cfg = PruneConfig(structured=True, allocation="uniform", density=0.05)
    with pytest.raises(ConfigError, match=r"give prune\.density (0\.\d+) or more") as refused:
        compute_masks(model, cfg, graph=graph)
    least = float(re.search(r"prune\.density (0\.\d+)", str(refused.value)).group(1))
    compute_masks(model, PruneConfig(structured=True, allocation="uniform", density=least), graph=graph)
    with pytest.raises(ConfigError, match="or more"):
        compute_masks(model, PruneConfig(structured=True, allocation="uniform", density=least - 0.002), graph=graph)


def test_per_layer_rates_and_the_output_layer_on_a_bn_cnn() -> None:
    model = _perturbed(build_model("bn-cnn", (1, 8, 8), 10))
    graph = channel_graph(model, SHAPE)
    assert list(graph.groups) == ["conv1", "conv2", "fc1"]
    cfg = PruneConfig(structured=True, sparsity={"conv1": 0.25, "conv2": 0.5, "fc1": 0.3})
    masks = compute_masks(model, cfg, graph=graph)
    removed = removed_by_masks(graph, masks)
    assert {n: len(r) for n, r in removed.items()} == {"conv1": 8, "conv2": 32, "fc1": 38}
    small = copy.deepcopy(model)
    MaskSet(small, masks).apply_()
    shrink(small, graph, removed, SHAPE)
    c1, c2, f1 = 24, 32, 90
    expected = (c1 * 9 + c1) + 2 * c1 + (c2 * c1 * 9 + c2) + 2 * c2 + (f1 * c2 * 4 + f1) + (10 * f1 + 10)
    assert count_params(small) == (expected, expected) and small.bn2.running_var.shape == (c2,)
    kept = torch.tensor([c for c in range(32) if c not in removed["conv1"]])
    assert torch.equal(small.bn1.running_mean, model.bn1.running_mean[kept])
    with pytest.raises(ConfigError, match="output layer"):
        planned_params(model, PruneConfig(structured=True, sparsity={"fc2": 0.5}), graph)


def test_a_channel_already_removed_stays_removed_as_the_rate_rises() -> None:
    model = _perturbed(build_model("bn-cnn", (1, 8, 8), 10))
    graph = channel_graph(model, SHAPE)
    loose = compute_masks(model, PruneConfig(structured=True, sparsity={"conv2": 0.25}), graph=graph)
    with torch.no_grad():  # make the removed channels the strongest: they must still stay removed
        model.conv2.weight.mul_(1 + 100 * (loose["conv2.weight"] == 0))
    tight = compute_masks(model, PruneConfig(structured=True, sparsity={"conv2": 0.5}), graph=graph, current=loose)
    first, second = removed_by_masks(graph, loose)["conv2"], removed_by_masks(graph, tight)["conv2"]
    assert set(first.tolist()) < set(second.tolist()) and len(second) == 32


def test_a_structured_trial_of_a_users_residual_net_exports_a_smaller_file_that_reloads_as_data(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = "structured_resnets"
    source = "import torch\nfrom torch import nn\n\n\n" + _source(Residual)
    (tmp_path / f"{module}.py").write_text(source + "\n\ndef build(input_shape, num_classes):\n    return Residual()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = TrialConfig.from_dict(
        {
            "dataset": {"name": "digits"},
            "model": {"name": f"{module}:build"},
            "budget": {"train_epochs": 1, "finetune_epochs": 1, "batch_size": 64},
            "train": {"penalty": "group_lasso", "lambda_max": 1e-4},
            "prune": {"structured": True, "allocation": "per_layer", "sparsity": {"stem.0": 0.5, "b2": 0.5}},
        }
    )
    lines: list[str] = []
    result = run_trial(cfg, log=lines.append)
    assert result.params_nonzero == result.params_planned < result.params_total
    assert result.structure and {root for root, _ in result.structure} == {"stem.0", "b2"}
    assert result.model.stem[0].out_channels == 4 and result.model.short[0].out_channels == 8
    dense_file = tmp_path / "dense.pt"
    torch.save(build_model(f"{module}:build", SHAPE, 10).state_dict(), dense_file)
    out = result.save(tmp_path / "small.pt")
    raw = torch.load(out, weights_only=True)
    dense_bytes = sum(t.numel() * t.element_size() for t in torch.load(dense_file, weights_only=True).values())
    small_bytes = sum(t.numel() * t.element_size() for t in raw["state_dict"].values())
    assert small_bytes <= dense_bytes * result.params_nonzero / result.params_total * 1.02  # the tensors shrink
    assert out.stat().st_size < dense_file.stat().st_size
    assert raw["architecture"]["structure"] and raw["masks"] == {}
    dense_file.unlink()
    loaded = load_model(out, allow_modules=[module])
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), result.model.eval()(x))
    assert count_params(loaded.model)[1] == result.params_nonzero


def _source(cls: type) -> str:
    import inspect

    return inspect.getsource(cls)


def test_an_unstructured_file_stores_no_mask_that_its_weights_already_say(tmp_path) -> None:
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(8, 16), act=nn.ReLU(), fc2=nn.Linear(16, 4)))
    masks = compute_masks(model, PruneConfig(sparsity={"fc1": 0.75}))
    from autoprune.io.export import save_model

    out = save_model(tmp_path / "m.pt", model, masks=masks, config={}, metrics={}, input_shape=(8,), num_classes=4)
    raw = torch.load(out, weights_only=True)
    assert raw["masks"] == {} and raw["masked"] == ["fc1.weight", "fc2.weight"]
    loaded = load_model(out)
    assert torch.equal(loaded.masks["fc1.weight"], masks["fc1.weight"] != 0)
    # a kept weight that is exactly zero needs its mask stored: the weights alone would not say it is kept
    with torch.no_grad():
        model.fc1.weight.view(-1)[int((masks["fc1.weight"].view(-1) != 0).nonzero()[0])] = 0.0
    out = save_model(tmp_path / "z.pt", model, masks=masks, config={}, metrics={}, input_shape=(8,), num_classes=4)
    raw = torch.load(out, weights_only=True)
    assert list(raw["masks"]) == ["fc1.weight"] and raw["masked"] == ["fc2.weight"]


def test_the_group_lasso_gradient_is_that_of_the_sum_of_each_coupled_channels_norm() -> None:
    model = _perturbed(Residual())
    graph = channel_graph(model, SHAPE)
    params = dict(model.named_parameters())
    penalty = torch.zeros(())
    for group in graph.groups.values():
        sq = torch.zeros(group.channels)
        for m in group.members:
            p = params[m.path]
            if p.dim() < 2:
                continue  # biases and normalisation are not penalised
            per = p.pow(2).sum(dim=[d for d in range(p.dim()) if d != m.dim])
            valid = m.channel >= 0
            sq = sq.index_add(0, m.channel[valid], per[valid])
        penalty = penalty + sq.sqrt().sum()
    expected = torch.autograd.grad(0.01 * penalty, list(params.values()), allow_unused=True)
    for p in params.values():
        p.grad = torch.zeros_like(p)
    graph.group_lasso(model)(0.01)
    for (name, p), want in zip(params.items(), expected, strict=True):
        assert torch.allclose(p.grad, torch.zeros_like(p) if want is None else want, atol=1e-6), name
    assert float(params["a1.weight"].grad.abs().sum()) > 0 and float(params["fc.bias"].grad.abs().sum()) == 0
