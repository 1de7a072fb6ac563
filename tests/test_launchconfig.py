"""The launch configuration: checked once where it is built, kept in run.json under the keys it always had, and
changed on resume only where an option is given. No Ray."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from autoprune.errors import SearchError
from autoprune.rundir.directory import RunInfo
from autoprune.searching.launchconfig import EarlyStop, LaunchConfig, Resources
from autoprune.searching.space import parse_space


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LaunchConfig(trials=0), "--trials must be a positive integer"),
        (lambda: LaunchConfig(seed=2**32), "--seed must be a non-negative integer of 32 bits"),
        (lambda: LaunchConfig(sampler="grid"), "--sampler must be one of tpe, nsga2, random, got 'grid'"),
        (lambda: LaunchConfig(address="10.0.0.1"), "expected auto or host:port"),
        (lambda: LaunchConfig(timeout="5x"), "--timeout '5x' is not a duration"),
        (lambda: Resources(concurrent=0), "--concurrent must be a positive integer"),
        (lambda: Resources(cpus_per_trial=0), "--cpus-per-trial must be > 0"),
        (lambda: Resources(gpus_per_trial="1.5"), "--gpus-per-trial above 1 must be a whole number"),
        (lambda: EarlyStop("off", grace_period=2), "--grace-period applies to early stopping, which is off"),
        (lambda: EarlyStop("asha", reduction_factor=1), "--reduction-factor must be a number > 1"),
    ],
)
def test_options_are_checked_when_the_configuration_is_built(build, message) -> None:
    with pytest.raises(SearchError, match=message):
        build()


def test_a_new_search_takes_the_space_s_values_where_nothing_is_given() -> None:
    doc = {"dataset": {"name": "digits"}, "model": {"name": "lenet-300-100"}}
    space = parse_space({**doc, "search": {"trials": 7, "sampler": "random", "early_stop": "asha"}}, source="s.yaml")
    given = LaunchConfig(trials=3, early_stop=EarlyStop(grace_period=2), timeout="1m")
    cfg = LaunchConfig.defaults(space).updated(given)
    assert (cfg.trials, cfg.sampler, cfg.seed, cfg.timeout) == (3, "random", 0, 60.0)
    assert cfg.early_stop == EarlyStop("asha", 3.0, 2.0)
    assert cfg.resources == Resources(concurrent=None, cpus_per_trial=1.0, gpus_per_trial="auto")
    plain = LaunchConfig.defaults(parse_space(doc, source="s.yaml")).updated(LaunchConfig())
    assert (plain.trials, plain.sampler, plain.early_stop.to_dict()) == (20, "tpe", {"mode": "off"})
    with pytest.raises(SearchError, match="--reduction-factor applies to early stopping, which is off"):
        LaunchConfig.defaults(parse_space(doc, source="s.yaml")).updated(LaunchConfig(early_stop=EarlyStop(None, 2)))


def test_a_run_json_written_before_reads_back_and_resume_changes_only_what_is_given(tmp_path: Path) -> None:
    before = {  # as search wrote it before LaunchConfig: the launch's options at the top level, resources as given
        "study_name": "autoprune",
        "storage": {"kind": "run-dir"},
        "space_digest": "0" * 64,
        "space_source": "s.yaml",
        "sampler": "nsga2",
        "seed": 2**40 + 5,  # a run from before --seed was held to 32 bits
        "trials": 8,
        "resources": {"concurrent": 2, "cpus_per_trial": 1, "gpus_per_trial": "0.25"},
        "sampler_options": {"population_size": 4},
        "early_stop": {"mode": "asha", "reduction_factor": 2.0, "grace_period": 4.0},
        "address": None,
        "version": "0.1.0",
        "created": "2026-01-01T00:00:00+00:00",
        "launches": [{"kind": "search", "name": "search-00", "trials": 8, "seed": 5, "early_stop": "asha"}],
        "format": 1,
        "seal": None,
        "objective": "params",
    }
    (tmp_path / "run.json").write_text(json.dumps(before))
    info = RunInfo.read(tmp_path)
    stored = LaunchConfig(
        trials=8, sampler="nsga2", seed=5, resources=Resources(2, 1.0, 0.25), early_stop=EarlyStop("asha", 2.0, 4.0)
    )
    assert info.launch == stored and info.launches == before["launches"]
    info.write(tmp_path)
    after = json.loads((tmp_path / "run.json").read_text())
    assert list(after) == list(before)  # the same keys in the same order
    assert after == {**before, "seed": 5, "resources": {"concurrent": 2, "cpus_per_trial": 1.0, "gpus_per_trial": 0.25}}
    changes = LaunchConfig(trials=10, resources=Resources(cpus_per_trial=2), address="local", timeout=30)
    resumed = info.launch.updated(changes)
    assert resumed == dataclasses.replace(
        stored, trials=10, resources=Resources(2, 2.0, 0.25), address="local", timeout=30.0
    )
    assert info.launch.updated(LaunchConfig()) == stored  # nothing given: the run's own
    assert info.launch.updated(LaunchConfig(early_stop=EarlyStop("off"))).to_record()["early_stop"] == {"mode": "off"}


def test_more_cpus_per_trial_than_this_machine_has_are_refused_only_where_trials_run_here(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    many = Resources(cpus_per_trial=10**6)
    with pytest.raises(SearchError, match="--cpus-per-trial must be more than 0 and at most the"):
        LaunchConfig(resources=many).check_machine()
    LaunchConfig(resources=many, address="10.0.0.1:6379").check_machine()  # a cluster's CPUs are Ray's to count
