from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from _helpers import run_cli

from autoprune.errors import SearchError
from autoprune.raytune._scheduler import scheduler_class
from autoprune.searching.stopping import EarlyStop, ParetoHalving, format_duration, parse_duration, rung_epochs


def halving(**kw) -> ParetoHalving:
    return ParetoHalving(**{"grace_period": 1, "reduction_factor": 3, "size_tolerance": 0.1, "min_peers": 3, **kw})


def table(h: ParetoHalving, rung: int, rows: dict[str, tuple[float, float]]) -> None:
    """Fill one rung by hand: trial -> (accuracy, params)."""
    h.rungs[rung] = dict(rows)


def test_rungs_are_geometric_and_below_the_last_epoch():
    assert rung_epochs(1, 3, 15) == [1, 3, 9]
    assert rung_epochs(2, 2, 16) == [2, 4, 8]
    assert rung_epochs(1, 3, 1) == []
    h = halving()
    assert [h.rung_at(e) for e in (0.5, 1, 2, 3, 8.9, 9, 27)] == [None, 0, 0, 1, 1, 2, 3]
    assert h.rung_at(9, last=9) == 1  # rung 2 is at the last epoch: it saves nothing
    assert h.rung_at(1, last=1) is None


def test_bottom_of_equal_sized_peers_stops_and_the_top_continues():
    h = halving()
    table(h, 0, {"a": (0.80, 1000), "b": (0.82, 1000), "c": (0.84, 1000), "d": (0.86, 1000)})
    # 5 trials with this one; the top ceil(5/3) = 2 go on.
    low = h.judge("x", 1, 0.81, 1000)
    assert low.stop and (low.rung, low.peers, low.better, low.keep) == (0, 4, 3, 2)
    high = h.judge("y", 1, 0.85, 1000)
    assert not high.stop and (high.peers, high.better, high.keep) == (5, 1, 2)  # x was recorded: 5 peers
    assert h.rungs[0]["x"] == (0.81, 1000) and h.rungs[0]["y"] == (0.85, 1000)  # stopped or not, recorded


def test_a_baseline_is_recorded_as_a_peer_but_never_stopped():
    h = halving()
    table(h, 0, {"a": (0.80, 1000), "b": (0.82, 1000), "c": (0.84, 1000), "d": (0.86, 1000)})
    base = h.judge("base", 1, 0.10, 1000, exempt=True)  # last of 5: a sampled trial here would stop
    assert not base.stop and base.rung == 0 and "a baseline runs to the end" in base.reason
    assert h.rungs[0]["base"] == (0.10, 1000)
    x = h.judge("x", 1, 0.11, 1000)  # the baseline counts among x's peers: x ranks 5 of 6, the top 2 go on
    assert x.stop and (x.peers, x.better) == (5, 4)


def test_a_seeded_baseline_is_marked_in_its_tune_config_and_exempt():
    import optuna

    from autoprune.raytune._worker import is_baseline, suggest
    from autoprune.searching._attrs import BASELINE_ATTR
    from autoprune.searching.space import load_space

    dims = load_space("digits_quick").dims
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial({"prune.density": 0.01}, user_attrs={BASELINE_ATTR: "global@0.01"})
    seeded, sampled = study.ask(), study.ask()
    config = {**suggest(seeded, dims), **seeded.params}
    assert config["prune.density"] == 0.01  # the enqueued value
    assert is_baseline(SimpleNamespace(config=config)) and config["_trial"] == 0
    config = {**suggest(sampled, dims), **sampled.params}
    assert not is_baseline(SimpleNamespace(config=config)) and config["_trial"] == 1


def test_a_small_model_is_never_compared_with_bigger_ones():
    h = halving()
    table(h, 0, {f"big{i}": (0.90 + i / 100, 50_000) for i in range(6)})
    small = h.judge("small", 1, 0.40, 2_000)
    assert not small.stop and small.peers == 0 and "fewer than 3" in small.reason
    # The reverse holds: a big model less accurate than most smaller ones is stopped.
    h2 = halving()
    table(h2, 0, {f"small{i}": (0.85, 1_000 + i) for i in range(4)})
    assert h2.judge("big", 1, 0.80, 60_000).stop


def test_size_tolerance_decides_who_counts_as_a_peer():
    rows = {"a": (0.90, 1050), "b": (0.91, 1090), "c": (0.92, 1200), "d": (0.70, 900), "e": (0.71, 950)}
    # tolerance 0.1: a, b (<= 1100) and d, e are peers; 2 of 4 better, keep ceil(5/3) = 2 -> stop
    h = halving(size_tolerance=0.1)
    table(h, 0, rows)
    d = h.judge("x", 1, 0.80, 1000)
    assert d.stop and (d.peers, d.better) == (4, 2)
    # tolerance 0: only d, e are peers: too few
    h0 = halving(size_tolerance=0.0)
    table(h0, 0, rows)
    d0 = h0.judge("x", 1, 0.80, 1000)
    assert not d0.stop and d0.peers == 2
    # tolerance 0.25: c counts too; 3 of 5 better, keep ceil(6/3) = 2 -> stop
    h25 = halving(size_tolerance=0.25)
    table(h25, 0, rows)
    assert h25.judge("x", 1, 0.80, 1000).stop


def test_too_few_peers_continue_whatever_the_accuracy():
    h = halving(min_peers=3)
    table(h, 0, {"a": (0.9, 100), "b": (0.9, 100)})
    d = h.judge("x", 1, 0.1, 100)
    assert not d.stop and d.judged and d.peers == 2
    h1 = halving(min_peers=1)
    table(h1, 0, {"a": (0.9, 100), "b": (0.9, 100)})
    assert h1.judge("x", 1, 0.1, 100).stop


def test_a_trial_is_judged_once_per_rung_at_its_first_result_past_it():
    h = halving()
    table(h, 1, {"a": (0.9, 100), "b": (0.9, 100), "c": (0.9, 100)})
    first = h.judge("x", 1, 0.5, 100)  # rung 0 has no other trial yet
    assert first.judged and not first.stop and h.rungs[0] == {"x": (0.5, 100)}
    assert h.judge("x", 2, 0.5, 100).reason.endswith("judged at this rung already")
    # It skipped epoch 3: its result at epoch 4 is judged at rung 1 (epoch 3).
    d = h.judge("x", 4, 0.5, 100)
    assert d.stop and d.rung == 1 and d.epoch == 3
    later = h.judge("x", 5, 0.99, 100)
    assert not later.judged and not later.stop
    # A result that jumps past a rung is never judged at a lower one afterwards.
    h.judge("y", 9, 0.95, 100)
    assert "y" in h.rungs[2] and "y" not in h.rungs.get(1, {})
    assert not h.judge("y", 9.5, 0.95, 100).judged


def test_results_without_a_size_or_an_accuracy_are_ignored():
    h = halving()
    table(h, 0, {"a": (0.9, 100), "b": (0.9, 100), "c": (0.9, 100)})
    for params, acc in ((None, 0.1), (math.nan, 0.1), (100, math.nan)):
        d = h.judge("x", 1, acc, params)
        assert not d.stop and not d.judged
    assert "x" not in h.rungs[0]
    assert not h.judge("x", 0.5, 0.1, 100).judged  # before the grace period


@pytest.mark.parametrize(
    ("order", "stopped"),
    [
        ("ascending", set()),  # each arrival is the best so far: nothing to stop it
        ("descending", {"t3", "t4", "t5"}),  # once 3 better peers are recorded, each worse arrival stops
    ],
)
def test_decisions_depend_on_what_has_arrived(order: str, stopped: set[str]):
    accs = {f"t{i}": 0.9 - i / 100 for i in range(6)}  # t0 is the best
    names = sorted(accs, key=accs.get, reverse=(order == "descending"))
    h = halving()
    got = {n for n in names if h.judge(n, 1, accs[n], 100).stop}
    assert got == stopped
    assert set(h.rungs[0]) == set(accs)


def test_reasons_are_one_line_and_say_the_decision():
    h = halving()
    table(h, 0, {"a": (0.8, 100), "b": (0.85, 100), "c": (0.9, 100)})
    stop = h.judge("7", 1, 0.7, 100)
    assert "\n" not in stop.reason and stop.reason.startswith("trial 7 epoch 1 (rung 0, epoch 1)")
    assert stop.reason.endswith("→ stop") and "ranks 4 of 4" in stop.reason
    assert h.judge("8", 1, 0.95, 100).reason.endswith("→ continue")


@pytest.mark.parametrize(
    "kw",
    [
        {"reduction_factor": 1},
        {"reduction_factor": math.inf},
        {"grace_period": 0},
        {"size_tolerance": -0.1},
        {"min_peers": 0},
    ],
)
def test_bad_options_are_one_line_errors(kw: dict):
    with pytest.raises(SearchError) as err:
        halving(**kw)
    assert "\n" not in str(err.value) and "got" in str(err.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("1h30m", 5400),
        ("2h", 7200),
        ("1h 5m 3s", 3903),
        ("600", 600),
        ("1.5h", 5400),
        ("0.5", 0.5),
        (120, 120),
        ("2M", 120),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "1d", "30m1h", "1h1h", "h", "-5", "0", "0s", "inf", "1h-5m", True])
def test_bad_durations_are_one_line_errors(text):
    with pytest.raises(SearchError, match="--timeout") as err:
        parse_duration(text)
    assert "\n" not in str(err.value)


def test_format_duration():
    assert [format_duration(s) for s in (12.5, 90, 5400, 7200, 3903)] == ["12.5s", "1m30s", "1h30m", "2h", "1h5m3s"]


def test_ray_scheduler_applies_the_decisions():
    import cloudpickle
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    logged: list[str] = []
    sched = scheduler_class()(
        halving(),
        epoch_key="epoch",
        accuracy_key="acc",
        params_key="params",
        last_key="last",
        label=lambda t: str(t.config["n"]),
        log=logged.append,
    )
    assert isinstance(sched, FIFOScheduler)
    trials = [SimpleNamespace(trial_id=f"id{i}", config={"n": i}) for i in range(5)]
    result = {"epoch": 1, "params": 100, "last": 15}
    for t, acc in zip(trials[:4], (0.9, 0.91, 0.92, 0.93), strict=True):
        assert sched.on_trial_result(None, t, {**result, "acc": acc}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, trials[4], {**result, "acc": 0.5}) == TrialScheduler.STOP
    assert sched.on_trial_result(None, trials[0], {"acc": 0.1}) == TrialScheduler.CONTINUE  # a final result
    assert list(sched.stopped) == ["id4"] and sched.stopped["id4"].rung == 0
    assert len(logged) == 5 and logged[-1].startswith("trial 4 epoch 1") and logged[-1].endswith("→ stop")
    copy = cloudpickle.loads(cloudpickle.dumps(sched))
    assert copy.log is None and copy.halving.rungs == sched.halving.rungs
    # A baseline (exempt) at the bottom of the same rung goes on; the table still gains its value.
    sched.exempt = lambda t: t.config.get("base", False)
    base = SimpleNamespace(trial_id="b", config={"n": 9, "base": True})
    assert sched.on_trial_result(None, base, {**result, "acc": 0.1}) == TrialScheduler.CONTINUE
    assert "b" not in sched.stopped and sched.halving.rungs[0]["9"] == (0.1, 100)


def test_early_stop_from_options_and_a_resumed_run():
    given = EarlyStop()  # nothing given: the space's or the run's, else the defaults
    assert given.updated(EarlyStop("off")).to_dict() == {"mode": "off"}
    assert given.updated(EarlyStop("asha")).to_dict() == {"mode": "asha", "reduction_factor": 3.0, "grace_period": 1.0}
    base = {"mode": "asha", "reduction_factor": 2.0, "grace_period": 4.0}
    run = EarlyStop.from_dict(base)
    assert run.updated(EarlyStop()).to_dict() == base  # resume keeps the search's
    assert run.updated(EarlyStop(grace_period=2)).grace_period == 2.0
    assert run.updated(EarlyStop("off")).to_dict() == {"mode": "off"}
    assert EarlyStop.from_dict({"mode": "off"}).updated(EarlyStop()).to_dict() == {"mode": "off"}
    with pytest.raises(SearchError, match="--early-stop must be one of off, asha, got 'median'"):
        EarlyStop("median")
    with pytest.raises(SearchError, match="--reduction-factor applies to early stopping, which is off"):
        EarlyStop("off", reduction_factor=2)
    with pytest.raises(SearchError, match="--grace-period applies to early stopping, which is off"):
        EarlyStop.from_dict({"mode": "off"}).updated(EarlyStop(grace_period=2))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "--run-dir", "{tmp}/r", "--timeout", "5x"], "--timeout '5x' is not a duration"),
        (["search", "--run-dir", "{tmp}/r", "--early-stop", "off", "--grace-period", "2"], "--grace-period applies"),
        (["search", "--run-dir", "{tmp}/r", "--early-stop", "asha", "--reduction-factor", "1"], "must be a number > 1"),
        (["resume", "{tmp}", "--timeout", "0"], "--timeout must be a positive duration"),
    ],
)
def test_bad_stopping_options_fail_in_one_line_before_anything_starts(args, message, tmp_path, capsys, monkeypatch):
    code, out, err = run_cli([a.format(tmp=tmp_path) for a in args], capsys, monkeypatch)
    assert code == 1 and out == "" and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_space_can_ask_for_early_stopping():
    from autoprune.errors import ConfigError
    from autoprune.searching.space import load_space, parse_space

    assert load_space("digits_quick").early_stop is None
    assert load_space("digits_quick", ["search.early_stop=asha"]).early_stop == "asha"
    doc = {"dataset": {"name": "digits"}, "model": {"name": "lenet-300-100"}, "search": {"early_stop": "median"}}
    with pytest.raises(ConfigError, match=r"search\.early_stop must be one of off, asha, got 'median'"):
        parse_space(doc, source="s.yaml")
