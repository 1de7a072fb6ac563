"""The search on Ray Tune: Ray Tune schedules pipeline trials, Optuna suggests them, the study keeps the ledger.

This package is the only place that uses Ray, and it imports Ray only inside the functions that start trials;
nothing imports it but the command line and the public API. The run directory is ``rundir.py``'s, the study
``ledger.py``'s. Here: ``run_search`` and ``resume_search`` (this file), Ray's start-up, the searcher that
records each outcome in the study and one launch of trials (``_launch.py``), and the trial function that runs
on the workers (``_worker.py``).

Workers write the model files straight into ``models/``: on a multi-node cluster ``--run-dir`` must be on a
filesystem every node mounts at the same path, and autoprune must be installed on every node.

Resume does not replay Ray's experiment state: it opens the same study, puts right what an interruption left
(``interrupted.py``) and launches a fresh Tuner for the trials still missing. Finished trials are never re-run
because every new trial is a new Optuna trial, and the sampler sees every earlier trial through the study.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import dense_start, interrupted, ledger, rundir
from .._bounds import MAX_SEED, check_count, check_threads
from .._paths import as_path
from .._trust import seal
from ..baselines import CALIBRATION_ATTR, DENSE_REFERENCE_ATTR, reference_of, seed_baselines
from ..errors import SearchError
from ..ledger import Results
from ..preflight import preflight_space
from ..rundir import RunInfo
from ..space import SearchSpace, load_space
from ..stopping import early_stop_settings, format_duration, parse_duration
from ._launch import check_address, cluster_concurrency, init_ray, launch, resolve_gpus, shutdown_ray

if TYPE_CHECKING:
    import optuna

__all__ = ["DEFAULT_TRIALS", "LaunchResult", "resume_search", "run_search"]

DEFAULT_TRIALS = 20

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class LaunchResult:
    """What a ``search`` or ``resume`` call ran, and the run's results afterwards."""

    run_dir: Path
    ran: int  # trials this call started
    results: Results
    interrupted: bool  # fewer trials counted than requested (Ctrl-C, time budget, or trials cut off)
    seconds: float
    report_files: dict[str, Path]
    timed_out: bool = False  # the time budget (--timeout) stopped new trials from starting


def _deadline(timeout: float | str | None) -> tuple[float | None, float | None]:
    """(seconds, time.monotonic() deadline) of ``--timeout``, counted from now."""
    if timeout is None:
        return None, None
    seconds = parse_duration(timeout)
    return seconds, time.monotonic() + seconds


def _launched(ran: tuple[int, bool], timeout: float | None, run_dir: Path, log: Log) -> tuple[int, bool]:
    started, timed_out = ran
    if timed_out:
        log(
            f"time budget {format_duration(timeout or 0)} reached: no new trials started; "
            f"continue with `autoprune resume {run_dir}`"
        )
    return started, timed_out


def _finish(
    run_dir: Path, study: optuna.Study, requested: int, ran: int, t0: float, log: Log, timed_out: bool = False
) -> LaunchResult:
    from ..report import write_report

    results = ledger.study_results(study, requested=requested, run_dir=run_dir)
    files: dict[str, Path] = {}
    try:
        files = write_report(run_dir, results)
    except OSError as exc:
        log(f"warning: could not write the report files: {exc}")
    return LaunchResult(
        run_dir=run_dir,
        ran=ran,
        results=results,
        interrupted=results.counted < results.requested,
        seconds=time.perf_counter() - t0,
        report_files=files,
        timed_out=timed_out,
    )


def _start_weights(space: SearchSpace) -> dict[str, Any] | None:
    """The tensors of the space's ``model.weights``, read once by the driver (None without one)."""
    path = space.default_config().model.weights
    if path is None:
        return None
    from ..models import read_weights

    return read_weights(path)


def _dense_reference(space: SearchSpace, start: dict[str, Any], log: Log) -> dict[str, Any]:
    """The checkpoint measured as it is on the search's splits; refuses weights that do not fit, before any trial."""
    from ..notes import CARVED_VALIDATION_NOTE
    from ..preflight import evaluate_start

    cfg = space.default_config()
    record = evaluate_start(cfg, start, device="cpu")
    log(
        f"search: dense reference (model.weights {cfg.model.weights}): val accuracy {record['val_accuracy']:.4f}, "
        f"test accuracy {record['test_accuracy']:.4f}, {record['params_total']} params; every trial starts from it"
    )
    if record.get("val_source") == "carved":
        log(CARVED_VALIDATION_NOTE)
    return reference_of(record)


def _check_resources(concurrent: int | None, cpus: float, gpus: float | str, address: str | None) -> None:
    if concurrent is not None:
        check_count("--concurrent", concurrent)
    if not (isinstance(cpus, (int, float)) and math.isfinite(cpus) and cpus > 0):
        raise SearchError(f"--cpus-per-trial must be > 0, got {cpus!r}")
    if (address or os.environ.get("RAY_ADDRESS") or "local") == "local":  # this machine; a cluster's: by Ray
        check_threads("--cpus-per-trial", cpus, SearchError)
    elif address:  # its form now, before the preflight trial; whether anything answers there, when Ray starts
        check_address(address, connect=False)
    if isinstance(gpus, str):
        gpus = resolve_gpus(gpus, 1.0)  # auto, or a number given as text; only its form is checked here
    if not (isinstance(gpus, (int, float)) and math.isfinite(gpus) and gpus >= 0):
        raise SearchError(f"--gpus-per-trial must be >= 0 (fractions share a GPU, e.g. 0.25), got {gpus!r}")
    if gpus > 1 and gpus != int(gpus):
        raise SearchError(f"--gpus-per-trial above 1 must be a whole number, got {gpus!r}")


def _check_something_to_search(space: SearchSpace, trials: int) -> None:
    """Refuse to run the same fixed configuration many times (every trial would be identical)."""
    if not space.dims and trials > 1:
        raise SearchError(
            f"{space.source} has nothing to search (every value is fixed), so {trials} trials would be identical; "
            "run it once with `autoprune trial`, use --trials 1, or make a value searched ({low, high} or {choices})"
        )


def run_search(
    space: str | os.PathLike | None,
    run_dir: str | os.PathLike,
    *,
    trials: int | None = None,
    concurrent: int | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float | str = "auto",
    address: str | None = None,
    sampler: str | None = None,
    seed: int = 0,
    study_storage: str | None = None,
    overrides: Sequence[str] = (),
    early_stop: str | None = None,
    reduction_factor: float | None = None,
    grace_period: float | None = None,
    timeout: float | str | None = None,
    verbose: bool = False,
    log: Log = _stderr,
) -> LaunchResult:
    """Start a new search in ``run_dir`` (which must not hold one) and run it to the end.

    ``trials`` defaults to the space's ``search.trials``, else 20; ``sampler`` to its ``search.sampler``, else
    tpe. ``concurrent`` defaults to as many trials as the cluster's CPUs (and GPUs) fit. With ``concurrent=1``
    the sequence of suggested configurations is reproducible for a given ``seed``. ``early_stop`` is ``off`` or
    ``asha`` (default: the space's ``search.early_stop``, else off), kept in run.json for resume. After
    ``timeout`` (seconds, or a duration such as ``"1h30m"``, counted from this call) no new trial starts.
    """
    import optuna

    t0 = time.perf_counter()
    timeout_s, deadline = _deadline(timeout)
    run_dir = as_path(run_dir, "--run-dir", SearchError)
    spec = load_space(space, overrides)
    spec.check_importable()  # a model or dataset the trial workers cannot load: refused before anything exists
    n = trials if trials is not None else (spec.trials or DEFAULT_TRIALS)
    check_count("--trials", n)
    sampler = ledger.check_sampler(sampler or spec.sampler or ledger.DEFAULT_SAMPLER)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise SearchError(f"--seed must be a non-negative integer of 32 bits (at most {MAX_SEED}), got {seed!r}")
    _check_resources(concurrent, cpus_per_trial, gpus_per_trial, address)
    _check_something_to_search(spec, n)
    stopping = early_stop_settings(early_stop or spec.early_stop, reduction_factor, grace_period)
    rundir.check_new_run_dir(run_dir)
    ledger.quiet_optuna()
    # A storage given by URL or path is opened now: a bad one fails before Ray starts or anything is written.
    given_storage = ledger.open_storage(study_storage, run_dir) if study_storage is not None else None
    start = _start_weights(spec)
    reference = _dense_reference(spec, start, log) if start is not None else None
    preflight_space(spec, start)  # the space's default trial on a few samples: what would fail every trial fails here
    epochs = dense_start.dense_epochs(spec)
    if epochs is not None:  # after the preflight: a space that cannot run fails before this costs anything
        start, reference, seconds = dense_start.train_dense(spec, epochs)
        dense_start.describe(reference, seconds, log)
    started_ray = init_ray(address, verbose)
    created: list[Path] = []
    new_study: tuple[str, optuna.storages.BaseStorage] | None = None
    try:
        cluster_concurrency(cpus_per_trial, gpus_per_trial)  # a trial no node can run: refused before any file
        if not run_dir.exists():
            created.append(run_dir)  # removed on failure only while empty: a racing driver may use it
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_existed = (run_dir / rundir.LOCK_FILE).exists()
        with rundir.run_lock(run_dir):  # before anything else is created: a second driver stops here
            if not lock_existed:
                created.append(run_dir / rundir.LOCK_FILE)
            # Again under the lock: a driver that won a race may have made this a run since the first check.
            rundir.check_new_run_dir(run_dir)
            if study_storage is None:
                created.append(run_dir / rundir.STUDY_FILE)
            storage = given_storage if given_storage is not None else ledger.open_storage(None, run_dir)
            study_name = "autoprune"
            if study_storage is not None:  # a shared database holds many studies: make the name unique
                study_name = f"autoprune-{run_dir.resolve().name}-{secrets.token_hex(3)}"
            study = ledger.create_study(storage, study_name, spec, rundir.autoprune_version())
            new_study = (study_name, storage)
            if reference is not None:
                study.set_user_attr(DENSE_REFERENCE_ATTR, reference)
            seeded = seed_baselines(study, spec, n)
            calibrating = study.user_attrs.get(CALIBRATION_ATTR)
            if calibrating:
                log(
                    f"search: the first {len(seeded)} trials calibrate {', '.join(calibrating['leaves'])} for the "
                    f"baselines: {', '.join(seeded)}; the ladder follows at the best of them (the default unless "
                    "another beats it by more than one standard error)"
                )
            elif seeded:
                log(f"search: the first {len(seeded)} trials are baselines: {', '.join(seeded)}")
            created.append(run_dir / rundir.SPACE_FILE)
            space_yaml = rundir.freeze_space(run_dir, spec)
            if epochs is not None and start is not None:
                created.append(dense_start.save(run_dir, start))
            info = RunInfo(
                study_name=study_name,
                storage=ledger.storage_record(study_storage, run_dir),
                space_digest=spec.digest,
                space_source=str(spec.source),
                sampler=sampler,
                seed=seed,
                trials=n,
                resources={
                    "concurrent": concurrent,
                    "cpus_per_trial": cpus_per_trial,
                    "gpus_per_trial": gpus_per_trial,
                },
                sampler_options=ledger.sampler_options(sampler, n),
                early_stop=stopping,
                address=address,
                version=rundir.autoprune_version(),
                created=rundir.now(),
                seal=seal(spec.digest),  # this user chose the space's modules: resume may import them
                objective=spec.objective,
            )
            info.write(run_dir)
            created.clear()  # the run exists from here on: never remove anything of it
            new_study = None
            (run_dir / rundir.MODELS_DIR).mkdir(exist_ok=True)
            ran, timed_out = _launched(
                launch(
                    run_dir,
                    info,
                    storage,
                    space_yaml,
                    n_trials=n,
                    sampler_seed=seed,
                    kind="search",
                    verbose=verbose,
                    log=log,
                    already=[],
                    already_counted=0,
                    deadline=deadline,
                    start=start,
                ),
                timeout_s,
                run_dir,
                log,
            )
            return _finish(run_dir, study, n, ran, t0, log, timed_out)
    except BaseException:
        # Undo a start that failed before run.json existed: what this call created, and nothing else.
        if new_study is not None and study_storage is not None:
            with contextlib.suppress(Exception):
                optuna.delete_study(study_name=new_study[0], storage=new_study[1])
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()  # rmdir: only an empty folder
        raise
    finally:
        if started_ray:
            shutdown_ray()


def resume_search(
    run_dir: str | os.PathLike,
    *,
    trials: int | None = None,
    study_storage: str | None = None,
    address: str | None = None,
    concurrent: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    early_stop: str | None = None,
    reduction_factor: float | None = None,
    grace_period: float | None = None,
    timeout: float | str | None = None,
    verbose: bool = False,
    log: Log = _stderr,
    allow_modules: Collection[str] = (),
) -> LaunchResult:
    """Finish an interrupted search, or extend a finished one to ``trials`` trials in total.

    Trials an interruption left RUNNING are closed as FAIL (outcome ``interrupted``) and replaced (a seeded
    baseline by itself), their model files set aside in ``models/interrupted/``; finished ones are kept and
    never re-run; trials enqueued into the study (``study.enqueue_trial``) run first.
    Resources and early stopping default to those in run.json (given ones replace them there); ``timeout``
    holds for this call only. The frozen space's digest is checked, and the code it names (``module:function``)
    is imported only when this user started the run or allows that module (``rundir.read_frozen_space``).
    """
    t0 = time.perf_counter()
    timeout_s, deadline = _deadline(timeout)
    run_dir = as_path(run_dir, "run_dir", SearchError)
    info = RunInfo.read(run_dir)
    stopping = early_stop_settings(early_stop, reduction_factor, grace_period, base=info.early_stop)
    if trials is not None:
        check_count("--trials", trials)
    space, space_yaml = rundir.read_frozen_space(run_dir, info, allow_modules=allow_modules)
    space.check_importable()  # a model or dataset the trial workers cannot load: refused before the study is touched
    resources = dict(info.resources)
    overrides = {"concurrent": concurrent, "cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial}
    resources.update({key: value for key, value in overrides.items() if value is not None})
    where = address if address is not None else info.address
    _check_resources(resources["concurrent"], float(resources["cpus_per_trial"]), resources["gpus_per_trial"], where)
    with rundir.run_lock(run_dir):
        study = ledger.load_study(info, run_dir, study_storage)
        ledger.check_objective(study, info, space)  # before anything is repaired or run
        records, failures, _ = ledger.trial_records(study, run_dir)
        counted = ledger.count_finished(records, failures)
        target = trials if trials is not None else info.trials
        missing = target - counted
        started_ray = False
        try:
            if missing > 0:  # connect first: an unreachable cluster must leave the study as it is
                _check_something_to_search(space, target)
                try:
                    started_ray = init_ray(None if where in (None, "local") else where, verbose)
                except SearchError as exc:
                    if address is None and where:
                        raise SearchError(
                            f"{exc} (this search ran on {where}; use --address local to resume here)"
                        ) from None
                    raise
                cluster_concurrency(float(resources["cpus_per_trial"]), resources["gpus_per_trial"])
            for line in interrupted.repair(study, run_dir, requeue=missing > 0):  # stale trials, files, baselines
                log(line)
            if missing <= 0:
                log(f"resume: {counted} trials finished already (requested {target}); nothing to run")
                return _finish(run_dir, study, info.trials, 0, t0, log)
            start = _start_weights(space)
            if start is None and (kept := dense_start.load_or_train(space, run_dir, log)) is not None:
                start, reference = kept
                if reference is not None:
                    study.set_user_attr(DENSE_REFERENCE_ATTR, reference)
            info.trials = target
            info.resources = resources
            info.early_stop = stopping
            info.address = where
            info.seal = seal(info.space_digest)  # its modules passed read_frozen_space: the next resume needs no flag
            # A new seed per launch: the same seed would make the random sampler repeat the first trials' configs.
            sampler_seed = (info.seed + len(study.trials)) % (MAX_SEED + 1)  # 32 bits, as the samplers take
            ran, timed_out = _launched(
                launch(
                    run_dir,
                    info,
                    study._storage,
                    space_yaml,
                    n_trials=missing,
                    sampler_seed=sampler_seed,
                    kind="resume",
                    verbose=verbose,
                    log=log,
                    already=records,
                    already_counted=counted,
                    deadline=deadline,
                    start=start,
                ),
                timeout_s,
                run_dir,
                log,
            )
        finally:
            if started_ray:
                shutdown_ray()
        return _finish(run_dir, study, target, ran, t0, log, timed_out)
