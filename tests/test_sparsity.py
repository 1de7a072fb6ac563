from __future__ import annotations

import math

import pytest
import torch

from autoprune.pipeline.sparsity import (
    add_group_lasso_grad_,
    add_l1_grad_,
    clip_weights_,
    distillation_loss,
    grad_clip_scale,
    lambda_at,
    lr_at,
    rewound_lr_at,
)


@pytest.mark.parametrize("schedule", ["constant", "linear", "step", "cosine"])
def test_lambda_schedules_reach_lambda_max_and_never_exceed_it(schedule: str) -> None:
    values = [lambda_at(schedule, 1e-3, t / 100) for t in range(101)]
    assert values[-1] == pytest.approx(1e-3)
    assert all(0.0 <= v <= 1e-3 + 1e-15 for v in values)
    if schedule != "constant":
        assert values == sorted(values), "ramps are non-decreasing"
        assert values[0] < 1e-3


def test_lambda_schedule_shapes() -> None:
    assert lambda_at("linear", 2.0, 0.25) == pytest.approx(0.5)
    assert lambda_at("cosine", 2.0, 0.5) == pytest.approx(1.0)
    # step: three stages, small early and larger later
    assert [lambda_at("step", 3.0, t, steps=3) for t in (0.0, 0.2, 0.4, 0.7, 1.0)] == pytest.approx(
        [1.0, 1.0, 2.0, 3.0, 3.0]
    )


def test_lambda_warmup_keeps_lambda_zero_then_rescales_progress() -> None:
    assert lambda_at("constant", 1.0, 0.19, warmup=0.2) == 0.0
    assert lambda_at("constant", 1.0, 0.2, warmup=0.2) == 1.0
    assert lambda_at("linear", 1.0, 0.6, warmup=0.2) == pytest.approx(0.5)


def test_lr_schedules() -> None:
    kw = {"steps_per_epoch": 10, "step_epochs": 2, "gamma": 0.5}
    assert lr_at("constant", 0.1, 57, 100, **kw) == 0.1
    assert [lr_at("step", 0.1, s, 100, **kw) for s in (0, 19, 20, 40, 99)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.025, 0.1 * 0.5**4]
    )
    assert lr_at("cosine", 0.1, 0, 100, **kw) == pytest.approx(0.1)
    assert lr_at("cosine", 0.1, 50, 100, **kw) == pytest.approx(0.05)
    assert lr_at("cosine", 0.1, 100, 100, **kw) == pytest.approx(0.0, abs=1e-12)
    # restarts: cycles of 20, 40, 80 steps, each starting at the base lr
    restarts = [lr_at("cosine_restarts", 0.1, s, 200, **kw) for s in (0, 10, 20, 40, 60)]
    assert restarts == pytest.approx([0.1, 0.05, 0.1, 0.05, 0.1])
    with pytest.raises(ValueError):
        lr_at("linear", 0.1, 0, 10, steps_per_epoch=1)


def _l1(weights: list[torch.Tensor]) -> torch.Tensor:
    return sum(w.abs().sum() for w in weights)


def _group_lasso(weights: list[torch.Tensor]) -> torch.Tensor:  # Σ over output units of ‖w_unit‖₂
    return sum(w.flatten(1).norm(dim=1).sum() for w in weights)


@pytest.mark.parametrize(
    ("penalty", "add_grad_", "lam"),
    [(_l1, add_l1_grad_, 0.3), (_group_lasso, add_group_lasso_grad_, 2.0)],
)
def test_in_place_penalty_gradient_equals_autograd_of_the_penalty(penalty, add_grad_, lam: float) -> None:
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(5, 7, generator=g), torch.randn(3, 2, 3, 3, generator=g)]
    ws = [w.clone().requires_grad_(True) for w in weights]
    penalty(ws).backward()
    params = [w.clone().requires_grad_(True) for w in weights]
    for p in params:
        p.grad = torch.zeros_like(p)
    add_grad_(params, lam)
    for p, w in zip(params, ws, strict=True):
        torch.testing.assert_close(p.grad, lam * w.grad)


def test_l1_gradient_is_zero_at_zero_weights() -> None:
    p = torch.tensor([0.0, -2.0, 3.0], requires_grad=True)
    p.grad = torch.ones(3)
    add_l1_grad_([p], 0.5)
    assert p.grad.tolist() == [1.0, 0.5, 1.5]


def test_group_lasso_leaves_a_zero_unit_alone() -> None:
    w = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    w.grad = torch.zeros_like(w)
    add_group_lasso_grad_([w], 1.0)
    assert w.grad.tolist() == [[0.0, 0.0], pytest.approx([0.6, 0.8])]


def test_weight_clipping_clamps_in_place() -> None:
    w = torch.tensor([-3.0, -0.5, 0.2, 9.0])
    clip_weights_([w], 1.0)
    assert w.tolist() == pytest.approx([-1.0, -0.5, 0.2, 1.0])


def test_grad_norm_clipping_scales_to_threshold_globally() -> None:
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])  # global norm 5
    scale = grad_clip_scale([a, b], 1.0)
    a.grad.mul_(scale)
    b.grad.mul_(scale)
    total = math.sqrt(float(a.grad.pow(2).sum() + b.grad.pow(2).sum()))
    assert total == pytest.approx(1.0, rel=1e-5)
    assert a.grad[0] / b.grad[0] == pytest.approx(0.75)


def test_distillation_loss_is_hintons_mix_of_cross_entropy_and_tempered_kl() -> None:
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    t, a = 3.0, 0.7
    p_t, p_s = torch.softmax(teacher / t, 1), torch.softmax(student / t, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    ce = -torch.log_softmax(student, 1)[torch.arange(6), y].mean()
    loss = distillation_loss(student, teacher, y, weight=a, temperature=t)
    torch.testing.assert_close(loss, (1 - a) * ce + a * t * t * kl)
    torch.testing.assert_close(distillation_loss(student, teacher, y, weight=0.0, temperature=t), ce)


def test_pure_distillation_gradient_is_t_times_the_softmax_difference() -> None:
    g = torch.Generator().manual_seed(1)
    student = torch.randn(5, 3, generator=g).requires_grad_(True)
    teacher = torch.randn(5, 3, generator=g).requires_grad_(True)
    t = 4.0
    distillation_loss(student, teacher, torch.zeros(5, dtype=torch.long), weight=1.0, temperature=t).backward()
    # d/ds [T^2 KL(softmax(t/T) || softmax(s/T))] = T * (softmax(s/T) - softmax(t/T)), averaged over the batch
    expected = t * (torch.softmax(student.detach() / t, 1) - torch.softmax(teacher.detach() / t, 1)) / 5
    torch.testing.assert_close(student.grad, expected)
    assert teacher.grad is None  # the teacher is not trained through the loss


@pytest.mark.parametrize("schedule", ["cosine", "step", "cosine_restarts"])
def test_rewound_lr_replays_the_tail_of_phase_one(schedule: str) -> None:
    spe, T, F = 7, 10, 4
    kw = {"steps_per_epoch": spe, "step_epochs": 2, "gamma": 0.5}
    phase1 = [lr_at(schedule, 0.1, s, T * spe, **kw) for s in range(T * spe)]
    rewound = [rewound_lr_at(schedule, 0.1, s, train_epochs=T, finetune_epochs=F, **kw) for s in range(F * spe)]
    assert rewound == phase1[(T - F) * spe :]
    if schedule == "cosine":  # rewinding to epoch 6 of 10: the replay starts at (1 + cos(0.6 pi)) / 2 of the lr
        assert rewound[0] == pytest.approx(0.1 * (1 + math.cos(0.6 * math.pi)) / 2)


def test_rewinding_further_than_phase_one_holds_its_initial_lr_first() -> None:
    spe, T, F = 5, 2, 3
    kw = {"steps_per_epoch": spe, "step_epochs": 1, "gamma": 0.5}
    phase1 = [lr_at("cosine", 0.2, s, T * spe, **kw) for s in range(T * spe)]
    rewound = [rewound_lr_at("cosine", 0.2, s, train_epochs=T, finetune_epochs=F, **kw) for s in range(F * spe)]
    assert rewound == [0.2] * spe + phase1
