"""Every common layer type is pruned, by weight tensor, to the planned count; what is left dense is named.

The modules are small and real: a Transformer encoder (its fused eval fast path included), LSTM and GRU, Conv1d,
ConvTranspose2d, an embedding (opt-in); counts are checked on the tensors themselves after masking.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoprune.config import PruneConfig, TrialConfig
from autoprune.errors import ConfigError
from autoprune.pipeline.measure import count_macs
from autoprune.pipeline.trial import run_trial
from autoprune.pruning import compute_masks, planned_params
from autoprune.pruning.masks import MaskSet, floor_counts
from autoprune.pruning.units import Selection, not_pruned, not_pruned_line, parameter_paths, prunable_weights


class Encoder(nn.Module):
    """Image rows as tokens through ``nn.TransformerEncoder``, with a learned positional table."""

    def __init__(self, side: int = 8, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.side = side
        self.embed = nn.Linear(side, width)
        self.pos = nn.Parameter(torch.randn(side, width) * 0.1)
        layer = nn.TransformerEncoderLayer(width, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(x.shape[0], self.side, self.side)) + self.pos
        return self.head(self.encoder(h).mean(dim=1))


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase], side: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.side = side
        self.rnn = cell(side, 12, num_layers=2, batch_first=True)
        self.head = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(x.shape[0], self.side, self.side))
        return self.head(out[:, -1])


class Tokens(nn.Module):
    """An embedding over token ids (the pixel value bucketed), then a linear head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.embedding = nn.Embedding(17, 4)
        self.head = nn.Linear(64 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.reshape(x.shape[0], -1).clamp(0, 16).long()
        return self.head(self.embedding(ids).flatten(1))


def conv_net(classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Unflatten(1, (1, 64)),
        nn.Conv1d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.Unflatten(2, (8, 8)),
        nn.ConvTranspose2d(6, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 10 * 10, classes),
    )


def transformer(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return Encoder(input_shape[-1], classes=num_classes)


MODELS = {
    "transformer": lambda: Encoder(),
    "lstm": lambda: Recurrent(nn.LSTM),
    "gru": lambda: Recurrent(nn.GRU),
    "rnn": lambda: Recurrent(nn.RNN),
    "conv": conv_net,
}

EXPECTED_UNITS = {
    "transformer": [
        "embed",
        "encoder.layers.0.self_attn.in_proj_weight",
        "encoder.layers.0.self_attn.out_proj",
        "encoder.layers.0.linear1",
        "encoder.layers.0.linear2",
        "encoder.layers.1.self_attn.in_proj_weight",
        "encoder.layers.1.self_attn.out_proj",
        "encoder.layers.1.linear1",
        "encoder.layers.1.linear2",
        "head",
    ],
    "lstm": ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l1", "rnn.weight_hh_l1", "head"],
    "conv": ["2", "5", "8"],
}


@pytest.mark.parametrize("kind", sorted(EXPECTED_UNITS))
def test_every_weight_tensor_is_a_unit_by_its_path(kind: str) -> None:
    assert list(prunable_weights(MODELS[kind]())) == EXPECTED_UNITS[kind]


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("allocation", ["global", "uniform", "lamp", "erk"])
def test_each_layer_type_is_pruned_to_the_planned_count_exactly(kind: str, allocation: str) -> None:
    torch.manual_seed(0)
    model = MODELS[kind]()
    cfg = PruneConfig(allocation=allocation, density=0.3)
    weights = prunable_weights(model)
    masks = compute_masks(model, cfg)
    assert set(masks) == set(parameter_paths(model, weights).values())
    MaskSet(model, masks).apply_()
    kept = sum(int(torch.count_nonzero(w)) for w in weights.values())
    assert kept == round(0.3 * sum(w.numel() for w in weights.values()))
    total = sum(p.numel() for p in model.parameters())
    prunable = sum(w.numel() for w in weights.values())
    assert planned_params(MODELS[kind](), cfg) == total - prunable + kept


def test_per_layer_rates_reach_a_recurrent_and_an_attention_tensor() -> None:
    torch.manual_seed(0)
    model = Encoder()
    cfg = PruneConfig(sparsity={"encoder.layers.1.self_attn.in_proj_weight": 0.75, "encoder.layers.0.linear2": 0.5})
    MaskSet(model, compute_masks(model, cfg)).apply_()
    in_proj = model.encoder.layers[1].self_attn.in_proj_weight
    assert int((in_proj == 0).sum()) == round(0.75 * in_proj.numel())
    assert int((model.encoder.layers[0].linear2.weight == 0).sum()) == round(0.5 * 32 * 16)
    rnn = Recurrent(nn.GRU)
    MaskSet(rnn, compute_masks(rnn, PruneConfig(sparsity={"rnn.weight_hh_l1": 0.9}))).apply_()
    assert int((rnn.rnn.weight_hh_l1 == 0).sum()) == round(0.9 * rnn.rnn.weight_hh_l1.numel())
    assert int((rnn.rnn.weight_hh_l0 == 0).sum()) == 0


def test_the_fused_transformer_fast_path_computes_with_the_masked_weights() -> None:
    torch.manual_seed(0)
    model = Encoder().eval()
    MaskSet(model, compute_masks(model, PruneConfig(allocation="global", density=0.2))).apply_()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():  # eval + no_grad: nn.TransformerEncoder takes its fused kernel
        fast = model(x)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            slow = model(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_embeddings_are_pruned_only_when_asked() -> None:
    model = Tokens()
    assert list(prunable_weights(model)) == ["head"]
    assert list(prunable_weights(model, Selection(embeddings=True))) == ["embedding", "head"]
    cfg = PruneConfig(allocation="uniform", density=0.25, embeddings=True)
    MaskSet(model, compute_masks(model, cfg)).apply_()
    assert int(torch.count_nonzero(model.embedding.weight)) == round(0.25 * 17 * 4)
    with pytest.raises(ConfigError, match=r"prune\.embeddings: true"):
        prunable_weights(model, Selection(include=("embedding",)))


def test_include_and_exclude_globs_choose_the_tensors() -> None:
    model = Encoder()
    attention = prunable_weights(model, Selection(include=("*.self_attn.*",)))
    assert list(attention) == [n for n in EXPECTED_UNITS["transformer"] if ".self_attn." in n]
    no_head = prunable_weights(model, Selection(exclude=("head", "embed")))
    assert "head" not in no_head and "embed" not in no_head and len(no_head) == 8
    with pytest.raises(ConfigError, match=r"prune.exclude glob 'decoder\.\*' matches no prunable weight"):
        prunable_weights(model, Selection(exclude=("decoder.*",)))


def test_what_is_not_pruned_is_named_with_its_share() -> None:
    model = Encoder()
    weights = prunable_weights(model, Selection(exclude=("head",)))
    groups = not_pruned(model, weights)
    assert groups["pos"] == 8 * 16
    assert groups["head.weight"] == 16 * 10
    norms = sum(p.numel() for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())
    assert groups["normalization"] == norms
    total = sum(p.numel() for p in model.parameters())
    assert sum(groups.values()) + sum(w.numel() for w in weights.values()) == total
    line = not_pruned_line(groups, total)
    assert line.startswith("not pruned: ") and f"pos ({100 * 128 / total:.1f}%)" in line


@pytest.mark.parametrize("allocation", ["global", "lamp"])
def test_a_global_ranking_keeps_every_tensors_floor(allocation: str) -> None:
    torch.manual_seed(0)
    model = Encoder()
    with torch.no_grad():  # the feed-forward outputs are tiny: an unfloored global ranking would empty them
        for layer in model.encoder.layers:
            layer.linear2.weight.mul_(1e-4)
    weights = prunable_weights(model)
    density = 0.1
    unfloored = compute_masks(model, PruneConfig(allocation="global", density=density, floor=0.0))
    assert int(unfloored["encoder.layers.0.linear2.weight"].sum()) == 0  # the case the floor is for
    masks = compute_masks(model, PruneConfig(allocation=allocation, density=density))
    kept = round(density * sum(w.numel() for w in weights.values()))
    floors = floor_counts({n: w.numel() for n, w in weights.items()}, kept, 0.1)
    paths = parameter_paths(model, weights)
    for unit, floor in floors.items():
        assert int(masks[paths[unit]].sum()) >= floor >= 1
    assert sum(int(m.sum()) for m in masks.values()) == kept


def test_macs_count_attention_recurrent_and_conv_layers() -> None:
    side, width = 8, 16
    encoder = Encoder(side, width)
    macs = count_macs(encoder, prunable_weights(encoder), (1, side, side))
    assert macs.by_weight["encoder.layers.0.self_attn.in_proj_weight"] == side * 3 * width * width
    assert macs.by_weight["encoder.layers.1.linear2"] == side * 32 * width
    assert macs.by_weight["head"] == width * 10
    assert macs.other == 2 * 2 * side * side * width  # Q·Kᵀ and attention·V in each of the two layers
    lstm = Recurrent(nn.LSTM)
    macs = count_macs(lstm, prunable_weights(lstm), (1, 8, 8))
    assert macs.by_weight["rnn.weight_hh_l1"] == 8 * 4 * 12 * 12  # eight steps, four gates
    conv = conv_net()
    macs = count_macs(conv, prunable_weights(conv), (1, 8, 8))
    assert macs.by_weight["2"] == 64 * 6 * 5  # Conv1d: 64 output positions
    assert macs.by_weight["5"] == 64 * 6 * 4 * 9  # ConvTranspose2d: every input position
    half = {"2": 15, "5": 108, "8": 4000}
    assert macs.effective(half) == 64 * 15 + 64 * 108 + 4000


def test_a_transformer_trial_runs_prunes_and_names_what_stays_dense() -> None:
    cfg = TrialConfig.from_dict(
        {
            "dataset": {"name": "digits", "limit": 400},
            "model": {"name": "test_layer_types:transformer"},
            "budget": {"train_epochs": 1, "finetune_epochs": 1, "batch_size": 64},
            "prune": {"allocation": "global", "density": 0.2},
            "device": "cpu",
        }
    )
    lines: list[str] = []
    result = run_trial(cfg, log=lines.append)
    record = result.record()
    assert record["params_nonzero"] == record["params_planned"]
    assert set(record["layer_sparsity"]) == set(EXPECTED_UNITS["transformer"])
    assert all(s < 1.0 for s in record["layer_sparsity"].values())
    assert record["not_pruned"]["pos"] == 8 * 16
    assert any(line.startswith("not pruned: ") and "pos (" in line for line in lines)
    assert 0 < record["flops_effective"] < record["flops_dense"] and record["macs_other"] > 0
    assert record["start"] == "scratch"


def test_a_size_without_rates_or_allocation_is_refused_not_ignored() -> None:
    cfg = TrialConfig.from_dict({"dataset": {"name": "digits", "limit": 100}, "device": "cpu"})
    with pytest.raises(ConfigError, match="nothing would be pruned"):
        run_trial(cfg)


def test_a_space_names_its_globs_as_a_list_or_one_string_and_is_told_when_they_match_nothing() -> None:
    from autoprune.searching.space import parse_space

    def space(include: object) -> dict:
        prune = {"allocation": "global", "density": 0.1, "include": include}
        return {"dataset": {"name": "digits"}, "model": {"name": "lenet-300-100"}, "prune": prune}

    assert parse_space(space(["fc1", "fc3"])).layers == ("fc1", "fc3")
    assert parse_space(space("fc*")).layers == ("fc1", "fc2", "fc3")  # one glob, not its characters
    with pytest.raises(ConfigError, match=r"prune\.include must be a list of glob patterns"):
        parse_space(space(5))
    with pytest.raises(ConfigError, match=r"prune\.include glob 'encoder\.\*' matches no prunable weight"):
        parse_space(space("encoder.*"))


def test_a_model_the_mac_count_cannot_follow_still_prunes_and_the_log_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import autoprune.pipeline.trial as trial_module
    from autoprune.errors import ModelError

    def refuse(*_args: object) -> None:
        raise ModelError("cannot count the MACs of Net: an op without a formula")

    monkeypatch.setattr(trial_module, "count_macs", refuse)
    cfg = TrialConfig.from_dict(
        {
            "dataset": {"name": "digits", "limit": 200},
            "budget": {"train_epochs": 1, "finetune_epochs": 1},
            "prune": {"allocation": "global", "density": 0.3},
            "device": "cpu",
        }
    )
    lines: list[str] = []
    record = run_trial(cfg, log=lines.append).record()
    assert record["params_nonzero"] == record["params_planned"]
    assert record["flops_dense"] is None and record["flops_effective"] is None
    assert "MACs not counted: cannot count the MACs of Net: an op without a formula" in lines
