"""Baseline seeding on plain Optuna studies: the ladder, its place before sampled trials, and resume."""

from __future__ import annotations

import itertools
import math

import optuna
import pytest
from _helpers import ask, tune_searcher
from optuna.trial import TrialState

from autoprune.errors import ConfigError
from autoprune.report.render import front_table, report_document
from autoprune.rundir import interrupted, ledger
from autoprune.rundir.ledger import Outcome
from autoprune.searching._attrs import BASELINE_ATTR, BASELINES_ATTR, CALIBRATION_ATTR, PROBE_ATTR
from autoprune.searching.baselines import ladder, seed_baselines
from autoprune.searching.pareto import baseline_front
from autoprune.searching.space import parse_space

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
    assert study.user_attrs[BASELINES_ATTR] == labels
    assert [t.state for t in study.trials] == [TrialState.WAITING] * 5
    asked = [ask(study, sp.dims) for _ in range(7)]
    for trial, baseline in zip(asked[:5], ladder(sp)[:5], strict=True):
        assert trial.params == pytest.approx(baseline.params)
        assert study.trials[trial.number].user_attrs[BASELINE_ATTR] == baseline.label
    assert all(BASELINE_ATTR not in study.trials[t.number].user_attrs for t in asked[5:])  # sampled
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


def test_resume_never_reruns_a_finished_baseline_and_runs_an_interrupted_one_again_once(tmp_path) -> None:
    sp = space()
    study = optuna.create_study(directions=list(ledger.DIRECTIONS))
    seed_baselines(study, sp, limit=12)
    done = [ask(study, sp.dims) for _ in range(3)]
    for trial in done:
        ledger.record_outcome(study, trial, Outcome("complete", record=_record(trial, 0.9, 100)))
    cut = ask(study, sp.dims)  # running when the search is interrupted
    # resume: stale trials closed, the cut-off baseline enqueued again, seeding asked again (it must add nothing)
    assert interrupted.repair(study, tmp_path, requeue=True) == [
        "resume: closed 1 trial left running by an interruption",
        "resume: 1 seeded baseline cut off by an interruption runs again before any sampled trial: "
        + ladder(sp)[3].label,
    ]
    assert seed_baselines(study, sp, limit=12) == []
    assert interrupted.repair(study, tmp_path, requeue=True) == []  # a second resume: it waits already
    rest = [ask(study, sp.dims) for _ in range(11)]
    labels = [study.trials[t.number].user_attrs.get(BASELINE_ATTR) for t in rest]
    assert labels == [b.label for b in ladder(sp)[4:]] + [ladder(sp)[3].label, None, None]  # waiting, then sampled
    assert rest[8].params == cut.params == pytest.approx(ladder(sp)[3].params)
    for trial in rest:
        ledger.record_outcome(study, trial, Outcome("complete", record=_record(trial, 0.9, 100)))
    assert interrupted.repair(study, tmp_path, requeue=True) == []  # it finished: never again
    all_labels = [t.user_attrs.get(BASELINE_ATTR) for t in study.trials if t.user_attrs.get(BASELINE_ATTR)]
    assert len(all_labels) == 13 and len(set(all_labels)) == 12  # each once, the interrupted one twice
    records, _, _ = ledger.trial_records(study)
    assert {r["baseline"] for r in records if r.get("baseline")} == {b.label for b in ladder(sp)}  # every size


def test_a_baseline_that_failed_on_its_own_is_a_result_and_not_run_again(tmp_path) -> None:
    sp = space()
    study = optuna.create_study(directions=list(ledger.DIRECTIONS))
    seed_baselines(study, sp, limit=3)
    ledger.record_outcome(study, ask(study, sp.dims), Outcome("diverged", reason="non-finite loss"))
    ledger.record_outcome(study, ask(study, sp.dims), Outcome("interrupted", reason="stopped before it finished"))
    assert interrupted.repair(study, tmp_path, requeue=False) == []  # nothing will run: nothing enqueued
    assert interrupted.requeue_baselines(study) == [ladder(sp)[1].label]  # the interrupted one, not the diverged


def test_ray_tunes_optuna_searcher_asks_the_seeded_baselines_first() -> None:
    pytest.importorskip("ray.tune.search")
    sp = space({"densities": 2, "allocations": ["global"]})
    study = optuna.create_study(directions=list(ledger.DIRECTIONS), study_name="s", storage="sqlite:///:memory:")
    seed_baselines(study, sp, limit=3)
    searcher = tune_searcher(study, sp)
    configs = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [c["prune.density"] for c in configs[:2]] == pytest.approx([0.005, 0.32])  # what the workers run
    assert all(c["prune.allocation"] == "global" for c in configs[:2])
    assert [t.user_attrs.get(BASELINE_ATTR) for t in study.trials] == ["global@0.005", "global@0.32", None]
    assert not math.isclose(configs[2]["prune.density"], 0.005)  # then the sampler


# Calibration: probes of the finetune lr before the ladder.

LR = {"low": 1e-3, "high": 0.1, "log": True, "default": 0.01}
CALIBRATED = {**SPACE, "finetune": {**SPACE["finetune"], "lr": LR}}


def calibrated(baselines=None):
    doc = dict(CALIBRATED)
    if baselines is not None:
        doc["search"] = {"baselines": baselines}
    return parse_space(doc)


def _dim(spec: dict):
    from autoprune.searching.space import Dim

    return Dim("finetune.x", **{k: tuple(v) if k == "choices" else v for k, v in spec.items()})


@pytest.mark.parametrize(
    ("spec", "values"),
    [
        ({"low": 1e-3, "high": 0.1, "log": True, "default": 0.01}, [0.01, math.sqrt(1e-5), math.sqrt(1e-3)]),
        ({"low": 0.0, "high": 0.8, "default": 0.2}, [0.2, 0.1, 0.5]),
        ({"low": 1, "high": 9, "default": 3}, [3, 2, 6]),
        ({"low": 1e-3, "high": 0.1, "log": True, "default": 0.1}, [0.1, 0.01]),  # an end: one midpoint
        ({"choices": ["a", "b", "c"], "default": "b"}, ["b", "a", "c"]),
    ],
)
def test_probe_values_are_the_default_and_the_midpoints_towards_each_end(spec, values) -> None:
    dim = _dim(spec)
    assert dim.path == "finetune.x"
    from autoprune.searching.baselines import probe_values

    assert probe_values(dim) == pytest.approx(values)


def test_the_finetune_lr_is_calibrated_by_default_when_searched() -> None:
    from autoprune.searching.baselines import calibrate_leaves, probes

    assert calibrate_leaves(space()) == []  # not searched: nothing to calibrate
    assert calibrate_leaves(calibrated()) == ["finetune.lr"]
    for off in (False, []):
        assert calibrate_leaves(calibrated({"calibrate": off})) == []
    assert calibrate_leaves(calibrated(False)) == []  # no ladder, no calibration
    plan = probes(calibrated())
    middle = math.sqrt(0.005 * 0.32)
    assert [b.label for b in plan] == [
        "global@0.04 finetune.lr=0.01",
        "global@0.04 finetune.lr=0.003162",
        "global@0.04 finetune.lr=0.03162",
    ]
    first = ladder(calibrated())[0].params
    for b in plan:  # the first baseline's settings at the middle of the range; only the lr differs between them
        assert b.params["prune.density"] == pytest.approx(middle)
        assert {k: v for k, v in b.params.items() if k not in ("prune.density", "finetune.lr")} == {
            k: v for k, v in first.items() if k not in ("prune.density", "finetune.lr")
        }
    # a leaf the file (or --set) fixes has nothing to calibrate: left out, the others calibrated
    assert calibrate_leaves(calibrated({"calibrate": ["finetune.momentum", "finetune.lr"]})) == ["finetune.lr"]
    two = probes(calibrated({"calibrate": ["finetune.lr", "prune.schedule"]}))
    assert len(two) == 3 * 2 and two[0].label == "global@0.04 finetune.lr=0.01 prune.schedule=one_shot"


@pytest.mark.parametrize(
    ("calibrate", "message"),
    [
        (["finetune.momentun"], "unknown leaf 'finetune.momentun'; this space searches finetune.distill_weight"),
        (["prune.sparsity"], "unknown leaf 'prune.sparsity'"),
        (["search.trials"], "unknown leaf 'search.trials'"),
        (["prune.density"], "prune.density is set by the ladder itself"),
        (["finetune.lr", "finetune.lr"], "lists a leaf twice"),
        (3, "must be a list of searched leaves"),
    ],
)
def test_a_bad_calibration_is_refused_when_the_space_loads(calibrate, message) -> None:
    with pytest.raises(ConfigError) as info:
        calibrated({"calibrate": calibrate})
    assert "search.baselines.calibrate" in str(info.value) and message in str(info.value)


def _finish(study, trial, acc: float, params: int = 100) -> None:
    ledger.record_outcome(study, trial, Outcome("complete", record=_record(trial, acc, params)))


def test_the_ladder_waits_for_the_probes_and_runs_at_the_best_lr() -> None:
    from autoprune.searching.baselines import Calibration, probes

    sp = calibrated()
    lines: list[str] = []
    calibration = Calibration(sp, log=lines.append)
    study = optuna.create_study(directions=list(ledger.DIRECTIONS), sampler=optuna.samplers.RandomSampler(seed=0))
    labels = seed_baselines(study, sp, limit=10)
    assert labels == [b.label for b in probes(sp)]  # only the probes: the ladder waits
    assert study.user_attrs[CALIBRATION_ATTR] == {"leaves": ["finetune.lr"], "limit": 7, "done": False}
    asked = [ask(study, sp.dims) for _ in range(3)]
    assert [t.params["finetune.lr"] for t in asked] == pytest.approx([0.01, 10**-2.5, 10**-1.5])
    assert all(study.trials[t.number].user_attrs[PROBE_ATTR] for t in asked)
    _finish(study, asked[0], 0.80)
    _finish(study, asked[2], 0.85)
    assert calibration.before_ask(study) is True  # one probe still running: pending, nothing enqueued
    assert not any(t.state == TrialState.WAITING for t in study.trials)
    _finish(study, asked[1], 0.70)
    assert calibration.before_ask(study) is False
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    rungs = ladder(sp, {"finetune.lr": 10**-1.5})[:7]
    assert [t.user_attrs[BASELINE_ATTR] for t in waiting] == [b.label for b in rungs]
    assert all(t.system_attrs["fixed_params"]["finetune.lr"] == pytest.approx(10**-1.5) for t in waiting)
    assert study.user_attrs[BASELINES_ATTR] == labels + [b.label for b in rungs]
    assert study.user_attrs[CALIBRATION_ATTR]["chosen"] == {"finetune.lr": pytest.approx(10**-1.5)}
    assert lines == [
        "search: calibration chose finetune.lr=0.03162 (trial 2, val 0.8500; 0.8000 at 0.01, 0.7000 at 0.003162); "
        f"the next 7 trials are baselines at it: {', '.join(b.label for b in rungs)}"
    ]
    assert calibration.before_ask(study) is False and len(lines) == 1  # once
    rest = [ask(study, sp.dims) for _ in range(8)]
    assert [study.trials[t.number].user_attrs.get(BASELINE_ATTR) for t in rest] == [b.label for b in rungs] + [None]


def test_a_tie_between_probes_keeps_the_default_and_a_failed_probe_is_left_out() -> None:
    from autoprune.searching.baselines import finish_calibration

    sp = calibrated()
    study = optuna.create_study(directions=list(ledger.DIRECTIONS))
    seed_baselines(study, sp, limit=20)
    asked = [ask(study, sp.dims) for _ in range(3)]
    _finish(study, asked[0], 0.8)
    study.tell(asked[1], state=TrialState.FAIL)
    _finish(study, asked[2], 0.8)
    line = finish_calibration(study, sp)
    assert line is not None and line.startswith("search: calibration chose finetune.lr=0.01 (trial 0, val 0.8000; ")
    assert study.user_attrs[CALIBRATION_ATTR]["chosen"] == {"finetune.lr": 0.01}
    assert len([t for t in study.trials if t.state == TrialState.WAITING]) == 12


@pytest.mark.parametrize(("better", "verb", "lr"), [(0.81, "kept the default", 0.01), (0.82, "chose", 10**-1.5)])
def test_a_probe_must_beat_the_default_by_more_than_one_standard_error(better, verb, lr) -> None:
    from autoprune.searching.baselines import finish_calibration

    sp = calibrated()
    study = optuna.create_study(directions=list(ledger.DIRECTIONS))
    seed_baselines(study, sp, limit=20)
    asked = [ask(study, sp.dims) for _ in range(3)]
    for trial, acc in zip(asked, (0.80, 0.70, better), strict=True):  # the default's s.e.: sqrt(.8 * .2 / 1000)
        record = {**_record(trial, acc, 100), "val_samples": 1000}
        ledger.record_outcome(study, trial, Outcome("complete", record=record))
    line = finish_calibration(study, sp)
    chosen = 0 if verb == "kept the default" else 2
    summary = (
        f"calibration {verb} finetune.lr={lr:.4g} (trial {chosen}, val {[0.8, 0.7, better][chosen]:.4f}; "
        + ", ".join(
            f"{a:.4f} at {v}"
            for n, (a, v) in enumerate([(0.8, "0.01"), (0.7, "0.003162"), (better, "0.03162")])
            if n != chosen
        )
        + ")"
    )
    if verb == "kept the default":
        summary += ": no probe beat it by more than one standard error (1.26 pt)"
    assert line == f"search: {summary}; the next 12 trials are baselines at it: " + ", ".join(
        b.label for b in ladder(sp, {"finetune.lr": lr})
    )
    assert study.user_attrs[CALIBRATION_ATTR]["chosen"] == {"finetune.lr": pytest.approx(lr)}
    results = ledger.study_results(study, requested=20)
    assert results.calibration == summary == report_document(results)["calibration"]


def test_calibration_survives_an_interrupted_search() -> None:
    from autoprune.searching.baselines import Calibration

    sp = calibrated()
    study = optuna.create_study(directions=list(ledger.DIRECTIONS))
    seed_baselines(study, sp, limit=20)
    asked = [ask(study, sp.dims) for _ in range(2)]
    _finish(study, asked[0], 0.6)
    _finish(study, asked[1], 0.9)
    # interrupted before the third probe started; resume: seeding adds nothing, the third probe runs, then the ladder
    assert ledger.close_stale_trials(study) == 0 and seed_baselines(study, sp, limit=20) == []
    calibration = Calibration(sp)
    assert calibration.before_ask(study) is True
    third = ask(study, sp.dims)
    assert study.trials[third.number].user_attrs[BASELINE_ATTR] == "global@0.04 finetune.lr=0.03162"
    ask(study, sp.dims)  # a sampled trial while the probe runs, then the driver dies: both closed on resume
    assert ledger.close_stale_trials(study) == 2
    assert calibration.before_ask(study) is False  # the failed probe counts as finished
    assert study.user_attrs[CALIBRATION_ATTR]["chosen"] == {"finetune.lr": pytest.approx(10**-2.5)}
    labels = [t.user_attrs.get(BASELINE_ATTR) for t in study.trials if t.user_attrs.get(BASELINE_ATTR)]
    assert len(labels) == len(set(labels)) == 3 + 12
    assert interrupted.requeue_baselines(study) == []  # the ladder is chosen: the probe has nothing left to decide


def test_an_interrupted_probe_runs_again_and_the_calibration_waits_for_it(tmp_path) -> None:
    from autoprune.searching.baselines import Calibration

    sp = calibrated()
    study = optuna.create_study(directions=list(ledger.DIRECTIONS))
    seed_baselines(study, sp, limit=20)
    asked = [ask(study, sp.dims) for _ in range(3)]
    _finish(study, asked[0], 0.6)
    _finish(study, asked[1], 0.9)  # the third probe is running when the driver dies
    lines = interrupted.repair(study, tmp_path, requeue=True)
    assert lines[-1].endswith("runs again before any sampled trial: global@0.04 finetune.lr=0.03162")
    calibration = Calibration(sp)
    assert calibration.before_ask(study) is True  # the probe run again is still to come
    again = ask(study, sp.dims)
    assert study.trials[again.number].user_attrs[PROBE_ATTR] is True and again.params == asked[2].params
    _finish(study, again, 0.95)
    assert calibration.before_ask(study) is False
    assert study.user_attrs[CALIBRATION_ATTR]["chosen"] == {"finetune.lr": pytest.approx(10**-1.5)}


def test_no_calibration_when_the_trials_leave_no_room_for_a_ladder() -> None:

    sp = calibrated()
    study = optuna.create_study(directions=list(ledger.DIRECTIONS))
    assert seed_baselines(study, sp, limit=3) == [b.label for b in ladder(sp)[:3]]
    assert CALIBRATION_ATTR not in study.user_attrs


def test_a_probe_that_is_also_a_rung_is_not_run_twice() -> None:
    from autoprune.searching.baselines import finish_calibration

    sp = calibrated({"densities": 1, "allocations": ["global", "lamp"]})  # the ladder sits at the middle too
    study = optuna.create_study(directions=list(ledger.DIRECTIONS))
    seed_baselines(study, sp, limit=20)
    for i, trial in enumerate([ask(study, sp.dims) for _ in range(3)]):
        _finish(study, trial, 0.7 + 0.1 * (i == 1))
    finish_calibration(study, sp)
    waiting = [t.user_attrs[BASELINE_ATTR] for t in study.trials if t.state == TrialState.WAITING]
    assert waiting == ["lamp@0.04"]  # global@0.04 at the chosen lr is probe 1 itself


def test_ray_tunes_searcher_runs_the_probes_then_the_ladder_at_their_best() -> None:
    pytest.importorskip("ray.tune.search")
    from autoprune.searching.refine import SearchPolicies

    sp = calibrated({"densities": 2, "allocations": ["global"]})
    study = optuna.create_study(directions=list(ledger.DIRECTIONS), study_name="s", storage="sqlite:///:memory:")
    seed_baselines(study, sp, limit=8)
    searcher = tune_searcher(study, sp, SearchPolicies(calibrate=True))
    configs = [searcher.suggest(f"t{i}") for i in range(4)]  # three probes, then a sampled trial (none waiting)
    assert [c["finetune.lr"] for c in configs[:3]] == pytest.approx([0.01, 10**-2.5, 10**-1.5])
    assert [t.user_attrs.get(BASELINE_ATTR) is None for t in study.trials] == [False, False, False, True]
    for trial, acc in zip(study.trials[:4], (0.7, 0.9, 0.8, 0.5), strict=True):
        _finish(study, optuna.Trial(study, trial._trial_id), acc)
    after = [searcher.suggest(f"t{i}") for i in range(4, 7)]
    assert [c["prune.density"] for c in after[:2]] == pytest.approx([0.005, 0.32])
    assert [c["finetune.lr"] for c in after[:2]] == pytest.approx([10**-2.5] * 2)
    assert [t.user_attrs.get(BASELINE_ATTR) for t in study.trials[4:]] == ["global@0.005", "global@0.32", None]


def test_a_leaf_with_cases_is_calibrated_in_the_case_its_parent_s_probe_selects() -> None:
    """The finetune lr searched over a range per optimizer: the probes take the default optimizer's case, or
    each optimizer's when the optimizer is calibrated too, and the ladder runs at the chosen probe's case."""
    from autoprune.searching.baselines import Calibration, calibrate_leaves, probes

    finetune = {
        "optimizer": {"choices": ["adam", "sgd"]},
        "lr": {
            "by": "optimizer",
            "adam": {"low": 1e-3, "high": 5e-2, "log": True, "default": 8e-3},
            "sgd": {"low": 1e-2, "high": 0.3, "log": True, "default": 0.05},
        },
    }
    doc = {**CALIBRATED, "finetune": finetune}
    sp = parse_space(doc)
    assert calibrate_leaves(sp) == ["finetune.lr"]  # searched, through its cases
    assert [b.label for b in probes(sp)] == [
        "global@0.04 finetune.lr=0.008",
        "global@0.04 finetune.lr=0.002828",
        "global@0.04 finetune.lr=0.02",
    ]
    assert all(b.params["finetune.optimizer"] == "adam" and "finetune.lr[sgd]" not in b.params for b in probes(sp))
    both = parse_space({**doc, "search": {"baselines": {"calibrate": ["finetune.lr", "finetune.optimizer"]}}})
    plan = probes(both)
    assert [b.label.removeprefix("global@0.04 ") for b in plan] == [
        "finetune.optimizer=adam finetune.lr=0.008",
        "finetune.optimizer=adam finetune.lr=0.002828",
        "finetune.optimizer=adam finetune.lr=0.02",
        "finetune.optimizer=sgd finetune.lr=0.05",
        "finetune.optimizer=sgd finetune.lr=0.02236",
        "finetune.optimizer=sgd finetune.lr=0.1225",
    ]
    assert plan[4].params["finetune.lr[sgd]"] == pytest.approx(math.sqrt(1e-2 * 0.05))
    # The probe at SGD's 0.1225 wins by far: every rung runs SGD at that lr.
    lines: list[str] = []
    study = optuna.create_study(directions=list(ledger.DIRECTIONS), sampler=optuna.samplers.RandomSampler(seed=0))
    seed_baselines(study, both, limit=12)
    asked = [ask(study, both.dims) for _ in plan]
    assert [t.params for t in asked] == [b.params for b in plan]
    for trial, acc in zip(asked, (0.80, 0.78, 0.79, 0.70, 0.75, 0.90), strict=True):
        _finish(study, trial, acc)
    assert Calibration(both, log=lines.append).before_ask(study) is False
    chosen = {"finetune.optimizer": "sgd", "finetune.lr[sgd]": pytest.approx(math.sqrt(0.05 * 0.3))}
    assert study.user_attrs[CALIBRATION_ATTR]["chosen"] == chosen
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert len(waiting) == 6
    for t in waiting:
        fixed = t.system_attrs["fixed_params"]
        assert fixed["finetune.optimizer"] == "sgd" and "finetune.lr[adam]" not in fixed
        assert fixed["finetune.lr[sgd]"] == pytest.approx(math.sqrt(0.05 * 0.3))
    assert "calibration chose finetune.optimizer=sgd finetune.lr[sgd]=0.1225 (trial 5, val 0.9000" in lines[0]
    rung = ask(study, both.dims)
    assert both.config_for(rung.params).finetune.optimizer == "sgd"
    assert both.config_for(rung.params).finetune.lr == pytest.approx(math.sqrt(0.05 * 0.3))
