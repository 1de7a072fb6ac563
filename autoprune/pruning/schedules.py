"""Pruning schedules: AGP (Zhu & Gupta 2017) as pure functions of step counts, and ``PruningSchedule``, one
trial's pruning as state.

A gradual schedule is a list of pruning events ``(step, fraction)``: at optimizer step ``step`` of a phase the
model is pruned to ``fraction`` of the way to its final sparsity (per-layer rates scale by it; the prunable
weights kept go from all of them to the target count). The last event's fraction is exactly 1, so the final
count is exact.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

from torch import Tensor, nn

from autoprune.config import PruneConfig
from autoprune.errors import ConfigError
from autoprune.pruning.channels import ChannelGraph
from autoprune.pruning.criteria import gradient_statistics
from autoprune.pruning.masks import MaskSet, compute_masks, kept_weights

__all__ = ["PruningSchedule", "agp_events", "agp_fraction", "agp_sparsity", "gradual_event_steps"]


def agp_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0) -> float:
    """Automated gradual pruning: ``final + (initial - final) * (1 - t / T) ** 3`` with ``t`` clipped to [0, T]."""
    if total_steps < 0:
        raise ConfigError(f"gradual pruning needs total_steps >= 0, got {total_steps}")
    if total_steps == 0:
        return float(final)
    t = min(max(step, 0), total_steps)
    return float(final + (initial - final) * (1.0 - t / total_steps) ** 3)


def agp_fraction(event: int, n_events: int) -> float:
    """How far (0..1) event ``event`` of ``n_events`` (1-based) is along the cubic ramp: ``1 - (1 - k/n) ** 3``."""
    return agp_sparsity(event, n_events, 1.0)


def _check_steps(n_steps: object) -> int:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ConfigError(f"prune.gradual_steps must be an integer >= 1, got {n_steps!r}")
    return n_steps


def gradual_event_steps(total_steps: int, n_steps: int, end_fraction: float, start_fraction: float = 0.0) -> list[int]:
    """Optimizer steps (0-based, non-decreasing) of ``n_steps`` pruning events within a phase of ``total_steps``.

    The first event is at ``start_fraction`` and the last at ``end_fraction`` of the phase (never past its last
    step), evenly spaced in between.
    """
    _check_steps(n_steps)
    if not 0.0 < end_fraction <= 1.0:
        raise ConfigError(f"prune.gradual_end must be in (0, 1], got {end_fraction!r}")
    if not 0.0 <= start_fraction <= end_fraction:
        raise ConfigError(
            f"prune.gradual_start must be in [0, gradual_end], got {start_fraction!r} (gradual_end {end_fraction!r})"
        )
    last_step = max(total_steps - 1, 0)
    first = min(round(start_fraction * total_steps), last_step)
    last = min(round(end_fraction * total_steps), last_step)
    if n_steps == 1:
        return [last]
    return [first + round(i * (last - first) / (n_steps - 1)) for i in range(n_steps)]


def agp_events(total_steps: int, n_steps: int, start_fraction: float, end_fraction: float) -> list[tuple[int, float]]:
    """AGP over ``[start_fraction, end_fraction]`` of a phase: ``(step, fraction of the final sparsity)`` events.

    Zhu & Gupta's ramp ``s_t = s_f * (1 - (1 - t/n) ** 3)`` sampled at t = 1..n: the first event already prunes
    (the ramp's t = 0 point is the dense model) and the last reaches the final sparsity. Used for gradual pruning
    over the end of phase 1 as well as inside finetuning.
    """
    steps = gradual_event_steps(total_steps, n_steps, end_fraction, start_fraction)
    return [(step, agp_fraction(k, n_steps)) for k, step in enumerate(steps, start=1)]


class PruningSchedule:
    """One trial's pruning as state: when it prunes the model, how far, and the masks in force.

    Like Torch-Pruning's pruners it holds the model and prunes it in steps. ``kind`` says when: ``"one_shot"``
    (``prune_to(1.0)`` between the phases), ``"gradual"`` (AGP events during finetuning; one-shot when nothing
    finetunes), ``"gradual_train"`` (AGP events over the end of sparse training), or None (pruning is off).
    ``ramp(total_steps)`` plans the events of a phase of ``total_steps`` optimizer steps and returns ``step``,
    which the SGD loop calls before each step: at an event it prunes further and returns the new masks, which the
    loop applies.

    ``weights`` are the prunable weight tensors by unit name; ``batches(count=n)`` draws the ``n`` batches
    (``prune.grad_batches``) a gradient-based criterion averages over, anew at each pruning. With
    ``keep_teacher`` the schedule keeps a frozen copy of the model right before its first pruning, or before
    finetuning where that comes first (``teacher``): the model finetuning distils from.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: PruneConfig,
        weights: Mapping[str, Tensor],
        *,
        finetunes: bool,
        graph: ChannelGraph | None = None,
        batches: Callable[..., Sequence[tuple[Tensor, Tensor]]] | None = None,
        keep_teacher: bool = False,
    ) -> None:
        self.model, self.cfg, self.weights, self.graph, self.batches = model, cfg, weights, graph, batches
        kind = cfg.schedule if cfg.enabled else None
        self.kind = "one_shot" if kind == "gradual" and not finetunes else kind  # no finetuning to ramp in
        self.prunable = sum(w.numel() for w in weights.values())
        self.final_kept = kept_weights(model, cfg) if cfg.enabled and cfg.allocation != "per_layer" else 0
        self.masks: MaskSet | None = None  # the masks in force
        self.at_size = not cfg.enabled  # the final masks are in force (always when dense)
        self.teacher: nn.Module | None = None
        self._teacher_wanted = keep_teacher
        self._events: dict[int, float] = {}  # step -> fraction, of the phase being ramped

    def rates_at(self, fraction: float) -> dict[str, float]:
        """``prune.sparsity``'s rates (per layer, or per channel group) ``fraction`` of the way from dense."""
        return {name: rate * fraction for name, rate in self.cfg.sparsity.items()}

    def kept_at(self, fraction: float) -> int:
        """The prunable weights kept ``fraction`` of the way from all of them to the target (not ``per_layer``)."""
        return self.final_kept + round((1.0 - fraction) * (self.prunable - self.final_kept))

    def prune_to(self, fraction: float) -> MaskSet:
        """Masks ``fraction`` of the way (AGP) from dense to the target (1: the target exactly), in force from now;
        zeros of the masks in force stay zeros. The caller applies them."""
        self.keep_teacher()
        grads = None
        if self.cfg.criterion != "magnitude":
            if self.batches is None:
                raise ValueError(f"prune.criterion {self.cfg.criterion!r} needs batches for its gradient statistics")
            grads = gradient_statistics(self.model, self.batches(count=self.cfg.grad_batches), weights=self.weights)
        current = self.masks.masks if self.masks is not None else None
        self.at_size = fraction >= 1.0
        masks = compute_masks(
            self.model,
            self.cfg,
            rates=self.rates_at(fraction),
            kept=self.kept_at(fraction),
            grads=grads,
            current=current,
            graph=self.graph,
        )
        self.masks = MaskSet(self.model, masks)
        return self.masks

    def ramp(self, total_steps: int) -> Callable[[int], MaskSet | None]:
        """Plans AGP over ``[gradual_start, gradual_end]`` of a phase of ``total_steps`` steps; returns ``step``."""
        cfg = self.cfg
        # when two events share a step, the later (tighter) one wins
        self._events = dict(agp_events(total_steps, cfg.gradual_steps, cfg.gradual_start, cfg.gradual_end))
        return self.step

    def step(self, step: int) -> MaskSet | None:
        """Before optimizer step ``step`` of the ramped phase: the new masks at an event, else None."""
        fraction = self._events.pop(step, None)
        return None if fraction is None else self.prune_to(fraction)

    def keep_teacher(self) -> None:
        """Keeps a frozen copy of the model as it is now (``teacher``): the first time only, and only when the
        schedule was asked to."""
        if self._teacher_wanted:
            self._teacher_wanted = False
            frozen = copy.deepcopy(self.model).requires_grad_(False).eval()
            frozen.zero_grad(set_to_none=True)
            self.teacher = frozen
