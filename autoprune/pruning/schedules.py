"""Gradual pruning schedules (AGP, Zhu & Gupta 2017) as pure functions of step counts.

A gradual schedule is a list of pruning events ``(step, fraction)``: at optimizer step ``step`` of a phase the
model is pruned to ``fraction`` of the way to its final sparsity (per-layer rates scale by it; an overall density
``d`` becomes ``1 - fraction * (1 - d)``). The last event's fraction is exactly 1, so the final count is exact.
"""

from __future__ import annotations

from ..errors import ConfigError

__all__ = ["agp_events", "agp_fraction", "agp_sparsity", "density_at", "gradual_event_steps", "gradual_plan"]


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


def gradual_plan(final_rates: dict[str, float], n_steps: int) -> list[dict[str, float]]:
    """Per-layer rates at each of ``n_steps`` pruning events: AGP from 0, non-decreasing, the last equals final."""
    _check_steps(n_steps)
    return [{name: agp_sparsity(i, n_steps, rate) for name, rate in final_rates.items()} for i in range(1, n_steps + 1)]


def density_at(final_density: float, fraction: float) -> float:
    """The overall density when a ramp from dense to ``final_density`` is ``fraction`` of the way done."""
    return 1.0 - fraction * (1.0 - final_density)


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
