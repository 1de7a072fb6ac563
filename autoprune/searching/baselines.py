"""Baseline seeding: known-good configurations put into a study before any sampled trial.

A search begins with the baselines a user would try by hand: each allocation the space declares (global magnitude
first) at a ladder of overall densities spanning the declared ``prune.density`` range, every other searched leaf
at its default. They are enqueued into the Optuna study (``study.enqueue_trial``) marked with the user attribute
``baseline``, so the first ``ask()`` calls (the search's searcher asks once per trial) run them, the sampler
learns from their results, and the front can never be worse than the best of them. They count toward the trials
requested, and a study is seeded once: a resume runs the baselines still waiting, never the finished ones again.

The space file chooses the ladder under ``search.baselines``:

- omitted or ``true``: ``DEFAULT_RUNGS`` densities for every declared allocation but ``per_layer``;
- ``false`` or ``0``: no baselines;
- a number N: N densities per allocation; a list: those densities, for every allocation;
- a mapping ``{densities: N | [d, ...], allocations: [global, ...], calibrate: [leaf, ...]}``: each chosen (a
  calibrated leaf that the file or ``--set`` fixes is not calibrated).

Calibration. Every baseline runs the space's defaults, and one default decides more than the others how well a model
finetunes: the finetune lr (with Adam, a residual net without normalisation wants 2e-2 to 3e-2 where LeNet-300-100
does best at 3e-3 to 8e-3). So, by default, the seeding first runs *probes*: the first allocation at the geometric
middle of the density range, at a few values of each calibrated leaf (``finetune.lr`` when the space searches it):
its default, and the (log-)midpoints between the default and each end of its range; every choice of a categorical
leaf; the grid of them for several leaves. The ladder waits for them and runs at the probe that did best on
validation, unless it beats the default probe by no more than one standard error of the default's validation
accuracy: then, as on a tie, at the default. The probes are baselines too (marked, never stopped early, counted
toward the trials). ``calibrate: false`` or ``[]`` turns it off; calibration is skipped when the trials requested
leave no room for a ladder after the probes.

A number of densities N with A allocations interleaves them: A·N densities log-spaced over the ``prune.density``
range, the first allocation at the 1st, (A+1)-th, ... of them, the second at the 2nd, (A+2)-th, .... Each allocation
still gets N sizes spread over the range, and the ladder covers the parameter axis at A·N sizes instead of N: the
allocations differ little at one size, while a front with three times as many strong points leaves refinement and
the sampler narrower gaps. N = 1 puts every allocation at the range's geometric middle.

Optuna only: nothing here imports Ray or torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoprune._bounds import MAX_RUNGS
from autoprune.config import STRUCTURED_ALLOCATIONS
from autoprune.errors import ConfigError
from autoprune.searching._attrs import BASELINE_ATTR, BASELINES_ATTR, CALIBRATION_ATTR, PROBE_ATTR, RECORD_ATTR
from autoprune.searching._leaves import section_leaf

if TYPE_CHECKING:
    import optuna

    from autoprune.searching.space import Dim, SearchSpace

__all__ = [
    "DEFAULT_CALIBRATE",
    "DEFAULT_RUNGS",
    "Baseline",
    "Calibration",
    "calibrate_leaves",
    "finish_calibration",
    "ladder",
    "probe_values",
    "probes",
    "seed_baselines",
]

DEFAULT_RUNGS = 4
DEFAULT_CALIBRATE = ("finetune.lr",)  # calibrated when the space searches it


@dataclass(frozen=True)
class Baseline:
    """One baseline configuration: a value for every searched dimension of the space."""

    label: str  # allocation@density, e.g. "global@0.0123"
    params: dict[str, Any]
    allocation: str  # how its density is shared among layers (the space's, when it does not search one)


def _dims(space: SearchSpace) -> dict[str, Dim]:
    return {d.path: d for d in space.dims}


def _spec(raw: Any) -> tuple[Any, Any, Any]:
    """(densities, allocations, calibrate) from the ``search.baselines`` value; None means the default."""
    where = "search.baselines"
    if raw is None or raw is True:
        return DEFAULT_RUNGS, None, None
    if raw is False:
        return 0, None, None
    if isinstance(raw, (int, float, list)) and not isinstance(raw, bool):
        return raw, None, None
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - {"densities", "allocations", "calibrate"})
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: densities, allocations, calibrate")
        return raw.get("densities", DEFAULT_RUNGS), raw.get("allocations"), raw.get("calibrate")
    raise ConfigError(
        f"{where} must be true, false, a number of densities, a list of densities or a mapping "
        f"{{densities, allocations, calibrate}}, got {raw!r}"
    )


def _densities(spec: Any, dim: Dim | None, allocations: int) -> list[list[float | None]]:
    """The densities of each of ``allocations`` allocations (interleaved for a number of them, see above)."""
    where = "search.baselines.densities"
    counted = not isinstance(spec, list)
    if counted and (isinstance(spec, bool) or not isinstance(spec, int) or spec < 0):
        raise ConfigError(f"{where} must be a list of densities or a number of them >= 0, got {spec!r}")
    if (len(spec) if not counted else spec) > MAX_RUNGS:  # each is a configuration built and checked
        raise ConfigError(
            f"{where}: at most {MAX_RUNGS} densities per allocation, got {spec if counted else len(spec)}"
        )
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


def _defaults(dims: dict[str, Dim]) -> dict[str, Any]:
    """The value of every searched leaf in a baseline: its default, and the magnitude criterion when searched."""
    defaults = {path: dim.midpoint() for path, dim in dims.items()}
    criterion = dims.get("prune.criterion")
    if criterion is not None and criterion.choices and "magnitude" in criterion.choices:
        defaults["prune.criterion"] = "magnitude"
    return defaults


def ladder(space: SearchSpace, fixed: dict[str, Any] | None = None) -> list[Baseline]:
    """The baselines of ``space`` in the order they run: every density of one allocation, global first.
    ``fixed`` overrides the defaults of some searched leaves (the calibrated ones)."""
    dims = _dims(space)
    raw_densities, raw_allocations, _ = _spec(space.baselines)
    if dims.get("prune.density") is None and "prune.allocation" not in dims:
        return []
    allocations = _allocations(raw_allocations, space, dims.get("prune.allocation"))
    densities = _densities(raw_densities, dims.get("prune.density"), len(allocations))
    defaults = {**_defaults(dims), **(fixed or {})}
    out = []
    for allocation, sizes in zip(allocations, densities, strict=True):
        for density in sizes:
            params = dict(defaults)
            if "prune.allocation" in dims:
                params["prune.allocation"] = allocation
            if density is not None:
                params["prune.density"] = density
            label = allocation if density is None else f"{allocation}@{density:.4g}"
            out.append(Baseline(label=label, params=space.resolve(params), allocation=allocation))
    return out


def _leaf_dim(space: SearchSpace, leaf: str, params: dict[str, Any]) -> Dim | None:
    """The dimension that searches ``leaf`` in a trial with ``params``: the leaf's own, or the case of it that
    the parent's value in ``params`` selects; None when that case is fixed."""
    values = space.resolve(params)
    return next((d for d in space.dims if d.key == leaf and d.path in values), None)


def _leaf_values(space: SearchSpace, params: dict[str, Any], leaves: list[str]) -> dict[str, Any]:
    """The values in ``params`` of the dimensions that search ``leaves`` (cases included)."""
    return {d.path: params[d.path] for d in space.dims if d.key in leaves and d.path in params}


def calibrate_leaves(space: SearchSpace) -> list[str]:
    """The searched leaves the seeding calibrates before the ladder (see the module's docstring), checked."""
    where = "search.baselines.calibrate"
    raw_densities, _, raw = _spec(space.baselines)
    if raw_densities in (0, []) or not ladder(space):
        return []
    searched = {d.key for d in space.dims}  # a leaf with cases is searched under its own key too
    if raw is None:
        return [p for p in DEFAULT_CALIBRATE if p in searched]
    if raw is False:
        return []
    leaves = [raw] if isinstance(raw, str) else raw
    if not isinstance(leaves, list) or not all(isinstance(p, str) for p in leaves):
        raise ConfigError(f"{where} must be a list of searched leaves (e.g. [finetune.lr]) or false, got {raw!r}")
    fixed = {"prune.density", "prune.nonzero_params", "prune.allocation"}
    for path in leaves:
        if path in fixed:
            raise ConfigError(f"{where}: {path} is set by the ladder itself; calibrate another leaf, e.g. finetune.lr")
        if path not in searched:
            try:
                section_leaf(path, where=where)
            except ConfigError:
                raise ConfigError(
                    f"{where}: unknown leaf {path!r}; this space searches {', '.join(sorted(searched))}"
                ) from None
    if len(set(leaves)) != len(leaves):
        raise ConfigError(f"{where} lists a leaf twice: {leaves!r}")
    grid = math.prod(max((len(probe_values(d)) for d in space.dims if d.key == p), default=1) for p in leaves)
    if grid > MAX_RUNGS:  # the probes are every combination of the leaves' values: keep them a handful
        raise ConfigError(
            f"{where}: {len(leaves)} leaves make up to {grid:,} probes, more than {MAX_RUNGS}; calibrate fewer"
        )
    # A leaf the file or --set fixes has nothing to calibrate: `--set finetune.optimizer=sgd` on a space that
    # calibrates the optimizer and the lr calibrates the lr alone.
    return [p for p in leaves if p in searched]


def probe_values(dim: Dim) -> list[Any]:
    """The values a calibration probes for one searched leaf, the default first: every choice of a categorical
    leaf; for a range, the default and the (log-)midpoints between it and each end."""
    default = dim.midpoint()
    if dim.choices is not None:
        return [default, *(c for c in dim.choices if c != default)]
    low, high = float(dim.low), float(dim.high)  # type: ignore[arg-type]
    mid = (lambda a, b: math.sqrt(a * b)) if dim.log else (lambda a, b: (a + b) / 2)
    out = [default]
    for value in (mid(low, float(default)), mid(float(default), high)):
        if dim.step:
            value = low + round((value - low) / dim.step) * dim.step
        value = round(value) if dim.is_int else float(value)
        if value not in out:
            out.append(value)
    return out


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def probes(space: SearchSpace, leaves: list[str] | None = None) -> list[Baseline]:
    """The calibration probes of ``space``: its first baseline allocation at the geometric middle of the density
    range, at every combination of the ``leaves``' probe values (the default combination first)."""
    leaves = calibrate_leaves(space) if leaves is None else leaves
    if not leaves:
        return []
    dims = _dims(space)
    first = ladder(space)[0]
    base = dict(first.params)
    density = dims.get("prune.density")
    if density is not None and density.low is not None:
        base["prune.density"] = math.sqrt(float(density.low) * float(density.high))  # type: ignore[arg-type]
    where = first.allocation
    if "prune.density" in base:
        where = f"{where}@{base['prune.density']:.4g}"
    # Parents first: a leaf with cases probes the case its parent's probe selects.
    order = sorted(leaves, key=lambda p: any(d.key == p and d.when is not None for d in space.dims))

    def grid(params: dict[str, Any], rest: list[str], tags: list[str]) -> Iterator[tuple[dict[str, Any], list[str]]]:
        if not rest:
            yield space.resolve(params), tags
            return
        dim = _leaf_dim(space, rest[0], params)
        if dim is None:  # the parent's value fixes this leaf
            yield from grid(params, rest[1:], tags)
            return
        for value in probe_values(dim):
            yield from grid({**params, dim.path: value}, rest[1:], [*tags, f"{rest[0]}={_fmt(value)}"])

    plan = grid(base, order, [])
    return [
        Baseline(label=f"{where} {' '.join(tags)}".strip(), params=params, allocation=first.allocation)
        for params, tags in plan
    ]


def _enqueue(study: optuna.Study, baselines: list[Baseline], probe: bool = False) -> list[str]:
    for baseline in baselines:
        attrs: dict[str, Any] = {BASELINE_ATTR: baseline.label}
        if probe:
            attrs[PROBE_ATTR] = True
        study.enqueue_trial(baseline.params, user_attrs=attrs)
    labels = [b.label for b in baselines]
    study.set_user_attr(BASELINES_ATTR, [*study.user_attrs.get(BASELINES_ATTR, []), *labels])
    return labels


def seed_baselines(study: optuna.Study, space: SearchSpace, limit: int) -> list[str]:
    """Enqueue the first ``limit`` baselines of ``space`` into a new ``study``; the labels enqueued.

    With calibration (see the module's docstring) only the probes are enqueued here, and ``finish_calibration``
    enqueues the ladder once they have finished. A study is seeded once (it remembers the labels as a study
    attribute): seeding it again enqueues nothing.
    """
    if BASELINES_ATTR in study.user_attrs:
        return []
    leaves = calibrate_leaves(space)
    probing = probes(space, leaves)
    if probing and limit > len(probing):
        study.set_user_attr(CALIBRATION_ATTR, {"leaves": leaves, "limit": limit - len(probing), "done": False})
        return _enqueue(study, probing, probe=True)
    return _enqueue(study, ladder(space)[: max(limit, 0)])


def _choose(done: list, default: Any) -> tuple[Any, float | None]:
    """The probe the ladder runs at, and the margin it had to beat when the default was kept: the probe best on
    validation, unless the default probe finished and the best beats it by no more than one standard error of the
    default's validation accuracy (``pareto.val_standard_error``): a difference validation cannot tell from noise
    keeps the space's default. Ties go to the earlier probe."""
    from autoprune.searching.pareto import val_standard_error

    if not done:
        return None, None
    best = max(done, key=lambda t: (t.values[0], -t.number))
    if default is None or best is default:
        return best, None
    margin = val_standard_error(default.user_attrs.get(RECORD_ATTR) or {})
    if margin is not None and best.values[0] - default.values[0] <= margin:
        return default, margin
    return best, None


def finish_calibration(study: optuna.Study, space: SearchSpace) -> str | None:
    """Once every probe of a calibrating ``study`` has finished, enqueue the ladder at the chosen probe's values of
    the calibrated leaves (``_choose``); a line for the log saying what it chose, or None when nothing was due."""
    import optuna

    info = study.user_attrs.get(CALIBRATION_ATTR)
    if not isinstance(info, dict) or info.get("done"):
        return None
    trials = study.get_trials(deepcopy=False)
    probed = [t for t in trials if t.user_attrs.get(PROBE_ATTR)]
    if not probed or not all(t.state.is_finished() for t in probed):
        return None
    leaves = list(info["leaves"])
    done = [
        t
        for t in probed
        if t.state == optuna.trial.TrialState.COMPLETE and t.values and _leaf_values(space, t.params, leaves)
    ]
    first = probes(space, leaves)
    default = next((t for t in done if first and t.user_attrs.get(BASELINE_ATTR) == first[0].label), None)
    best, margin = _choose(done, default)
    chosen = _leaf_values(space, best.params, leaves) if best is not None else {}
    ran = [t.params for t in probed if t.params]
    rungs = [b for b in ladder(space, chosen) if b.params not in ran][: max(int(info["limit"]), 0)]
    labels = _enqueue(study, rungs)
    if best is None:
        study.set_user_attr(CALIBRATION_ATTR, {**info, "done": True, "chosen": chosen})
        return f"search: no calibration probe finished; the {len(labels)} baselines run at the defaults"
    picked = " ".join(f"{p}={_fmt(v)}" for p, v in chosen.items())
    probe_vals = ", ".join(
        f"{t.values[0]:.4f} at {' '.join(map(_fmt, _leaf_values(space, t.params, leaves).values()))}"
        for t in done
        if t is not best
    )
    verb = "chose" if margin is None else "kept the default"
    summary = f"calibration {verb} {picked} (trial {best.number}, val {best.values[0]:.4f}"
    summary += f"; {probe_vals})" if probe_vals else ")"
    if margin is not None:
        summary += f": no probe beat it by more than one standard error ({100 * margin:.2f} pt)"
    study.set_user_attr(CALIBRATION_ATTR, {**info, "done": True, "chosen": chosen, "summary": summary})
    return f"search: {summary}; the next {len(labels)} trials are baselines at it: {', '.join(labels)}"


class Calibration:
    """Called before each new trial of a search: finishes a pending calibration (see ``finish_calibration``)."""

    def __init__(self, space: SearchSpace, log: Callable[[str], None] | None = None):
        self.space = space
        self.log = log

    def before_ask(self, study: optuna.Study) -> bool:
        """Enqueue the ladder when the probes are done; whether calibration is still pending afterwards."""
        info = study.user_attrs.get(CALIBRATION_ATTR)
        if not isinstance(info, dict) or info.get("done"):
            return False
        line = finish_calibration(study, self.space)
        if line is None:
            return True
        if self.log is not None:
            self.log(line)
        return False
