"""Ray start-up and one launch of trials: the searcher that records outcomes in the study, and the Tuner."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import ledger, rundir
from .._imports import worker_runtime_env
from ..errors import SearchError, first_line
from ..ledger import OBJECTIVES
from ..rundir import RunInfo
from ._worker import Job, outcome_of, suggest, trial_dirname, tune_trial

if TYPE_CHECKING:
    import optuna

    from ..report import Progress

_MODES = tuple({"maximize": "max", "minimize": "min"}[d] for d in ledger.DIRECTIONS)  # Ray's names
Log = Callable[[str], None]


@functools.cache
def _searcher_class() -> type:
    """OptunaSearch that records each trial's outcome, record and model path in the study before telling it.

    Built on first use so that importing this module does not import Ray. Tune pickles the searcher into its
    experiment folder; the state kept there is deliberately empty (no storage URL, no password): the study is
    the ledger, and a resume reopens it rather than unpickling a searcher.
    """
    from ray.tune.search.optuna import OptunaSearch

    class Searcher(OptunaSearch):
        progress: Progress | None = None

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            outcome = outcome_of(result or {}, error, trial_id)
            try:
                ledger.record_outcome(self._ot_study, ot_trial, outcome)
            except Exception as exc:  # a storage hiccup must not stop the search; the trial stays RUNNING
                logging.getLogger(__name__).error("could not record trial %s in the study: %s", ot_trial.number, exc)
            self._completed_trials.add(trial_id)
            if self.progress is not None:
                self.progress.finished(
                    ot_trial.number, outcome.kind, outcome.record, outcome.reason, counted=outcome.counted, key=trial_id
                )

        def close_open_trials(self) -> int:
            """FAIL the trials this searcher started that Tune never completed (Ctrl-C stops without telling)."""
            open_ids = [t for t in self._ot_trials if t not in self._completed_trials]
            for trial_id in open_ids:
                self.on_trial_complete(trial_id, result=None, error=False)
            return len(open_ids)

        @property
        def started(self) -> int:
            return len(self._ot_trials)

        def save(self, checkpoint_path: str) -> None:
            return None  # nothing to save: the study is the ledger

        def __getstate__(self) -> dict:
            return {"_metric": self._metric, "_mode": self._mode, "_study_name": self._study_name}

    Searcher.__qualname__ = Searcher.__name__ = "AutopruneSearcher"
    return Searcher


def _started_callback(progress: Progress) -> Any:
    """A Tune callback that tells ``progress`` when a trial's process really starts (not when it is queued)."""
    from ray.tune import Callback

    class Started(Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            progress.trial_started(trial.trial_id)

    return Started()


def _check_address(address: str) -> None:
    """Fail fast on a ``host:port`` nothing listens on (ray.init would retry for a long time)."""
    if address == "auto" or address.startswith(("ray://", "local")):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SearchError(f"--address {address!r}: expected auto or host:port, e.g. 10.0.0.1:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise SearchError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); start it with `ray start --head` or "
            "check the address"
        ) from None


def init_ray(address: str | None, verbose: bool) -> bool:
    """Start Ray (locally, or connect to ``address``); True when this call started it and must shut it down."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not verbose:
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # No address: a fresh local Ray, never a cluster some earlier `ray start` left behind; RAY_ADDRESS (set by
    # Ray's job submission for the entrypoint) counts as an address.
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_address(address)
    import ray

    if ray.is_initialized():
        return False
    level = logging.INFO if verbose else logging.ERROR
    try:
        ray.init(
            address=address or "local",
            include_dashboard=False,
            logging_level=level,
            log_to_driver=verbose,
            runtime_env=worker_runtime_env(address),  # trial workers import user modules as the driver does
        )
    except Exception as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray runtime"
        hint = (
            "; the cluster may use token authentication: set RAY_AUTH_MODE and RAY_AUTH_TOKEN as on its nodes"
            if "auth" in str(exc).lower()
            else ""
        )
        raise SearchError(f"cannot start or connect to {where}: {first_line(exc)}{hint}") from None
    for name in ("ray", "ray.tune", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(level)
    return True


def _cluster_concurrency(cpus: float, gpus: float) -> int:
    import ray

    res = ray.cluster_resources()
    fits = math.floor(res.get("CPU", 1) / cpus) if cpus > 0 else 10**6
    if gpus > 0:
        fits = min(fits, math.floor(res.get("GPU", 0) / gpus))
    if fits < 1:
        raise SearchError(
            f"no node can run a trial with {cpus} CPUs and {gpus} GPUs (the cluster has {res.get('CPU', 0):g} CPUs, "
            f"{res.get('GPU', 0):g} GPUs); lower --cpus-per-trial/--gpus-per-trial"
        )
    return fits


def launch(
    run_dir: Path,
    info: RunInfo,
    storage: optuna.storages.BaseStorage,
    space_yaml: str,
    *,
    n_trials: int,
    sampler_seed: int,
    kind: str,
    verbose: bool,
    log: Log,
    already: list[dict[str, Any]],
    already_counted: int,
) -> int:
    """Run ``n_trials`` new trials of the run's study through Ray Tune (Ray must be initialized).

    Returns the number of trials started.
    """
    from ray import tune

    from ..report import Progress

    res = info.resources
    cpus, gpus = float(res["cpus_per_trial"]), float(res["gpus_per_trial"])
    fits = _cluster_concurrency(cpus, gpus)
    concurrent = min(int(res["concurrent"]), fits) if res.get("concurrent") else fits
    concurrent = max(1, min(concurrent, n_trials))
    searcher = _searcher_class()(
        space=functools.partial(suggest, dims=rundir.space_from_text(space_yaml).dims),
        metric=list(OBJECTIVES),
        mode=list(_MODES),
        sampler=ledger.make_sampler(info.sampler, sampler_seed, info.sampler_options),
        study_name=info.study_name,
        storage=storage,
    )
    searcher.progress = Progress(log=log, requested=n_trials, already=already_counted, records=list(already))
    job = Job(run_dir=str(run_dir.resolve()), space_yaml=space_yaml, threads=max(1, int(cpus)), gpus=gpus)
    trainable = tune.with_resources(tune.with_parameters(tune_trial, job=job), {"cpu": cpus, "gpu": gpus})
    name = f"{kind}-{len(info.launches):02d}"
    entry = {"kind": kind, "name": name, "started": rundir.now(), "trials": n_trials, "seed": sampler_seed}
    info.launches.append({**entry, "concurrent": concurrent})
    info.write(run_dir)
    log(
        f"{kind}: {n_trials} trial{'s' if n_trials != 1 else ''}, {concurrent} at a time, {cpus:g} CPU"
        f"{f' + {gpus:g} GPU' if gpus else ''} each, sampler {info.sampler} (seed {sampler_seed}), run dir {run_dir}"
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=n_trials,
            max_concurrent_trials=concurrent,
            reuse_actors=True,  # one worker process runs many trials: data stays loaded, no actor start-up
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str((run_dir / rundir.RAY_DIR).resolve()),
            verbose=1 if verbose else 0,
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[_started_callback(searcher.progress)],
        ),
    )
    try:
        # Tune's status tables (--verbose) print to stdout, which belongs to --json: send them to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            tuner.fit()
    finally:
        searcher.close_open_trials()
    return searcher.started
