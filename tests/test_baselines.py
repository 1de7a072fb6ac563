"""Baseline seeding on plain Optuna studies: the ladder, its place before sampled trials, and resume."""

from __future__ import annotations

import itertools
import math

import optuna
import pytest
from _helpers import ask, tune_searcher
from optuna.trial import TrialState

from autoprune import ledger
from autoprune.baselines import STUDY_ATTR, TRIAL_ATTR, ladder, seed_baselines
from autoprune.errors import ConfigError
from autoprune.ledger import Outcome
from autoprune.pareto import baseline_front
from autoprune.report import front_table, report_document
from autoprune.space import parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "dataset": {"name": "digits"},
    "model": {"name": "lenet-300-100"},
    "train": {"lambda_max": {"low": 1e-6, "high": 1e-3, "log": True, "default": 1e-5}},
    "prune": {
        "criterion": {"choices": ["taylor", "magnitude"]},
        "allocation": {"choices": ["lamp", "global", "erk"]},
        "density": {"low": 0.005, "high": 0.32, "log": True},
        "schedule": {"choices": ["one_shot", "gradual_train"]},
    },
    "finetune": {"distill_weight": {"low": 0.0, "high": 0.8}},
}


def space(baselines=None):
    doc = dict(SPACE)
    if baselines is not None:
        doc["search"] = {"baselines": baselines}
    return parse_space(doc)


def test_the_default_ladder_spans_the_density_range_global_magnitude_first() -> None:
    plan = ladder(space())
    assert len(plan) == 3 * 4
    assert [b.params["prune.allocation"] for b in plan] == ["global"] * 4 + ["lamp"] * 4 + ["erk"] * 4
    # 12 sizes log-spaced over [0.005, 0.32], a factor 64 ** (1/11) = 1.46 apart; each allocation takes every third
    sizes = sorted(b.params["prune.density"] for b in plan)
    assert sizes[0] == pytest.approx(0.005) and sizes[-1] == pytest.approx(0.32)
    assert [b / a for a, b in itertools.pairwise(sizes)] == pytest.approx([64 ** (1 / 11)] * 11)
    densities = [b.params["prune.density"] for b in plan[:4]]
    assert densities == pytest.approx([0.005, 0.015544, 0.048325, 0.15024], rel=1e-4)  # a factor 3.1 apart
    assert [b.params["prune.density"] for b in plan[8:]][-1] == pytest.approx(0.32)  # erk reaches the top
    assert [b.label for b in plan[:2]] == ["global@0.005", "global@0.01554"]
    for b in plan:  # the other searched leaves at their defaults, the criterion magnitude
        assert b.params["prune.criterion"] == "magnitude"
        assert b.params["prune.schedule"] == "one_shot"
        assert b.params["train.lambda_max"] == 1e-5
        assert b.params["finetune.distill_weight"] == pytest.approx(0.4)
        assert set(b.params) == {d.path for d in space().dims}


@pytest.mark.parametrize(
    ("spec", "labels"),
    [
        (False, []),
        (0, []),
        (1, ["global@0.04", "lamp@0.04", "erk@0.04"]),
        ([0.01, 0.3], ["global@0.01", "global@0.3", "lamp@0.01", "lamp@0.3", "erk@0.01", "erk@0.3"]),
        ({"densities": 2, "allocations": ["erk"]}, ["erk@0.005", "erk@0.32"]),
        ({"densities": 2, "allocations": ["global", "erk"]}, ["global@0.005", "global@0.08", "erk@0.02", "erk@0.32"]),
    ],
)
def test_the_space_chooses_the_ladder(spec, labels) -> None:
    assert [b.label for b in ladder(space(spec))] == labels


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([0.5], "0.5 is not a density within prune.density's range [0.005, 0.32]"),
        ({"allocations": ["uniform"]}, "'uniform' is not an allocation this space searches by density"),
        ({"rungs": 3}, "search.baselines: unknown key 'rungs'"),
        ("many", "search.baselines must be true, false, a number"),
    ],
)
def test_a_bad_ladder_is_refused_when_the_space_loads(spec, message) -> None:
    with pytest.raises(ConfigError) as info:
        space(spec)
    assert message in str(info.value)


def test_a_space_of_per_layer_rates_has_no_baselines() -> None:
    doc = {**SPACE, "prune": {"sparsity": {"fc1": {"low": 0.5, "high": 0.9}}}}
    assert ladder(parse_space(doc)) == []


def test_a_space_that_searches_the_allocation_alone_has_one_baseline_each_unless_turned_off() -> None:
    doc = {**SPACE, "prune": {"allocation": {"choices": ["lamp", "global"]}, "density": 0.05}}
    assert [b.label for b in ladder(parse_space(doc))] == ["global", "lamp"]
    for off in (False, 0, []):
        assert ladder(parse_space({**doc, "search": {"baselines": off}})) == []


def _record(trial: optuna.Trial, acc: float, params: int) -> dict:
    return {
        "val_accuracy": acc,
        "test_accuracy": acc,
        "params_nonzero": params,
        "params_total": 1000,
        "layer_sparsity": {},
        "config": {"prune": {"enabled": True, **{k: v for k, v in trial.params.items() if k.startswith("prune.")}}},
    }


def test_seeding_puts_the_ladder_before_sampled_trials_and_marks_it() -> None:
    sp = space()
    study = optuna.create_study(directions=list(ledger.DIRECTIONS), sampler=optuna.samplers.TPESampler(seed=0))
    labels = seed_baselines(study, sp, limit=5)  # a budget smaller than the ladder keeps its head
    assert labels == [b.label for b in ladder(sp)[:5]]
    assert study.user_attrs[STUDY_ATTR] == labels
    assert [t.state for t in study.trials] == [TrialState.WAITING] * 5
    asked = [ask(study, sp.dims) for _ in range(7)]
    for trial, baseline in zip(asked[:5], ladder(sp)[:5], strict=True):
        assert trial.params == pytest.approx(baseline.params)
        assert study.trials[trial.number].user_attrs[TRIAL_ATTR] == baseline.label
    assert all(TRIAL_ATTR not in study.trials[t.number].user_attrs for t in asked[5:])  # sampled
    for i, trial in enumerate(asked):
        ledger.record_outcome(study, trial, Outcome("complete", record=_record(trial, 0.8 + 0.01 * i, 100 + 50 * i)))
    records, _, _ = ledger.trial_records(study)
    assert [r.get("baseline") for r in records] == [*labels, None, None]
    assert [r["trial"] for r in baseline_front(records)] == [0, 1, 2, 3, 4]
    doc = report_document(ledger.study_results(study, requested=7))
    assert [r["baseline"] for r in doc["baseline_front"]] == labels
    assert "0 global@0.005" in front_table(doc["front"])


def test_the_results_frame_marks_baselines_also_before_they_run() -> None:
    sp = space()
    study = optuna.create_study(directions=list(ledger.DIRECTIONS), sampler=optuna.samplers.RandomSampler(seed=0))
    seed_baselines(study, sp, limit=3)
    first = ask(study, sp.dims)
    ledger.record_outcome(study, first, Outcome("complete", record=_record(first, 0.8, 100)))
    df = ledger.study_results(study, requested=5).frame()  # one done, two waiting
    assert df["baseline"].dtype == bool
    assert df["baseline"].tolist() == [True, True, True]
    assert df["state"].tolist() == ["COMPLETE", "WAITING", "WAITING"]
    for _ in range(4):  # the two waiting baselines, then two sampled trials
        trial = ask(study, sp.dims)
        ledger.record_outcome(study, trial, Outcome("complete", record=_record(trial, 0.7, 300)))
    df = ledger.study_results(study, requested=5).frame()
    assert df["baseline"].tolist() == [True, True, True, False, False]
    assert df.loc[df.baseline, "prune.allocation"].tolist() == ["global"] * 3


def test_resume_never_reruns_a_baseline() -> None:
    sp = space()
    study = optuna.create_study(directions=list(ledger.DIRECTIONS))
    seed_baselines(study, sp, limit=12)
    done = [ask(study, sp.dims) for _ in range(3)]
    for trial in done:
        ledger.record_outcome(study, trial, Outcome("complete", record=_record(trial, 0.9, 100)))
    ask(study, sp.dims)  # running when the search is interrupted
    # resume: stale trials closed, seeding asked again (it must add nothing), the rest asked for
    assert ledger.close_stale_trials(study) == 1
    assert seed_baselines(study, sp, limit=12) == []
    rest = [ask(study, sp.dims) for _ in range(10)]
    labels = [study.trials[t.number].user_attrs.get(TRIAL_ATTR) for t in rest]
    assert labels == [b.label for b in ladder(sp)[4:]] + [None, None]  # the waiting ones, then sampled
    all_labels = [t.user_attrs.get(TRIAL_ATTR) for t in study.trials if t.user_attrs.get(TRIAL_ATTR)]
    assert len(all_labels) == len(set(all_labels)) == 12  # each baseline once, the interrupted one not again


def test_ray_tunes_optuna_searcher_asks_the_seeded_baselines_first() -> None:
    pytest.importorskip("ray.tune.search.optuna")
    sp = space({"densities": 2, "allocations": ["global"]})
    study = optuna.create_study(directions=list(ledger.DIRECTIONS), study_name="s", storage="sqlite:///:memory:")
    seed_baselines(study, sp, limit=3)
    searcher = tune_searcher(study, sp.dims)
    configs = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [c["prune.density"] for c in configs[:2]] == pytest.approx([0.005, 0.32])  # what the workers run
    assert all(c["prune.allocation"] == "global" for c in configs[:2])
    assert [t.user_attrs.get(TRIAL_ATTR) for t in study.trials] == ["global@0.005", "global@0.32", None]
    assert not math.isclose(configs[2]["prune.density"], 0.005)  # then the sampler
