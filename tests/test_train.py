from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from autoprune.config import FinetuneConfig, PruneConfig, SGDConfig, TrainConfig
from autoprune.errors import DivergedError
from autoprune.io.data import batch_indices
from autoprune.io.models import build_model
from autoprune.pipeline.sparsity import grad_clip_scale
from autoprune.pipeline.train import PhaseOptions, evaluate, make_optimizer, run_phase
from autoprune.pruning import MaskSet, compute_masks


def blobs(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    centers = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(99)) * 2
    return centers[y] + torch.randn(n, 1, 8, 8, generator=g), y


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("lenet-300-100", (1, 8, 8), 4)


def test_zeros_stay_zero_through_finetuning_in_weights_grads_and_momentum() -> None:
    x, y = blobs()
    model = tiny_model()
    plain = TrainConfig(penalty="none", lr_schedule="constant")
    run_phase(model, x, y, plain, PhaseOptions(epochs=1, batch_size=32, generator=torch.Generator().manual_seed(0)))
    masks = MaskSet(model, compute_masks(model, PruneConfig(sparsity={"fc1": 0.9, "fc2": 0.7, "fc3": 0.3})))
    # momentum that already holds values (as a reused optimizer would) must be cleared where pruned
    settings = TrainConfig(
        lr=0.05,
        momentum=0.9,
        weight_decay=1e-3,
        nesterov=True,
        penalty="l1",
        lambda_max=1e-3,
        grad_clip=1.0,
        weight_clip=0.5,
        lr_schedule="constant",
    )
    opt = make_optimizer(model, settings)
    F.cross_entropy(model(x[:32]), y[:32]).backward()
    opt.step(0.05)
    masks.apply_()
    masks.mask_momentum_(opt)
    for p, m in zip(masks.params, masks.values, strict=True):
        assert torch.all(opt.momentum_buffer(p)[m == 0] == 0)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    options = PhaseOptions(epochs=3, batch_size=32, generator=torch.Generator().manual_seed(1), masks=masks)
    steps, _ = run_phase(model, x, y, settings, options)
    assert steps == 3 * 8
    params = dict(model.named_parameters())
    for name, mask in masks.masks.items():
        w = params[name].detach()
        assert torch.all(w[mask == 0] == 0), name
        assert torch.count_nonzero(w[mask == 1]) == int(mask.sum())  # the kept weights are alive
        assert not torch.equal(w, before[name]), "finetuning changed the kept weights"


@pytest.mark.parametrize(
    ("momentum", "nesterov", "weight_decay", "clip"),
    [
        (0.0, False, 0.0, None),
        (0.0, False, 1e-2, 0.5),
        (0.9, False, 0.0, None),
        (0.9, False, 1e-2, 0.5),
        (0.9, True, 0.0, 0.5),
        (0.9, True, 1e-2, None),
    ],
)
def test_sgd_matches_torch_optim_sgd_with_clip_grad_norm(momentum, nesterov, weight_decay, clip) -> None:
    x, y = blobs(64)
    ours, ref = tiny_model(), tiny_model()
    s = SGDConfig(lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    opt = make_optimizer(ours, s)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    for i in range(5):
        for model in (ours, ref):
            model.zero_grad()
            F.cross_entropy(model(x[i * 8 : i * 8 + 8]), y[i * 8 : i * 8 + 8]).backward()
        scale = grad_clip_scale(list(ours.parameters()), clip) if clip else 1.0
        opt.step(0.1, scale)
        if clip:
            torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
        ref_opt.step()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def masked_finetune(start, masks, x, y, settings: FinetuneConfig) -> torch.nn.Module:
    """``run_phase`` finetuning of a copy of ``start`` under ``masks``: 2 epochs, batches of 16, batch seed 3."""
    model = copy.deepcopy(start)
    gen = torch.Generator().manual_seed(3)
    run_phase(model, x, y, settings, PhaseOptions(epochs=2, batch_size=16, generator=gen, masks=MaskSet(model, masks)))
    return model


def reference_finetune(start, masks, x, y, make_opt, clip: float) -> tuple[torch.nn.Module, list[float]]:
    """The same finetune written with ``torch.optim`` and ``clip_grad_norm_``; returns the model and the norms."""
    ref = copy.deepcopy(start)
    params = dict(ref.named_parameters())
    opt = make_opt(ref.parameters())
    gen, norms = torch.Generator().manual_seed(3), []
    with torch.no_grad():
        for name, m in masks.items():
            params[name].mul_(m)
    for _ in range(2):
        for idx in batch_indices(len(x), 16, generator=gen, device="cpu"):
            opt.zero_grad()
            F.cross_entropy(ref(x[idx]), y[idx]).backward()
            for name, m in masks.items():
                params[name].grad.mul_(m)
            norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)))
            opt.step()
    return ref, norms


def test_finetuning_clips_the_masked_gradient_norm_as_clip_grad_norm_does() -> None:
    x, y = blobs(128)
    start = tiny_model()
    masks = compute_masks(start, PruneConfig(sparsity={"fc1": 0.9, "fc2": 0.5}))

    def finetune(clip: float | None) -> torch.nn.Module:
        settings = FinetuneConfig(lr=0.1, momentum=0.9, lr_schedule="constant", grad_clip=clip)
        return masked_finetune(start, masks, x, y, settings)

    ref, norms = reference_finetune(start, masks, x, y, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), 0.05)
    assert min(norms) > 0.05, "the threshold binds at every step"
    clipped, unclipped = finetune(0.05), finetune(None)
    for (name, a), b in zip(clipped.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.allclose(clipped.fc1.weight, unclipped.fc1.weight, atol=1e-3)
    assert torch.all(clipped.fc1.weight[masks["fc1.weight"] == 0] == 0)


def test_masked_momentum_buffers_stay_zero_inside_the_phase() -> None:
    x, y = blobs()
    model = tiny_model()
    masks = MaskSet(model, compute_masks(model, PruneConfig(sparsity={"fc1": 0.8})))
    captured = {}

    def event(step: int) -> MaskSet | None:  # a gradual event at step 5 tightens fc2 too
        if step != 5:
            return None
        new = MaskSet(model, compute_masks(model, PruneConfig(sparsity={"fc1": 0.8, "fc2": 0.5}), current=masks.masks))
        captured["masks"] = new
        return new

    settings = FinetuneConfig(lr=0.05, momentum=0.9, lr_schedule="constant")
    gen = torch.Generator().manual_seed(0)
    options = PhaseOptions(epochs=2, batch_size=32, generator=gen, masks=masks, prune=event)
    _, final = run_phase(model, x, y, settings, options)
    assert final is captured["masks"]
    w = dict(model.named_parameters())
    assert float((w["fc2.weight"] == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    assert float((w["fc1.weight"] == 0).float().mean()) == pytest.approx(0.8, abs=1e-3)
    assert torch.all(w["fc1.weight"][masks.masks["fc1.weight"] == 0] == 0), "earlier zeros stay zero"


def test_training_learns_and_evaluate_counts_exactly() -> None:
    x, y = blobs(512)
    model = tiny_model()
    before = evaluate(model, x, y)
    settings = TrainConfig(lr=0.05, momentum=0.9, lr_schedule="cosine", penalty="none")
    run_phase(model, x, y, settings, PhaseOptions(epochs=3, batch_size=64, generator=torch.Generator().manual_seed(0)))
    after = evaluate(model, x, y, batch_size=100)  # a batch size that does not divide n
    assert after > max(before, 0.9)
    with torch.no_grad():
        expected = (model(x).argmax(1) == y).float().mean().item()
    assert after == pytest.approx(expected)


def test_l1_penalty_drives_weights_toward_zero() -> None:
    x, y = blobs()
    norms = {}
    for lam in (0.0, 3e-3):
        model = tiny_model()
        settings = TrainConfig(lr=0.05, momentum=0.9, lr_schedule="constant", penalty="l1", lambda_max=lam)
        run_phase(
            model, x, y, settings, PhaseOptions(epochs=3, batch_size=32, generator=torch.Generator().manual_seed(0))
        )
        norms[lam] = float(model.fc1.weight.detach().abs().sum())
    assert norms[3e-3] < 0.7 * norms[0.0]


def test_weight_clipping_bounds_every_weight() -> None:
    x, y = blobs()
    model = tiny_model()
    settings = TrainConfig(lr=0.5, momentum=0.9, lr_schedule="constant", penalty="none", weight_clip=0.05)
    run_phase(model, x, y, settings, PhaseOptions(epochs=1, batch_size=32, generator=torch.Generator().manual_seed(0)))
    for layer in (model.fc1, model.fc2, model.fc3):
        assert float(layer.weight.detach().abs().max()) <= 0.05 + 1e-7


def test_a_diverging_run_raises_with_phase_and_step() -> None:
    x, y = blobs()
    model = tiny_model()
    settings = TrainConfig(lr=1e6, momentum=0.9, lr_schedule="constant", penalty="none")
    with pytest.raises(DivergedError) as info:
        run_phase(
            model, x, y, settings, PhaseOptions(epochs=20, batch_size=32, generator=torch.Generator().manual_seed(0))
        )
    assert info.value.phase == "train"
    assert 0 < info.value.step <= 160
    assert "phase 'train' at step" in str(info.value)


def test_lr_multipliers_make_per_layer_groups() -> None:
    model = tiny_model()
    opt = make_optimizer(model, TrainConfig(lr=0.1, momentum=0.0, lr_multipliers={"fc1": 0.5}))
    assert sorted(mult for _, mult in opt.groups) == [0.5, 1.0]
    assert sum(len(params) for params, _ in opt.groups) == len(list(model.parameters()))
    before = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step(0.1)
    assert torch.allclose(before[0] - model.fc1.weight, torch.full_like(before[0], 0.05))
    assert torch.allclose(before[1] - model.fc2.weight, torch.full_like(before[1], 0.1))


def test_adam_finetuning_is_adamw_on_the_masked_gradients_clipped() -> None:
    x, y = blobs(128)
    start = tiny_model()
    masks = compute_masks(start, PruneConfig(sparsity={"fc1": 0.9, "fc2": 0.5}))

    def finetune(optimizer: str) -> torch.nn.Module:
        settings = FinetuneConfig(
            optimizer=optimizer, lr=0.01, momentum=0.8, weight_decay=0.1, lr_schedule="constant", grad_clip=0.05
        )
        return masked_finetune(start, masks, x, y, settings)

    def adamw(params):
        return torch.optim.AdamW(params, lr=0.01, betas=(0.8, 0.999), weight_decay=0.1)

    ref, norms = reference_finetune(start, masks, x, y, adamw, 0.05)
    assert sum(n > 0.05 for n in norms) >= 4, "the threshold binds at some steps"
    adam, sgd = finetune("adam"), finetune("sgd")
    for (name, a), b in zip(adam.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    for name, m in masks.items():
        assert torch.all(dict(adam.named_parameters())[name][m == 0] == 0), name
    assert not torch.allclose(adam.fc1.weight, sgd.fc1.weight, atol=1e-3)


def test_adam_keeps_weights_pruned_mid_phase_at_zero() -> None:
    """Gradual pruning during an Adam finetune: a weight pruned at a later step had a first moment, which must be
    cleared with it, or Adam keeps moving it after its gradient is masked."""
    x, y = blobs(128)
    model = tiny_model()
    loose = compute_masks(model, PruneConfig(sparsity={"fc1": 0.5}))
    tight = compute_masks(model, PruneConfig(sparsity={"fc1": 0.9}))
    settings = FinetuneConfig(optimizer="adam", lr=0.01, lr_schedule="constant")
    gen = torch.Generator().manual_seed(0)

    def event(step: int) -> MaskSet | None:  # a gradual pruning event at step 5
        return MaskSet(model, tight) if step == 5 else None

    options = PhaseOptions(epochs=2, batch_size=16, generator=gen, masks=MaskSet(model, loose), prune=event)
    run_phase(model, x, y, settings, options)
    w, late = model.fc1.weight.detach(), (loose["fc1.weight"] == 1) & (tight["fc1.weight"] == 0)
    assert int(late.sum()) > 0
    assert torch.all(w[tight["fc1.weight"] == 0] == 0)
    assert torch.count_nonzero(w[tight["fc1.weight"] == 1]) == int(tight["fc1.weight"].sum())
