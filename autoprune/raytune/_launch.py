"""Ray start-up and one launch of trials: the Tuner, its searcher (``_searcher.py``) and its scheduler."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune.errors import SearchError, first_line, says_disk_full
from autoprune.raytune._localray import ray_start_environment, worker_runtime_env
from autoprune.raytune._scheduler import scheduler_class
from autoprune.raytune._searcher import searcher_class
from autoprune.raytune._worker import (
    EPOCH_KEY,
    EPOCHS_KEY,
    Job,
    is_baseline,
    trial_dirname,
    trial_label,
    tune_trial,
)
from autoprune.rundir import directory as rundir
from autoprune.rundir import ledger
from autoprune.rundir.directory import RunInfo
from autoprune.rundir.ledger import OBJECTIVES
from autoprune.searching.launchconfig import check_address as check_address_form
from autoprune.searching.launchconfig import gpu_share
from autoprune.searching.refine import SearchPolicies
from autoprune.searching.stopping import EarlyStop, ParetoHalving

if TYPE_CHECKING:
    import optuna

    from autoprune.searching.progress import Progress

Log = Callable[[str], None]


def _started_callback(progress: Progress) -> Any:
    """A Tune callback that tells ``progress`` when a trial's process really starts (not when it is queued)."""
    from ray.tune import Callback

    class Started(Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            progress.trial_started(trial.trial_id)

    return Started()


def check_address(address: str) -> None:
    """Fail fast on a malformed address, or a ``host:port`` nothing listens on (ray.init would retry for a long
    time)."""
    check_address_form(address)
    if address in ("auto", "local") or address.startswith("ray://"):  # not "localhost:PORT": that one is checked
        return
    host, _, port = address.rpartition(":")
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
    script = Path(__file__).resolve().parent / "_watchdog.py"
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
    share = gpu_share(requested)
    if share == "auto":
        return 1.0 / TRIALS_PER_GPU if cluster_gpus > 0 else 0.0
    return float(share)


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


@dataclass(frozen=True)
class Batch:
    """One launch of new trials: what ``search`` or ``resume`` asks of the Tuner, beyond the run's configuration."""

    kind: str  # search | resume: names the launch's folder under ray/
    trials: int  # new trials to start
    sampler_seed: int  # a new seed per launch: the same one would make the random sampler repeat its configs
    deadline: float | None = None  # time.monotonic() after which no trial starts; the running ones finish
    start: dict[str, Any] | None = None  # model.weights or the dense start as tensors, sent to every worker
    finished: tuple[dict[str, Any], ...] = ()  # records of the trials finished before this launch (progress)
    counted: int = 0  # trials counted before this launch


def launch(
    run_dir: Path, info: RunInfo, study: optuna.Study, space_yaml: str, batch: Batch, log: Log
) -> tuple[int, bool]:
    """Run ``batch.trials`` new trials of the run's ``study`` through Ray Tune (Ray must be initialized), as
    ``info.launch`` says: its resources, its sampler (set on ``study``), and with early stopping on, the Pareto-aware
    scheduler that judges the trials' intermediate results. The space's policies (``SearchPolicies``) run before
    each new trial is asked. Returns the number of trials started and whether the deadline ended the launch.
    """
    from ray import tune

    from autoprune.searching.progress import Progress

    cfg, res = info.launch, info.launch.resources
    cpus, gpus = float(res.cpus_per_trial), resolve_gpus(res.gpus_per_trial, cluster_gpus())
    fits = cluster_concurrency(cpus, gpus)
    concurrent = max(1, min(min(res.concurrent, fits) if res.concurrent else fits, batch.trials))
    space = rundir.space_from_text(space_yaml)
    study.sampler = ledger.make_sampler(cfg.sampler, batch.sampler_seed, info.sampler_options)
    scheduler = _early_stop_scheduler(cfg.early_stop, log if cfg.verbose else None)
    progress = Progress(log=log, requested=batch.trials, already=batch.counted, records=list(batch.finished))
    searcher = searcher_class()(
        study, space, SearchPolicies.of(space), progress=progress, scheduler=scheduler, deadline=batch.deadline, log=log
    )
    job = Job(
        run_dir=str(run_dir.resolve()),
        space_yaml=space_yaml,
        threads=max(1, int(cpus)),
        gpus=gpus,
        rungs=None if scheduler is None else (scheduler.halving.grace_period, scheduler.halving.reduction_factor),
        launch_dir=os.getcwd(),
        start=batch.start,
    )
    trainable = tune.with_resources(tune.with_parameters(tune_trial, job=job), {"cpu": cpus, "gpu": gpus})
    name = f"{batch.kind}-{len(info.launches):02d}"
    entry = {"kind": batch.kind, "name": name, "started": rundir.now(), "trials": batch.trials}
    info.launches.append(
        {**entry, "seed": batch.sampler_seed, "early_stop": cfg.early_stop.mode, "concurrent": concurrent}
    )
    info.write(run_dir)
    auto = res.gpus_per_trial == "auto"
    where = f" + {gpus:g} GPU" if gpus else (" (no GPU in the cluster: on the CPU)" if auto else " (on the CPU)")
    log(
        f"{batch.kind}: {batch.trials} trial{'s' if batch.trials != 1 else ''}, {concurrent} at a time, {cpus:g} CPU"
        f"{where} each, sampler {cfg.sampler} (seed {batch.sampler_seed}), "
        f"early stopping {cfg.early_stop.describe()}, run dir {run_dir}"
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=batch.trials,
            max_concurrent_trials=concurrent,
            reuse_actors=True,  # one worker process runs many trials: data stays loaded, no actor start-up
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str((run_dir / rundir.RAY_DIR).resolve()),
            verbose=1 if cfg.verbose else 0,
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[_started_callback(progress)],
        ),
    )
    try:
        # stdout belongs to --json. Tune's status tables (--verbose) go to stderr; without --verbose what Ray prints
        # there (a dead worker's "(raylet) A worker died..." notice) is dropped: the progress line says it.
        with (
            contextlib.nullcontext(sys.stderr) if cfg.verbose else open(os.devnull, "w") as sink,
            contextlib.redirect_stdout(sink),
        ):
            tuner.fit()
    finally:
        searcher.close_open_trials()
    if searcher.stop_reason is not None:
        fix = "free some space" if says_disk_full(searcher.stop_reason) else "fix that"
        raise SearchError(
            f"stopped: {searcher.stop_reason}; the finished trials are kept: {fix}, then `autoprune resume {run_dir}`"
        )
    return searcher.started, searcher.timed_out


def _early_stop_scheduler(early_stop: EarlyStop, log: Log | None) -> Any:
    """The Pareto-aware successive-halving scheduler of ``early_stop``, or None when it is off."""
    if early_stop.mode != "asha":
        return None
    halving = ParetoHalving(grace_period=early_stop.grace_period, reduction_factor=early_stop.reduction_factor)
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
