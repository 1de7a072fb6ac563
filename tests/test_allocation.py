"""Allocation of an overall density among layers: exact counts, LAMP and ERK by their definitions, shares."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from autoprune.config import PruneConfig
from autoprune.errors import ConfigError
from autoprune.io.models import build_model
from autoprune.pruning import (
    MaskSet,
    PruningSchedule,
    agp_events,
    capped_proportional,
    compute_masks,
    count_masks,
    count_params,
    global_counts,
    kept_count,
    kept_weights,
    lamp_scores,
    layer_counts,
    layer_scores,
    planned_params,
)
from autoprune.pruning.units import prunable_weights


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class ResNet(nn.Module):
    """A small residual net as a user writes one: nested blocks with dotted layer names, a skip connection."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.block = Block(8)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.stem(x))))


def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    built = {
        "lenet-300-100": build_model("lenet-300-100", (1, 12, 12), 10),
        "lenet-5": build_model("lenet-5", (1, 16, 16), 10),
        "bn-cnn": build_model("bn-cnn", (1, 8, 8), 10),
        "resnet": ResNet(),
    }
    with torch.no_grad():  # BatchNorm starts with zero biases; a trained one has none, and neither do these
        for m in built["bn-cnn"].modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(0.1, 0.5)
    return built


MODELS = models()
ALLOCS = ["uniform", "erk", "global", "lamp"]


def test_the_residual_net_has_dotted_layer_names() -> None:
    assert list(prunable_weights(MODELS["resnet"])) == ["stem", "block.conv1", "block.conv2", "head.2"]


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("allocation", ALLOCS)
@pytest.mark.parametrize("shares", [False, True])
@pytest.mark.parametrize("density", [0.0, 0.002, 0.05, 0.77, 1.0])
def test_every_allocation_keeps_exactly_the_requested_count(model_name, allocation, shares, density) -> None:
    model = MODELS[model_name]
    scores = layer_scores(model, "magnitude", None)
    total = sum(s.numel() for s in scores.values())
    kept = kept_count(density, total)
    share = {name: 0.3 + 1.7 * i for i, name in enumerate(scores)} if shares else None
    counts = layer_counts(allocation, scores, kept, shares=share)
    assert sum(counts.values()) == kept
    assert all(0 <= counts[n] <= s.numel() for n, s in scores.items())
    masks = count_masks(scores, counts)
    assert sum(int(m.sum()) for m in masks.values()) == kept
    for name, mask in masks.items():  # within a layer the kept entries are the highest-scoring ones
        if 0 < counts[name] < mask.numel():
            assert scores[name][mask == 1].min() >= scores[name][mask == 0].max()


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("allocation", ["per_layer", "global", "uniform", "lamp", "erk"])
def test_planned_params_equals_the_pruned_models_count(model_name, allocation) -> None:
    model = MODELS[model_name]
    layers = list(prunable_weights(model))
    rates = {layers[0]: 0.3, layers[-2]: 0.97} if allocation == "per_layer" else {}
    cfg = PruneConfig(allocation=allocation, density=0.07, sparsity=rates)
    masks = compute_masks(model, cfg)
    pruned = type(model)() if model_name == "resnet" else build_model(model_name, _shape(model_name), 10)
    pruned.load_state_dict(model.state_dict())
    MaskSet(pruned, masks).apply_()
    assert count_params(pruned)[0] == planned_params(model, cfg)
    assert planned_params(model, PruneConfig(enabled=False)) == count_params(model)[1]


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("allocation", ["global", "uniform", "lamp", "erk"])
def test_a_target_parameter_count_is_met_exactly(model_name, allocation) -> None:
    model = MODELS[model_name]
    total = count_params(model)[1]
    prunable = sum(w.numel() for w in prunable_weights(model).values())
    target = total - prunable + round(0.031 * prunable)
    shares = {next(iter(prunable_weights(model))): 2.5}
    cfg = PruneConfig(allocation=allocation, nonzero_params=target, shares=shares)
    assert planned_params(model, cfg) == target
    assert sum(int(m.sum()) for m in compute_masks(model, cfg).values()) == target - (total - prunable)
    with pytest.raises(ConfigError, match=rf"prune\.nonzero_params must lie in \[{total - prunable}, {total}\]"):
        planned_params(model, PruneConfig(allocation=allocation, nonzero_params=total - prunable - 1))


def _shape(name: str) -> tuple[int, int, int]:
    return {"lenet-300-100": (1, 12, 12), "lenet-5": (1, 16, 16)}.get(name, (1, 8, 8))


# ---------------------------------------------------------------------------------------------------------------
# LAMP and ERK against their definitions, by hand


def test_lamp_scores_by_hand() -> None:
    w = torch.tensor([0.1, -0.4, 0.2, 0.3])
    # sorted |w|: .1 .2 .3 .4; squares .01 .04 .09 .16; tail sums .30 .29 .25 .16
    expected = torch.tensor([0.01 / 0.30, 0.16 / 0.16, 0.04 / 0.29, 0.09 / 0.25])
    torch.testing.assert_close(lamp_scores(w), expected)
    torch.testing.assert_close(lamp_scores(w.view(2, 2)), expected.view(2, 2))
    assert torch.equal(lamp_scores(torch.zeros(3)), torch.zeros(3))


def test_lamp_ranks_across_layers_differently_from_global_magnitude() -> None:
    scores = {"a": torch.tensor([0.01, 0.02, 0.03, 0.04]), "b": torch.tensor([1.0, 1.0, 5.0, 10.0])}
    # LAMP: a -> 1/30, 4/29, 9/25, 1; b -> 1/127, 1/126, 25/125, 1. The three best: a4 (1), b4 (1), a3 (.36).
    assert layer_counts("lamp", scores, 3) == {"a": 2, "b": 1}
    lamp_masks = count_masks(scores, layer_counts("lamp", scores, 3))
    assert lamp_masks["a"].tolist() == [0, 0, 1, 1] and lamp_masks["b"].tolist() == [0, 0, 0, 1]
    # global magnitude empties the small layer; its tie (1.0, 1.0) goes to the lower position
    assert global_counts(scores, 3) == {"a": 0, "b": 3}
    assert count_masks(scores, global_counts(scores, 3))["b"].tolist() == [0, 1, 1, 1]


def test_erk_by_hand_with_a_layer_held_dense() -> None:
    shapes = {"a": (4, 2), "b": (10, 10), "c": (2, 1, 3, 3)}  # 8 + 100 + 18 = 126 weights
    # raw densities sum/prod: a 6/8, b 20/100, c 9/18; eps = 63 / (6 + 20 + 9) = 1.8 puts a at 1.35 > 1, so a is
    # held dense (8) and eps = 55 / (20 + 9) over the rest: b 0.2 * 55/29, c 0.5 * 55/29
    dens = {"a": 1.0, "b": 0.2 * 55 / 29, "c": 0.5 * 55 / 29}
    scores = {n: torch.rand(s) for n, s in shapes.items()}
    counts = layer_counts("erk", scores, 63)
    assert all(abs(counts[n] - dens[n] * scores[n].numel()) < 1 for n in shapes)  # rounded from those densities
    # b 37.93 and c 17.07 round to 38 + 17 with a's 8: 63 exactly
    assert counts == {"a": 8, "b": 38, "c": 17}


def test_erk_by_hand_without_saturation() -> None:
    shapes = {"fc1": (100, 50), "fc2": (10, 100)}
    # eps = 600 / (150 + 110): fc1 keeps 150 * eps = 346.15, fc2 110 * eps = 253.85
    dens = {"fc1": 0.03 * 600 / 260, "fc2": 0.11 * 600 / 260}
    scores = {n: torch.rand(s) for n, s in shapes.items()}
    counts = layer_counts("erk", scores, kept_count(0.1, 6000))
    assert all(abs(counts[n] - dens[n] * scores[n].numel()) < 1 for n in shapes)  # rounded from those densities
    assert counts == {"fc1": 346, "fc2": 254}


def test_shares_multiply_densities_and_renormalize() -> None:
    scores = {"a": torch.rand(100), "b": torch.rand(300)}
    # uniform with a share of 3 on a: a's density is three times b's, 100*3d + 300*d = 120 -> d = 0.2
    assert layer_counts("uniform", scores, 120, shares={"a": 3.0}) == {"a": 60, "b": 60}
    # a share that would overfill a layer holds it dense and gives the rest to the others
    assert layer_counts("uniform", scores, 200, shares={"a": 10.0}) == {"a": 100, "b": 100}
    base = layer_counts("global", scores, 150)
    shared = layer_counts("global", scores, 150, shares={"a": 2.0, "b": 2.0})
    assert shared == base  # equal shares change nothing
    with pytest.raises(ConfigError, match=r"prune.shares.a must be a positive number"):
        layer_counts("uniform", scores, 10, shares={"a": 0.0})
    with pytest.raises(ConfigError, match="unknown layer 'c'"):
        layer_counts("uniform", scores, 10, shares={"c": 1.0})


def test_capped_proportional_is_exact_for_awkward_inputs() -> None:
    caps = {"a": 3, "b": 7, "c": 1000}
    for total, w in itertools.product(range(0, 1011, 37), ([1.0, 1.0, 1.0], [1e-9, 5.0, 1e-3], [3.0, 3.0, 0.0])):
        weights = dict(zip(caps, w, strict=True))
        live = sum(c for n, c in caps.items() if weights[n] > 0)
        if total > live:
            with pytest.raises(ConfigError, match="cannot keep"):
                capped_proportional(weights, caps, total)
            continue
        counts = capped_proportional(weights, caps, total)
        assert sum(counts.values()) == total
        assert all(0 <= counts[n] <= caps[n] for n in caps)


def test_allocation_errors_are_config_errors() -> None:
    scores = {"a": torch.rand(10)}
    with pytest.raises(ConfigError, match=r"unknown prune\.allocation 'random'"):
        layer_counts("random", scores, 3)
    with pytest.raises(ConfigError, match="cannot keep 11 weights"):
        layer_counts("global", scores, 11)
    with pytest.raises(ConfigError, match=r"prune\.density must be a fraction"):
        kept_count(1.5, 10)


def test_agp_events_over_the_end_of_a_phase() -> None:
    events = agp_events(1000, 4, 0.5, 0.8)
    assert [s for s, _ in events] == [500, 600, 700, 800]
    fractions = [f for _, f in events]
    assert fractions == pytest.approx([1 - 0.75**3, 1 - 0.5**3, 1 - 0.25**3, 1.0])
    assert fractions[-1] == 1.0
    # the weights an overall density keeps ramp from all of them to the target, ending on it exactly
    model = build_model("lenet-300-100", (1, 28, 28), 10)
    cfg = PruneConfig(allocation="global", density=0.02, schedule="gradual")
    schedule = PruningSchedule(model, cfg, prunable_weights(model), finetunes=True)
    kept = [schedule.kept_at(f) for f in fractions]
    assert schedule.kept_at(0.0) == 266200 and all(a > b for a, b in itertools.pairwise(kept))
    assert kept[-1] == kept_weights(model, cfg) == kept_count(0.02, 266200)
    with pytest.raises(ConfigError, match="gradual_start"):
        agp_events(100, 3, 0.9, 0.5)
