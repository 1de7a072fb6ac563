"""One launch configuration: every option of a search, built once at the edge (the command line or the API),
checked there, kept in run.json and passed down whole, as Ray Tune's ``Tuner`` takes its ``TuneConfig``.

A field left ``None`` is not given: a new search takes the space's value (``search.trials``, ``search.sampler``,
``search.early_stop``) or autoprune's default (``LaunchConfig.defaults``), and ``resume`` the run's own, read back
from run.json (``LaunchConfig.updated``). Nothing here imports Ray or Optuna.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autoprune._bounds import MAX_SEED, check_count, check_threads
from autoprune.errors import SearchError
from autoprune.searching.space import SAMPLERS
from autoprune.searching.stopping import EarlyStop, parse_duration

if TYPE_CHECKING:
    from autoprune.searching.space import SearchSpace

__all__ = ["DEFAULT_SAMPLER", "DEFAULT_TRIALS", "EarlyStop", "LaunchConfig", "Resources"]

DEFAULT_TRIALS = 20
DEFAULT_SAMPLER = "tpe"


def check_sampler(name: Any) -> str:
    if name not in SAMPLERS:
        raise SearchError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    return name


def gpu_share(requested: Any) -> float | str:
    """``--gpus-per-trial`` checked: ``"auto"``, or GPUs per trial as a float (a number given as text, as the command
    line passes it, is read); a fraction shares one GPU, more than one must be whole GPUs."""
    if isinstance(requested, str):
        if requested.strip().lower() == "auto":
            return "auto"
        try:
            requested = float(requested)
        except ValueError:
            raise SearchError(
                f"--gpus-per-trial must be auto or a number (0 for the CPU, 0.25 to share a GPU by four), got "
                f"{requested!r}"
            ) from None
    if isinstance(requested, bool) or not isinstance(requested, (int, float)):
        raise SearchError(f"--gpus-per-trial must be auto or a number, got {requested!r}")
    if not (math.isfinite(requested) and requested >= 0):
        raise SearchError(f"--gpus-per-trial must be >= 0 (fractions share a GPU, e.g. 0.25), got {requested!r}")
    if requested > 1 and requested != int(requested):
        raise SearchError(f"--gpus-per-trial above 1 must be a whole number, got {requested!r}")
    return float(requested)


def check_address(address: Any) -> None:
    """A ``--address`` of the right form: auto, local, ray://... or host:port (port 1 to 65535). Whether anything
    answers there is asked when Ray starts."""
    if not isinstance(address, str):
        raise SearchError(f"--address must be auto or host:port text, got {address!r}")
    if address in ("auto", "local") or address.startswith("ray://"):  # not "localhost:PORT": that one is checked
        return
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not host:
        raise SearchError(f"--address {address!r}: expected auto or host:port, e.g. 10.0.0.1:6379")
    if not 0 < int(port) < 65536:  # the resolver would take 99999 modulo 65536, a port nobody meant
        raise SearchError(f"--address {address!r}: port {port} is not a number from 1 to 65535; e.g. host:6379")


@dataclass(frozen=True)
class Resources:
    """What each trial reserves and how many run at once: run.json's ``resources``."""

    concurrent: int | None = None  # trials at a time; None: as many as the cluster's CPUs/GPUs fit
    cpus_per_trial: float | None = None  # CPUs a trial reserves, also its torch threads (a search's default: 1)
    gpus_per_trial: float | str | None = None  # "auto" (a search's default), 0 (the CPU) or GPUs; 0.25 shares one

    def __post_init__(self) -> None:
        if self.concurrent is not None:
            check_count("--concurrent", self.concurrent)
        cpus = self.cpus_per_trial
        if cpus is not None:
            if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not (math.isfinite(cpus) and cpus > 0):
                raise SearchError(f"--cpus-per-trial must be > 0, got {cpus!r}")
            object.__setattr__(self, "cpus_per_trial", float(cpus))
        if self.gpus_per_trial is not None:
            object.__setattr__(self, "gpus_per_trial", gpu_share(self.gpus_per_trial))

    def updated(self, given: Resources) -> Resources:
        """These resources with those ``given`` sets (the ones it leaves None stay)."""
        changes = {f.name: getattr(given, f.name) for f in dataclasses.fields(given)}
        return dataclasses.replace(self, **{name: value for name, value in changes.items() if value is not None})


SEARCH_RESOURCES = Resources(concurrent=None, cpus_per_trial=1.0, gpus_per_trial="auto")  # a search's defaults


@dataclass(frozen=True)
class LaunchConfig:
    """Every option of one launch of a search (``autoprune search`` or ``resume``), checked once when built.

    run.json keeps the search's own options (``to_record``): ``trials``, ``sampler``, ``seed``, ``resources``,
    ``early_stop``, ``address``. ``study_storage``, ``timeout`` and ``verbose`` hold for one call: a storage URL may
    hold a password (run.json keeps it redacted, as ``storage``), and a time budget is counted from the call.
    """

    trials: int | None = None  # the trials the search ends with (resume: in total); search.trials, else 20
    sampler: str | None = None  # tpe | nsga2 | random: search.sampler, else tpe
    seed: int | None = None  # the sampler's seed, 32 bits (default 0); with concurrent=1 the run is reproducible
    resources: Resources = field(default_factory=Resources)
    early_stop: EarlyStop = field(default_factory=EarlyStop)  # search.early_stop, else off
    address: str | None = None  # a Ray cluster: auto, host:port, ray://...; None: $RAY_ADDRESS, else a local Ray
    study_storage: str | None = None  # a database URL or a journal file (default: study.db in the run directory)
    timeout: float | None = None  # seconds (text such as "1h30m" is read): no trial starts after it, in this call
    verbose: bool = False  # Ray's own logs and every early-stopping decision

    def __post_init__(self) -> None:
        if self.trials is not None:
            check_count("--trials", self.trials)
        if self.sampler is not None:
            check_sampler(self.sampler)
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
            raise SearchError(f"--seed must be a non-negative integer of 32 bits (at most {MAX_SEED}), got {seed!r}")
        if not isinstance(self.resources, Resources) or not isinstance(self.early_stop, EarlyStop):
            raise TypeError("LaunchConfig.resources must be a Resources, and early_stop an EarlyStop")
        if self.address is not None:
            check_address(self.address)
        if self.timeout is not None:
            object.__setattr__(self, "timeout", parse_duration(self.timeout))

    @staticmethod
    def defaults(space: SearchSpace) -> LaunchConfig:
        """What a new search in ``space`` runs with where nothing is given: the space's ``search`` values, else
        autoprune's defaults."""
        return LaunchConfig(
            trials=space.trials or DEFAULT_TRIALS,
            sampler=space.sampler or DEFAULT_SAMPLER,
            seed=0,
            resources=SEARCH_RESOURCES,
            early_stop=EarlyStop().updated(EarlyStop(space.early_stop)),
        )

    def updated(self, given: LaunchConfig) -> LaunchConfig:
        """This configuration (the defaults of a new search, or a run's, read back) with what ``given`` sets: the
        options it leaves None stay as they are; the ones that hold for one call are ``given``'s."""
        stored = {name: getattr(given, name) for name in ("trials", "sampler", "seed", "address")}
        return dataclasses.replace(
            self,
            **{name: value for name, value in stored.items() if value is not None},
            resources=self.resources.updated(given.resources),
            early_stop=self.early_stop.updated(given.early_stop),
            study_storage=given.study_storage,
            timeout=given.timeout,
            verbose=given.verbose,
        )

    @property
    def local(self) -> bool:
        """Whether the trials run on a Ray this process starts on this machine (no cluster address)."""
        return (self.address or os.environ.get("RAY_ADDRESS") or "local") == "local"

    def check_machine(self) -> None:
        """Refuse more CPUs per trial than this machine has, when the trials run on it (a cluster's: by Ray)."""
        if self.local and self.resources.cpus_per_trial is not None:
            check_threads("--cpus-per-trial", self.resources.cpus_per_trial, SearchError)

    def to_record(self) -> dict[str, Any]:
        """The options run.json keeps, under the keys it has always had."""
        return {
            "sampler": self.sampler,
            "seed": self.seed,
            "trials": self.trials,
            "resources": dataclasses.asdict(self.resources),
            "early_stop": self.early_stop.to_dict(),
            "address": self.address,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LaunchConfig:
        """The options run.json keeps, read back (a missing resource takes ``search``'s default). A seed of more
        than 32 bits (runs from before ``--seed`` was held to them) is folded into the 32 the samplers take."""
        resources = {**dataclasses.asdict(SEARCH_RESOURCES), **record.get("resources", {})}
        return cls(
            trials=record["trials"],
            sampler=record["sampler"],
            seed=record["seed"] % (MAX_SEED + 1),
            resources=Resources(**{f.name: resources[f.name] for f in dataclasses.fields(Resources)}),
            early_stop=EarlyStop.from_dict(record.get("early_stop", {})),
            address=record.get("address"),
        )
