"""Front refinement on plain Optuna studies: which gap it fills, with whose settings, when, and how it is marked."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
from _helpers import ask, tune_searcher
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from autoprune.errors import ConfigError
from autoprune.report.render import front_table
from autoprune.rundir import ledger
from autoprune.rundir.ledger import Outcome
from autoprune.searching._attrs import REFINE_ATTR, SIZE_ATTR
from autoprune.searching.baselines import seed_baselines
from autoprune.searching.refine import (
    Refiner,
    RefineSettings,
    SearchPolicies,
    propose,
    propose_size,
    refine_settings,
    size_targets,
)
from autoprune.searching.space import Dim, parse_space

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
    "search": {"baselines": {"calibrate": False}},  # the ladder from the first trial (calibration: test_baselines)
}


def _finish(study: optuna.Study, trial: optuna.Trial) -> None:
    """Complete ``trial`` as if it ran LeNet-300-100: bigger models are more accurate (a smooth front)."""
    params = round(266_200 * trial.params["prune.density"]) + 410
    acc = 0.95 - 0.04 / trial.params["prune.density"] ** 0.5 * 0.1
    record = {"val_accuracy": acc, "test_accuracy": acc, "params_nonzero": params, "params_total": 266_610}
    record.update(params_prunable=266_200, layer_sparsity={}, config={})
    ledger.record_outcome(study, trial, Outcome("complete", record=record))


def _drive(study: optuna.Study, refiner: Refiner, dims: list, n: int) -> Iterator[tuple[Any, optuna.Trial, dict]]:
    """``n`` new trials as a search runs them: the refiner's turn, the ask, then (once the caller has looked at
    the refiner's proposal, the trial and its user attributes) the trial's completion."""
    for _ in range(n):
        proposal = refiner.before_ask(study)
        trial = ask(study, dims)
        yield proposal, trial, study.trials[trial.number].user_attrs
        _finish(study, trial)


def test_refinements_start_after_the_baselines_and_warm_up_then_take_every_nth_trial() -> None:
    sp = parse_space(SPACE)
    study = optuna.create_study(directions=list(ledger.DIRECTIONS), sampler=optuna.samplers.RandomSampler(seed=0))
    seeded = seed_baselines(study, sp, limit=4)
    lines: list[str] = []
    refiner = Refiner(RefineSettings(every=2, after=3), sp.dims, log=lines.append)
    kinds = []
    for proposal, trial, attrs in _drive(study, refiner, sp.dims, 14):
        kinds.append("b" if "baseline" in attrs else "r" if REFINE_ATTR in attrs else "s")
        if proposal is not None:  # the ask took exactly what was enqueued
            assert trial.params == pytest.approx(proposal.params)
            assert attrs[REFINE_ATTR] == proposal.source
            source = study.trials[proposal.source].params
            assert {k: v for k, v in trial.params.items() if k != "prune.density"} == {
                k: v for k, v in source.items() if k != "prune.density"
            }
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
    pytest.importorskip("ray.tune.search")
    sp = parse_space(SPACE)
    study = optuna.create_study(directions=list(ledger.DIRECTIONS), study_name="s", storage="sqlite:///:memory:")
    for density, lr in ((0.005, 0.001), (0.08, 0.03)):
        study.enqueue_trial({"prune.density": density, "finetune.lr": lr, "prune.allocation": "lamp"})
        _finish(study, ask(study, sp.dims))
    searcher = tune_searcher(study, sp, SearchPolicies(refine=RefineSettings(every=2, after=0)))
    first, second = searcher.suggest("t0"), searcher.suggest("t1")
    assert first["prune.density"] != pytest.approx(math.sqrt(0.005 * 0.08))  # the sampler's
    assert second["prune.density"] == pytest.approx(math.sqrt(0.005 * 0.08))  # the refinement's
    assert second["finetune.lr"] == 0.03 and second["prune.allocation"] == "lamp"
    assert searcher.suggest("t1") == second  # asking again for the same Tune trial enqueues nothing new
    assert sum(REFINE_ATTR in t.user_attrs for t in study.trials) == 1


# --- sizes a user will pick at (search.sizes) --------------------------------------------------------------------

TOTAL, PRUNABLE = 266_610, 266_200  # LeNet-300-100 on 28×28 inputs: 410 biases stay


def sized(density: float, acc: float, lr: float = 0.01, allocation: str = "global", **kw) -> Any:
    """A finished trial whose record carries the model's counts, as every trial of a search does."""
    params = round(density * PRUNABLE) + TOTAL - PRUNABLE
    rec = {"params_total": TOTAL, "params_prunable": PRUNABLE}
    return done(density, acc, params, lr=lr, allocation=allocation, user_attrs={"record": rec}, **kw)


def test_a_size_gets_the_settings_of_its_best_model_at_exactly_its_parameter_count() -> None:
    trials = numbered(
        [
            sized(0.01, 0.80, lr=0.001),
            sized(0.045, 0.86, lr=0.02, allocation="lamp"),  # the best within 5%: 12,389 params
            sized(0.04, 0.87, lr=0.03),  # ... no: this one is more accurate and smaller, so it is the best
            sized(0.2, 0.90, lr=0.05),
        ]
    )
    p = propose_size(trials, DENSITY, [0.05])
    count = math.floor(0.05 * TOTAL)
    assert p is not None and p.source == 2 and p.size == count == 13_330
    assert p.params == {"prune.density": (count - 410) / PRUNABLE, "finetune.lr": 0.03, "prune.allocation": "global"}
    assert round(p.params["prune.density"] * PRUNABLE) + 410 == count  # what the allocation will keep
    assert "trial 2's settings at exactly 13330 params" in p.reason
    # a count instead of a fraction names the same size
    assert propose_size(trials, DENSITY, [13_330]).params == p.params


def test_a_size_is_passed_over_when_it_is_held_or_cannot_be_asked_for() -> None:
    base = [sized(0.01, 0.80), sized(0.04, 0.87, lr=0.03)]
    count = math.floor(0.05 * TOTAL)
    density = (count - 410) / PRUNABLE
    # its best model already has 99% of it or more
    near = sized(0.0482, 0.88, lr=0.04)
    assert near.values[1] <= count and near.values[1] >= 0.99 * count
    assert propose_size(numbered([*base, near]), DENSITY, [0.05]) is None
    # the same settings already ran (or are queued, or running) at exactly that size, even if less accurate
    ran = sized(density, 0.86, lr=0.03)
    assert propose_size(numbered([*base, ran]), DENSITY, [0.05]) is None
    queued = create_trial(
        state=TrialState.RUNNING, params={**base[1].params, "prune.density": density}, distributions=DISTRIBUTIONS
    )
    assert propose_size(numbered([*base, queued]), DENSITY, [0.05]) is None
    # ... but a new best within the size, with other settings, makes it due again
    better = sized(0.03, 0.875, lr=0.06)
    again = propose_size(numbered([*base, ran, better]), DENSITY, [0.05])
    assert again is not None and again.source == 3 and again.params["finetune.lr"] == 0.06
    # nothing is known about the model before a trial has finished; nothing lies within a size below every model
    plain = numbered([done(0.01, 0.80, 3072), done(0.04, 0.87, 11058)])
    assert propose_size(plain, DENSITY, [0.05]) is None
    assert propose_size(numbered(base), DENSITY, [0.001]) is None
    # a size whose density lies outside the searched range is not asked for; the next size is
    assert propose_size(numbered(base), DENSITY, [0.9, 0.05]).size == count


def test_a_proposed_size_is_what_a_real_trial_keeps_for_each_exact_allocation() -> None:
    from autoprune.config import BudgetConfig, DatasetConfig, ModelConfig, PruneConfig, TrialConfig
    from autoprune.pipeline.trial import run_trial

    def trial(allocation: str, density: float) -> Any:
        return run_trial(
            TrialConfig(
                dataset=DatasetConfig(name="synthetic"),
                model=ModelConfig(name="lenet-300-100"),
                budget=BudgetConfig(train_epochs=1, finetune_epochs=1, batch_size=64),
                prune=PruneConfig(allocation=allocation, density=density),
                device="cpu",
            )
        )

    first = trial("global", 0.02)
    rec = first.record()
    assert rec["params_prunable"] == sum(m.weight.numel() for m in first.model.modules() if hasattr(m, "weight"))
    dims = {"prune.density": FloatDistribution(0.001, 0.5, log=True), "prune.allocation": ALLOCATION_DIST}
    for allocation in ("global", "lamp", "erk", "uniform"):
        seen = create_trial(
            params={"prune.density": 0.02, "prune.allocation": allocation},
            distributions=dims,
            values=[0.5, first.params_nonzero],
            user_attrs={"record": rec},
        )
        size = 0.037 * rec["params_total"]  # an awkward count
        p = propose_size([seen], Dim(path="prune.density", low=0.001, high=0.5, log=True), [math.floor(size)])
        assert p is not None and p.params["prune.allocation"] == allocation
        assert trial(allocation, p.params["prune.density"]).params_nonzero == p.size == math.floor(size)


ALLOCATION_DIST = CategoricalDistribution(["global", "lamp", "erk", "uniform"])


def test_size_refinements_run_right_after_the_baselines_once_per_size_and_are_marked() -> None:
    sp = parse_space({**SPACE, "search": {**SPACE["search"], "sizes": [0.02, 0.05]}})
    assert size_targets(sp.sizes) == (0.02, 0.05)
    study = optuna.create_study(directions=list(ledger.DIRECTIONS), sampler=optuna.samplers.RandomSampler(seed=0))
    seed_baselines(study, sp, limit=4)
    lines: list[str] = []
    refiner = Refiner(RefineSettings(every=0, after=3), sp.dims, log=lines.append, sizes=size_targets(sp.sizes))
    assert refiner.active
    kinds = []
    for proposal, _, attrs in _drive(study, refiner, sp.dims, 10):
        kinds.append("b" if "baseline" in attrs else "z" if SIZE_ATTR in attrs else "s")
        if proposal is not None:
            assert attrs[SIZE_ATTR] == proposal.size and attrs[REFINE_ATTR] == proposal.source
    assert "".join(kinds).startswith("bbbbzz")  # both sizes, before any sampled trial, then only if due again
    records, _, _ = ledger.trial_records(study)
    at = {r[SIZE_ATTR]: r for r in records if SIZE_ATTR in r}
    assert sorted(at) == [math.floor(0.02 * 266_610), math.floor(0.05 * 266_610)]
    assert all(r["params_nonzero"] == size for size, r in at.items())
    assert len(lines) == kinds.count("z")


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ([0.05, 1.5], "got 1.5"),
        ([0], "got 0"),
        (["5%"], "got '5%'"),
        (True, "got True"),
    ],
)
def test_bad_sizes_are_refused_when_the_space_loads(sizes, message) -> None:
    with pytest.raises(ConfigError, match=f"search.sizes must list fractions.*{message}"):
        parse_space({**SPACE, "search": {"sizes": sizes}})


def test_sizes_need_a_space_that_searches_the_overall_size() -> None:
    per_layer = {**SPACE, "prune": {"sparsity": {"fc1": {"low": 0.5, "high": 0.99}}}, "search": {"sizes": [0.05]}}
    with pytest.raises(ConfigError, match=r"search\.sizes needs a space that searches the overall size"):
        parse_space(per_layer)


def test_the_report_reads_the_declared_sizes_of_a_run_as_data(tmp_path) -> None:
    import os

    from autoprune.rundir.directory import SPACE_FILE, declared_sizes

    assert declared_sizes(tmp_path) == ()  # no frozen space
    (tmp_path / SPACE_FILE).write_text("model: {name: 'evil:module'}\nsearch: {sizes: [0.02, 13330]}\n")
    assert declared_sizes(tmp_path) == (0.02, 13330.0)  # nothing the space names is imported
    for text in ("search: {sizes: [1.5]}\n", "search: [1, 2]\n", "search: {sizes: [0.02\n", "- a list\n"):
        (tmp_path / SPACE_FILE).write_text(text)
        assert declared_sizes(tmp_path) == ()
    (tmp_path / SPACE_FILE).unlink()
    os.mkfifo(tmp_path / SPACE_FILE)  # never opened: reading a pipe would block the report
    assert declared_sizes(tmp_path) == ()
