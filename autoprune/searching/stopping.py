"""When to stop: hopeless trials early (Pareto-aware successive halving), and a search at its time budget.

Pure code, no Ray: the search's Ray Tune scheduler (``raytune/_scheduler.py``) asks ``ParetoHalving.judge`` on
each intermediate result.

**Pareto-aware asynchronous successive halving.** Single-objective ASHA (Li et al. 2020) compares a trial at a
rung with every trial that reached the rung. With two objectives that would stop every small model, which is
less accurate by design. But a trial's parameter count is known before it trains (its allocation fixes it), so
only accuracy is uncertain: at a rung, a trial is compared with the trials that reached the same rung *with no
more parameters than it* (within a relative tolerance), and is stopped when it ranks in the bottom fraction
``1 - 1/η`` of them. A bigger model that is less accurate than most smaller ones at the same point of training
is unlikely to reach the front; a small model is never stopped for being less accurate than bigger ones.

Progress is counted in epochs of sparse training plus finetuning. The rungs are at ``g·η^k`` epochs (``g`` the
grace period, ``η`` the reduction factor), below the trial's last epoch (stopping a trial at its end saves
nothing). A trial is judged once per rung, at its first result at or past the rung's epoch, against the trials
recorded there *so far* (asynchronous: no trial waits for others), and its value is recorded there whatever the
decision. A trial with fewer than ``min_peers`` peers at a rung continues.

Trials send results only once their pruning is done (``IntermediateResult.at_size``): a denser model's accuracy
would rank them on the wrong model. A seeded baseline (``exempt``) is recorded at its rungs like any trial, so it
sets the bar for the others, but is never stopped: it is the reference the search's front must beat.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from autoprune.errors import SearchError

__all__ = [
    "DEFAULT_EARLY_STOP",
    "DEFAULT_GRACE_PERIOD",
    "DEFAULT_MIN_PEERS",
    "DEFAULT_REDUCTION_FACTOR",
    "DEFAULT_SIZE_TOLERANCE",
    "Decision",
    "EarlyStop",
    "ParetoHalving",
    "format_duration",
    "parse_duration",
    "rung_epochs",
]

EARLY_STOP_MODES = ("off", "asha")
# Off unless a space (`search.early_stop`) or --early-stop asks for it: at the same wall time it did not improve
# the front on LeNet-300-100/Fashion-MNIST or on digits (benchmarks/search_efficiency.py; numbers in README).
DEFAULT_EARLY_STOP = "off"
DEFAULT_REDUCTION_FACTOR = 3.0
DEFAULT_GRACE_PERIOD = 1.0  # epochs
DEFAULT_SIZE_TOLERANCE = 0.1  # peers may have up to 10% more parameters than the trial judged
DEFAULT_MIN_PEERS = 3  # with fewer peers the bottom fraction is mostly noise


def rung_epochs(grace_period: float, reduction_factor: float, last: float) -> list[float]:
    """The rungs' epochs ``g, g·η, g·η², ...`` strictly below ``last`` (the epoch a trial ends at)."""
    out = []
    k = 0
    while (epoch := grace_period * reduction_factor**k) < last:
        out.append(epoch)
        k += 1
    return out


@dataclass(frozen=True)
class Decision:
    """What ``ParetoHalving.judge`` decided for one result, and why (``reason``: one line for --verbose logs)."""

    stop: bool
    rung: int | None = None  # index of the rung judged at; None when the result reached no new rung
    epoch: float | None = None  # the rung's epoch
    peers: int = 0  # trials recorded at the rung with no more parameters (within the tolerance)
    better: int = 0  # peers more accurate than the trial
    keep: int = 0  # how many of the trial and its peers go on (top 1/η)
    reason: str = ""

    @property
    def judged(self) -> bool:
        return self.rung is not None


@dataclass
class ParetoHalving:
    """Rung bookkeeping and decisions of Pareto-aware asynchronous successive halving (see the module doc)."""

    grace_period: float = DEFAULT_GRACE_PERIOD  # epochs before the first rung
    reduction_factor: float = DEFAULT_REDUCTION_FACTOR  # η: rungs η× apart; the top 1/η go on
    size_tolerance: float = DEFAULT_SIZE_TOLERANCE  # peers have at most (1 + tolerance) × the trial's parameters
    min_peers: int = DEFAULT_MIN_PEERS  # fewer peers at a rung: continue
    rungs: dict[int, dict[str, tuple[float, float]]] = field(default_factory=dict)  # rung -> trial -> (acc, params)

    def __post_init__(self) -> None:
        check_options(self.reduction_factor, self.grace_period)
        if not (math.isfinite(self.size_tolerance) and self.size_tolerance >= 0):
            raise SearchError(f"the size tolerance must be >= 0, got {self.size_tolerance!r}")
        if isinstance(self.min_peers, bool) or not isinstance(self.min_peers, int) or self.min_peers < 1:
            raise SearchError(f"min_peers must be a positive integer, got {self.min_peers!r}")

    def epoch_of(self, rung: int) -> float:
        return self.grace_period * self.reduction_factor**rung

    def rung_at(self, epoch: float, last: float | None = None) -> int | None:
        """The highest rung at or below ``epoch`` (and below ``last``, when given); None before the first."""
        if epoch < self.grace_period:
            return None
        k = math.floor(math.log(epoch / self.grace_period) / math.log(self.reduction_factor) + 1e-9)
        while k >= 0 and last is not None and self.epoch_of(k) >= last:
            k -= 1
        return k if k >= 0 else None

    def judge(
        self,
        trial: str,
        epoch: float,
        accuracy: float,
        params: float | None,
        last: float | None = None,
        *,
        exempt: bool = False,
    ) -> Decision:
        """Decide on one intermediate result: ``trial`` reached ``epoch`` (epochs done, both phases) with
        validation ``accuracy`` and will end with ``params`` parameters after ``last`` epochs. An ``exempt``
        trial (a seeded baseline) is recorded but never stopped.

        Records the result at the rung it reaches (once per trial and rung). Results with an unknown size or a
        non-finite accuracy are neither judged nor recorded.
        """
        rung = self.rung_at(epoch, last)
        if rung is None:
            return Decision(stop=False, reason=f"trial {trial} epoch {epoch:g}: before the first rung")
        here = self.rungs.setdefault(rung, {})
        at = f"trial {trial} epoch {epoch:g} (rung {rung}, epoch {self.epoch_of(rung):g})"
        if trial in here or any(trial in self.rungs.get(k, {}) for k in self.rungs if k > rung):
            return Decision(stop=False, reason=f"{at}: judged at this rung already")
        if params is None or not math.isfinite(params):
            return Decision(stop=False, reason=f"{at}: size unknown, not judged")
        if not math.isfinite(accuracy):
            return Decision(stop=False, reason=f"{at}: accuracy {accuracy} not judged")
        limit = params * (1.0 + self.size_tolerance)
        peers = [acc for acc, size in here.values() if size <= limit]
        here[trial] = (float(accuracy), float(params))
        n = len(peers)
        base = dict(rung=rung, epoch=self.epoch_of(rung), peers=n)
        size = f"≤ {_short(limit)} params"
        if exempt:
            return Decision(stop=False, **base, reason=f"{at}: val {accuracy:.4f}; a baseline runs to the end")
        if n < self.min_peers:
            few = f"{n} peers {size}, fewer than {self.min_peers}"
            return Decision(stop=False, **base, reason=f"{at}: val {accuracy:.4f}; {few} → continue")
        better = sum(acc > accuracy for acc in peers)
        keep = math.ceil((n + 1) / self.reduction_factor)
        stop = better >= keep
        return Decision(
            stop=stop,
            **base,
            better=better,
            keep=keep,
            reason=f"{at}: val {accuracy:.4f} ranks {better + 1} of {n + 1} among trials {size}; the top {keep} go on"
            f" → {'stop' if stop else 'continue'}",
        )


def check_options(reduction_factor: float | None, grace_period: float | None) -> None:
    """One-line errors for bad ``--reduction-factor`` / ``--grace-period`` values (None: not given)."""
    if reduction_factor is not None and (
        isinstance(reduction_factor, bool)
        or not isinstance(reduction_factor, (int, float))
        or not (math.isfinite(reduction_factor) and reduction_factor > 1)
    ):
        raise SearchError(
            f"--reduction-factor must be a number > 1 (e.g. 3: keep the top third), got {reduction_factor!r}"
        )
    if grace_period is not None and (
        isinstance(grace_period, bool)
        or not isinstance(grace_period, (int, float))
        or not (math.isfinite(grace_period) and grace_period > 0)
    ):
        raise SearchError(f"--grace-period must be a number of epochs > 0 (e.g. 1), got {grace_period!r}")


@dataclass(frozen=True)
class EarlyStop:
    """Early stopping as given (``--early-stop``, ``--reduction-factor``, ``--grace-period``) or as a run keeps it
    (run.json's ``early_stop``). ``None`` is not given: ``updated`` takes it from the space or the resumed run."""

    mode: str | None = None  # off | asha; None: the space's (a search), the run's (resume), else off
    reduction_factor: float | None = None  # asha: rungs η× apart, the top 1/η go on; only with asha
    grace_period: float | None = None  # asha: epochs before the first rung; only with asha

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in EARLY_STOP_MODES:
            raise SearchError(f"--early-stop must be one of {', '.join(EARLY_STOP_MODES)}, got {self.mode!r}")
        if self.mode == "off":
            given = [name for name, value in self._options() if value is not None]
            if given:
                raise SearchError(f"{given[0]} applies to early stopping, which is off; add --early-stop asha")
        check_options(self.reduction_factor, self.grace_period)
        for name, value in (("reduction_factor", self.reduction_factor), ("grace_period", self.grace_period)):
            if value is not None:
                object.__setattr__(self, name, float(value))

    def _options(self) -> tuple[tuple[str, float | None], ...]:
        return (("--reduction-factor", self.reduction_factor), ("--grace-period", self.grace_period))

    def updated(self, given: EarlyStop) -> EarlyStop:
        """``given`` over these settings (the space's, or a resumed run's): what it leaves out comes from them,
        else the defaults. Always a whole setting: a mode, and with asha both of its numbers."""
        mode = given.mode or self.mode or DEFAULT_EARLY_STOP
        if mode == "off":
            return EarlyStop("off", given.reduction_factor, given.grace_period)  # refused if either is given
        factor = _first(given.reduction_factor, self.reduction_factor, DEFAULT_REDUCTION_FACTOR)
        return EarlyStop(mode, factor, _first(given.grace_period, self.grace_period, DEFAULT_GRACE_PERIOD))

    def to_dict(self) -> dict[str, Any]:
        """run.json's ``early_stop``: ``{"mode": "off"}`` or ``{"mode": "asha", "reduction_factor": η,
        "grace_period": epochs}``."""
        if self.mode != "asha":
            return {"mode": "off"}
        return {"mode": "asha", "reduction_factor": self.reduction_factor, "grace_period": self.grace_period}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EarlyStop:
        """run.json's ``early_stop`` back (``{}`` and runs from before it: off)."""
        mode = raw.get("mode", "off")
        if mode == "off":
            return cls("off")
        return cls().updated(cls(mode, raw.get("reduction_factor"), raw.get("grace_period")))

    def describe(self) -> str:
        if self.mode != "asha":
            return "off"
        return f"asha (reduction factor {self.reduction_factor:g}, grace period {self.grace_period:g})"


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _short(n: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


# ------------------------------------------------------------------------------------------- time budget

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([hms])")


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration such as ``90s``, ``15m``, ``1h30m``, ``2h``, ``1.5h`` or plain seconds (``600``)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        try:
            seconds = float(s)
        except ValueError:
            parts = _DURATION.findall(s)
            units = [u for _, u in parts]
            if (
                not parts
                or "".join(n + u for n, u in parts) != s
                or len(set(units)) != len(units)
                or units != sorted(units, key="hms".index)
            ):
                raise SearchError(
                    f"--timeout {text!r} is not a duration; write e.g. 90s, 15m, 1h30m, 2h or plain seconds"
                ) from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not (math.isfinite(seconds) and seconds > 0):
        raise SearchError(f"--timeout must be a positive duration (e.g. 90s, 15m, 1h30m), got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``5400`` → ``1h30m``, ``90`` → ``1m30s``, ``12.5`` → ``12.5s`` (for logs and run.json)."""
    if seconds < 60:
        return f"{seconds:g}s"
    s = round(seconds)
    h, m, sec = s // 3600, s // 60 % 60, s % 60
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v)
