"""Early stopping and time budgets on a real Ray runtime and a real Optuna study (digits, LeNet-300-100)."""

from __future__ import annotations

import datetime
import json
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from _session import kill_driver_when

optuna = pytest.importorskip("optuna")
ray = pytest.importorskip("ray")

from optuna.trial import TrialState  # noqa: E402
from test_search import _study  # noqa: E402

from autoprune import api  # noqa: E402
from autoprune.rundir.directory import RunInfo  # noqa: E402

pytestmark = pytest.mark.ray

# Every trial has the same planned size (fixed sparsity), so all are peers; the learning rate decides who trails.
SPACE = """\
dataset: {name: digits, val_fraction: 0.2}
model: {name: lenet-300-100}
budget: {train_epochs: 6, finetune_epochs: 2, batch_size: 64}
seed: 0
train:
  lr: {low: 1.0e-4, high: 0.2, log: true}
  penalty: none
prune:
  sparsity: {fc1: 0.9, fc2: 0.8}
finetune:
  lr: 0.01
"""


@pytest.fixture(scope="module")
def space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "lr.yaml"
    path.write_text(SPACE)
    return path


def _states(run_dir: Path) -> dict[int, str]:
    try:
        con = sqlite3.connect(f"file:{run_dir / 'study.db'}?mode=ro", uri=True)
        rows = con.execute("select number, state from trials").fetchall()
        con.close()
    except sqlite3.Error:
        return {}
    return dict(rows)


@pytest.mark.slow
def test_early_stopping_prunes_trials_outside_the_front_and_resumes_after_a_kill(
    local_ray, space_file: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "asha"
    cmd = [
        sys.executable,
        "-m",
        "autoprune.cli",
        "search",
        str(space_file),
        "--run-dir",
        str(run_dir),
        "--trials",
        "10",
        "--concurrent",
        "1",
        "--sampler",
        "random",
        "--early-stop",
        "asha",
        "--grace-period",
        "1",
    ]

    def ready() -> bool:
        states = list(_states(run_dir).values())
        return "PRUNED" in states and states.count("COMPLETE") + states.count("PRUNED") >= 5

    kill_driver_when(cmd, ready, 180)
    before = {t.number: (t.state, t.datetime_complete) for t in _study(run_dir).trials if t.state.is_finished()}
    assert any(state == TrialState.PRUNED for state, _ in before.values())

    outcome = api.resume(run_dir, log=lambda _m: None)  # early stopping comes back from run.json
    study = _study(run_dir)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) + len(pruned) == 10 and not outcome.interrupted  # stopped trials count as run
    assert pruned and complete
    for t in pruned:  # stopped at a rung, with what it reported until then, and no values
        assert t.values is None and t.user_attrs["outcome"] == "pruned" and t.user_attrs["rung"] in (0, 1, 2)
        epochs = [e for e, _, _ in t.user_attrs["intermediate"]]
        assert epochs == sorted(epochs) and epochs[-1] >= t.user_attrs["rung_epoch"] and epochs[-1] < 8
        assert "→ stop" in t.user_attrs["stop_reason"]
        assert not (run_dir / "models" / f"trial_{t.number}.pt").exists()
    for t in complete:  # the finished ones reported every epoch and after pruning, and ended at epoch 8
        assert [e for e, _, _ in t.user_attrs["intermediate"]] == [1, 2, 3, 4, 5, 6, 6, 7, 8]
    pruned_numbers = {t.number for t in pruned}
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert not pruned_numbers & {r["trial"] for r in report["front"] + report["trials"]}
    assert {s["trial"] for s in report["stopped"]} == pruned_numbers  # listed apart, with their rungs
    assert all(s["rung"] in (0, 1, 2) for s in report["stopped"])
    assert {r["trial"] for r in outcome.results.front} <= {t.number for t in complete}
    assert {s["trial"] for s in outcome.results.stopped} == pruned_numbers
    for number, (state, done) in before.items():  # finished before the kill: kept, not re-run
        assert (study.trials[number].state, study.trials[number].datetime_complete) == (state, done)
    cut = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs["outcome"] == "interrupted" for t in cut)
    info = RunInfo.read(run_dir)
    assert info.launch.early_stop.to_dict() == {"mode": "asha", "reduction_factor": 3.0, "grace_period": 1.0}
    assert [(launch["kind"], launch["early_stop"]) for launch in info.launches] == [
        ("search", "asha"),
        ("resume", "asha"),
    ]


@pytest.mark.slow
def test_timeout_starts_no_trial_after_the_budget_and_resume_continues(
    local_ray, space_file: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "budget"
    lines: list[str] = []
    budget = 6.0  # counted from the call: on the shared Ray, trials start at once (no Ray start-up inside it)
    t0 = datetime.datetime.now()
    start = time.monotonic()
    outcome = api.search(
        space_file,
        run_dir=run_dir,
        trials=200,
        concurrent=2,
        early_stop="off",
        timeout=f"{budget:g}s",
        log=lines.append,
    )
    elapsed = time.monotonic() - start
    study = _study(run_dir)
    trials = study.trials
    assert outcome.timed_out and outcome.interrupted and 0 < len(trials) < 200
    assert all(t.state == TrialState.COMPLETE for t in trials)  # the running ones finished
    assert all((t.datetime_start - t0).total_seconds() <= budget + 0.5 for t in trials)
    longest = max((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
    assert elapsed <= budget + longest + 10  # + Tune's shutdown of the last trial
    assert any(f"time budget {budget:g}s reached" in line for line in lines)
    assert json.loads((run_dir / "report" / "report.json").read_text())["trials"]
    n = len(trials)
    more = api.resume(run_dir, trials=n + 2, log=lambda _m: None)
    assert more.ran == 2 and not more.interrupted and not more.timed_out
    assert [t.state for t in _study(run_dir).trials] == [TrialState.COMPLETE] * (n + 2)
