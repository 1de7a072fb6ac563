"""Shared test helpers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from autoprune import cli
from autoprune.rundir.directory import RunInfo

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
    from autoprune.searching.space import define_by_run

    trial = study.ask()
    define_by_run(trial, dims)
    return trial


def tune_searcher(study, space, policies=None):
    """The Ray Tune searcher a launch builds, over an in-memory ``study`` and ``space``; ``policies``
    (``refine.SearchPolicies``): none by default, the sampler alone."""
    from autoprune.raytune._searcher import searcher_class

    return searcher_class()(study, space, policies)


def results_of(trials, front=None, *, failed=0, stopped=(), baseline=None):
    """A finished run's ``ledger.Results`` over these trial records; the front defaults to their Pareto front."""
    from autoprune.rundir.ledger import Results
    from autoprune.searching.pareto import pareto_front

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
    """Write ``RUN_DIR/run.json`` as ``search`` would for a run made by hand, without Ray, in the file's own keys:
    the study ``autoprune`` in the run's own study.db, space.yaml, TPE, seed 0, one CPU a trial; ``fields`` replace
    any of those (run.json's keys). Returns the file read back."""
    defaults: dict[str, Any] = {
        "study_name": "autoprune",
        "storage": {"kind": "run-dir"},
        "space_source": "space.yaml",
        "sampler": "tpe",
        "seed": 0,
        "resources": {"concurrent": None, "cpus_per_trial": 1.0, "gpus_per_trial": "auto"},
    }
    doc = {**defaults, "space_digest": space_digest, "trials": trials, **fields}
    (run_dir / "run.json").write_text(json.dumps(doc, indent=2) + "\n")
    return RunInfo.read(run_dir)
