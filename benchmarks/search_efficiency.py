"""Front quality at the same wall-clock budget: early stopping on vs off (TPE), and random search for reference.

Every run is a real ``autoprune search`` with ``timeout`` = the budget (no trial starts after it; running ones
finish), on one local Ray runtime started once, so Ray's start-up is outside every budget. The runs of one seed
go in a rotating order, so that load from other users of a shared machine falls on every mode alike.

For each run it prints the trials finished and stopped, the hypervolume of the final front (validation
accuracy vs log10 of nonzero parameters, above ``--ref-accuracy`` and left of the dense parameter count: one
reference point for every run of a space), and the best validation accuracy within size buckets (fractions of
the dense parameters), then the hypervolume ratios of each mode to TPE without early stopping, paired by seed,
and the ceiling: the hypervolume of a front at the best accuracy any run reached, at every size from the
smallest model any run made. A ratio much above ceiling / TPE's hypervolume is out of reach of any scheduler.

    python benchmarks/search_efficiency.py --space digits_quick --budget 60 --seeds 0,1,2
    python benchmarks/search_efficiency.py --space lenet300_fashion --budget 200 --seeds 0,1 --json out.json
    python benchmarks/search_efficiency.py --space lenet300_fashion --budget 420 --seeds 0,1 \\
        --modes tpe,dense,dense-short --concurrent 2

``dense`` and ``dense-short`` train the dense model once per search (``search.dense_start``, inside the budget)
and start every trial from it; ``dense-short`` also cuts the trials' sparse training to ``--short-epochs``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODES = {  # name -> (sampler, early stop, dense start)
    "tpe+asha": ("tpe", "asha", None),
    "tpe": ("tpe", "off", None),
    "random": ("random", "off", None),
    # search.dense_start (the space's train epochs, trained once), trials as the space has them
    "dense": ("tpe", "off", "same"),
    # the same dense start; the trials' sparse training cut to --short-epochs
    "dense-short": ("tpe", "off", "short"),
}
DEFAULT_MODES = ("tpe+asha", "tpe", "random")
BUCKETS = (0.01, 0.02, 0.05, 0.10, 0.25, 1.0)  # fractions of the dense parameter count


class LogTo:
    """A log function that appends each line to a file (one file per run)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        with self.path.open("a") as fh:
            print(line, file=fh)


def dense_seconds(log_file: Path) -> float:
    """The seconds a run's dense start took, from its log (0 without one)."""
    found = re.search(r"dense start trained \d+ epochs in (\d+) s", log_file.read_text()) if log_file.exists() else None
    return float(found.group(1)) if found else 0.0


def hypervolume_series(run_dir: Path, started_at: float, ref_accuracy: float) -> list[tuple[float, float]]:
    """(seconds since the search call, hypervolume of every trial finished by then), at each trial's end."""
    import optuna

    from autoprune.rundir.ledger import load_results
    from autoprune.searching.pareto import hypervolume

    info = json.loads((run_dir / "run.json").read_text())
    study = optuna.load_study(study_name=info["study_name"], storage=f"sqlite:///{run_dir / 'study.db'}")
    ended = {t.number: t.datetime_complete.timestamp() - started_at for t in study.trials if t.datetime_complete}
    records = sorted((r for r in load_results(run_dir).trials if r["trial"] in ended), key=lambda r: ended[r["trial"]])
    dense = max((r["params_total"] for r in records), default=0)
    return [
        (ended[r["trial"]], hypervolume(records[: i + 1], ref_params=dense, ref_accuracy=ref_accuracy))
        for i, r in enumerate(records)
    ]


def hv_at(series: list[tuple[float, float]], seconds: float) -> float:
    return max((hv for t, hv in series if t <= seconds), default=0.0)


def reach_seconds(series: list[tuple[float, float]], target: float) -> float | None:
    """When a run's hypervolume first reached ``target`` (None: never)."""
    return next((t for t, hv in series if hv >= target - 1e-12), None)


def run_one(space: str, mode: str, seed: int, args: argparse.Namespace, work: Path) -> dict:
    import autoprune
    from autoprune.searching.pareto import hypervolume

    sampler, early_stop, dense = MODES[mode]
    overrides = list(args.set or [])
    if dense is not None:
        epochs = autoprune.load_space(space, overrides).default_config().budget.train_epochs
        overrides.append(f"search.dense_start={epochs}")
        if dense == "short":
            overrides.append(f"budget.train_epochs={args.short_epochs}")
    run_dir = work / f"{Path(space).stem}-{mode}-s{seed}"
    t0, started_at = time.monotonic(), time.time()
    outcome = autoprune.search(
        space,
        run_dir=run_dir,
        trials=100_000,
        concurrent=args.concurrent,
        sampler=sampler,
        seed=seed,
        early_stop=early_stop,
        reduction_factor=args.reduction_factor if early_stop == "asha" else None,
        grace_period=args.grace_period if early_stop == "asha" else None,
        timeout=args.budget,
        overrides=overrides,
        log=LogTo(work / f"{run_dir.name}.log"),
    )
    wall = time.monotonic() - t0
    if outcome.interrupted and not outcome.timed_out:  # Ctrl-C: Tune ended the run; end the benchmark too
        raise KeyboardInterrupt
    res = outcome.results
    dense = max((r["params_total"] for r in res.trials), default=0)
    hv = hypervolume(res.front, ref_params=dense, ref_accuracy=args.ref_accuracy) if dense else 0.0
    best, test = {}, {}
    for frac in BUCKETS:
        fits = [r for r in res.front if r["params_nonzero"] <= frac * dense]
        chosen = max(fits, key=lambda r: r["val_accuracy"]) if fits else None
        best[f"{frac:g}"] = chosen["val_accuracy"] if chosen else None
        test[f"{frac:g}"] = chosen["test_accuracy"] if chosen else None
    return {
        "space": space,
        "mode": mode,
        "seed": seed,
        "wall_s": wall,
        "budget_s": args.budget,
        "finished": len(res.trials),
        "stopped": len(res.stopped),
        "failed": res.failed,
        "front": len(res.front),
        "params_dense": dense,
        "params_smallest": min((r["params_nonzero"] for r in res.front), default=None),
        "best_accuracy": max((r["val_accuracy"] for r in res.front), default=None),
        "hypervolume": hv,
        "best_by_size": best,
        "test_by_size": test,  # test accuracy of the model validation chose in each bucket
        "dense_s": dense_seconds(work / f"{run_dir.name}.log"),
        "series": hypervolume_series(run_dir, started_at, args.ref_accuracy),
    }


def ceiling(rows: list[dict], ref_accuracy: float) -> float | None:
    """The hypervolume of a front as good as every run's best put together: the best validation accuracy any
    run reached, at every size from the smallest front model of any run up to the dense count. No search of the
    same pipeline does much better, so a hypervolume ratio to another run can hardly exceed ceiling / its HV."""
    from autoprune.searching.pareto import hypervolume

    ran = [r for r in rows if r.get("params_smallest") and r.get("best_accuracy") is not None]
    if not ran:
        return None
    corner = {
        "params_nonzero": min(r["params_smallest"] for r in ran),
        "val_accuracy": max(r["best_accuracy"] for r in ran),
    }
    return hypervolume([corner], ref_params=max(r["params_dense"] for r in ran), ref_accuracy=ref_accuracy)


def curve(rows: list[dict], base: dict[int, float]) -> None:
    """Hypervolume at fractions of the budget, and when each run reached tpe's final hypervolume (same seed):
    from the search call, and without its dense start (what a search from a checkpoint already trained costs)."""
    print("  hypervolume at 25/50/75/100% of the budget; reached tpe's final HV at (s; without the dense start)")
    for r in rows:
        if not r.get("series"):
            continue
        at = " ".join(f"{hv_at(r['series'], f * r['budget_s']):.3f}" for f in (0.25, 0.5, 0.75, 1.0))
        reach = reach_seconds(r["series"], base.get(r["seed"], math.inf))
        when = "never" if reach is None else f"{reach:.0f} s; {reach - r.get('dense_s', 0.0):.0f} s"
        print(f"  {r['mode']:>11} seed {r['seed']}: {at} | {when} (dense start {r.get('dense_s', 0.0):.0f} s)")


def summarize(rows: list[dict], ref_accuracy: float) -> None:
    head = " | ".join(f"≤{b * 100:g}%" for b in BUCKETS)
    print(f"\nhypervolume: val accuracy above {ref_accuracy:g} x log10(nonzero params) up to the dense count")
    print(f"{'space':>18} {'mode':>11} seed |  wall s | finished stopped | front |     HV | best val acc {head}")
    for r in rows:
        best = " | ".join(f"{v:.4f}" if v is not None else "  -   " for v in r["best_by_size"].values())
        print(
            f"{Path(r['space']).stem:>18} {r['mode']:>11} {r['seed']:4d} | {r['wall_s']:7.1f} | {r['finished']:8d} "
            f"{r['stopped']:7d} | {r['front']:5d} | {r['hypervolume']:6.3f} | {best}"
        )
    print(f"\ntest accuracy of the model validation chose, by size: {head}")
    for r in rows:
        test = " | ".join(f"{v:.4f}" if v is not None else "  -   " for v in r["test_by_size"].values())
        print(f"{Path(r['space']).stem:>18} {r['mode']:>11} {r['seed']:4d} | {test}")
    for space in dict.fromkeys(r["space"] for r in rows):
        mine = [r for r in rows if r["space"] == space]
        base = {r["seed"]: r["hypervolume"] for r in mine if r["mode"] == "tpe"}
        print(f"\n{Path(space).stem}: hypervolume / tpe without early stopping, paired by seed")
        top = ceiling(mine, ref_accuracy)
        if top is not None and base:
            reach = top / statistics.median(base.values())
            print(f"  ceiling (every run's best accuracy at every size): HV {top:.3f} = {reach:.3f} x tpe's median")
        curve(mine, base)
        for mode in MODES:
            if mode == "tpe":
                continue
            ratios = [r["hypervolume"] / base[r["seed"]] for r in mine if r["mode"] == mode and base.get(r["seed"])]
            runs = [r for r in mine if r["mode"] == mode]
            if not ratios:
                continue
            trials = statistics.mean(r["finished"] + r["stopped"] for r in runs)
            base_trials = statistics.mean(r["finished"] for r in mine if r["mode"] == "tpe")
            per_seed = ", ".join(f"{x:.3f}" for x in ratios)
            print(
                f"  {mode:>9}: median {statistics.median(ratios):.3f}, per seed {per_seed}; "
                f"trials per run {trials:.1f} vs {base_trials:.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", action="append", help="space file or shipped name (repeatable)")
    parser.add_argument("--budget", type=float, default=60.0, help="wall-clock seconds per run")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--short-epochs", type=int, default=3, help="dense-short: the trials' train epochs")
    parser.add_argument("--concurrent", type=int, default=None, help="trials at a time (default: one per CPU)")
    parser.add_argument("--reduction-factor", type=float, default=None)
    parser.add_argument("--grace-period", type=float, default=None)
    parser.add_argument("--ref-accuracy", type=float, default=0.5, help="the reference point's accuracy")
    parser.add_argument("--set", action="append", help="KEY=VALUE for every run's space")
    parser.add_argument("--work-dir", default=None, help="where the run directories go (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write every run's numbers here")
    parser.add_argument(
        "--reanalyse",
        default=None,
        help="summarize the runs of this --json file again (their run dirs in --work-dir), without running any",
    )
    args = parser.parse_args()
    if args.reanalyse:
        rows = json.loads(Path(args.reanalyse).read_text())
        for r in rows:
            if "series" not in r:  # an older file: the call's start from run.json, less the dense start
                name = f"{Path(r['space']).stem}-{r['mode']}-s{r['seed']}"
                created = json.loads((Path(args.work_dir) / name / "run.json").read_text())["created"]
                r["dense_s"] = dense_seconds(Path(args.work_dir) / f"{name}.log")
                started = datetime.datetime.fromisoformat(created).timestamp() - r["dense_s"]
                r["series"] = hypervolume_series(Path(args.work_dir) / name, started, args.ref_accuracy)
        summarize(rows, args.ref_accuracy)
        return
    spaces = args.space or ["digits_quick"]
    seeds = [int(s) for s in args.seeds.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        sys.exit(f"unknown mode {unknown[0]!r}; known: {', '.join(MODES)}")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="search_efficiency-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    print(f"budget {args.budget:g}s per run; seeds {seeds}; modes {modes}; run dirs in {work}", flush=True)
    rows = []
    try:
        for space in spaces:
            for seed in seeds:
                order = modes[seed % len(modes) :] + modes[: seed % len(modes)]
                for mode in order:
                    row = run_one(space, mode, seed, args, work)
                    rows.append(row)
                    print(
                        f"{Path(space).stem} {mode} seed {seed}: {row['finished']} finished, {row['stopped']} "
                        f"stopped, HV {row['hypervolume']:.3f}, {row['wall_s']:.0f}s",
                        flush=True,
                    )
    finally:
        ray.shutdown()
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    summarize(rows, args.ref_accuracy)


if __name__ == "__main__":
    main()
