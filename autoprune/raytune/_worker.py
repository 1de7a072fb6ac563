"""What runs on a Ray worker for one trial, and what it reports back to the driver.

The trial function runs the whole pipeline and reports its result once, at the end; ``outcome_of`` reads that
report on the driver's side. With early stopping on, the trial measures its validation accuracy on the
validation subset after each epoch (and after pruning), and reports it, with the planned parameter count and
every value measured so far, at the epochs where the scheduler judges (its rungs): one report per epoch would
cost a round trip to the driver each, as much as an epoch of a small model. These carry ``EPOCH_KEY`` and never
a record, so they can never enter the front. The keys of the reports are the protocol between the two sides.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoprune.errors import DivergedError, disk_full, first_line
from autoprune.rundir import directory as rundir
from autoprune.rundir.ledger import OBJECTIVES, Outcome
from autoprune.searching._attrs import BASELINE_ATTR
from autoprune.searching.dense_start import START_KIND as DENSE_START
from autoprune.searching.space import define_by_run
from autoprune.searching.stopping import rung_epochs

if TYPE_CHECKING:
    import optuna

    from autoprune.searching.stopping import Decision

_NUMBER_KEY = "_trial"  # the Optuna trial number, added to each suggested config
_BASELINE_KEY = "_baseline"  # True in the config of a seeded baseline (early stopping lets it finish)
_RECORD_KEY = "autoprune_record"
_MODEL_KEY = "autoprune_model"
_OUTCOME_KEY = "autoprune_outcome"
_REASON_KEY = "autoprune_reason"
_HISTORY_KEY = "autoprune_intermediate"  # [[epoch, stage, val_accuracy], ...] so far, as JSON text
EPOCH_KEY = "autoprune_epoch"  # intermediate reports: epochs done (both phases)
EPOCHS_KEY = "autoprune_epochs"  # the trial's epochs in all
STAGE_KEY = "autoprune_stage"  # train | prune | finetune


@dataclass(frozen=True)
class Job:
    """What every trial of one launch shares (sent once through Ray's object store)."""

    run_dir: str  # absolute
    space_yaml: str  # the frozen space document as YAML text
    threads: int  # torch threads: the trial's CPUs
    gpus: float  # GPUs reserved per trial (0: run on the CPU)
    rungs: tuple[float, float] | None = None  # early stopping: (grace period, reduction factor); None: off
    launch_dir: str = ""  # the folder the search was launched from: a user's relative paths mean it
    start: dict[str, Any] | None = None  # model.weights or the dense start as tensors, read once by the driver;
    # None: fresh weights


def trial_device(gpus: float, configured: str) -> str | None:
    """The device a trial runs on: ``cpu`` when it reserved no GPU and its space says ``auto`` (the GPUs belong
    to the trials that reserved them); else None, the config's own (``auto``: CUDA where the worker has it)."""
    return "cpu" if not gpus and configured == "auto" else None


def suggest(trial: optuna.Trial, dims: tuple) -> dict[str, Any]:
    """The configuration of a Tune trial: every searched dimension suggested on its Optuna ``trial`` (what the
    worker runs), plus as constants the trial number and, for a seeded baseline, that it is one."""
    config: dict[str, Any] = {**define_by_run(trial, dims), _NUMBER_KEY: trial.number}
    if trial.user_attrs.get(BASELINE_ATTR):
        config[_BASELINE_KEY] = True
    return config


def is_baseline(trial: Any) -> bool:
    """Whether a Tune trial runs a seeded baseline."""
    return bool(trial.config.get(_BASELINE_KEY))


def trial_label(trial: Any) -> str:
    """A Tune trial's Optuna trial number (what logs and the study call it)."""
    return str(trial.config.get(_NUMBER_KEY, trial.trial_id))


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial_label(trial)}"


def tune_trial(config: dict[str, Any], job: Job) -> None:
    """Tune function trainable: one full pipeline run, its result reported once at the end.

    Only the final report carries a record, which is what keeps a trial cut off half-way out of the front: the
    searcher records a trial without one as FAIL (or PRUNED when early stopping stopped it). Every Python error
    is caught and reported as an outcome so the search goes on and the reason reaches the study. When the
    scheduler stops the trial, Tune ends this function inside ``tune.report`` (SystemExit, not caught here).
    """
    import ray
    from ray import tune

    from autoprune.pipeline.trial import IntermediateResult, run_trial

    history: list[list[Any]] = []
    reported = [0.0]  # the epoch of the last report sent

    def progress(p: IntermediateResult) -> None:
        history.append([p.epoch, p.stage, p.val_accuracy])
        if not p.at_size:
            return  # still denser than it will end: its accuracy says little about the model it will be
        if not any(reported[0] < rung <= p.epoch for rung in rung_epochs(*job.rungs, p.epochs)):
            return  # no rung reached since the last report: nothing for the scheduler to judge
        reported[0] = p.epoch
        values = {OBJECTIVES[0]: p.val_accuracy, OBJECTIVES[1]: p.params_planned, _HISTORY_KEY: json.dumps(history)}
        tune.report({**values, EPOCH_KEY: p.epoch, EPOCHS_KEY: p.epochs, STAGE_KEY: p.stage})

    if job.launch_dir and os.path.isdir(job.launch_dir):
        os.chdir(job.launch_dir)  # a user's loader may read files by relative path, as it does in `trial`
    number = int(config[_NUMBER_KEY])
    params = {k: v for k, v in config.items() if k not in (_NUMBER_KEY, _BASELINE_KEY)}
    node = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}
    started = time.perf_counter()
    report: dict[str, Any]
    nan = {OBJECTIVES[0]: math.nan, OBJECTIVES[1]: math.nan}
    try:
        cfg = rundir.space_from_text(job.space_yaml).config_for(params)
        device = trial_device(job.gpus, cfg.device)
        # Without early stopping nothing is measured between epochs: the trial costs what it always did.
        result = run_trial(
            cfg,
            device=device,
            threads=job.threads,
            report=progress if job.rungs else None,
            start=job.start,
            start_kind="checkpoint" if cfg.model.weights is not None else DENSE_START,
        )
        try:
            result.save(rundir.new_model_path(job.run_dir, number))
        except Exception as exc:
            if not _out_of_space(exc, job.run_dir, result.model):
                raise
            # Not the trial's fault: it is not counted, and resume runs it again once there is space.
            reason = f"{NO_SPACE}: its model file could not be written ({first_line(exc)})"
            report = {**nan, _OUTCOME_KEY: "interrupted", _REASON_KEY: reason}
            report.update(node, trial_seconds=time.perf_counter() - started)
            tune.report(report)
            return
        report = {
            OBJECTIVES[0]: float(result.val_accuracy),
            OBJECTIVES[1]: int(result.params_nonzero),
            _RECORD_KEY: json.dumps(result.record()),
            _MODEL_KEY: rundir.model_file(number),
            _OUTCOME_KEY: "complete",
        }
    except DivergedError as exc:
        report = {**nan, _OUTCOME_KEY: "diverged", _REASON_KEY: str(exc)}
    except Exception as exc:  # the trial's own failure: recorded, and the search goes on
        traceback.print_exc()  # into the worker's log (ray/ and the session logs), for --verbose
        report = {**nan, _OUTCOME_KEY: "error", _REASON_KEY: first_line(exc)}
    report.update(node, trial_seconds=time.perf_counter() - started)
    report[_HISTORY_KEY] = json.dumps(history)
    tune.report(report)


NO_SPACE = "no space left on the device of the run directory"


def _out_of_space(exc: BaseException, run_dir: str, model: Any) -> bool:
    """Whether saving failed because the disk is full (torch reports it as an opaque write error)."""
    if disk_full(exc):
        return True
    try:
        needed = sum(p.numel() * p.element_size() for p in model.state_dict().values())
        return shutil.disk_usage(run_dir).free < max(16 << 20, 2 * needed)
    except (OSError, AttributeError):
        return False


def outcome_of(
    result: dict[str, Any],
    error: bool,
    trial_id: str,
    *,
    stopped: Decision | None = None,
) -> Outcome:
    """How a trial ended, from its last (flattened) result; ``stopped``: the early-stopping decision that stopped
    it. Its intermediate values come with its last report, final or intermediate."""
    kind = result.get(_OUTCOME_KEY)
    attrs = {"node_id": result.get("node_id"), "hostname": result.get("hostname"), "ray_trial_id": trial_id}
    seen = json.loads(result[_HISTORY_KEY]) if result.get(_HISTORY_KEY) else []
    common = {"attrs": attrs, "intermediate": seen}
    if kind == "complete" and result.get(_RECORD_KEY):
        record = json.loads(result[_RECORD_KEY])
        return Outcome("complete", record=record, model_path=result[_MODEL_KEY], **common)
    if kind in ("diverged", "error") or (kind == "interrupted" and result.get(_REASON_KEY)):
        return Outcome(kind, reason=str(result.get(_REASON_KEY, "")), **common)
    if stopped is not None:
        return Outcome("pruned", reason=stopped.reason, rung=(stopped.rung, stopped.epoch), **common)
    if error:
        reason = "the trial's process failed (killed, out of memory or node lost); see the Ray logs"
        return Outcome("crashed", reason=reason, **common)
    return Outcome("interrupted", reason="stopped before it finished (the search was interrupted)", **common)
