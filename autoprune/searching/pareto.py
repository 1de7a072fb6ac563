"""The Pareto front of a search and the rules that pick one model from it.

Pure functions over trial records (plain dicts). The search maximizes ``val_accuracy`` and minimizes a size:
``params_nonzero`` by default, or the key its ``search.objective`` names (``SIZE_KEYS``), which every function
here takes as ``key``; ``test_accuracy`` is only reported, never used here. A record whose ``val_accuracy`` is
missing or not finite, or that lacks the size, cannot be ranked and is left out of the front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoprune.errors import SearchError

ACCURACY = "val_accuracy"
PARAMS = "params_nonzero"
MACS = "macs"
LATENCY = "latency_ms"
SIZE_KEYS = {"params": PARAMS, "macs": MACS, "latency": LATENCY}  # search.objective -> the record key minimized
MAX_OPTIONS = {PARAMS: "--max-params", MACS: "--max-macs", LATENCY: "--max-latency-ms"}  # the pick rule of each


def _floor(key: str) -> float:
    """The least value a log axis of ``key`` shows: one parameter or MAC; latencies are fractions of a millisecond."""
    return 1e-6 if key == LATENCY else 1.0


def dominates(a: dict, b: dict, key: str = PARAMS) -> bool:
    """True when ``a`` is at least as good as ``b`` on both objectives and strictly better on one."""
    acc_a, acc_b = float(a[ACCURACY]), float(b[ACCURACY])
    par_a, par_b = float(a[key]), float(b[key])
    return acc_a >= acc_b and par_a <= par_b and (acc_a > acc_b or par_a < par_b)


def _rankable(records: Sequence[dict], key: str = PARAMS) -> list[dict]:
    out = []
    for r in records:
        acc = r.get(ACCURACY)
        if acc is not None and math.isfinite(float(acc)) and r.get(key) is not None:
            out.append(r)
    return out


def pareto_front(records: Sequence[dict], key: str = PARAMS) -> list[dict]:
    """The non-dominated records, sorted by ``key`` ascending (then ``val_accuracy`` descending).

    Records with identical accuracy and parameter count are all kept (neither dominates the other); among
    them the input order is kept. Runs in O(n log n): after sorting by (params asc, accuracy desc) a record
    is on the front exactly when its accuracy beats every record before it.
    """
    rows = _rankable(records, key)
    if not rows:
        return []
    acc = np.array([float(r[ACCURACY]) for r in rows])
    params = np.array([float(r[key]) for r in rows])
    order = np.lexsort((-acc, params))  # stable: exact duplicates keep their input order
    acc_s, params_s = acc[order], params[order]
    # An exact duplicate of the previous row shares its fate, so the test runs on the first of each group.
    dup = np.zeros(len(order), dtype=bool)
    dup[1:] = (acc_s[1:] == acc_s[:-1]) & (params_s[1:] == params_s[:-1])
    best_before = np.concatenate(([-np.inf], np.maximum.accumulate(acc_s)[:-1]))
    first_kept = acc_s > best_before
    group = np.cumsum(~dup) - 1
    keep = first_kept[~dup][group]
    return [rows[i] for i in order[keep]]


def baseline_front(records: Sequence[dict], key: str = PARAMS) -> list[dict]:
    """The Pareto front of the seeded baseline trials alone (records marked ``baseline``)."""
    return pareto_front([r for r in records if r.get("baseline")], key)


def hypervolume(
    front: Sequence[dict], *, ref_params: float, ref_accuracy: float = 0.0, log_params: bool = True, key: str = PARAMS
) -> float:
    """The area that the records dominate, bounded by the reference point ``(ref_params, ref_accuracy)``; with
    ``key`` the x axis is that size (MACs, latency) instead of parameters, and ``ref_params`` its reference.

    The x axis is ``log10(params_nonzero)`` by default: parameter counts of pruned models span orders of
    magnitude, and on a linear axis the area would be decided almost entirely by the largest models, so
    shrinking a model from 10k to 1k weights would hardly count. Parameter counts below 1 count as 1 there
    (latencies below 1e-6 ms as 1e-6).
    With ``log_params=False`` the x axis is the raw count. Records beyond the reference point in either
    direction add nothing; an empty front has hypervolume 0. Any records may be passed: dominated ones add
    nothing, so the result equals that of their front.
    """
    if log_params and not ref_params > 0:
        raise ValueError(f"ref_params must be > 0 on a log axis, got {ref_params!r}")
    if not (math.isfinite(ref_params) and math.isfinite(ref_accuracy)):
        raise ValueError(f"the reference point must be finite, got ({ref_params!r}, {ref_accuracy!r})")
    rows = _rankable(front, key)
    if not rows:
        return 0.0
    x = np.array([float(r[key]) for r in rows])
    y = np.array([float(r[ACCURACY]) for r in rows])
    ref_x = float(ref_params)
    if log_params:
        x, ref_x = np.log10(np.maximum(x, _floor(key))), math.log10(max(ref_x, _floor(key)))
    inside = x < ref_x
    x, y = x[inside], y[inside]
    if x.size == 0:
        return 0.0
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    # Between consecutive x values the dominated height is the best accuracy reached so far.
    height = np.maximum(np.maximum.accumulate(y) - ref_accuracy, 0.0)
    width = np.diff(np.append(x, ref_x))
    return float(np.sum(width * height))


def _most_accurate(front: list[dict]) -> dict:
    # The front is sorted by params ascending, so the first of the most accurate ones is also the smallest.
    best = max(float(r[ACCURACY]) for r in front)
    return next(r for r in front if float(r[ACCURACY]) == best)


def knee_point(front: Sequence[dict], key: str = PARAMS) -> dict:
    """The front model with the best trade-off: the one farthest above the line joining the front's extremes.

    Coordinates are normalized to [0, 1] on both axes: x = log10(params_nonzero) (floored at 1 parameter)
    over the front's range, y = val_accuracy over the front's range. The extremes are the smallest and the
    most accurate model. Only points on the side of (few params, high accuracy) count, because a point below
    the line is a worse compromise than the line itself; ties go to the more accurate point. When no point
    lies strictly above the line (a front of 1 or 2 points, or a straight or concave front) the most accurate
    model is returned. The input is reduced to its Pareto front first (over ``key``: x is log10 of it).
    """
    pts = _front_of(front, key)
    if len(pts) <= 2:
        return _most_accurate(pts)
    x = np.log10(np.maximum([float(r[key]) for r in pts], _floor(key)))
    y = np.array([float(r[ACCURACY]) for r in pts])
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return _most_accurate(pts)
    x = (x - x.min()) / np.ptp(x)
    y = (y - y.min()) / np.ptp(y)
    # Extremes in normalized space are (0, 0) (smallest) and (1, 1) (largest, most accurate): the line y = x.
    # The signed distance above it is (y - x) / sqrt(2); the constant factor does not change the argmax.
    above = y - x
    if not np.any(above > 1e-12):
        return _most_accurate(pts)
    best = above.max()
    candidates = [i for i in range(len(pts)) if above[i] >= best - 1e-12]
    return max((pts[i] for i in candidates), key=lambda r: float(r[ACCURACY]))


def _front_of(records: Sequence[dict], key: str) -> list[dict]:
    """The front over ``key``; refused in one line when there is none (no finished trial, or none measured it)."""
    pts = pareto_front(records, key)
    if pts:
        return pts
    if any(r.get(ACCURACY) is not None for r in records):
        raise SearchError(
            f"no finished trial recorded {key} (a search made before autoprune measured it, or with measure.latency: "
            "false); choose by --max-params, --min-accuracy, --knee or --trial"
        )
    raise SearchError("no finished trials yet")


def _amount(record: dict, key: str) -> str:
    value = float(record[key])
    return f"{value:.3g} ms" if key == LATENCY else f"{int(value)} {'params' if key == PARAMS else 'MACs'}"


def _describe(record: dict, key: str = PARAMS) -> str:
    trial = record.get("trial")
    name = f"trial {trial}" if trial is not None else "an unnumbered trial"
    return f"{name} with {_amount(record, key)} (val_accuracy {round(float(record[ACCURACY]), 4)})"


def pick_max_params(records: Sequence[dict], max_params: int, *, most_accurate: bool = False) -> dict:
    """The model ``pick --max-params`` returns: ``pick_at_most`` over ``params_nonzero``."""
    return pick_at_most(records, max_params, key=PARAMS, most_accurate=most_accurate)


def _check_limit(limit: object, key: str) -> None:
    option = MAX_OPTIONS[key]
    if key == LATENCY:
        ok = isinstance(limit, (int, float, np.integer, np.floating)) and not isinstance(limit, bool)
        if not ok or not math.isfinite(float(limit)) or float(limit) < 0:
            raise SearchError(f"{option} must be a non-negative number of milliseconds, got {limit!r}; e.g. 0.5")
    elif isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
        raise SearchError(f"{option} must be a non-negative integer, got {limit!r}")


def pick_at_most(records: Sequence[dict], limit: float, *, key: str = PARAMS, most_accurate: bool = False) -> dict:
    """The model ``pick --max-params`` (``--max-macs``, ``--max-latency-ms``: ``key``) returns: of the finished
    models with ``key <= limit``, the largest whose validation accuracy is within one standard error of the most
    accurate one's (``indistinct``; the more accurate of equal sizes). ``most_accurate=True``, or records that do
    not say their validation split's size, give the most accurate (the smaller on a tie).

    Why the largest: validation cannot rank models within one standard error of each other, so the most
    accurate of them on validation is the luckiest as often as the best, while with the same pipeline more
    parameters are the better bet. Measured on finished searches of five models (``benchmarks/RESULTS.md``,
    "Choosing at a size"), this choice tests better than the most accurate one far more often than worse. It
    may lie just off the measured front, which is drawn through the luckiest points. The same holds of MACs and
    of latency, which grow with the work a model does.
    """
    _check_limit(limit, key)
    pts = _front_of(records, key)
    fits = [r for r in pts if float(r[key]) <= limit]
    if not fits:
        raise SearchError(
            f"no front model has {key} <= {limit}; the smallest is {_describe(pts[0], key)}; raise {MAX_OPTIONS[key]}"
        )
    best = _most_accurate(fits)
    if most_accurate:
        return best
    close, _ = indistinct(records, best, limit, key=key)
    return max([best, *close], key=lambda r: (float(r[key]), float(r[ACCURACY])))


def val_standard_error(record: dict) -> float | None:
    """The standard error of a record's validation accuracy p on its n = ``val_samples`` samples: sqrt(p(1 - p) / n);
    None when the record does not say n."""
    n, p = record.get("val_samples"), record.get(ACCURACY)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0 or p is None:
        return None
    return math.sqrt(max(float(p) * (1.0 - float(p)), 0.0) / int(n))


def indistinct(
    records: Sequence[dict], chosen: dict, max_params: float, *, key: str = PARAMS
) -> tuple[list[dict], float | None]:
    """The records other than ``chosen`` within ``max_params`` (of ``key``) that validation cannot tell from the most
    accurate one there, and the margin: those whose validation accuracy is within one standard error of the most
    accurate's, sqrt(p(1 - p) / n) with p its accuracy and n its record's ``val_samples``; most accurate first,
    then smallest. The most accurate itself is listed unless it is ``chosen``. ``([], None)`` when that record
    does not say n (runs made before records held it).

    Which of these models is the most accurate on validation was decided by the split's noise: ``pick_max_params``
    takes the largest of them, and a user who cares compares them on data of their own.
    """
    fits = [r for r in _rankable(records, key) if float(r[key]) <= max_params]
    if not fits:
        return [], None
    best = max(fits, key=lambda r: (float(r[ACCURACY]), -float(r[key])))
    if float(chosen[ACCURACY]) >= float(best[ACCURACY]):
        best = chosen  # the chosen record is the most accurate (or a copy of it with other fields)
    margin = val_standard_error(best)
    if margin is None:
        return [], None
    p = float(best[ACCURACY])
    close = [
        r
        for r in fits
        if r is not chosen
        and (r.get("trial") is None or r.get("trial") != chosen.get("trial"))
        and float(r[ACCURACY]) >= p - margin
    ]
    return sorted(close, key=lambda r: (-float(r[ACCURACY]), float(r[key]))), margin


def pick_min_accuracy(front: Sequence[dict], min_accuracy: float, key: str = PARAMS) -> dict:
    """The smallest front model (by ``key``) with ``val_accuracy >= min_accuracy`` (the more accurate on a tie)."""
    if isinstance(min_accuracy, bool) or not isinstance(min_accuracy, (int, float, np.floating, np.integer)):
        raise SearchError(f"--min-accuracy must be a number in [0, 1], got {min_accuracy!r}")
    if not 0.0 <= float(min_accuracy) <= 1.0:
        raise SearchError(f"--min-accuracy must be a fraction in [0, 1], got {min_accuracy!r}; e.g. 0.9 for 90%")
    pts = _front_of(front, key)
    fits = [r for r in pts if float(r[ACCURACY]) >= min_accuracy]
    if not fits:
        best = _describe(_most_accurate(pts), key)
        raise SearchError(
            f"no front model has val_accuracy >= {min_accuracy}; the most accurate is {best}; lower --min-accuracy"
        )
    return fits[0]


@dataclass(frozen=True, kw_only=True)
class PickRule:
    """Exactly one way to choose a model of a search, checked where it is built (the command line or the API).

    ``max_params``, ``max_macs``, ``max_latency_ms``: the largest model within one standard error of the most
    accurate one under that bound (``pick_at_most``), or with ``most_accurate`` that one; ``min_accuracy``: the
    smallest front model at least that accurate on validation; ``knee``: the front's best trade-off; ``trial``: any
    finished trial, by number.
    """

    max_params: int | None = None
    max_macs: int | None = None
    max_latency_ms: float | None = None
    min_accuracy: float | None = None
    knee: bool = False
    trial: int | None = None
    most_accurate: bool = False

    def __post_init__(self) -> None:
        given = {
            "--max-params": self.max_params is not None,
            "--max-macs": self.max_macs is not None,
            "--max-latency-ms": self.max_latency_ms is not None,
            "--min-accuracy": self.min_accuracy is not None,
            "--knee": self.knee,
            "--trial": self.trial is not None,
        }
        rules = [name for name, on in given.items() if on]
        if len(rules) != 1:
            raise SearchError(
                "give exactly one of --max-params N, --max-macs N, --max-latency-ms MS, --min-accuracy A, --knee, "
                f"--trial N (got {', '.join(rules) or 'none'})"
            )
        whole, number = (int, np.integer), (int, float, np.integer, np.floating)  # checked before any file is read
        for name, value, kinds in (
            ("--max-params", self.max_params, whole),
            ("--max-macs", self.max_macs, whole),
            ("--trial", self.trial, whole),
            ("--max-latency-ms", self.max_latency_ms, number),
            ("--min-accuracy", self.min_accuracy, number),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
                kind = "a whole number" if kinds is whole else "a number"
                raise SearchError(f"{name} must be {kind}, got {value!r}")
        if self.most_accurate and self.bound is None:
            raise SearchError(
                "--most-accurate chooses among the models within --max-params N; give --max-params (or --max-macs, "
                "--max-latency-ms)"
            )

    @property
    def bound(self) -> tuple[str, float] | None:
        """The record key and the limit of a ``--max-*`` rule, else None."""
        given = ((PARAMS, self.max_params), (MACS, self.max_macs), (LATENCY, self.max_latency_ms))
        return next(((key, limit) for key, limit in given if limit is not None), None)


def pick(records: Sequence[dict], rule: PickRule, *, key: str = PARAMS) -> dict:
    """The record ``rule`` chooses: by a bound (``pick_at_most``), an accuracy or the knee (on the front of
    ``records`` over ``key``, the searched objective's), or a trial number (any finished trial, on the front or not).
    """
    if not records:
        raise SearchError("no finished trials yet; nothing to pick")
    if rule.trial is not None:
        found = [r for r in records if r.get("trial") == rule.trial]
        if not found:
            numbers = sorted(r["trial"] for r in records if r.get("trial") is not None)
            shown = ", ".join(map(str, numbers[:20])) + (" ..." if len(numbers) > 20 else "")
            raise SearchError(f"trial {rule.trial} is not a finished trial of this search; finished trials: {shown}")
        return found[0]
    if rule.bound is not None:
        return pick_at_most(records, rule.bound[1], key=rule.bound[0], most_accurate=rule.most_accurate)
    if rule.min_accuracy is not None:
        return pick_min_accuracy(records, rule.min_accuracy, key)
    return knee_point(records, key)
