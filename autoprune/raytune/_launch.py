"""Ray start-up and one launch of trials: the searcher that records outcomes in the study, and the Tuner."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import ledger, rundir
from .._imports import worker_runtime_env
from .._localray import ray_start_environment
from ..baselines import Calibration
from ..errors import SearchError, first_line
from ..ledger import OBJECTIVES
from ..refine import Refiner, refine_settings, size_targets
from ..rundir import RunInfo
from ..stopping import ParetoHalving
from ._scheduler import scheduler_class
from ._worker import (
    EPOCH_KEY,
    EPOCHS_KEY,
    NO_SPACE,
    Job,
    is_baseline,
    outcome_of,
    suggest,
    trial_dirname,
    trial_label,
    tune_trial,
)

if TYPE_CHECKING:
    import optuna

    from ..progress import Progress

_MODES = tuple({"maximize": "max", "minimize": "min"}[d] for d in ledger.DIRECTIONS)  # Ray's names
Log = Callable[[str], None]


@functools.cache
def _searcher_class() -> type:
    """OptunaSearch that records each trial's outcome, record and model path in the study before telling it.

    Built on first use so that importing this module does not import Ray. Tune pickles the searcher into its
    experiment folder; the state kept there is deliberately empty (no storage URL, no password): the study is
    the ledger, and a resume reopens it rather than unpickling a searcher.
    """
    from ray.tune.search import Searcher as TuneSearcher
    from ray.tune.search.optuna import OptunaSearch

    class Searcher(OptunaSearch):
        progress: Progress | None = None
        early_stop: Any = None  # the early-stopping scheduler, which knows the trials it stopped
        deadline: float | None = None  # time.monotonic() after which no trial starts
        timed_out: bool = False
        stop_reason: str | None = None  # set when going on would only fail: no new trial is started
        refiner: Refiner | None = None  # front refinement: may enqueue the next trial's parameters
        calibration: Calibration | None = None  # baseline seeding: enqueues the ladder once its probes are done

        def suggest(self, trial_id: str) -> dict | str | None:
            if self.stop_reason is not None:
                return TuneSearcher.FINISHED
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.timed_out = True
                return TuneSearcher.FINISHED  # running trials go on; no new one starts
            if trial_id not in self._ot_trials:  # the ask below takes what these enqueue
                calibrating = self.calibration is not None and self.calibration.before_ask(self._ot_study)
                if self.refiner is not None and not calibrating:
                    self.refiner.before_ask(self._ot_study)
            return super().suggest(trial_id)

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            # Optuna refuses intermediate values in a multi-objective study (trial.report): every report carries
            # the trial's values so far, and the last one goes into the study as a user attribute.
            return None

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            stopped = self.early_stop.stopped.get(trial_id) if self.early_stop is not None else None
            outcome = outcome_of(result or {}, error, trial_id, stopped=stopped)
            if outcome.reason and outcome.reason.startswith(NO_SPACE) and self.stop_reason is None:
                self.stop_reason = outcome.reason
            try:
                ledger.record_outcome(self._ot_study, ot_trial, outcome)
            except Exception as exc:  # the ledger cannot be written (a full disk): stop, resume closes the trial
                root = exc
                while root.__cause__ is not None or root.__context__ is not None:  # Optuna wraps the database's
                    root = root.__cause__ or root.__context__
                if self.stop_reason is None:
                    self.stop_reason = f"cannot record trial {ot_trial.number} in the study ({first_line(root, 160)})"
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


def check_address(address: str, *, connect: bool = True) -> None:
    """Fail fast on a malformed address, or (``connect``) a ``host:port`` nothing listens on (ray.init would retry
    for a long time)."""
    if address in ("auto", "local") or address.startswith("ray://"):  # not "localhost:PORT": that one is checked
        return
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not host:
        raise SearchError(f"--address {address!r}: expected auto or host:port, e.g. 10.0.0.1:6379")
    if not 0 < int(port) < 65536:  # the resolver would take 99999 modulo 65536, a port nobody meant
        raise SearchError(f"--address {address!r}: port {port} is not a number from 1 to 65535; e.g. host:6379")
    if not connect:
        return
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
        check_address(address)
    import ray

    if ray.is_initialized():
        return False
    level = logging.INFO if verbose else logging.ERROR
    try:
        with ray_start_environment(local=not address) as extra:  # a local Ray listens on 127.0.0.1 only
            context = ray.init(
                address=address or "local",
                include_dashboard=False,
                logging_level=level,
                log_to_driver=verbose,
                runtime_env=worker_runtime_env(address),  # trial workers import user modules as the driver does
                **extra,
            )
    except Exception as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray runtime"
        hint = (
            "; the cluster may use token authentication: set RAY_AUTH_MODE and RAY_AUTH_TOKEN as on its nodes"
            if "auth" in str(exc).lower()
            else ""
        )
        raise SearchError(f"cannot start or connect to {where}: {first_line(exc)}{hint}") from None
    if not address:
        _start_watchdog(context.address_info.get("session_dir"))
    for name in ("ray", "ray.tune", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        # A trial whose process dies is one progress line of ours; Tune would add a traceback and a summary.
        for name in ("ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    return True


_watchdog: subprocess.Popen | None = None


def _start_watchdog(session_dir: str | None) -> None:
    """Have the Ray processes of this local start stopped if this process dies without shutting Ray down."""
    global _watchdog
    if not session_dir or sys.platform != "linux":
        return
    script = Path(__file__).resolve().parent.parent / "_watchdog.py"
    with contextlib.suppress(OSError):
        _watchdog = subprocess.Popen(
            [sys.executable, str(script), session_dir], stdin=subprocess.PIPE, start_new_session=True, close_fds=True
        )


def shutdown_ray() -> None:
    """Shut down the Ray this process started, and its watchdog."""
    global _watchdog
    import ray

    ray.shutdown()
    if _watchdog is not None:
        with contextlib.suppress(OSError):
            _watchdog.stdin.close()  # EOF: the watchdog stops what Ray left behind, then exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            _watchdog.wait(timeout=10)
        _watchdog = None


# Trials that share one GPU under --gpus-per-trial auto: a LeNet-sized trial leaves most of a GPU idle. Pending its
# measurement on a GPU (benchmarks/gpu_check.py, part 3), the target: 8 trials at >= 70% of solo speed.
TRIALS_PER_GPU = 8


def resolve_gpus(requested: float | str, cluster_gpus: float) -> float:
    """The GPU share of each trial: ``auto`` is 1/``TRIALS_PER_GPU`` where the cluster has GPUs, else 0 (the CPU);
    a number is taken as it is (0 forces the CPU)."""
    if isinstance(requested, str):
        if requested.strip().lower() == "auto":
            return 1.0 / TRIALS_PER_GPU if cluster_gpus > 0 else 0.0
        try:
            requested = float(requested)
        except ValueError:
            raise SearchError(
                f"--gpus-per-trial must be auto or a number (0 for the CPU, 0.25 to share a GPU by four), got "
                f"{requested!r}"
            ) from None
    return float(requested)


def cluster_gpus() -> float:
    """GPUs in the Ray cluster (Ray must be initialized)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def cluster_concurrency(cpus: float, gpus: float | str) -> int:
    """How many trials of this size the cluster fits at once; refuses one line when no node fits one."""
    import ray

    res = ray.cluster_resources()
    gpus = resolve_gpus(gpus, float(res.get("GPU", 0)))
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
    deadline: float | None = None,
    start: dict[str, Any] | None = None,
) -> tuple[int, bool]:
    """Run ``n_trials`` new trials of the run's study through Ray Tune (Ray must be initialized).

    With early stopping on in ``info.early_stop``, the Pareto-aware scheduler judges the trials' intermediate
    results. After ``deadline`` (``time.monotonic()``) no trial starts; the running ones finish. ``start`` (the
    tensors of ``model.weights``, read once here) travels to every worker with the job: no shared folder needed.
    Returns the number of trials started and whether the deadline ended the launch.
    """
    from ray import tune

    from ..progress import Progress

    res = info.resources
    cpus, gpus = float(res["cpus_per_trial"]), resolve_gpus(res["gpus_per_trial"], cluster_gpus())
    fits = cluster_concurrency(cpus, gpus)
    concurrent = min(int(res["concurrent"]), fits) if res.get("concurrent") else fits
    concurrent = max(1, min(concurrent, n_trials))
    space = rundir.space_from_text(space_yaml)
    searcher = _searcher_class()(
        space=functools.partial(suggest, dims=space.dims),
        metric=list(OBJECTIVES),
        mode=list(_MODES),
        sampler=ledger.make_sampler(info.sampler, sampler_seed, info.sampler_options),
        study_name=info.study_name,
        storage=storage,
    )
    searcher.progress = Progress(log=log, requested=n_trials, already=already_counted, records=list(already))
    searcher.deadline = deadline
    searcher.calibration = Calibration(space, log=log)
    searcher.refiner = Refiner(refine_settings(space.refine), space.dims, log=log, sizes=size_targets(space.sizes))
    scheduler = _early_stop_scheduler(info.early_stop, log if verbose else None)
    searcher.early_stop = scheduler
    job = Job(
        run_dir=str(run_dir.resolve()),
        space_yaml=space_yaml,
        threads=max(1, int(cpus)),
        gpus=gpus,
        rungs=None if scheduler is None else (scheduler.halving.grace_period, scheduler.halving.reduction_factor),
        launch_dir=os.getcwd(),
        start=start,
    )
    trainable = tune.with_resources(tune.with_parameters(tune_trial, job=job), {"cpu": cpus, "gpu": gpus})
    name = f"{kind}-{len(info.launches):02d}"
    entry = {
        "kind": kind,
        "name": name,
        "started": rundir.now(),
        "trials": n_trials,
        "seed": sampler_seed,
        "early_stop": info.early_stop.get("mode", "off"),
    }
    info.launches.append({**entry, "concurrent": concurrent})
    info.write(run_dir)
    auto = str(res["gpus_per_trial"]).lower() == "auto"
    where = f" + {gpus:g} GPU" if gpus else (" (no GPU in the cluster: on the CPU)" if auto else " (on the CPU)")
    log(
        f"{kind}: {n_trials} trial{'s' if n_trials != 1 else ''}, {concurrent} at a time, {cpus:g} CPU"
        f"{where} each, sampler {info.sampler} (seed {sampler_seed}), "
        f"early stopping {_describe(info.early_stop)}, run dir {run_dir}"
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
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
        # stdout belongs to --json. Tune's status tables (--verbose) go to stderr; without --verbose what Ray prints
        # there (a dead worker's "(raylet) A worker died..." notice) is dropped: the progress line says it.
        with (
            contextlib.nullcontext(sys.stderr) if verbose else open(os.devnull, "w") as sink,
            contextlib.redirect_stdout(sink),
        ):
            tuner.fit()
    finally:
        searcher.close_open_trials()
    if searcher.stop_reason is not None:
        full = any(w in searcher.stop_reason.lower() for w in ("no space", "disk is full", "disk full"))
        fix = "free some space" if full else "fix that"
        raise SearchError(
            f"stopped: {searcher.stop_reason}; the finished trials are kept: {fix}, then `autoprune resume {run_dir}`"
        )
    return searcher.started, searcher.timed_out


def _describe(early_stop: dict[str, Any]) -> str:
    if early_stop.get("mode") != "asha":
        return "off"
    return f"asha (reduction factor {early_stop['reduction_factor']:g}, grace period {early_stop['grace_period']:g})"


def _early_stop_scheduler(early_stop: dict[str, Any], log: Log | None) -> Any:
    """The Pareto-aware successive-halving scheduler for ``run.json``'s early_stop, or None when off."""
    if early_stop.get("mode") != "asha":
        return None
    halving = ParetoHalving(
        grace_period=float(early_stop["grace_period"]), reduction_factor=float(early_stop["reduction_factor"])
    )
    return scheduler_class()(
        halving,
        epoch_key=EPOCH_KEY,
        accuracy_key=OBJECTIVES[0],
        params_key=OBJECTIVES[1],
        last_key=EPOCHS_KEY,
        label=trial_label,
        log=log,
        exempt=is_baseline,
    )
