"""Baseline seeding: known-good configurations put into a study before any sampled trial.

A search begins with the baselines a user would try by hand: each allocation the space declares (global magnitude
first) at a ladder of overall densities spanning the declared ``prune.density`` range, every other searched leaf
at its default. They are enqueued into the Optuna study (``study.enqueue_trial``) marked with the user attribute
``baseline``, so the first ``ask()`` calls (Ray Tune's ``OptunaSearch`` asks once per trial) run them, the sampler
learns from their results, and the front can never be worse than the best of them. They count toward the trials
requested, and a study is seeded once: a resume runs the baselines still waiting, never the finished ones again.

The space file chooses the ladder under ``search.baselines``:

- omitted or ``true``: ``DEFAULT_RUNGS`` densities for every declared allocation but ``per_layer``;
- ``false`` or ``0``: no baselines;
- a number N: N densities per allocation; a list: those densities, for every allocation;
- a mapping ``{densities: N | [d, ...], allocations: [global, ...]}``: both chosen.

A number of densities N with A allocations interleaves them: A·N densities log-spaced over the ``prune.density``
range, the first allocation at the 1st, (A+1)-th, ... of them, the second at the 2nd, (A+2)-th, .... Each allocation
still gets N sizes spread over the range, and the ladder covers the parameter axis at A·N sizes instead of N: the
allocations differ little at one size, while a front with three times as many strong points leaves refinement and
the sampler narrower gaps. N = 1 puts every allocation at the range's geometric middle.

Optuna only: nothing here imports Ray or torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import STRUCTURED_ALLOCATIONS
from .errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from .space import Dim, SearchSpace

__all__ = ["DEFAULT_RUNGS", "STUDY_ATTR", "TRIAL_ATTR", "Baseline", "ladder", "seed_baselines"]

DEFAULT_RUNGS = 4
TRIAL_ATTR = "baseline"  # trial user attribute: the baseline's label, e.g. "global@0.01"
STUDY_ATTR = "baselines"  # study user attribute: the labels enqueued when the study was seeded


@dataclass(frozen=True)
class Baseline:
    """One baseline configuration: a value for every searched dimension of the space."""

    label: str  # allocation@density, e.g. "global@0.0123"
    params: dict[str, Any]


def _dims(space: SearchSpace) -> dict[str, Dim]:
    return {d.path: d for d in space.dims}


def _spec(raw: Any) -> tuple[Any, Any]:
    """(densities, allocations) from the ``search.baselines`` value; None means the default."""
    where = "search.baselines"
    if raw is None or raw is True:
        return DEFAULT_RUNGS, None
    if raw is False:
        return 0, None
    if isinstance(raw, (int, float, list)) and not isinstance(raw, bool):
        return raw, None
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - {"densities", "allocations"})
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: densities, allocations")
        return raw.get("densities", DEFAULT_RUNGS), raw.get("allocations")
    raise ConfigError(
        f"{where} must be true, false, a number of densities, a list of densities or a mapping "
        f"{{densities, allocations}}, got {raw!r}"
    )


def _densities(spec: Any, dim: Dim | None, allocations: int) -> list[list[float | None]]:
    """The densities of each of ``allocations`` allocations (interleaved for a number of them, see above)."""
    where = "search.baselines.densities"
    counted = not isinstance(spec, list)
    if counted and (isinstance(spec, bool) or not isinstance(spec, int) or spec < 0):
        raise ConfigError(f"{where} must be a list of densities or a number of them >= 0, got {spec!r}")
    if spec == 0 or spec == []:
        return [[]] * allocations
    if dim is None:  # the density is not searched: the baselines differ by allocation only
        return [[None]] * allocations
    low, high = float(dim.low), float(dim.high)  # type: ignore[arg-type]
    if not counted:
        for d in spec:
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not low <= d <= high:
                raise ConfigError(f"{where}: {d!r} is not a density within prune.density's range [{low}, {high}]")
        return [[float(d) for d in spec]] * allocations
    if spec == 1:
        return [[math.sqrt(low * high)]] * allocations
    n = spec * allocations
    sizes = [low * (high / low) ** (i / (n - 1)) for i in range(n)]
    return [sizes[a::allocations] for a in range(allocations)]


def _allocations(spec: Any, space: SearchSpace, dim: Dim | None) -> list[str]:
    prune = space.base.get("prune", {})
    declared = list(dim.choices) if dim is not None and dim.choices else [prune.get("allocation", "per_layer")]
    usable = [a for a in declared if a != "per_layer"]
    if prune.get("structured"):
        usable = [a for a in usable if a in STRUCTURED_ALLOCATIONS]
    if spec is None:
        return sorted(usable, key=lambda a: a != "global")  # global magnitude first
    if not isinstance(spec, list) or not spec:
        raise ConfigError(f"search.baselines.allocations must be a non-empty list, got {spec!r}")
    for a in spec:
        if a not in usable:
            raise ConfigError(
                f"search.baselines.allocations: {a!r} is not an allocation this space searches by density; "
                f"choose from {', '.join(usable) or '(none: search prune.allocation and prune.density)'}"
            )
    return list(spec)


def ladder(space: SearchSpace) -> list[Baseline]:
    """The baselines of ``space`` in the order they run: every density of one allocation, global first."""
    dims = _dims(space)
    raw_densities, raw_allocations = _spec(space.baselines)
    if dims.get("prune.density") is None and "prune.allocation" not in dims:
        return []
    allocations = _allocations(raw_allocations, space, dims.get("prune.allocation"))
    densities = _densities(raw_densities, dims.get("prune.density"), len(allocations))
    defaults = {path: dim.midpoint() for path, dim in dims.items()}
    criterion = dims.get("prune.criterion")
    if criterion is not None and criterion.choices and "magnitude" in criterion.choices:
        defaults["prune.criterion"] = "magnitude"
    out = []
    for allocation, sizes in zip(allocations, densities, strict=True):
        for density in sizes:
            params = dict(defaults)
            if "prune.allocation" in dims:
                params["prune.allocation"] = allocation
            if density is not None:
                params["prune.density"] = density
            label = allocation if density is None else f"{allocation}@{density:.4g}"
            out.append(Baseline(label=label, params=params))
    return out


def seed_baselines(study: optuna.Study, space: SearchSpace, limit: int) -> list[str]:
    """Enqueue the first ``limit`` baselines of ``space`` into a new ``study``; the labels enqueued.

    A study is seeded once (it remembers the labels as a study attribute): seeding it again enqueues nothing.
    """
    if STUDY_ATTR in study.user_attrs:
        return []
    chosen = ladder(space)[: max(limit, 0)]
    for baseline in chosen:
        study.enqueue_trial(baseline.params, user_attrs={TRIAL_ATTR: baseline.label})
    study.set_user_attr(STUDY_ATTR, [b.label for b in chosen])
    return [b.label for b in chosen]
