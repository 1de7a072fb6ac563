"""Shared test helpers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from autoprune import cli
from autoprune.rundir import RunInfo

# The smallest real search: 300 digits, one epoch per phase, one searched rate. Ray tests use it.
TINY_SPACE = """\
dataset: {name: digits, val_fraction: 0.2, limit: 300}
model: {name: lenet-300-100}
budget: {train_epochs: 1, finetune_epochs: 1, batch_size: 64}
prune:
  sparsity:
    fc1: {low: 0.5, high: 0.99}
"""


def run_cli(args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """Run ``autoprune ARGS`` in this process through ``cli.main``: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["autoprune", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def ask(study, dims):
    """``study.ask()`` with every searched dimension suggested, as a search's define-by-run space does."""
    from autoprune.space import define_by_run

    trial = study.ask()
    define_by_run(trial, dims)
    return trial


def tune_searcher(study, dims):
    """Ray Tune's Optuna searcher as a search builds it, over an in-memory ``study`` (its storage and name)."""
    import functools

    from autoprune import ledger
    from autoprune.raytune._launch import _searcher_class
    from autoprune.raytune._worker import suggest

    return _searcher_class()(
        space=functools.partial(suggest, dims=dims),
        metric=list(ledger.OBJECTIVES),
        mode=["max", "min"],
        study_name=study.study_name,
        storage=study._storage,
    )


def results_of(trials, front=None, *, failed=0, stopped=(), baseline=None):
    """A finished run's ``ledger.Results`` over these trial records; the front defaults to their Pareto front."""
    from autoprune.ledger import Results
    from autoprune.pareto import pareto_front

    front = pareto_front(trials) if front is None else front
    done = len(trials) + failed + len(stopped)
    return Results(
        trials=list(trials),
        front=list(front),
        failed=failed,
        running=0,
        counted=done,
        requested=done,
        baseline=baseline,
        stopped=list(stopped),
    )


def write_run_json(run_dir: Path, space_digest: str, *, trials: int, **fields: Any) -> RunInfo:
    """Write ``RUN_DIR/run.json`` as ``search`` would for a run made by hand, without Ray: the study
    ``autoprune`` in the run's own study.db, space.yaml, TPE, seed 0, one CPU a trial; ``fields`` replace any of
    those (``RunInfo``'s fields)."""
    defaults: dict[str, Any] = {
        "study_name": "autoprune",
        "storage": {"kind": "run-dir"},
        "space_source": "space.yaml",
        "sampler": "tpe",
        "seed": 0,
        "resources": {"concurrent": None, "cpus_per_trial": 1.0, "gpus_per_trial": "auto"},
    }
    info = RunInfo(**{**defaults, "space_digest": space_digest, "trials": trials, **fields})
    info.write(run_dir)
    return info
