"""The ledger on plain Optuna studies: no Ray anywhere in this file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from _helpers import write_run_json
from optuna.trial import TrialState

from autoprune.errors import SearchError
from autoprune.rundir import ledger
from autoprune.rundir.directory import RunInfo
from autoprune.rundir.ledger import Outcome
from autoprune.searching.launchconfig import LaunchConfig
from autoprune.searching.space import define_by_run, parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "dataset": {"name": "digits"},
    "model": {"name": "lenet-300-100"},
    "train": {"lr": {"low": 0.01, "high": 0.1, "log": True}},
    "prune": {"sparsity": {"fc1": {"low": 0.5, "high": 0.9}}},
}


def _study() -> optuna.Study:
    return optuna.create_study(directions=list(ledger.DIRECTIONS))


def _record(acc: float, params: int, *, prune: bool = True) -> dict:
    return {
        "val_accuracy": acc,
        "test_accuracy": acc - 0.01,
        "params_nonzero": params,
        "params_total": 1000,
        "layer_sparsity": {"fc1": 1 - params / 1000},
        "config": {"prune": {"enabled": prune}},
    }


def _finish(study: optuna.Study, outcome: Outcome, params: dict | None = None) -> int:
    trial = study.ask()
    for name, value in (params or {}).items():
        trial.suggest_float(name, value, value)
    ledger.record_outcome(study, trial, outcome)
    return trial.number


def test_a_complete_outcome_is_told_with_both_values_and_read_back_as_a_record(tmp_path: Path) -> None:
    study = _study()
    rec = _record(0.9, 400)
    number = _finish(study, Outcome("complete", record=rec, model_path="models/trial_0.pt", attrs={"hostname": "h"}))
    t = study.trials[number]
    assert t.state == TrialState.COMPLETE and t.values == [0.9, 400]
    assert t.user_attrs["outcome"] == "complete" and t.user_attrs["hostname"] == "h"
    records, failures, running = ledger.trial_records(study, tmp_path)
    assert failures == [] and running == 0
    assert records == [{"trial": 0, **rec, "model_path": str((tmp_path / "models/trial_0.pt").resolve())}]


def test_failures_are_fail_with_their_reason_and_only_real_outcomes_count() -> None:
    study = _study()
    _finish(study, Outcome("complete", record=_record(0.8, 100), model_path="models/trial_0.pt"))
    _finish(study, Outcome("diverged", reason="non-finite loss in phase 'train' at step 3"))
    _finish(study, Outcome("error", reason="ValueError: boom"))
    _finish(study, Outcome("interrupted", reason="stopped"))
    _finish(study, Outcome("crashed", reason="killed"))
    study.ask()  # still running
    records, failures, running = ledger.trial_records(study)
    assert [t.state for t in study.trials][1:5] == [TrialState.FAIL] * 4
    assert [(f["trial"], f["outcome"]) for f in failures] == [
        (1, "diverged"),
        (2, "error"),
        (3, "interrupted"),
        (4, "crashed"),
    ]
    assert failures[1]["reason"] == "ValueError: boom"
    assert running == 1
    assert ledger.count_finished(records, failures) == 4  # a crashed trial counts like a failed one
    counted = {k: Outcome(k).counted for k in ledger.OUTCOMES}
    assert counted == {
        "complete": True,
        "diverged": True,
        "error": True,
        "pruned": True,
        "crashed": True,
        "interrupted": False,
    }


def test_closing_stale_trials_fails_running_ones_and_leaves_enqueued_ones_to_the_sampler() -> None:
    study = _study()
    _finish(study, Outcome("complete", record=_record(0.8, 100), model_path="m.pt"))
    study.ask()  # left RUNNING by a driver that died
    study.enqueue_trial({"train.lr": 0.05})  # WAITING: a user asked for this configuration
    assert ledger.close_stale_trials(study) == 1
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].user_attrs["outcome"] == "interrupted"
    assert ledger.close_stale_trials(study) == 0
    trial = study.ask()  # what the searcher does next: the enqueued trial comes first, with its values
    assert trial.number == 2 and trial.suggest_float("train.lr", 0.01, 0.1, log=True) == 0.05


def test_study_results_front_baseline_and_searched_values() -> None:
    study = _study()
    _finish(study, Outcome("complete", record=_record(0.95, 1000, prune=False), model_path="a"), {"x": 0.1})
    _finish(study, Outcome("complete", record=_record(0.90, 300), model_path="b"), {"x": 0.2})
    _finish(study, Outcome("complete", record=_record(0.85, 500), model_path="c"), {"x": 0.3})  # dominated
    _finish(study, Outcome("error", reason="boom"), {"x": 0.4})
    res = ledger.study_results(study, requested=5)
    assert [r["trial"] for r in res.front] == [1, 0]
    assert res.baseline is not None and res.baseline["trial"] == 0
    assert (res.failed, res.counted, res.requested, res.running) == (1, 4, 5, 0)
    study.ask()  # a trial still running
    df = ledger.study_results(study, requested=5).frame()
    assert df["trial"].tolist() == [0, 1, 2, 3, 4]
    assert df["state"].tolist() == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "RUNNING"]
    assert df["outcome"].tolist()[:4] == ["complete", "complete", "complete", "error"]
    assert df["x"].tolist()[:4] == [0.1, 0.2, 0.3, 0.4]
    assert df.loc[df.on_front, "trial"].tolist() == [0, 1]
    assert df["params_nonzero"].tolist()[:3] == [1000, 300, 500]
    assert df["params_nonzero"].isna().tolist() == [False, False, False, True, True]
    assert df["fraction_dense"].tolist()[:3] == pytest.approx([1.0, 0.3, 0.5])
    assert df["reason"][3] == "boom"
    dtypes = df.dtypes.astype(str).to_dict()
    assert dtypes["trial"] == "int64" and dtypes["params_nonzero"] == "Int64" and dtypes["on_front"] == "bool"
    assert dtypes["val_accuracy"] == dtypes["fraction_dense"] == dtypes["sparsity.fc1"] == "float64"


def test_a_new_study_says_what_it_is(tmp_path: Path) -> None:
    space = parse_space(SPACE, source="s.yaml")
    storage = ledger.open_storage(None, tmp_path)
    ledger.create_study(storage, "autoprune", space, "9.9.9")
    study = optuna.load_study(study_name="autoprune", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert study.user_attrs["autoprune_version"] == "9.9.9"
    assert study.user_attrs["space"] == space.document
    assert study.user_attrs["space_digest"] == space.digest
    assert study.metric_names == list(ledger.OBJECTIVES)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    with pytest.raises(SearchError, match="exists already"):
        ledger.create_study(storage, "autoprune", space, "9.9.9")


def test_load_results_reads_a_run_directory_without_ray(tmp_path: Path) -> None:
    space = parse_space(SPACE, source="s.yaml")
    study = ledger.create_study(ledger.open_storage(None, tmp_path), "autoprune", space, "0")
    _finish(study, Outcome("complete", record=_record(0.9, 10), model_path="models/trial_0.pt"))
    write_run_json(tmp_path, space.digest, trials=2, space_source="s.yaml", resources={})
    res = ledger.load_results(tmp_path)
    assert [r["trial"] for r in res.trials] == [0] and res.requested == 2 and res.run_dir == tmp_path
    code = "import autoprune.rundir.ledger, autoprune.rundir.directory, autoprune.api, sys; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_samplers_by_name() -> None:
    kinds = {name: type(ledger.make_sampler(name, 0, ledger.sampler_options(name, 40))) for name in ledger.SAMPLERS}
    assert kinds == {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "random": optuna.samplers.RandomSampler,
    }
    assert ledger.sampler_options("nsga2", 40) == {"population_size": 10}
    with pytest.raises(SearchError, match="--sampler must be one of tpe, nsga2, random, got 'grid'"):
        ledger.make_sampler("grid", 0, {})


def test_storage_records_keep_no_password_and_resolve_back(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(ledger.STORAGE_ENV, raising=False)
    url = "postgresql://bob:s3cret@db.example/x"
    rec = ledger.storage_record(url, tmp_path)
    assert rec == {"kind": "rdb", "url": "postgresql://bob:***@db.example/x"}
    info = RunInfo("s", rec, "0", "s.yaml", LaunchConfig(trials=1, sampler="tpe", seed=0))
    with pytest.raises(SearchError, match="keeps no password"):
        ledger.storage_spec(info, tmp_path, None)
    assert ledger.storage_spec(info, tmp_path, url) == url
    journal = ledger.storage_record(str(tmp_path / "j.log"), tmp_path)
    assert journal == {"kind": "journal", "path": "j.log", "in_run_dir": True}
    moved = tmp_path / "moved"
    moved.mkdir()
    info = RunInfo("s", journal, "0", "s", LaunchConfig(trials=1, sampler="tpe", seed=0))
    assert ledger.storage_spec(info, moved, None) == str(moved / "j.log")


def test_a_trial_stopped_early_is_pruned_counted_and_never_on_the_front() -> None:
    study = _study()
    _finish(study, Outcome("complete", record=_record(0.80, 100), model_path="a", intermediate=[[1, "train", 0.7]]))
    history = [[1, "train", 0.5], [2, "train", 0.55]]
    reason = "trial 1 epoch 2 (rung 0, epoch 1): val 0.5500 ranks 4 of 4 among trials ≤ 2.2k params → stop"
    number = _finish(study, Outcome("pruned", reason=reason, intermediate=history, rung=(0, 1.0)))
    t = study.trials[number]
    assert t.state == TrialState.PRUNED and t.values is None
    assert t.user_attrs["rung"] == 0 and t.user_attrs["rung_epoch"] == 1.0 and t.user_attrs["stop_reason"] == reason
    assert t.user_attrs["intermediate"] == history and study.trials[0].user_attrs["intermediate"] == [[1, "train", 0.7]]
    res = ledger.study_results(study, requested=3)
    assert [r["trial"] for r in res.trials] == [0] and [r["trial"] for r in res.front] == [0]
    assert res.stopped == [
        {"trial": 1, "outcome": "pruned", "reason": reason, "rung": 0, "epoch": 2, "val_accuracy": 0.55}
    ]
    assert (res.failed, res.counted) == (0, 2)


@pytest.mark.parametrize("name", ["tpe", "nsga2"])
def test_samplers_keep_sampling_a_two_objective_study_with_pruned_trials(name: str) -> None:
    """TPE and NSGA-II, past their start-up trials and generations, on a study where half the trials are PRUNED
    (with no values, as early stopping leaves them): they must keep suggesting valid configurations."""
    space = parse_space(
        {
            **SPACE,
            "prune": {"sparsity": {"fc1": {"low": 0.5, "high": 0.9}, "fc2": {"low": 0.1, "high": 0.9}}},
            "finetune": {"lr_schedule": {"choices": ["constant", "cosine"]}},
        }
    )
    study = optuna.create_study(
        directions=list(ledger.DIRECTIONS), sampler=ledger.make_sampler(name, 0, {"population_size": 4})
    )
    seen = []
    for i in range(40):
        trial = study.ask()
        define_by_run(trial, space.dims)
        cfg = space.config_for(trial.params)
        seen.append(trial.params)
        if i % 2:
            ledger.record_outcome(study, trial, Outcome("pruned", reason="bottom of its rung", rung=(0, 1.0)))
        else:
            size = int(1000 * (1 - cfg.prune.sparsity["fc1"]))
            acc = 0.5 + 0.4 * cfg.prune.sparsity["fc2"] - 0.1 * cfg.prune.sparsity["fc1"]
            ledger.record_outcome(study, trial, Outcome("complete", record=_record(acc, size), model_path="m"))
    states = [t.state for t in study.trials]
    assert states.count(TrialState.PRUNED) == 20 and states.count(TrialState.COMPLETE) == 20
    assert all(0.5 <= p["prune.sparsity.fc1"] <= 0.9 and 0.1 <= p["prune.sparsity.fc2"] <= 0.9 for p in seen)
    if name == "nsga2":  # it bred generations from the complete trials (pruned ones have no values to rank)
        generations = [t.system_attrs["NSGAIISampler:generation"] for t in study.trials]
        assert max(generations) >= 3
    else:  # past its 10 start-up trials TPE models the complete ones and still proposes new points
        assert len({p["prune.sparsity.fc1"] for p in seen}) == 40
