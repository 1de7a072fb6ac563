from __future__ import annotations

import copy
import itertools
from collections import OrderedDict

import pytest
import torch
from torch import nn

from autoprune.config import PruneConfig
from autoprune.errors import AutoPruneError, ConfigError, ModelError
from autoprune.io.models import build_model
from autoprune.pruning import (
    CRITERIA,
    MaskSet,
    PruningSchedule,
    agp_events,
    agp_fraction,
    agp_sparsity,
    compute_masks,
    count_masks,
    count_params,
    global_counts,
    gradient_importance,
    gradient_statistics,
    gradual_event_steps,
    kept_weights,
    layer_counts,
    layer_scores,
    layer_sparsity,
    magnitude_importance,
    per_layer_masks,
    taylor_importance,
)
from autoprune.pruning.units import prunable_weights


def zeros_at(mask: torch.Tensor) -> set[int]:
    return set(torch.nonzero(mask.reshape(-1) == 0).reshape(-1).tolist())


# ---------------------------------------------------------------------------------------------------------------
# criteria


def test_magnitude_removes_smallest_absolute_values():
    w = torch.tensor([[0.5, -0.1], [-2.0, 0.05]])
    score = magnitude_importance(w)
    assert torch.equal(score, w.abs())
    masks = per_layer_masks({"l": score}, {"l": 0.5})
    assert zeros_at(masks["l"]) == {1, 3}


def test_gradient_and_taylor_rank_differently_from_magnitude():
    w = torch.tensor([1.0, 0.1, -2.0, 0.5])
    g = torch.tensor([0.01, 3.0, 0.2, 0.3])
    grad_mask = per_layer_masks({"l": gradient_importance(w, g)}, {"l": 0.5})["l"]
    taylor = taylor_importance(w, g)
    assert torch.allclose(taylor, torch.tensor([0.01, 0.3, 0.4, 0.15]))
    taylor_mask = per_layer_masks({"l": taylor}, {"l": 0.5})["l"]
    magnitude_mask = per_layer_masks({"l": magnitude_importance(w)}, {"l": 0.5})["l"]
    assert zeros_at(grad_mask) == {0, 2}
    assert zeros_at(taylor_mask) == {0, 3}
    assert zeros_at(magnitude_mask) == {1, 3}


@pytest.mark.parametrize("name", ["gradient", "taylor"])
def test_gradient_criteria_need_gradient_statistics(name):
    with pytest.raises(AutoPruneError, match="gradient statistics"):
        CRITERIA[name](torch.ones(3), None)
    with pytest.raises(ModelError, match="shape"):
        CRITERIA[name](torch.ones(3), torch.ones(4))


def test_layer_scores_names_layer_when_grads_missing():
    model = build_model("lenet-300-100", (1, 4, 4), 3)
    scores = layer_scores(model, "magnitude", None)
    assert list(scores) == ["fc1", "fc2", "fc3"]
    assert torch.equal(scores["fc2"], model.fc2.weight.detach().abs())
    with pytest.raises(AutoPruneError, match=r"'fc3'.*gradient statistics"):
        layer_scores(model, "taylor", {"fc1": torch.ones(300, 16), "fc2": torch.ones(100, 300)})
    with pytest.raises(ConfigError, match="unknown pruning criterion"):
        layer_scores(model, "random", None)


# ---------------------------------------------------------------------------------------------------------------
# gradient statistics


def test_gradient_statistics_matches_hand_computed_softmax_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc=nn.Linear(5, 3)))
    model.train()
    before = copy.deepcopy(model.state_dict())
    batches = [(torch.randn(4, 5), torch.tensor([0, 2, 1, 2])), (torch.randn(6, 5), torch.tensor([1, 1, 0, 2, 0, 1]))]

    stats = gradient_statistics(model, batches)

    # d/dW of mean cross-entropy for a linear layer: (softmax(xW^T + b) - onehot)^T x / batch_size
    expected = torch.zeros(3, 5)
    w, b = before["fc.weight"], before["fc.bias"]
    for x, y in batches:
        p = torch.softmax(x @ w.T + b, dim=1)
        grad = (p - torch.eye(3)[y]).T @ x / len(y)
        expected += grad.abs()
    expected /= len(batches)
    assert list(stats) == ["fc"]
    assert torch.allclose(stats["fc"], expected, atol=1e-6)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_gradient_statistics_leaves_batchnorm_stats_and_mode_alone():
    torch.manual_seed(0)
    model = build_model("bn-cnn", (1, 8, 8), 10)
    model.eval()
    before = copy.deepcopy(model.state_dict())
    batches = [(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))]
    stats = gradient_statistics(model, batches, weights=["conv2", "fc2"])
    assert list(stats) == ["conv2", "fc2"]
    assert stats["conv2"].shape == model.conv2.weight.shape
    assert (stats["fc2"] > 0).any()
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    with pytest.raises(ModelError, match="no prunable weight named 'fc9'"):
        gradient_statistics(model, batches, weights=["fc9"])


# ---------------------------------------------------------------------------------------------------------------
# allocation


def test_per_layer_exact_zero_counts_and_absent_layers_untouched():
    torch.manual_seed(0)
    scores = {"a": torch.rand(10, 7), "b": torch.rand(33), "c": torch.rand(4, 4)}
    masks = per_layer_masks(scores, {"a": 0.3, "b": 0.5})
    assert int((masks["a"] == 0).sum()) == round(0.3 * 70)
    assert int((masks["b"] == 0).sum()) == round(0.5 * 33)
    assert int((masks["c"] == 0).sum()) == 0
    # the removed entries are exactly the lowest scores
    kept_min = scores["a"][masks["a"] == 1].min()
    removed_max = scores["a"][masks["a"] == 0].max()
    assert removed_max < kept_min
    with pytest.raises(ConfigError, match="unknown layer 'd'"):
        per_layer_masks(scores, {"d": 0.5})
    with pytest.raises(ConfigError, match="fraction"):
        per_layer_masks(scores, {"a": 1.5})


def test_ties_are_broken_deterministically_with_exact_count():
    scores = {"l": torch.zeros(10)}
    first = per_layer_masks(scores, {"l": 0.35})["l"]
    assert int((first == 0).sum()) == round(3.5)
    assert torch.equal(first, per_layer_masks(scores, {"l": 0.35})["l"])


def test_global_ranking_takes_more_from_the_layer_with_smaller_scores():
    torch.manual_seed(0)
    scores = {"small": torch.rand(200) * 0.5, "large": torch.rand(300) * 0.5 + 0.25}
    counts = global_counts(scores, 300)
    masks = count_masks(scores, counts)
    zeros = {name: int((m == 0).sum()) for name, m in masks.items()}
    assert sum(zeros.values()) == 200
    assert zeros["small"] > zeros["large"]
    threshold = torch.cat([s[m == 1] for s, m in zip(scores.values(), masks.values(), strict=True)]).min()
    removed = torch.cat([s[m == 0] for s, m in zip(scores.values(), masks.values(), strict=True)])
    assert (removed <= threshold).all()


def test_uniform_every_layer_at_the_same_density():
    torch.manual_seed(0)
    scores = {"a": torch.rand(50), "b": torch.rand(8, 3, 3, 3)}
    masks = count_masks(scores, layer_counts("uniform", scores, round(0.4 * 266)))
    assert int((masks["a"] == 0).sum()) == 30
    assert int((masks["b"] == 0).sum()) == round(0.6 * 216)


@pytest.mark.parametrize("alloc", ["per_layer", "global", "uniform", "lamp", "erk"])
def test_masks_are_monotone_with_current(alloc):
    torch.manual_seed(0)
    scores = {"a": torch.rand(40), "b": torch.rand(60)}

    def masks_at(rate, current):
        if alloc == "per_layer":
            return per_layer_masks(scores, {"a": rate, "b": rate}, current)
        counts = layer_counts(alloc, scores, round((1 - rate) * 100), current=current)
        return count_masks(scores, counts, current)

    # an arbitrary current mask that disagrees with the scores: it must still be kept pruned
    current = {"a": (torch.arange(40) % 4 != 0).float(), "b": (torch.arange(60) % 5 != 0).float()}
    raised = masks_at(0.5, current)
    for name in scores:
        assert bool(((current[name] == 0) <= (raised[name] == 0)).all())
    assert sum(int((m == 0).sum()) for m in raised.values()) == 50


# ---------------------------------------------------------------------------------------------------------------
# gradual schedule


def test_agp_endpoints_shape_and_monotone():
    assert agp_sparsity(0, 10, 0.9) == 0.0
    assert agp_sparsity(10, 10, 0.9) == 0.9
    assert agp_sparsity(-3, 10, 0.9) == 0.0
    assert agp_sparsity(25, 10, 0.9) == 0.9
    assert agp_sparsity(5, 10, 0.8) == pytest.approx(0.8 * (1 - 0.5**3))
    assert agp_sparsity(5, 10, 0.8, initial=0.2) == pytest.approx(0.8 - 0.6 * 0.125)
    values = [agp_sparsity(t, 20, 0.95) for t in range(21)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    # cubic: the first half of the steps prunes most of the way
    assert values[10] > 0.95 * 0.8


def test_gradual_rates_end_at_final_and_are_monotone():
    final = {"fc1": 0.9, "fc2": 0.5, "fc3": 0.0}
    model = build_model("lenet-300-100", (1, 4, 4), 3)
    schedule = PruningSchedule(model, PruneConfig(sparsity=final), prunable_weights(model), finetunes=True)
    plan = [schedule.rates_at(fraction) for _, fraction in agp_events(100, 6, 0.0, 1.0)]
    assert len(plan) == 6
    assert plan[-1] == final
    assert plan[0]["fc1"] > 0
    for name in final:
        seq = [p[name] for p in plan]
        assert all(a <= b for a, b in itertools.pairwise(seq))
    with pytest.raises(ConfigError):
        agp_events(100, 0, 0.0, 1.0)


def test_a_schedule_prunes_at_the_events_of_its_ramp_only():
    torch.manual_seed(0)
    model = build_model("lenet-300-100", (1, 4, 4), 3)
    weights = prunable_weights(model)
    cfg = PruneConfig(
        allocation="global", density=0.2, schedule="gradual", gradual_steps=3, gradual_start=0.5, gradual_end=0.8
    )
    schedule = PruningSchedule(model, cfg, weights, finetunes=True)
    assert schedule.kind == "gradual" and schedule.masks is None and not schedule.at_size
    step = schedule.ramp(100)
    fired = [k for k in range(100) if step(k) is not None]
    assert fired == [s for s, _ in agp_events(100, 3, 0.5, 0.8)] == [50, 65, 80]
    assert schedule.at_size and schedule.masks is not None
    assert sum(int(m.sum()) for m in schedule.masks.masks.values()) == kept_weights(model, cfg)
    assert PruningSchedule(model, cfg, weights, finetunes=False).kind == "one_shot"  # no finetuning to ramp in
    dense = PruningSchedule(model, PruneConfig(enabled=False), weights, finetunes=True)
    assert dense.kind is None and dense.at_size


def test_gradual_event_steps():
    steps = gradual_event_steps(100, 5, 0.8)
    assert steps == [0, 20, 40, 60, 80]
    assert gradual_event_steps(10, 3, 1.0) == [0, 4, 9]
    assert gradual_event_steps(50, 1, 0.5) == [25]


def test_gradual_pruning_keeps_pruned_weights_pruned():
    torch.manual_seed(0)
    model = build_model("lenet-300-100", (1, 4, 4), 3)
    cfg = PruneConfig(sparsity={"fc1": 0.8, "fc2": 0.6}, schedule="gradual", gradual_steps=4)
    schedule = PruningSchedule(model, cfg, prunable_weights(model), finetunes=True)
    current = None
    previous_zeros = 0
    for k in range(1, 5):
        assert not schedule.at_size
        masks = schedule.prune_to(agp_fraction(k, 4))  # compute_masks with the masks in force as ``current``
        with torch.no_grad():  # weights move between events, as during masked finetuning
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        masks.apply_()
        if current is not None:
            for name, mask in current.items():
                assert bool(((mask == 0) <= (masks.masks[name] == 0)).all())
        zeros = sum(int((m == 0).sum()) for m in masks.masks.values())
        assert zeros >= previous_zeros
        previous_zeros, current = zeros, masks.masks
    assert schedule.at_size
    assert layer_sparsity(model) == {"fc1": pytest.approx(0.8), "fc2": pytest.approx(0.6), "fc3": 0.0}


# ---------------------------------------------------------------------------------------------------------------
# compute_masks / MaskSet / counting


@pytest.mark.parametrize("criterion", ["magnitude", "gradient", "taylor"])
@pytest.mark.parametrize("allocation", ["per_layer", "global", "uniform", "lamp", "erk"])
def test_compute_masks_parameter_names_and_counts(criterion, allocation):
    torch.manual_seed(0)
    model = build_model("lenet-300-100", (1, 4, 4), 3)
    rates = {"fc1": 0.7, "fc2": 0.4} if allocation == "per_layer" else {}
    cfg = PruneConfig(criterion=criterion, allocation=allocation, sparsity=rates, density=0.5)
    grads = None
    if criterion != "magnitude":
        grads = gradient_statistics(model, [(torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,)))])
    masks = compute_masks(model, cfg, grads=grads)
    assert list(masks) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    for name, mask in masks.items():
        param = dict(model.named_parameters())[name]
        assert mask.shape == param.shape and mask.dtype == param.dtype and mask.device == param.device
    zeros = {name: int((m == 0).sum()) for name, m in masks.items()}
    if allocation == "per_layer":
        assert zeros == {"fc1.weight": round(0.7 * 4800), "fc2.weight": round(0.4 * 30000), "fc3.weight": 0}
    elif allocation == "uniform":
        assert zeros == {"fc1.weight": 2400, "fc2.weight": 15000, "fc3.weight": 150}
    else:
        assert sum(zeros.values()) == round(0.5 * (4800 + 30000 + 300))


def test_compute_masks_gradient_criterion_without_grads_fails():
    model = build_model("lenet-300-100", (1, 4, 4), 3)
    with pytest.raises(AutoPruneError, match="gradient statistics"):
        compute_masks(model, PruneConfig(criterion="gradient", sparsity={"fc1": 0.5}))


def test_mask_set_layer_sparsity_and_count_params():
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 3), bn=nn.BatchNorm1d(3), fc2=nn.Linear(3, 2)))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    mask1 = torch.ones(3, 4)
    mask1[0, :3] = 0  # 3 of 12
    mask2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 4 of 6
    bn_mask = torch.tensor([1.0, 0.0, 1.0])
    MaskSet(model, {"fc1.weight": mask1, "fc2.weight": mask2, "bn.bias": bn_mask}).apply_()
    assert layer_sparsity(model) == {"fc1": 0.25, "fc2": pytest.approx(4 / 6)}
    total = 12 + 3 + 3 + 3 + 6 + 2
    assert count_params(model) == (total - 3 - 4 - 1, total)
    with pytest.raises(ModelError, match="unknown parameter"):
        MaskSet(model, {"fc9.weight": mask1})
    with pytest.raises(ModelError, match="shape"):
        MaskSet(model, {"fc1.weight": mask2})
