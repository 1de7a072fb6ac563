"""The SGD loop shared by sparse training and masked finetuning, and evaluation.

The loop never synchronises with the device per step: losses accumulate on the device and are checked for
non-finite values every ``CHECK_EVERY`` steps; schedules are plain floats computed on the host; the penalty
gradient, clipping and masks are applied in place with foreach kernels.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.config import FinetuneConfig, SGDConfig, TrainConfig
from autoprune.errors import DivergedError
from autoprune.io.data import batch_indices
from autoprune.pipeline.sparsity import (
    add_group_lasso_grad_,
    add_l1_grad_,
    clip_weights_,
    distillation_loss,
    grad_clip_scale,
    lambda_at,
    lr_at,
    penalty_scratch,
    warmed_up_lr,
)
from autoprune.pruning.masks import MaskSet
from autoprune.pruning.units import prunable_weights

CHECK_EVERY = 32  # steps between non-finite checks (one host sync each)
_BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, x, y) -> loss


class SGD:
    """SGD with momentum (optionally Nesterov) and weight decay: the update of ``torch.optim.SGD``
    (dampening 0), written with foreach kernels so that extra work costs as few passes over memory as possible.

    ``step(lr, grad_scale)`` folds the gradient-norm clipping factor into the momentum update instead of
    rescaling every gradient first. ``groups`` pairs parameter lists with lr multipliers.
    """

    def __init__(
        self, groups: list[tuple[list[torch.Tensor], float]], *, momentum: float, nesterov: bool, weight_decay: float
    ) -> None:
        self.groups = [(params, mult) for params, mult in groups if params]
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.buffers = [[torch.zeros_like(p) for p in params] if momentum else [] for params, _ in self.groups]
        self._buffer_of = {
            id(p): b
            for (params, _), bufs in zip(self.groups, self.buffers, strict=True)
            for p, b in zip(params, bufs, strict=False)
        }

    def momentum_buffer(self, param: torch.Tensor) -> torch.Tensor | None:
        return self._buffer_of.get(id(param))

    def zero_grad(self) -> None:
        for params, _ in self.groups:
            for p in params:
                p.grad = None

    @torch.no_grad()
    def step(self, lr: float, grad_scale: float | torch.Tensor = 1.0) -> None:
        mu, wd = self.momentum, self.weight_decay
        for (params, mult), bufs in zip(self.groups, self.buffers, strict=True):
            pairs = [
                (p, p.grad, b) for p, b in zip(params, bufs or [None] * len(params), strict=True) if p.grad is not None
            ]
            if not pairs:
                continue
            ps, gs = [p for p, _, _ in pairs], [g for _, g, _ in pairs]
            step_lr, scale = lr * mult, grad_scale
            if isinstance(scale, torch.Tensor):  # a device tensor: scale in place rather than synchronise
                torch._foreach_mul_(gs, scale)
                scale = 1.0
            if not mu:  # w -= lr * (scale * g + wd * w)
                if wd:
                    torch._foreach_mul_(ps, 1.0 - step_lr * wd)
                torch._foreach_add_(ps, gs, alpha=-step_lr * scale)
                continue
            bs = [b for _, _, b in pairs]
            torch._foreach_mul_(bs, mu)
            torch._foreach_add_(bs, gs, alpha=scale)  # buf = mu * buf + scale * g (+ wd * w below)
            if wd:
                torch._foreach_add_(bs, ps, alpha=wd)
            if self.nesterov:  # w -= lr * (scale * g + wd * w + mu * buf)
                if wd:
                    torch._foreach_mul_(ps, 1.0 - step_lr * wd)
                torch._foreach_add_(ps, gs, alpha=-step_lr * scale)
                torch._foreach_add_(ps, bs, alpha=-step_lr * mu)
            else:
                torch._foreach_add_(ps, bs, alpha=-step_lr)


class Adam:
    """``torch.optim.AdamW`` (foreach kernels) behind the ``SGD`` class's interface: ``step(lr, grad_scale)`` and
    ``momentum_buffer`` (the first moment: masking it keeps a newly pruned weight at zero, since a masked weight's
    gradient is zero and its update is its first moment over the second's square root)."""

    def __init__(self, params: list[torch.Tensor], *, beta1: float, weight_decay: float) -> None:
        self.params = params
        self.opt = torch.optim.AdamW(params, lr=1.0, betas=(beta1, 0.999), weight_decay=weight_decay, foreach=True)

    def momentum_buffer(self, param: torch.Tensor) -> torch.Tensor | None:
        return self.opt.state.get(param, {}).get("exp_avg")

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, lr: float, grad_scale: float | torch.Tensor = 1.0) -> None:
        if isinstance(grad_scale, torch.Tensor) or grad_scale != 1.0:
            torch._foreach_mul_([p.grad for p in self.params if p.grad is not None], grad_scale)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()


def make_optimizer(model: nn.Module, phase: SGDConfig) -> SGD | Adam:
    """One parameter group per layer that has an lr multiplier; the rest share one group. Finetuning may use
    Adam (``finetune.optimizer``); sparse training is SGD."""
    if isinstance(phase, FinetuneConfig) and phase.optimizer == "adam":
        params = [p for p in model.parameters() if p.requires_grad]
        return Adam(params, beta1=phase.momentum, weight_decay=phase.weight_decay)
    groups: list[tuple[list[torch.Tensor], float]] = []
    taken: set[int] = set()
    modules = dict(model.named_modules())
    multipliers = phase.lr_multipliers if isinstance(phase, TrainConfig) else {}
    for layer, mult in multipliers.items():
        params = [p for p in modules[layer].parameters() if p.requires_grad]
        taken.update(id(p) for p in params)
        groups.append((params, mult))
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    groups.insert(0, (rest, 1.0))
    return SGD(groups, momentum=phase.momentum, nesterov=phase.nesterov, weight_decay=phase.weight_decay)


@dataclass(frozen=True)
class PhaseOptions:
    """How ``run_phase`` runs one phase, besides the phase's own configuration."""

    epochs: int
    batch_size: int
    generator: torch.Generator  # draws each epoch's batch order (a trial's two phases share one)
    amp: bool = False  # bf16 autocast, on CUDA only
    masks: MaskSet | None = None  # in force from the first step
    prune: Callable[[int], MaskSet | None] | None = None  # before step k: new, tighter masks at a pruning event
    lr_fn: Callable[[int], float] | None = None  # the lr at step k, instead of the phase's own schedule
    teacher: nn.Module | None = None  # what a finetune with distill_weight > 0 distils from
    on_epoch: Callable[[int, float], None] | None = None  # after each epoch: (epoch from 1, mean loss)
    prunable: Sequence[torch.Tensor] | None = None  # what the penalty and weight clipping act on (None: all)
    group_lasso: Callable[[float], None] | None = None  # adds the group lasso's gradient at λ (coupled groups)


def run_phase(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, phase: SGDConfig, options: PhaseOptions
) -> tuple[int, MaskSet | None]:
    """Run ``options.epochs`` epochs of the SGD phase ``phase`` on resident tensors ``x``/``y``.

    Either phase clips the global gradient norm when its ``grad_clip`` is set; a ``TrainConfig`` adds sparse
    training (penalty, weight clipping, per-layer lr), any other phase is plain SGD.
    ``options.lr_fn(step)`` replaces the phase's own lr schedule (learning-rate rewinding passes phase 1's tail);
    the phase's ``lr_warmup`` ramps either one up linearly over that fraction of the phase's steps. With a
    ``teacher`` and a ``FinetuneConfig`` whose ``distill_weight`` is above 0, the loss is the distillation loss
    against the teacher's logits, computed in eval mode without gradients for each batch.

    ``options.prune(step)`` returns new (tighter) masks at a gradual pruning event, else None. The masks in force
    are enforced on weights after every step, on gradients before it, and on momentum buffers whenever they
    change. ``on_epoch`` is called after each epoch (one host sync per epoch, only when given). ``prunable``
    defaults to every prunable weight (see ``pruning.units``); ``group_lasso(λ)`` replaces the group lasso's
    per-unit gradient (structured pruning passes its coupled groups': ``ChannelGraph.group_lasso``).
    Returns the number of steps taken and the final masks.
    """
    masks, on_epoch = options.masks, options.on_epoch
    if options.epochs == 0 or len(x) == 0:
        return 0, masks
    sparse = phase if isinstance(phase, TrainConfig) else None
    model.train()
    opt = make_optimizer(model, phase)
    weights = list(prunable_weights(model).values()) if options.prunable is None else list(options.prunable)
    params = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = -(-len(x) // options.batch_size)
    total = steps_per_epoch * options.epochs
    penalty = _penalty(sparse, weights, options.group_lasso) if sparse else None
    weight_clip = sparse.weight_clip if sparse else None
    autocast = _autocast(options.amp, x.device)
    lr_fn = _lr_schedule(phase, options.lr_fn, total, steps_per_epoch)
    loss_of = _loss(phase, options.teacher)
    loss_sum = torch.zeros((), device=x.device)
    epoch_loss = torch.zeros((), device=x.device) if on_epoch is not None else None
    if masks:
        masks.apply_()
    step = 0
    for epoch in range(options.epochs):
        for idx in batch_indices(len(x), options.batch_size, generator=options.generator, device=x.device):
            tighter = options.prune(step) if options.prune is not None else None
            if tighter is not None:
                masks = tighter
                masks.apply_()
                masks.mask_momentum_(opt)
            lr = lr_fn(step)
            opt.zero_grad()
            with autocast:
                loss = loss_of(model, x[idx], y[idx])
            loss.backward()
            if penalty is not None:
                penalty(step / total)
            if masks:  # masked gradients keep masked weights and their momentum exactly zero
                masks.mask_grads_()
            scale = grad_clip_scale(params, phase.grad_clip) if phase.grad_clip is not None else 1.0
            opt.step(lr, scale)
            if weight_clip is not None:
                clip_weights_(weights, weight_clip)
            step_loss = loss.detach().float()
            loss_sum += step_loss
            if epoch_loss is not None:
                epoch_loss += step_loss
            step += 1
            if step % CHECK_EVERY == 0 or step == total:
                _check_finite(loss_sum, phase.section, step)
                loss_sum.zero_()
        if on_epoch is not None and epoch_loss is not None:
            on_epoch(epoch + 1, float(epoch_loss) / steps_per_epoch)  # the one host sync per epoch
            epoch_loss.zero_()
    return step, masks


def _autocast(amp: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast with ``amp`` on CUDA; nothing elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _lr_schedule(
    phase: SGDConfig, lr_fn: Callable[[int], float] | None, total: int, steps_per_epoch: int
) -> Callable[[int], float]:
    """The lr at each step: ``lr_fn`` or the phase's own schedule, ramped up over the phase's ``lr_warmup``."""
    if lr_fn is None:
        lr_fn = functools.partial(
            lr_at,
            phase.lr_schedule,
            phase.lr,
            total_steps=total,
            steps_per_epoch=steps_per_epoch,
            step_epochs=phase.lr_step_epochs,
            gamma=phase.lr_gamma,
        )
    warmup_steps = round(phase.lr_warmup * total)
    if warmup_steps > 1:
        lr_fn = functools.partial(warmed_up_lr, lr_fn, warmup_steps)
    return lr_fn


def _loss(
    phase: SGDConfig, teacher: nn.Module | None
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of a batch: cross-entropy, or with a distilling finetune the distillation loss against ``teacher``."""
    distill = phase if isinstance(phase, FinetuneConfig) and phase.distill_weight > 0 else None
    if distill is None:
        return lambda model, xb, yb: F.cross_entropy(model(xb), yb)
    if teacher is None:
        raise ValueError("finetune.distill_weight > 0 needs a teacher model")
    teacher.eval()
    a, t = distill.distill_weight, distill.distill_temperature

    def distilled(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        logits = model(xb)
        with torch.inference_mode():
            soft = teacher(xb)
        return distillation_loss(logits, soft, yb, weight=a, temperature=t)

    return distilled


def _penalty(
    tc: TrainConfig, weights: list[torch.Tensor], group_lasso: Callable[[float], None] | None = None
) -> Callable[[float], None] | None:
    """Adds λ(progress) times the penalty's gradient to the weights' gradients in place; None for no penalty."""
    add_grad = {"l1": add_l1_grad_, "group_lasso": add_group_lasso_grad_}.get(tc.penalty)
    if add_grad is None:
        return None
    coupled = group_lasso if tc.penalty == "group_lasso" else None
    scratch = None if coupled else penalty_scratch(tc.penalty, weights)  # allocated once, reused by every step

    def apply(progress: float) -> None:
        lam = lambda_at(tc.lambda_schedule, tc.lambda_max, progress, warmup=tc.lambda_warmup, steps=tc.lambda_steps)
        if coupled is not None:
            coupled(lam)
        else:
            add_grad(weights, lam, scratch=scratch)

    return apply


def _check_finite(loss_sum: torch.Tensor, phase: str, step: int) -> None:
    if not bool(torch.isfinite(loss_sum)):  # the one host sync every CHECK_EVERY steps
        first = max(step - CHECK_EVERY + 1, 1)
        raise DivergedError(phase, step, f"the loss became NaN or infinite within steps {first}–{step}")


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 4096, amp: bool = False) -> float:
    """Top-1 accuracy in large batches, counted on the device, one host sync."""
    if len(x) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    with _autocast(amp, x.device):
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size])
            correct += (logits.argmax(dim=1) == y[start : start + batch_size]).sum()
    model.train(was_training)
    return correct.item() / len(x)


def batches_for_statistics(
    x: torch.Tensor, y: torch.Tensor, *, batch_size: int, count: int, generator: torch.Generator
) -> Sequence[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` shuffled batches: what gradient-based importance averages over."""
    idx = batch_indices(len(x), batch_size, generator=generator, device=x.device)[:count]
    return [(x[i], y[i]) for i in idx]
