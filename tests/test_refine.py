"""Front refinement on plain Optuna studies: which gap it fills, with whose settings, when, and how it is marked."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from _helpers import ask, tune_searcher
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from autoprune import ledger
from autoprune.baselines import seed_baselines
from autoprune.errors import ConfigError
from autoprune.ledger import Outcome
from autoprune.refine import REFINE_ATTR, Refiner, RefineSettings, propose, refine_settings
from autoprune.report import front_table
from autoprune.space import Dim, parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

DENSITY = Dim(path="prune.density", low=0.005, high=0.3, log=True)
LR = Dim(path="finetune.lr", low=1e-4, high=0.1, log=True)
ALLOCATION = Dim(path="prune.allocation", choices=("global", "lamp"))
DISTRIBUTIONS = {
    "prune.density": FloatDistribution(0.005, 0.3, log=True),
    "finetune.lr": FloatDistribution(1e-4, 0.1, log=True),
    "prune.allocation": CategoricalDistribution(["global", "lamp"]),
}


def done(density: float, acc: float, params: int, lr: float = 0.01, allocation: str = "global", **kw) -> Any:
    """A finished trial of a density-searched space with (accuracy, parameters) as its values."""
    params_ = {"prune.density": density, "finetune.lr": lr, "prune.allocation": allocation}
    return create_trial(params=params_, distributions=DISTRIBUTIONS, values=[acc, params], **kw)


def numbered(trials: list) -> list:
    for i, t in enumerate(trials):
        t.number = i
    return trials


def test_the_widest_lost_area_is_filled_with_the_larger_neighbours_settings_at_the_geometric_middle() -> None:
    trials = numbered(
        [
            done(0.005, 0.70, 500, lr=0.001),
            done(0.02, 0.80, 2000, lr=0.002),  # gap 0→1: log10(4) × 0.10 = 0.060
            done(0.16, 0.86, 16000, lr=0.05, allocation="lamp"),  # gap 1→2: log10(8) × 0.06 = 0.054
            done(0.03, 0.75, 3000, lr=0.003),  # dominated by trial 1: not on the front
        ]
    )
    p = propose(trials, DENSITY)
    assert p is not None and p.source == 1
    assert p.params == {
        "prune.density": pytest.approx(math.sqrt(0.005 * 0.02)),
        "finetune.lr": 0.002,
        "prune.allocation": "global",
    }
    assert "trial 1's settings" in p.reason and "500 params (trial 0" in p.reason


def test_a_gap_already_held_by_the_same_settings_or_too_narrow_is_passed_over() -> None:
    base = [done(0.005, 0.70, 500), done(0.02, 0.80, 2000, lr=0.002), done(0.16, 0.86, 16000, lr=0.05)]
    held = done(0.0105, 0.69, 1000, lr=0.002)  # trial 1's settings within 10% of gap 0→1's middle (off the front)
    p = propose(numbered([*base, held]), DENSITY)
    assert p is not None and p.source == 2  # the next gap: 1→2 with trial 2's settings
    assert p.params["prune.density"] == pytest.approx(math.sqrt(0.02 * 0.16))
    # the same settings elsewhere do not hold the gap; other settings at the middle do not either
    other = done(0.01, 0.65, 1000, lr=0.003)
    assert propose(numbered([*base, other]), DENSITY).source == 1
    # a front whose neighbours are less than 1.1² apart in density has nothing to fill
    assert propose(numbered([done(0.02, 0.80, 2000), done(0.023, 0.81, 2300)]), DENSITY) is None
    assert propose([], DENSITY) is None


def test_a_queued_or_running_refinement_holds_its_gap() -> None:
    trials = numbered([done(0.005, 0.70, 500), done(0.02, 0.80, 2000, lr=0.002)])
    p = propose(trials, DENSITY)
    running = create_trial(
        state=TrialState.RUNNING, params=p.params, distributions=DISTRIBUTIONS, user_attrs={REFINE_ATTR: 1}
    )
    assert propose([*trials, running], DENSITY) is None


def test_an_integer_size_is_rounded_and_kept_within_its_range() -> None:
    count = Dim(path="prune.nonzero_params", low=1000, high=50000, log=True)
    dist = {"prune.nonzero_params": IntDistribution(1000, 50000, log=True)}
    trials = [
        create_trial(params={"prune.nonzero_params": n}, distributions=dist, values=[acc, n])
        for n, acc in ((1000, 0.7), (4100, 0.8))
    ]
    p = propose(numbered(trials), count)
    assert p is not None and p.params == {"prune.nonzero_params": round(math.sqrt(1000 * 4100))}


@pytest.mark.parametrize(
    ("raw", "settings"),
    [
        (None, RefineSettings(3, 10)),
        (True, RefineSettings(3, 10)),
        (False, RefineSettings(0, 10)),
        (0, RefineSettings(0, 10)),
        (4, RefineSettings(4, 10)),
        ({"every": 2, "after": 5}, RefineSettings(2, 5)),
    ],
)
def test_the_space_chooses_how_often(raw, settings) -> None:
    assert refine_settings(raw) == settings


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (1, "leaves no trial to the sampler"),
        (-2, "search.refine.every must be a whole number >= 0, got -2"),
        ({"every": 3, "when": 2}, "unknown key 'when'"),
        ({"after": 1.5}, "search.refine.after must be a whole number >= 0, got 1.5"),
        ("often", "search.refine must be true, false, a number"),
    ],
)
def test_a_bad_setting_is_refused_when_the_space_loads(raw, message) -> None:
    doc = {"dataset": {"name": "digits"}, "model": {"name": "lenet-300-100"}, "search": {"refine": raw}}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_space(doc)


SPACE = {
    "dataset": {"name": "digits"},
    "model": {"name": "lenet-300-100"},
    "prune": {
        "allocation": {"choices": ["global", "lamp"]},
        "density": {"low": 0.005, "high": 0.3, "log": True},
    },
    "finetune": {"lr": {"low": 1e-4, "high": 0.1, "log": True}},
}


def _finish(study: optuna.Study, trial: optuna.Trial) -> None:
    """Complete ``trial`` as if it ran: bigger models are more accurate (a smooth front)."""
    params = round(266_000 * trial.params["prune.density"]) + 410
    acc = 0.95 - 0.04 / trial.params["prune.density"] ** 0.5 * 0.1
    record = {"val_accuracy": acc, "test_accuracy": acc, "params_nonzero": params, "params_total": 266_610}
    ledger.record_outcome(study, trial, Outcome("complete", record={**record, "layer_sparsity": {}, "config": {}}))


def test_refinements_start_after_the_baselines_and_warm_up_then_take_every_nth_trial() -> None:
    sp = parse_space(SPACE)
    study = optuna.create_study(directions=list(ledger.DIRECTIONS), sampler=optuna.samplers.RandomSampler(seed=0))
    seeded = seed_baselines(study, sp, limit=4)
    lines: list[str] = []
    refiner = Refiner(RefineSettings(every=2, after=3), sp.dims, log=lines.append)
    kinds = []
    for _ in range(14):
        proposal = refiner.before_ask(study)
        trial = ask(study, sp.dims)
        attrs = study.trials[trial.number].user_attrs
        kinds.append("b" if "baseline" in attrs else "r" if REFINE_ATTR in attrs else "s")
        if proposal is not None:  # the ask took exactly what was enqueued
            assert trial.params == pytest.approx(proposal.params)
            assert attrs[REFINE_ATTR] == proposal.source
            source = study.trials[proposal.source].params
            assert {k: v for k, v in trial.params.items() if k != "prune.density"} == {
                k: v for k, v in source.items() if k != "prune.density"
            }
        _finish(study, trial)
    assert len(seeded) == 4
    # 4 baselines, 3 sampled trials of warm-up, then every second new trial is a refinement
    assert "".join(kinds) == "bbbb" + "sss" + "srsrsrs"
    assert len(lines) == 3 and all(line.startswith("refine: trial ") for line in lines)
    records, _, _ = ledger.trial_records(study)
    marked = [r for r in records if REFINE_ATTR in r]
    assert len(marked) == 3 and all(isinstance(r[REFINE_ATTR], int) for r in marked)
    results = ledger.study_results(study, requested=14)
    assert results.frame()[REFINE_ATTR].notna().sum() == 3
    table = front_table(results.front)  # every trial here is on the front: bigger is more accurate
    assert all(f"{r['trial']} from {r[REFINE_ATTR]}" in table for r in marked)


def test_no_refinement_when_off_or_when_the_space_searches_no_overall_size() -> None:
    sp = parse_space(SPACE)
    per_layer = parse_space({**SPACE, "prune": {"sparsity": {"fc1": {"low": 0.5, "high": 0.99}}}})
    for refiner, dims in (
        (Refiner(RefineSettings(every=0, after=0), sp.dims), sp.dims),
        (Refiner(RefineSettings(every=2, after=0), per_layer.dims), per_layer.dims),
    ):
        assert not refiner.active
        study = optuna.create_study(directions=list(ledger.DIRECTIONS), sampler=optuna.samplers.RandomSampler(seed=1))
        for _ in range(6):
            assert refiner.before_ask(study) is None
            trial = ask(study, dims)
            if "prune.density" in trial.params:
                _finish(study, trial)
            else:
                study.tell(trial, [0.9, 1000.0])
        assert not any(REFINE_ATTR in t.user_attrs for t in study.trials)


def test_ray_tunes_optuna_searcher_runs_the_refinement_it_enqueues() -> None:
    pytest.importorskip("ray.tune.search.optuna")
    sp = parse_space(SPACE)
    study = optuna.create_study(directions=list(ledger.DIRECTIONS), study_name="s", storage="sqlite:///:memory:")
    for density, lr in ((0.005, 0.001), (0.08, 0.03)):
        study.enqueue_trial({"prune.density": density, "finetune.lr": lr, "prune.allocation": "lamp"})
        _finish(study, ask(study, sp.dims))
    searcher = tune_searcher(study, sp.dims)
    searcher.refiner = Refiner(RefineSettings(every=2, after=0), sp.dims)
    first, second = searcher.suggest("t0"), searcher.suggest("t1")
    assert first["prune.density"] != pytest.approx(math.sqrt(0.005 * 0.08))  # the sampler's
    assert second["prune.density"] == pytest.approx(math.sqrt(0.005 * 0.08))  # the refinement's
    assert second["finetune.lr"] == 0.03 and second["prune.allocation"] == "lamp"
    assert searcher.suggest("t1") == second  # asking again for the same Tune trial enqueues nothing new
    assert sum(REFINE_ATTR in t.user_attrs for t in study.trials) == 1
