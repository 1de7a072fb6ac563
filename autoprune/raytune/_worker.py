"""What runs on a Ray worker for one trial, and what it reports back to the driver.

The trial function runs the whole pipeline and reports once, at the end; ``outcome_of`` reads that report on
the driver's side. The keys of the report are the protocol between the two.
"""

from __future__ import annotations

import json
import math
import socket
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import rundir
from ..errors import DivergedError, first_line
from ..ledger import OBJECTIVES, Outcome
from ..space import define_by_run

if TYPE_CHECKING:
    import optuna

_NUMBER_KEY = "_trial"  # the Optuna trial number, added to each suggested config
_RECORD_KEY = "autoprune_record"
_MODEL_KEY = "autoprune_model"
_OUTCOME_KEY = "autoprune_outcome"
_REASON_KEY = "autoprune_reason"


@dataclass(frozen=True)
class Job:
    """What every trial of one launch shares (sent once through Ray's object store)."""

    run_dir: str  # absolute
    space_yaml: str  # the frozen space document as YAML text
    threads: int  # torch threads: the trial's CPUs
    gpus: float  # GPUs reserved per trial (0: run on the CPU)


def suggest(trial: optuna.Trial, dims: tuple) -> dict[str, int]:
    """Define-by-run space for OptunaSearch: every searched dimension, plus the trial number as a constant.

    Module level so that it pickles by reference (bind ``dims`` with ``functools.partial``).
    """
    define_by_run(trial, dims)
    return {_NUMBER_KEY: trial.number}


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.config.get(_NUMBER_KEY, trial.trial_id)}"


def tune_trial(config: dict[str, Any], job: Job) -> None:
    """Tune function trainable: one full pipeline run, reported once at the end.

    Reporting once is what keeps a trial cut off half-way out of the front: OptunaSearch tells the study the
    last reported values, and a trial that never reports is closed as FAIL. Every Python error is caught and
    reported as an outcome so the search goes on and the reason reaches the study.
    """
    import ray
    from ray import tune

    from ..trial import run_trial

    number = int(config[_NUMBER_KEY])
    params = {k: v for k, v in config.items() if k != _NUMBER_KEY}
    node = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}
    started = time.perf_counter()
    report: dict[str, Any]
    nan = {OBJECTIVES[0]: math.nan, OBJECTIVES[1]: math.nan}
    try:
        cfg = rundir.space_from_text(job.space_yaml).config_for(params)
        # A trial that reserved no GPU stays off the GPUs, which belong to the trials that reserved them.
        device = "cpu" if not job.gpus and cfg.device == "auto" else None
        result = run_trial(cfg, device=device, threads=job.threads)
        result.save(rundir.new_model_path(job.run_dir, number))
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
    tune.report(report)


def outcome_of(result: dict[str, Any], error: bool, trial_id: str) -> Outcome:
    """How a trial ended, from its last (flattened) result."""
    kind = result.get(_OUTCOME_KEY)
    attrs = {"node_id": result.get("node_id"), "hostname": result.get("hostname"), "ray_trial_id": trial_id}
    if kind == "complete" and result.get(_RECORD_KEY):
        return Outcome("complete", record=json.loads(result[_RECORD_KEY]), model_path=result[_MODEL_KEY], attrs=attrs)
    if kind in ("diverged", "error"):
        return Outcome(kind, reason=str(result.get(_REASON_KEY, "")), attrs=attrs)
    if error:
        reason = "the trial's process failed (killed, out of memory or node lost); see the Ray logs"
        return Outcome("crashed", reason=reason, attrs=attrs)
    return Outcome("interrupted", reason="stopped before it finished (the search was interrupted)", attrs=attrs)
