"""Front refinement: trials that carry a front model's settings to a size where the front is thin.

A trial's size is an input of the search (its ``prune.density``, or its ``prune.nonzero_params``), so the settings
that made a good model at one size are the best guess at a neighbouring size. The sampler does not know that: it
draws the size with everything else, and the front ends up with gaps, where the best model within a size budget
is a much smaller one. Refinement fills them. Once the seeded baselines and ``after`` sampled trials have
finished, every ``every``-th new trial is a refinement:

- between two neighbouring models of the front, it picks the gap whose staircase loses the most area:
  (log10 params of the larger − log10 params of the smaller) × (accuracy of the larger − of the smaller);
- it takes every setting of the larger (more accurate) model and a size at the gap's geometric middle;
- it is put into the study (``study.enqueue_trial``) marked with the user attribute ``refined_from`` (the source
  trial's number), so the sampler learns from its result like from any other trial.

A gap too narrow for a size 10% away from both neighbours, or one whose middle a trial with the same settings
already holds (finished, running or queued), is passed over for the next one. The space file chooses, under
``search.refine``: omitted or ``true`` for the defaults, ``false`` or ``0`` for none, a number for ``every``, or a
mapping ``{every: N, after: M}``. Spaces that search no overall size (per-layer rates only) are never refined.

Sizes a user will pick at (``search.sizes``: fractions of the dense model's parameters, or parameter counts) get
refinements of their own. The best model a pick at size S can return is the most accurate one with at most S
parameters, and the front rarely has one at S itself: the ladder and the sampler put their sizes anywhere. Once a
finished trial has told the driver the model's parameter counts, each new trial is a size refinement while one is
due: for a size S whose best model within S (by validation accuracy) has fewer than ``SIZE_SLACK`` × S
parameters, it takes that model's settings at exactly S parameters (``refined_from`` and ``target_size`` user
attributes). A size is due again whenever a model with other settings becomes its best, so a size refinement
never runs twice with the same settings. Sizes need an allocation that keeps an exact count (not the structured
ones).

Optuna only: nothing here imports Ray or torch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoprune.errors import ConfigError
from autoprune.searching._attrs import BASELINE_ATTR, RECORD_ATTR, REFINE_ATTR, SIZE_ATTR

if TYPE_CHECKING:
    import optuna

    from autoprune.searching.space import Dim, SearchSpace

__all__ = [
    "SIZE_DIMS",
    "Proposal",
    "RefineSettings",
    "Refiner",
    "SearchPolicies",
    "propose",
    "propose_size",
    "refine_settings",
    "size_count",
    "size_dim",
    "size_targets",
]

SIZE_SLACK = 0.99  # a size is refined while its best model holds fewer than this fraction of its parameters
SIZE_DIMS = ("prune.density", "prune.nonzero_params")  # the searched leaves that set a trial's size
MIN_RATIO = 1.1  # a refinement's size differs from both neighbours' by at least this factor
DEFAULT_EVERY = 3
DEFAULT_AFTER = 10
# Refinement targets parameter counts whatever the search's objective: a finished trial's size here is its record's
# params_nonzero (its second value under search.objective params, which studies made before records held it use).


@dataclass(frozen=True)
class RefineSettings:
    every: int  # every N-th new trial is a refinement; 0: never
    after: int  # sampled trials (not baselines, not refinements) that must have finished first


@dataclass(frozen=True)
class SearchPolicies:
    """What a search does before it asks its sampler for a new trial, passed to its searcher whole: finish a pending
    calibration (``baselines.Calibration``), else refine the declared sizes and the front (``Refiner``). The
    defaults do neither; a search takes its space's (``of``)."""

    calibrate: bool = False  # once the probes are done, enqueue the ladder at the values they chose
    refine: RefineSettings = RefineSettings(every=0, after=DEFAULT_AFTER)  # every N-th new trial refines the front
    sizes: tuple[float, ...] = ()  # sizes a user will pick at, refined on their own: fractions or parameter counts

    @classmethod
    def of(cls, space: SearchSpace) -> SearchPolicies:
        """The policies a space sets: ``search.refine``, ``search.sizes``, and calibration where seeding asks for it."""
        return cls(calibrate=True, refine=refine_settings(space.refine), sizes=size_targets(space.sizes))


def refine_settings(raw: Any) -> RefineSettings:
    """``search.refine`` from a space file, checked (a ``ConfigError`` names the value and the fix)."""
    where = "search.refine"
    if raw is None or raw is True:
        return RefineSettings(DEFAULT_EVERY, DEFAULT_AFTER)
    if raw is False:
        return RefineSettings(0, DEFAULT_AFTER)
    values: dict[str, Any]
    if isinstance(raw, int):
        values = {"every": raw}
    elif isinstance(raw, dict):
        unknown = sorted(set(raw) - {"every", "after"})
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: every, after")
        values = raw
    else:
        raise ConfigError(f"{where} must be true, false, a number (every N-th trial) or {{every, after}}, got {raw!r}")
    every, after = values.get("every", DEFAULT_EVERY), values.get("after", DEFAULT_AFTER)
    for key, value in (("every", every), ("after", after)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}.{key} must be a whole number >= 0, got {value!r}")
    if every == 1:
        raise ConfigError(f"{where}.every is 1, which leaves no trial to the sampler; use 2 or more, or 0 for none")
    return RefineSettings(every, after)


def size_targets(raw: Any, where: str = "search.sizes") -> tuple[float, ...]:
    """``search.sizes`` from a space file (or the option ``where``), checked: fractions of the dense parameters
    (at most 1) or parameter counts (whole numbers above 1), in the order given."""
    if raw is None:
        return ()
    values = raw if isinstance(raw, list) else [raw]
    for value in values:
        bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0
        if bad or (value > 1 and value != int(value)):
            raise ConfigError(
                f"{where} must list fractions of the dense parameters (0 < f <= 1) or parameter counts (whole "
                f"numbers > 1), got {value!r}; e.g. sizes: [0.02, 0.05, 50000]"
            )
    return tuple(float(v) for v in values)


def size_count(size: float, total: int) -> int:
    """The parameter count a declared size stands for: a fraction of the dense model's ``total``, or a count."""
    return math.floor(size * total) if size <= 1 else int(size)


@dataclass(frozen=True)
class Proposal:
    """One refinement: the full parameters of the trial to run, and where they come from."""

    params: dict[str, Any]
    source: int  # the front trial whose settings it carries
    reason: str  # one line for the log
    size: int | None = None  # a size refinement: the parameter count it was asked for


def size_dim(dims: Sequence[Dim]) -> Dim | None:
    """The searched leaf that sets a trial's overall size (a range over one of ``SIZE_DIMS``); None if none."""
    searched = {d.path: d for d in dims}
    return next((searched[p] for p in SIZE_DIMS if p in searched and searched[p].low is not None), None)


def _finished(trials: Sequence[optuna.trial.FrozenTrial], size: str) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE trials with both values whose size is the searched leaf ``size``."""
    import optuna

    done = optuna.trial.TrialState.COMPLETE
    return [t for t in trials if t.state == done and t.values and len(t.values) == 2 and size in t.params]


def _params(t: optuna.trial.FrozenTrial) -> float:
    """A finished trial's nonzero parameters."""
    rec = t.user_attrs.get(RECORD_ATTR)
    count = rec.get("params_nonzero") if isinstance(rec, dict) else None
    return float(count) if isinstance(count, (int, float)) and not isinstance(count, bool) else float(t.values[1])


def _front(trials: Sequence[optuna.trial.FrozenTrial], size: str) -> list[optuna.trial.FrozenTrial]:
    """The finished trials no other beats on (accuracy, parameters), smallest first; one per size."""
    done = _finished(trials, size)
    done.sort(key=lambda t: (_params(t), -t.values[0], t.number))
    front, best = [], -math.inf
    for t in done:  # by size ascending: a trial is on the front when it beats every smaller one
        if t.values[0] > best:
            front.append(t)
            best = t.values[0]
    return front


def _holds(
    trials: Sequence[optuna.trial.FrozenTrial], params: dict[str, Any], size: str, ratio: float = MIN_RATIO
) -> bool:
    """Whether a trial with the same settings (size apart) already sits within ``ratio`` of this size."""
    value = float(params[size])
    for t in trials:
        other = t.params if t.params else t.system_attrs.get("fixed_params", {})
        if size not in other or any(other.get(k) != v for k, v in params.items() if k != size):
            continue
        if max(value, float(other[size])) / max(min(value, float(other[size])), 1e-300) < ratio:
            return True
    return False


def propose(trials: Sequence[optuna.trial.FrozenTrial], dim: Dim) -> Proposal | None:
    """The next refinement for a study with these ``trials`` whose size is the searched leaf ``dim``; None when
    the front has no gap left to fill."""
    size = dim.path
    front = _front(trials, size)
    gaps = []
    for lo, hi in itertools.pairwise(front):
        width = math.log10(max(_params(hi), 1.0)) - math.log10(max(_params(lo), 1.0))
        gaps.append((width * (hi.values[0] - lo.values[0]), lo, hi))
    gaps.sort(key=lambda g: -g[0])
    for _, lo, hi in gaps:
        a, b = float(lo.params[size]), float(hi.params[size])
        if a <= 0 or b / a < MIN_RATIO**2:
            continue
        value: float | int = math.sqrt(a * b)
        if dim.is_int:
            value = round(value)
        value = min(max(value, dim.low), dim.high)  # type: ignore[type-var]
        params = {**hi.params, size: value}
        if _holds(trials, params, size):
            continue
        reason = (
            f"refine: trial {hi.number}'s settings at {size.split('.')[-1]} {value:.4g}, between the front's "
            f"{_params(lo):.0f} params (trial {lo.number}, val {lo.values[0]:.4f}) and {_params(hi):.0f} params "
            f"(trial {hi.number}, val {hi.values[0]:.4f})"
        )
        return Proposal(params=params, source=hi.number, reason=reason)
    return None


def _counts(trials: Sequence[optuna.trial.FrozenTrial]) -> tuple[int, int] | None:
    """(parameters of the dense model, of them in prunable weights), from the first finished trial's record."""
    for t in trials:
        rec = t.user_attrs.get(RECORD_ATTR)
        counts = (rec.get("params_total"), rec.get("params_prunable")) if isinstance(rec, dict) else (None, None)
        if all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            return counts  # type: ignore[return-value]
    return None


def propose_size(trials: Sequence[optuna.trial.FrozenTrial], dim: Dim, sizes: Sequence[float]) -> Proposal | None:
    """The next size refinement (see the module's docstring) for a study with these ``trials`` whose size is the
    searched leaf ``dim``; None when no size is due or the model's parameter counts are not known yet."""

    counts = _counts(trials)
    if counts is None or not sizes:
        return None
    total, prunable = counts
    others = total - prunable  # parameters every allocation keeps (biases, BatchNorm)
    size = dim.path
    done = _finished(trials, size)
    for target in sizes:
        count = size_count(target, total)
        if not others < count < total:
            continue
        within = [t for t in done if _params(t) <= count]
        if not within:
            continue
        best = max(within, key=lambda t: (t.values[0], -_params(t), -t.number))
        if _params(best) >= SIZE_SLACK * count:
            continue
        value: float | int = count if dim.is_int else (count - others) / prunable
        if not dim.low <= value <= dim.high:  # type: ignore[operator]
            continue
        params = {**best.params, size: value}
        if _holds(trials, params, size, ratio=1.0 + 1e-9):
            continue
        reason = (
            f"refine: trial {best.number}'s settings at exactly {count} params (size {target:g}), the best model "
            f"within it so far having {_params(best):.0f} params (val {best.values[0]:.4f})"
        )
        return Proposal(params=params, source=best.number, reason=reason, size=count)
    return None


class Refiner:
    """Decides, before each new trial of a search, whether it is a refinement, and enqueues it into the study."""

    def __init__(
        self,
        settings: RefineSettings,
        dims: Sequence[Dim],
        log: Callable[[str], None] | None = None,
        sizes: Sequence[float] = (),
    ):
        self.settings = settings
        self.dim = size_dim(dims)
        self.log = log
        self.sizes = tuple(sizes)
        self.asked = 0  # new trials asked for since refinement became due

    @property
    def active(self) -> bool:
        return (self.settings.every > 0 or bool(self.sizes)) and self.dim is not None

    def before_ask(self, study: optuna.Study) -> Proposal | None:
        """Call right before ``study.ask()`` for a new trial: enqueue a refinement when one is due."""
        import optuna

        if not self.active or self.dim is None:
            return None
        trials = study.get_trials(deepcopy=False)
        if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
            return None  # baselines (or a refinement) still queued: they go first
        proposal = propose_size(trials, self.dim, self.sizes)
        if proposal is not None:
            return self._enqueue(study, proposal)
        if self.settings.every == 0:
            return None
        finished = [
            t
            for t in trials
            if t.state.is_finished() and BASELINE_ATTR not in t.user_attrs and REFINE_ATTR not in t.user_attrs
        ]
        if len(finished) < self.settings.after:
            return None
        self.asked += 1
        if self.asked % self.settings.every:
            return None
        proposal = propose(trials, self.dim)
        return None if proposal is None else self._enqueue(study, proposal)

    def _enqueue(self, study: optuna.Study, proposal: Proposal) -> Proposal:
        attrs: dict[str, Any] = {REFINE_ATTR: proposal.source}
        if proposal.size is not None:
            attrs[SIZE_ATTR] = proposal.size
        study.enqueue_trial(proposal.params, user_attrs=attrs)
        if self.log is not None:
            self.log(proposal.reason)
        return proposal
