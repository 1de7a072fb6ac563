from __future__ import annotations

import itertools
import math
import random

import pytest

from autoprune.errors import SearchError
from autoprune.searching.pareto import (
    PickRule,
    dominates,
    hypervolume,
    indistinct,
    knee_point,
    pareto_front,
    pick,
    pick_max_params,
    pick_min_accuracy,
    val_standard_error,
)


def rec(trial: int | None, params: int, acc: float) -> dict:
    r = {"val_accuracy": acc, "params_nonzero": params, "test_accuracy": acc - 0.01, "params_total": 10_000}
    if trial is not None:
        r["trial"] = trial
    return r


def brute_force_front(records: list[dict]) -> list[dict]:
    return [b for b in records if not any(dominates(a, b) for a in records if a is not b)]


def random_records(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    # Few distinct values so that ties in either objective and exact duplicates are common.
    params = [rng.choice([10, 50, 100, 500, 1000, 5000]) for _ in range(n)]
    accs = [rng.choice([0.5, 0.6, 0.7, 0.75, 0.8, 0.9]) for _ in range(n)]
    return [rec(i, p, a) for i, (p, a) in enumerate(zip(params, accs, strict=True))]


def test_dominates_needs_one_strict_improvement():
    assert dominates(rec(0, 10, 0.9), rec(1, 20, 0.8))
    assert dominates(rec(0, 10, 0.9), rec(1, 10, 0.8))
    assert dominates(rec(0, 10, 0.9), rec(1, 20, 0.9))
    assert not dominates(rec(0, 10, 0.9), rec(1, 10, 0.9))
    assert not dominates(rec(0, 10, 0.8), rec(1, 20, 0.9))


@pytest.mark.parametrize("seed", range(8))
def test_front_matches_brute_force(seed: int):
    records = random_records(seed, n=5 + 20 * seed)
    front = pareto_front(records)
    expected = brute_force_front(records)
    assert sorted(r["trial"] for r in front) == sorted(r["trial"] for r in expected)
    keys = [(r["params_nonzero"], -r["val_accuracy"]) for r in front]
    assert keys == sorted(keys)
    # Along the front accuracy strictly rises with size, except between exact duplicates.
    for a, b in itertools.pairwise(front):
        same = (a["params_nonzero"], a["val_accuracy"]) == (b["params_nonzero"], b["val_accuracy"])
        assert same or (a["params_nonzero"] < b["params_nonzero"] and a["val_accuracy"] < b["val_accuracy"])


def test_front_keeps_exact_duplicates_in_input_order():
    records = [rec(3, 100, 0.9), rec(1, 100, 0.9), rec(2, 100, 0.8), rec(4, 50, 0.7), rec(5, 50, 0.7)]
    assert [r["trial"] for r in pareto_front(records)] == [4, 5, 3, 1]


def test_front_skips_records_that_cannot_be_ranked():
    records = [rec(0, 10, float("nan")), rec(1, 100, 0.8), {"trial": 2, "params_nonzero": 5}]
    assert [r["trial"] for r in pareto_front(records)] == [1]
    assert pareto_front([]) == []


def test_hypervolume_linear_axis_by_hand():
    front = [rec(0, 2, 0.5), rec(1, 4, 0.8)]
    # Rectangles to ref x=10: [2, 4) x 0.5 and [4, 10) x 0.8.
    assert hypervolume(front, ref_params=10, log_params=False) == pytest.approx(2 * 0.5 + 6 * 0.8)
    assert hypervolume(front, ref_params=10, ref_accuracy=0.6, log_params=False) == pytest.approx(6 * 0.2)


def test_hypervolume_log_axis_by_hand():
    front = [rec(0, 10, 0.5), rec(1, 100, 0.9)]
    # In log10: x = 1 and 2, reference 4 -> [1, 2) x 0.5 + [2, 4) x 0.9.
    assert hypervolume(front, ref_params=10_000) == pytest.approx(1 * 0.5 + 2 * 0.9)


def test_hypervolume_ignores_dominated_and_out_of_range_points():
    front = [rec(0, 2, 0.5), rec(1, 4, 0.8)]
    noisy = [*front, rec(2, 3, 0.4), rec(3, 8, 0.7), rec(4, 20, 0.99)]
    base = hypervolume(front, ref_params=10, log_params=False)
    assert hypervolume(noisy, ref_params=10, log_params=False) == pytest.approx(base)
    assert hypervolume([], ref_params=10) == 0.0
    assert hypervolume([rec(0, 50, 0.9)], ref_params=10) == 0.0


def test_hypervolume_grows_with_a_new_front_point():
    front = [rec(0, 100, 0.5), rec(1, 1000, 0.9)]
    better = [*front, rec(2, 300, 0.8)]
    assert hypervolume(better, ref_params=10_000) > hypervolume(front, ref_params=10_000)


def test_hypervolume_rejects_bad_reference():
    with pytest.raises(ValueError, match="ref_params"):
        hypervolume([rec(0, 1, 0.5)], ref_params=0)
    with pytest.raises(ValueError, match="finite"):
        hypervolume([rec(0, 1, 0.5)], ref_params=math.inf, log_params=False)


def test_knee_of_an_l_shaped_front():
    # Accuracy climbs steeply until 1000 params, then flattens: the corner is trial 3.
    front = [rec(1, 10, 0.10), rec(2, 100, 0.60), rec(3, 1000, 0.95), rec(4, 10_000, 0.96), rec(5, 100_000, 0.97)]
    assert knee_point(front)["trial"] == 3
    # Order of the input does not matter, and dominated extras do not change the knee.
    shuffled = [front[4], front[0], rec(9, 5000, 0.5), front[2], front[1], front[3]]
    assert knee_point(shuffled)["trial"] == 3


def test_knee_of_small_or_straight_fronts_is_the_most_accurate():
    assert knee_point([rec(1, 10, 0.5)])["trial"] == 1
    assert knee_point([rec(1, 10, 0.5), rec(2, 100, 0.9)])["trial"] == 2
    straight = [rec(1, 10, 0.5), rec(2, 100, 0.6), rec(3, 1000, 0.7)]  # collinear in (log10 params, accuracy)
    assert knee_point(straight)["trial"] == 3
    concave = [rec(1, 10, 0.5), rec(2, 100, 0.52), rec(3, 1000, 0.9)]
    assert knee_point(concave)["trial"] == 3
    with pytest.raises(SearchError, match="no finished trials yet"):
        knee_point([])


FRONT = [rec(7, 1523, 0.812), rec(8, 4000, 0.85), rec(9, 20_000, 0.9), rec(10, 5000, 0.8)]


def test_pick_max_params():
    assert pick_max_params(FRONT, 4000)["trial"] == 8
    assert pick_max_params(FRONT, 3999)["trial"] == 7
    assert pick_max_params(FRONT, 10**9)["trial"] == 9


def test_indistinct_lists_the_trials_within_one_standard_error_of_the_pick():
    n = 6000
    se = math.sqrt(0.9 * 0.1 / n)  # 0.387 pt
    chosen = {**rec(1, 12_000, 0.9), "val_samples": n}
    assert val_standard_error(chosen) == pytest.approx(se)
    records = [
        chosen,
        rec(2, 10_000, 0.9 - 0.9 * se),  # close, smaller: listed
        rec(3, 13_000, 0.9 - 0.5 * se),  # close, within the size: listed first (more accurate)
        rec(4, 9_000, 0.9 - 1.1 * se),  # beyond one standard error
        rec(5, 14_000, 0.9),  # as accurate but over the size
        {"val_accuracy": float("nan"), "params_nonzero": 100, "trial": 6},  # not rankable
    ]
    close, margin = indistinct(records, chosen, 13_000)
    assert margin == pytest.approx(se)
    assert [r["trial"] for r in close] == [3, 2]
    assert [r["trial"] for r in indistinct(records, chosen, 20_000)[0]] == [5, 3, 2]
    # The margin scales with 1/sqrt(n): a validation split 4x larger halves it and drops trial 2.
    assert [r["trial"] for r in indistinct(records, {**chosen, "val_samples": 4 * n}, 13_000)[0]] == [3]
    # Records of runs made before they held val_samples: nothing is claimed.
    assert indistinct(records, rec(1, 12_000, 0.9), 13_000) == ([], None)
    assert val_standard_error({**chosen, "val_samples": True}) is None


def test_pick_max_params_takes_the_largest_model_validation_cannot_tell_from_the_most_accurate():
    n = 6000
    se = math.sqrt(0.9 * 0.1 / n)
    best = {**rec(1, 10_000, 0.9), "val_samples": n}
    records = [
        best,
        {**rec(2, 12_000, 0.9 - 0.9 * se), "val_samples": n},  # within one s.e., larger: off the front
        {**rec(3, 13_000, 0.9 - 1.1 * se), "val_samples": n},  # larger still, but beyond one s.e.
        {**rec(4, 12_000, 0.9 - 0.5 * se), "val_samples": n},  # as large as trial 2 and more accurate: chosen
        {**rec(5, 14_000, 0.95), "val_samples": n},  # over the size
        {**rec(6, 5_000, 0.9 - 0.1 * se), "val_samples": n},
    ]
    assert [r["trial"] for r in pareto_front(records)] == [6, 1, 5]
    assert pick_max_params(records, 13_000)["trial"] == 4
    assert pick(records, PickRule(max_params=13_000))["trial"] == 4
    assert [r["trial"] for r in indistinct(records, records[3], 13_000)[0]] == [1, 6, 2]  # the most accurate first
    assert pick_max_params(records, 13_000, most_accurate=True)["trial"] == 1
    assert pick(records, PickRule(max_params=13_000, most_accurate=True))["trial"] == 1
    assert pick_max_params(records, 11_999)["trial"] == 1  # trials 2 and 4 do not fit
    assert pick_max_params(records, 9_999)["trial"] == 6
    # Records that do not say their validation split's size: the most accurate, as before they did.
    bare = [{k: v for k, v in r.items() if k != "val_samples"} for r in records]
    assert pick_max_params(bare, 13_000)["trial"] == 1


def test_pick_max_params_names_the_smallest_model_when_nothing_fits():
    with pytest.raises(SearchError) as info:
        pick_max_params(FRONT, 1000)
    msg = str(info.value)
    assert msg == (
        "no front model has params_nonzero <= 1000; the smallest is trial 7 with 1523 params "
        "(val_accuracy 0.812); raise --max-params"
    )
    assert "\n" not in msg


def test_pick_min_accuracy():
    assert pick_min_accuracy(FRONT, 0.85)["trial"] == 8
    assert pick_min_accuracy(FRONT, 0.851)["trial"] == 9
    assert pick_min_accuracy(FRONT, 0.0)["trial"] == 7


def test_pick_min_accuracy_names_the_most_accurate_model_when_nothing_fits():
    with pytest.raises(SearchError) as info:
        pick_min_accuracy(FRONT, 0.95)
    msg = str(info.value)
    assert "val_accuracy >= 0.95" in msg and "trial 9 with 20000 params (val_accuracy 0.9)" in msg
    assert "lower --min-accuracy" in msg


def test_pick_without_trial_numbers():
    with pytest.raises(SearchError, match="an unnumbered trial with 50 params"):
        pick_max_params([rec(None, 50, 0.7)], 10)


def test_pick_rejects_bad_constraints_and_empty_fronts():
    with pytest.raises(SearchError, match="no finished trials yet"):
        pick_max_params([], 100)
    with pytest.raises(SearchError, match="no finished trials yet"):
        pick_min_accuracy([], 0.5)
    with pytest.raises(SearchError, match="fraction in \\[0, 1\\], got 95"):
        pick_min_accuracy(FRONT, 95)
    with pytest.raises(SearchError, match="non-negative integer"):
        pick_max_params(FRONT, -1)


def test_pick_takes_exactly_one_rule_and_any_finished_trial_by_number() -> None:
    records = [rec(0, 100, 0.9), rec(1, 50, 0.8), rec(2, 200, 0.85)]  # trial 2 is dominated
    assert pick(records, PickRule(trial=2)) is records[2]
    assert pick(records, PickRule(knee=True))["trial"] in (0, 1)
    assert pick(records, PickRule(max_params=60)) is records[1]
    assert pick(records, PickRule(min_accuracy=0.85)) is records[0]
    with pytest.raises(SearchError, match=r"trial 7 is not a finished trial of this search; finished trials: 0, 1, 2"):
        pick(records, PickRule(trial=7))
    with pytest.raises(SearchError, match=r"exactly one of .* \(got --knee, --trial\)"):
        PickRule(knee=True, trial=1)
    with pytest.raises(SearchError, match=r"\(got none\)"):
        PickRule()
    with pytest.raises(SearchError, match="no finished trials yet"):
        pick([], PickRule(trial=0))
