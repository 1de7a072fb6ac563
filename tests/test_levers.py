"""The levers of the pipeline at high sparsity: distillation, lr rewinding, gradual pruning in phase 1, clipping."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.config import (
    BudgetConfig,
    DatasetConfig,
    FinetuneConfig,
    ModelConfig,
    PruneConfig,
    TrainConfig,
    TrialConfig,
)
from autoprune.errors import ConfigError
from autoprune.pipeline import train, trial
from autoprune.pipeline.trial import run_trial
from autoprune.report.notes import finetune_setbacks


def cfg(**sections) -> TrialConfig:
    base = {
        "dataset": DatasetConfig(name="synthetic"),
        "model": ModelConfig(name="lenet-300-100"),
        "budget": BudgetConfig(train_epochs=3, finetune_epochs=2, batch_size=128),
        "prune": PruneConfig(allocation="global", density=0.1),
        "device": "cpu",
    }
    base.update(sections)
    return TrialConfig(**base)


@pytest.fixture
def lrs(monkeypatch) -> list[float]:
    """The lr of every optimizer step, in order (the step itself runs unchanged)."""
    seen: list[float] = []
    for optimizer in (train.SGD, train.Adam):

        def recording(self, lr, grad_scale=1.0, step=optimizer.step):
            seen.append(lr)
            return step(self, lr, grad_scale)

        monkeypatch.setattr(optimizer, "step", recording)
    return seen


@pytest.fixture
def phases(monkeypatch) -> list[dict]:
    """What the pipeline hands ``run_phase`` for each phase: its config, masks and teacher (copied), and the steps
    at which it pruned (``events``)."""
    seen: list[dict] = []
    run_phase = trial.run_phase

    def recording(model, x, y, phase, options):
        teacher, events, prune = options.teacher, [], options.prune

        def watched(step: int):
            masks = prune(step)
            if masks is not None:
                events.append(step)
            return masks

        seen.append(
            {
                "phase": phase,
                "events": events,
                "masks": None if options.masks is None else dict(options.masks.masks),
                "teacher": None if teacher is None else copy.deepcopy(teacher.state_dict()),
                "teacher_training": None if teacher is None else teacher.training,
            }
        )
        return run_phase(model, x, y, phase, dataclasses.replace(options, prune=watched if prune else None))

    monkeypatch.setattr(trial, "run_phase", recording)
    return seen


def test_lr_rewinding_replays_the_tail_of_phase_one(lrs) -> None:
    rewound = cfg(finetune=FinetuneConfig(lr=0.001, lr_rewind=True))
    run_trial(rewound)
    spe = len(lrs) // 5  # 3 + 2 epochs
    phase1, finetune = lrs[: 3 * spe], lrs[3 * spe :]
    assert finetune == phase1[spe:]  # rewound to epoch T - F = 1 of phase 1's cosine
    assert finetune[0] > 0.02  # phase 1's lr of 0.05, not the finetune's 0.001
    lrs.clear()
    run_trial(dataclasses.replace(rewound, finetune=FinetuneConfig(lr=0.001)))
    assert lrs[3 * spe] == 0.001 and max(lrs[3 * spe :]) == 0.001


def test_lr_rewinding_under_adam_replays_phase_ones_schedule_at_the_finetune_lr(lrs, monkeypatch) -> None:
    steppers: list[str] = []
    make = train.make_optimizer

    def making(model, phase):
        opt = make(model, phase)
        steppers.append(type(opt).__name__)
        return opt

    monkeypatch.setattr(train, "make_optimizer", making)
    run_trial(cfg(finetune=FinetuneConfig(optimizer="adam", lr=0.002, lr_rewind=True)))
    spe = len(lrs) // 5  # 3 + 2 epochs
    phase1, finetune = lrs[: 3 * spe], lrs[3 * spe :]
    assert steppers == ["SGD", "Adam"]  # sparse training stays SGD
    assert max(phase1) == 0.05 and finetune[0] < 0.002  # rewound to epoch 1 of the cosine: past its peak
    assert finetune == pytest.approx([lr * 0.002 / 0.05 for lr in phase1[spe:]])


def test_lr_warmup_ramps_the_phases_schedule_up_linearly(lrs) -> None:
    warm = cfg(finetune=FinetuneConfig(lr=0.04, lr_schedule="constant", lr_warmup=0.5))
    run_trial(warm)
    spe = len(lrs) // 5  # 3 + 2 epochs
    phase1, finetune = lrs[: 3 * spe], lrs[3 * spe :]
    ramp = round(0.5 * len(finetune))
    assert finetune == pytest.approx([0.04 * min(1.0, (k + 1) / ramp) for k in range(len(finetune))])
    assert finetune[0] < 0.04 / (ramp - 1) and finetune[ramp - 1 :] == [0.04] * (len(finetune) - ramp + 1)
    lrs.clear()
    run_trial(dataclasses.replace(warm, finetune=FinetuneConfig(lr=0.04, lr_schedule="constant")))
    assert lrs[: 3 * spe] == phase1  # phase 1 has no warm-up of its own
    assert lrs[3 * spe :] == [0.04] * len(finetune)
    lrs.clear()
    run_trial(cfg(finetune=FinetuneConfig(lr_rewind=True, lr_warmup=0.25)))  # the ramp scales the rewound lr too
    ramp = round(0.25 * 2 * spe)
    assert lrs[3 * spe :] == pytest.approx([lr * min(1.0, (k + 1) / ramp) for k, lr in enumerate(phase1[spe:])])
    lrs.clear()
    run_trial(cfg(train=TrainConfig(lr=0.05, lr_warmup=0.1)))  # and phase 1's own schedule
    ramp = round(0.1 * 3 * spe)
    assert lrs[0] == pytest.approx(phase1[0] / ramp) and lrs[ramp : 3 * spe] == phase1[ramp:]


def test_pure_distillation_steps_along_the_distillation_gradient() -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    teacher = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).requires_grad_(False)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    t, lr = 3.0, 0.5

    def expected_step(loss_of_logits) -> list[torch.Tensor]:
        ref = copy.deepcopy(student)
        loss = loss_of_logits(ref(x))
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        return [p.detach() - lr * g for p, g in zip(ref.parameters(), grads, strict=True)]

    def kd(logits):  # T^2 * KL(softmax(teacher / T) || softmax(student / T)), by hand
        p_t = torch.softmax(teacher(x) / t, 1)
        return t * t * (p_t * (p_t.log() - torch.log_softmax(logits / t, 1))).sum(1).mean()

    def run(weight: float) -> list[torch.Tensor]:
        model = copy.deepcopy(student)
        phase = FinetuneConfig(
            lr=lr, momentum=0.0, lr_schedule="constant", distill_weight=weight, distill_temperature=t
        )
        gen = torch.Generator().manual_seed(0)
        train.run_phase(model, x, y, phase, train.PhaseOptions(epochs=1, batch_size=32, generator=gen, teacher=teacher))
        return [p.detach() for p in model.parameters()]

    for got, want in zip(run(1.0), expected_step(kd), strict=True):
        torch.testing.assert_close(got, want)
    for got, want in zip(run(0.0), expected_step(lambda logits: F.cross_entropy(logits, y)), strict=True):
        torch.testing.assert_close(got, want)
    half = expected_step(lambda logits: 0.5 * F.cross_entropy(logits, y) + 0.5 * kd(logits))
    for got, want in zip(run(0.5), half, strict=True):
        torch.testing.assert_close(got, want)


def test_the_teacher_is_the_trials_own_model_right_before_pruning(phases) -> None:
    distilled = cfg(finetune=FinetuneConfig(distill_weight=0.7, distill_temperature=2.0))
    result = run_trial(distilled)
    finetune = phases[-1]
    assert isinstance(finetune["phase"], FinetuneConfig) and finetune["teacher_training"] is False
    # the same seed without pruning or finetuning stops right after phase 1: that model is the teacher
    trained = run_trial(
        cfg(prune=PruneConfig(enabled=False), budget=dataclasses.replace(distilled.budget, finetune_epochs=0))
    ).model
    for key, value in trained.state_dict().items():
        assert torch.equal(finetune["teacher"][key], value)
    assert (finetune["teacher"]["fc1.weight"] != 0).all()  # dense: taken before the masks
    plain = run_trial(dataclasses.replace(distilled, finetune=FinetuneConfig()))
    assert phases[-1]["teacher"] is None
    assert not torch.equal(plain.model.fc1.weight, result.model.fc1.weight)
    assert result.params_nonzero == plain.params_nonzero == result.params_planned


def test_gradual_pruning_over_the_end_of_phase_one(phases) -> None:
    prune = PruneConfig(
        allocation="erk", density=0.05, schedule="gradual_train", gradual_start=0.5, gradual_end=0.75, gradual_steps=3
    )
    result = run_trial(cfg(prune=prune, budget=BudgetConfig(train_epochs=4, finetune_epochs=1, batch_size=128)))
    first, finetune = phases
    assert first["events"] == [18, 22, 27]  # 0.5, 0.625 and 0.75 of phase 1's 4 * 9 steps (1080 samples / 128)
    assert finetune["events"] == []
    kept = sum(int(m.sum()) for m in finetune["masks"].values())  # at the target before finetuning starts
    assert kept == round(0.05 * (64 * 300 + 300 * 100 + 100 * 4))
    assert result.params_nonzero == result.params_planned
    assert result.val_accuracy_pruned == result.val_accuracy_trained


def test_a_finetune_that_collapses_is_reported_and_gradient_clipping_holds_it() -> None:
    """Finetuning at a far too high lr wrecks a mildly pruned model; clipping the gradient norm keeps it."""
    pruned = PruneConfig(allocation="global", density=0.3)
    wild = run_trial(cfg(prune=pruned, finetune=FinetuneConfig(lr=5.0)))
    held = run_trial(cfg(prune=pruned, finetune=FinetuneConfig(lr=5.0, grad_clip=1.0)))
    assert wild.val_accuracy_pruned == held.val_accuracy_pruned > 0.8  # the same model before finetuning
    assert wild.val_accuracy < wild.val_accuracy_pruned - 0.3
    assert held.val_accuracy > held.val_accuracy_pruned - 0.02
    records = [{"trial": 0, **wild.record()}, {"trial": 1, **held.record()}]
    note = finetune_setbacks(records)
    assert note is not None and "in 1 of 2 trials" in note and "worst: trial 0" in note
    assert f"{wild.val_accuracy:.4f} after finetuning at lr 5" in note and "set finetune.grad_clip" in note
    assert finetune_setbacks(records[1:]) is None


def test_levers_that_reuse_phase_one_need_it() -> None:
    off = BudgetConfig(train_epochs=0, finetune_epochs=1)
    with pytest.raises(ConfigError, match=r"finetune\.lr_rewind works within phase 1's schedule"):
        run_trial(cfg(budget=off, finetune=FinetuneConfig(lr_rewind=True)))
    with pytest.raises(ConfigError, match=r"prune\.schedule gradual_train works within phase 1's schedule"):
        ramp = PruneConfig(schedule="gradual_train", allocation="global", density=0.5)
        run_trial(cfg(train=TrainConfig(enabled=False), prune=ramp))


@pytest.mark.parametrize("schedule", ["gradual", "gradual_train"])
def test_structured_uniform_density_keeps_the_planned_count(schedule: str) -> None:
    c = cfg(
        model=ModelConfig(name="bn-cnn"),
        budget=BudgetConfig(train_epochs=2, finetune_epochs=1, batch_size=128),
        prune=PruneConfig(structured=True, allocation="uniform", density=0.3, schedule=schedule, gradual_steps=3),
    )
    result = run_trial(c)
    assert result.params_nonzero == result.params_planned < 0.45 * result.params_total
    assert result.masks == {}  # physically smaller
