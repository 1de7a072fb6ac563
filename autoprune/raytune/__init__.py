"""The search on Ray Tune: Ray Tune schedules pipeline trials, Optuna suggests them, the study keeps the ledger.

This package is the only place that uses Ray, and it imports Ray only inside the functions that start trials;
nothing imports it but the command line and the public API. The run directory is ``rundir/directory.py``'s, the
study ``rundir/ledger.py``'s, the options of a launch ``searching/launchconfig.py``'s (a ``LaunchConfig``, taken
whole). Here: ``run_search`` and ``resume_search`` (this file), Ray's start-up and one launch of trials
(``_launch.py``), the searcher that asks the study and records each outcome in it (``_searcher.py``), and the
trial function that runs on the workers (``_worker.py``).

Workers write the model files straight into ``models/``: on a multi-node cluster ``--run-dir`` must be on a
filesystem every node mounts at the same path, and autoprune must be installed on every node.

Resume does not replay Ray's experiment state: it opens the same study, puts right what an interruption left
(``interrupted.py``) and launches a fresh Tuner for the trials still missing. Finished trials are never re-run
because every new trial is a new Optuna trial, and the sampler sees every earlier trial through the study.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune._bounds import MAX_SEED
from autoprune.errors import SearchError
from autoprune.io._paths import as_path
from autoprune.io._trust import seal
from autoprune.raytune._launch import Batch, cluster_concurrency, init_ray, launch, shutdown_ray
from autoprune.rundir import directory as rundir
from autoprune.rundir import interrupted, ledger
from autoprune.rundir.directory import RunInfo
from autoprune.rundir.ledger import Results
from autoprune.searching import dense_start
from autoprune.searching._attrs import CALIBRATION_ATTR, DENSE_REFERENCE_ATTR
from autoprune.searching._reference import reference_of
from autoprune.searching.baselines import seed_baselines
from autoprune.searching.launchconfig import DEFAULT_TRIALS, LaunchConfig
from autoprune.searching.preflight import preflight_space
from autoprune.searching.space import SearchSpace, load_space
from autoprune.searching.stopping import format_duration

if TYPE_CHECKING:
    import optuna

__all__ = ["DEFAULT_TRIALS", "LaunchResult", "resume_search", "run_search"]

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


def _deadline(timeout: float | None) -> float | None:
    """The time.monotonic() deadline of ``--timeout`` (seconds), counted from now."""
    return None if timeout is None else time.monotonic() + timeout


def _launched(ran: tuple[int, bool], cfg: LaunchConfig, run_dir: Path, log: Log) -> tuple[int, bool]:
    started, timed_out = ran
    if timed_out:
        log(
            f"time budget {format_duration(cfg.timeout or 0)} reached: no new trials started; "
            f"continue with `autoprune resume {run_dir}`"
        )
    return started, timed_out


def _finish(
    run_dir: Path, study: optuna.Study, requested: int, ran: int, t0: float, log: Log, timed_out: bool = False
) -> LaunchResult:
    from autoprune.report.render import write_report

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
    from autoprune.io.models import read_weights

    return read_weights(path)


def _dense_reference(space: SearchSpace, start: dict[str, Any], log: Log) -> dict[str, Any]:
    """The checkpoint measured as it is on the search's splits; refuses weights that do not fit, before any trial."""
    from autoprune.config import CARVED_VALIDATION_NOTE
    from autoprune.searching.preflight import evaluate_start

    cfg = space.default_config()
    record = evaluate_start(cfg, start, device="cpu")
    log(
        f"search: dense reference (model.weights {cfg.model.weights}): val accuracy {record['val_accuracy']:.4f}, "
        f"test accuracy {record['test_accuracy']:.4f}, {record['params_total']} params; every trial starts from it"
    )
    if record.get("val_source") == "carved":
        log(CARVED_VALIDATION_NOTE)
    return reference_of(record)


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
    config: LaunchConfig | None = None,
    *,
    overrides: Sequence[str] = (),
    log: Log = _stderr,
) -> LaunchResult:
    """Start a new search in ``run_dir`` (which must not hold one) and run it to the end, as ``config`` says.

    What ``config`` leaves None comes from the space's ``search`` section, else the defaults
    (``LaunchConfig.defaults``: 20 trials, tpe, seed 0, one CPU and ``auto`` GPUs a trial, early stopping off);
    run.json keeps the result for resume. With ``concurrent=1`` the sequence of suggested configurations is
    reproducible for a given seed. After ``timeout`` (counted from this call) no new trial starts.
    """
    t0 = time.perf_counter()
    given = config if config is not None else LaunchConfig()
    deadline = _deadline(given.timeout)
    run_dir = as_path(run_dir, "--run-dir", SearchError)
    spec = load_space(space, overrides)
    spec.check_importable()  # a model or dataset the trial workers cannot load: refused before anything exists
    cfg = LaunchConfig.defaults(spec).updated(given)
    cfg.check_machine()
    _check_something_to_search(spec, cfg.trials)
    rundir.check_new_run_dir(run_dir)
    ledger.quiet_optuna()
    # A storage given by URL or path is opened now: a bad one fails before Ray starts or anything is written.
    storage = ledger.open_storage(cfg.study_storage, run_dir) if cfg.study_storage is not None else None
    start = _start_weights(spec)
    reference = _dense_reference(spec, start, log) if start is not None else None
    preflight_space(spec, start)  # the space's default trial on a few samples: what would fail every trial fails here
    epochs = dense_start.dense_epochs(spec)
    if epochs is not None:  # after the preflight: a space that cannot run fails before this costs anything
        start, reference, seconds = dense_start.train_dense(spec, epochs)
        dense_start.describe(reference, seconds, log)
    started_ray = init_ray(cfg.address, cfg.verbose)
    try:
        cluster_concurrency(cfg.resources.cpus_per_trial, cfg.resources.gpus_per_trial)  # refused before any file
        dense = start if epochs is not None else None
        with _new_run(run_dir, spec, cfg, storage, reference, dense, log) as (info, study, space_yaml):
            batch = Batch("search", cfg.trials, cfg.seed, deadline=deadline, start=start)
            ran, timed_out = _launched(launch(run_dir, info, study, space_yaml, batch, log), cfg, run_dir, log)
            return _finish(run_dir, study, cfg.trials, ran, t0, log, timed_out)
    finally:
        if started_ray:
            shutdown_ray()


@contextlib.contextmanager
def _new_run(
    run_dir: Path,
    spec: SearchSpace,
    cfg: LaunchConfig,
    storage: optuna.storages.BaseStorage | None,
    reference: dict[str, Any] | None,
    dense: dict[str, Any] | None,
    log: Log,
) -> Iterator[tuple[RunInfo, optuna.Study, str]]:
    """Make ``run_dir`` a run, under its lock, held while the caller runs trials: the study (seeded with the
    baselines), the frozen space, the dense start (``dense``), run.json last. A failure before run.json exists
    removes what this call created, and nothing else. Yields the run's ``RunInfo``, its study and the frozen space."""
    import optuna

    created: list[Path] = []
    new_study: tuple[str, optuna.storages.BaseStorage] | None = None
    try:
        if not run_dir.exists():
            created.append(run_dir)  # removed on failure only while empty: a racing driver may use it
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_existed = (run_dir / rundir.LOCK_FILE).exists()
        with rundir.run_lock(run_dir):  # before anything else is created: a second driver stops here
            if not lock_existed:
                created.append(run_dir / rundir.LOCK_FILE)
            # Again under the lock: a driver that won a race may have made this a run since the first check.
            rundir.check_new_run_dir(run_dir)
            if storage is None:
                created.append(run_dir / rundir.STUDY_FILE)
                storage = ledger.open_storage(None, run_dir)
            study_name = "autoprune"
            if cfg.study_storage is not None:  # a shared database holds many studies: make the name unique
                study_name = f"autoprune-{run_dir.resolve().name}-{secrets.token_hex(3)}"
            study = ledger.create_study(storage, study_name, spec, rundir.autoprune_version())
            new_study = (study_name, storage)
            if reference is not None:
                study.set_user_attr(DENSE_REFERENCE_ATTR, reference)
            _seed(study, spec, cfg.trials, log)
            created.append(run_dir / rundir.SPACE_FILE)
            space_yaml = rundir.freeze_space(run_dir, spec)
            if dense is not None:
                created.append(dense_start.save(run_dir, dense))
            info = RunInfo(
                study_name=study_name,
                storage=ledger.storage_record(cfg.study_storage, run_dir),
                space_digest=spec.digest,
                space_source=str(spec.source),
                launch=cfg,
                sampler_options=ledger.sampler_options(cfg.sampler, cfg.trials),
                version=rundir.autoprune_version(),
                created=rundir.now(),
                seal=seal(spec.digest),  # this user chose the space's modules: resume may import them
                objective=spec.objective,
            )
            info.write(run_dir)
            created.clear()  # the run exists from here on: never remove anything of it
            new_study = None
            (run_dir / rundir.MODELS_DIR).mkdir(exist_ok=True)
            yield info, study, space_yaml
    except BaseException:
        # Undo a start that failed before run.json existed: what this call created, and nothing else.
        if new_study is not None and cfg.study_storage is not None:
            with contextlib.suppress(Exception):
                optuna.delete_study(study_name=new_study[0], storage=new_study[1])
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()  # rmdir: only an empty folder
        raise


def _seed(study: optuna.Study, spec: SearchSpace, trials: int, log: Log) -> None:
    """Enqueue the space's baselines (and calibration probes) into a new study, and say so."""
    seeded = seed_baselines(study, spec, trials)
    calibrating = study.user_attrs.get(CALIBRATION_ATTR)
    if calibrating:
        log(
            f"search: the first {len(seeded)} trials calibrate {', '.join(calibrating['leaves'])} for the "
            f"baselines: {', '.join(seeded)}; the ladder follows at the best of them (the default unless "
            "another beats it by more than one standard error)"
        )
    elif seeded:
        log(f"search: the first {len(seeded)} trials are baselines: {', '.join(seeded)}")


def resume_search(
    run_dir: str | os.PathLike,
    changes: LaunchConfig | None = None,
    *,
    log: Log = _stderr,
    allow_modules: Collection[str] = (),
) -> LaunchResult:
    """Finish an interrupted search, or extend a finished one to ``changes.trials`` trials in total.

    The search's options are run.json's, with what ``changes`` sets replacing them there (``LaunchConfig.updated``;
    its sampler and seed stay the search's); its ``timeout`` holds for this call only. Trials an interruption left
    RUNNING are closed as FAIL (outcome ``interrupted``) and replaced (a seeded baseline by itself), their model
    files set aside in ``models/interrupted/``; finished ones are kept and never re-run; trials enqueued into the
    study (``study.enqueue_trial``) run first. The frozen space's digest is checked, and the code it names
    (``module:function``) is imported only when this user started the run or allows that module
    (``rundir.read_frozen_space``).
    """
    t0 = time.perf_counter()
    given = changes if changes is not None else LaunchConfig()
    if given.sampler is not None or given.seed is not None:
        raise SearchError("a search keeps the sampler and seed it started with; start a new search to change them")
    deadline = _deadline(given.timeout)
    run_dir = as_path(run_dir, "run_dir", SearchError)
    info = RunInfo.read(run_dir)
    cfg = info.launch.updated(given)
    space, space_yaml = rundir.read_frozen_space(run_dir, info, allow_modules=allow_modules)
    space.check_importable()  # a model or dataset the trial workers cannot load: refused before the study is touched
    cfg.check_machine()
    with rundir.run_lock(run_dir):
        study = ledger.load_study(info, run_dir, cfg.study_storage)
        ledger.check_objective(study, info, space)  # before anything is repaired or run
        records, failures, _ = ledger.trial_records(study, run_dir)
        counted = ledger.count_finished(records, failures)
        missing = cfg.trials - counted
        started_ray = False
        try:
            if missing > 0:  # connect first: an unreachable cluster must leave the study as it is
                _check_something_to_search(space, cfg.trials)
                started_ray = _connect(cfg, asked=given.address is not None)
                cluster_concurrency(cfg.resources.cpus_per_trial, cfg.resources.gpus_per_trial)
            for line in interrupted.repair(study, run_dir, requeue=missing > 0):  # stale trials, files, baselines
                log(line)
            if missing <= 0:
                log(f"resume: {counted} trials finished already (requested {cfg.trials}); nothing to run")
                return _finish(run_dir, study, info.launch.trials, 0, t0, log)
            start = _start_weights(space)
            if start is None and (kept := dense_start.load_or_train(space, run_dir, log)) is not None:
                start, reference = kept
                if reference is not None:
                    study.set_user_attr(DENSE_REFERENCE_ATTR, reference)
            info.launch = cfg  # run.json keeps the options given (the launch writes it)
            info.seal = seal(info.space_digest)  # its modules passed read_frozen_space: the next resume needs no flag
            # A new seed per launch: the same seed would make the random sampler repeat the first trials' configs.
            sampler_seed = (cfg.seed + len(study.trials)) % (MAX_SEED + 1)  # 32 bits, as the samplers take
            batch = Batch("resume", missing, sampler_seed, deadline, start, tuple(records), counted)
            ran, timed_out = _launched(launch(run_dir, info, study, space_yaml, batch, log), cfg, run_dir, log)
        finally:
            if started_ray:
                shutdown_ray()
        return _finish(run_dir, study, cfg.trials, ran, t0, log, timed_out)


def _connect(cfg: LaunchConfig, *, asked: bool) -> bool:
    """Start or join the Ray of a resumed run (``local``: this machine); whether this call started it. A cluster the
    search ran on that does not answer any more is refused with the way to resume here instead."""
    where = cfg.address
    try:
        return init_ray(None if where in (None, "local") else where, cfg.verbose)
    except SearchError as exc:
        if not asked and where:
            raise SearchError(f"{exc} (this search ran on {where}; use --address local to resume here)") from None
        raise
