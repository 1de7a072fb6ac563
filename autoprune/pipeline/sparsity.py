"""Regularizers, schedules, clipping and the distillation loss for sparse training and finetuning, as small pure
functions.

The penalty λ·R(w) enters training through its (sub)gradient, added to ``w.grad`` in place after the loss's
backward pass. That is exact for SGD (the update sees ∇L + λ∇R, as it would through autograd) and avoids
building an autograd graph over every weight, which costs about a quarter of a LeNet-300-100 step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------- schedules


def lambda_at(schedule: str, lambda_max: float, progress: float, *, warmup: float = 0.0, steps: int = 3) -> float:
    """λ at ``progress`` ∈ [0, 1] of sparse training.

    λ is 0 during the first ``warmup`` fraction; then over the remaining fraction u ∈ [0, 1]:
    ``constant`` λ_max; ``linear`` λ_max·u; ``step`` λ_max·k/steps in stage k = 1..steps (small early, larger
    later); ``cosine`` λ_max·(1 − cos πu)/2. The ramps reach λ_max at the end of training.
    """
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return 0.0
    u = (progress - warmup) / (1.0 - warmup) if warmup < 1.0 else 1.0
    if schedule == "constant":
        return lambda_max
    if schedule == "linear":
        return lambda_max * u
    if schedule == "step":
        return lambda_max * min(math.floor(u * steps) + 1, steps) / steps
    if schedule == "cosine":
        return lambda_max * (1.0 - math.cos(math.pi * u)) / 2.0
    raise ValueError(f"unknown lambda schedule {schedule!r}")


def lr_at(
    schedule: str,
    base_lr: float,
    step: int,
    total_steps: int,
    *,
    steps_per_epoch: int,
    step_epochs: int = 3,
    gamma: float = 0.1,
) -> float:
    """Learning rate at optimizer step ``step`` (0-based) of ``total_steps``.

    ``constant``; ``step`` multiplies by ``gamma`` every ``step_epochs`` epochs; ``cosine`` anneals from
    ``base_lr`` to 0 over the phase; ``cosine_restarts`` (SGDR) anneals over cycles of ``step_epochs`` epochs,
    each cycle twice as long as the one before.
    """
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        return base_lr * gamma ** (step // max(steps_per_epoch * step_epochs, 1))
    if schedule == "cosine":
        t = step / max(total_steps, 1)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    if schedule == "cosine_restarts":
        cycle = max(steps_per_epoch * step_epochs, 1)
        pos = step
        while pos >= cycle:
            pos -= cycle
            cycle *= 2
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * pos / cycle))
    raise ValueError(f"unknown lr schedule {schedule!r}")


def warmed_up_lr(lr_fn: Callable[[int], float], warmup_steps: int, step: int) -> float:
    """``lr_fn(step)`` times a linear warm-up: 1/``warmup_steps`` at step 0, rising to 1 at step ``warmup_steps`` - 1
    and staying there. The warm-up scales whatever schedule ``lr_fn`` is (the phase's own, or rewound)."""
    return lr_fn(step) * min(1.0, (step + 1) / max(warmup_steps, 1))


def rewound_lr_at(
    schedule: str,
    base_lr: float,
    step: int,
    *,
    steps_per_epoch: int,
    train_epochs: int,
    finetune_epochs: int,
    step_epochs: int = 3,
    gamma: float = 0.1,
) -> float:
    """Learning-rate rewinding (Renda et al. 2020): the finetune replays phase 1's lr schedule from a rewind point.

    Phase 1 ran ``T = train_epochs`` epochs under ``schedule``/``base_lr``; a finetune of ``F = finetune_epochs``
    epochs rewinds to epoch ``T - F`` of it, so finetune step ``s`` takes phase 1's lr at step
    ``(T - F) * steps_per_epoch + s``: the finetune's lr sequence is exactly the last ``F`` epochs of phase 1's.
    When ``F > T`` the rewind point is the start of phase 1 and the first ``F - T`` epochs hold phase 1's initial
    lr before the replay (the steps before phase 1's start clamp to its step 0).
    """
    total = train_epochs * steps_per_epoch
    offset = (train_epochs - finetune_epochs) * steps_per_epoch
    at = max(step + offset, 0)
    return lr_at(schedule, base_lr, at, total, steps_per_epoch=steps_per_epoch, step_epochs=step_epochs, gamma=gamma)


# ------------------------------------------------------------------------------------------------- distillation


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    weight: float,
    temperature: float,
) -> torch.Tensor:
    """Hinton et al.'s knowledge distillation: ``(1 - a) * CE(s, y) + a * T**2 * KL(softmax(t/T) || softmax(s/T))``.

    ``a = weight``, ``T = temperature``; the KL divergence is averaged over the batch (``batchmean``), and the
    ``T**2`` keeps its gradient on the scale of the cross-entropy's as ``T`` grows. The teacher's logits carry no
    gradient. ``weight = 0`` is plain cross-entropy.
    """
    ce = F.cross_entropy(student_logits, targets)
    if weight == 0.0:
        return ce
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits.float() / t, dim=1),
        F.log_softmax(teacher_logits.detach().float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - weight) * ce + (weight * t * t) * kl


# ------------------------------------------------------------------------------------------------- regularizers


@torch.no_grad()
def add_l1_grad_(weights: Sequence[torch.Tensor], lam: float, scratch: list[torch.Tensor] | None = None) -> None:
    """``w.grad += λ·sign(w)``: the subgradient of λ·Σ|w| (0 at w = 0), in place, with no autograd graph.

    ``scratch`` (tensors shaped like ``weights``, from ``penalty_scratch``) holds the signs, so that a training
    step allocates nothing; without it they are allocated per call.
    """
    if lam == 0.0 or not weights:
        return
    grads = [w.grad for w in weights]
    scratch = penalty_scratch("l1", weights) if scratch is None else scratch
    torch._foreach_copy_(scratch, list(weights))
    torch._foreach_sign_(scratch)
    torch._foreach_add_(grads, scratch, alpha=lam)


@torch.no_grad()
def add_group_lasso_grad_(
    weights: Sequence[torch.Tensor], lam: float, eps: float = 1e-12, scratch: list[torch.Tensor] | None = None
) -> None:
    """``w.grad += λ·w_g/‖w_g‖`` for every output unit g (0 for an all-zero unit), in place.

    ``scratch`` (from ``penalty_scratch``) holds each weight's row norms and quotient between steps, so that a step
    allocates nothing.
    """
    if lam == 0.0:
        return
    scratch = penalty_scratch("group_lasso", weights) if scratch is None else scratch
    for i, w in enumerate(weights):
        rows = w.view(w.shape[0], -1) if w.is_contiguous() else w.reshape(w.shape[0], -1)
        shape = (-1, *([1] * (w.dim() - 1)))
        norms, quotient = scratch[2 * i], scratch[2 * i + 1]
        torch.linalg.vector_norm(rows, dim=1, out=norms)
        norms.clamp_min_(eps)
        torch.div(w, norms.view(shape), out=quotient)
        w.grad.add_(quotient, alpha=lam)


def penalty_scratch(penalty: str, weights: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    """Buffers a penalty's gradient reuses at every step (see ``add_l1_grad_``/``add_group_lasso_grad_``)."""
    if penalty == "l1":
        return [torch.empty_like(w) for w in weights]
    if penalty == "group_lasso":
        out: list[torch.Tensor] = []
        for w in weights:
            out += [w.new_empty(w.shape[0]), torch.empty_like(w)]
        return out
    return None


# ---------------------------------------------------------------------------------------------------- clipping


@torch.no_grad()
def clip_weights_(weights: Sequence[torch.Tensor], threshold: float) -> None:
    """Clamp every weight to [−threshold, threshold] in place (one pass per tensor)."""
    for w in weights:
        w.clamp_(-threshold, threshold)


@torch.no_grad()
def grad_clip_scale(params: Sequence[torch.Tensor], threshold: float) -> float | torch.Tensor:
    """The factor min(1, threshold / ‖g‖₂) that clips the global gradient norm, as
    ``torch.nn.utils.clip_grad_norm_`` computes it.

    On the CPU it is returned as a float (reading a CPU tensor costs nothing), so the optimizer can fold it into
    its update; on a GPU it stays a device tensor, so that clipping never waits for the device.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 1.0
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    scale = torch.clamp(threshold / (total + 1e-6), max=1.0)
    return float(scale) if scale.device.type == "cpu" else scale
