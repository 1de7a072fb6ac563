"""What Ray Tune + Optuna cost on top of the trials: the same N configurations through `autoprune search` and
through a plain Python loop over `run_trial`, on one machine, with the same threads, one trial at a time.

    python benchmarks/search_overhead.py             # 6 trials of about 20 s (LeNet-300-100, Fashion-MNIST)
    python benchmarks/search_overhead.py --quick     # 6 short trials on digits (seconds: the overhead dominates)

The N configurations are drawn up front by Optuna's random sampler with a fixed seed; the search uses the same
sampler and seed, so it suggests exactly these (checked). The loop runs before and after the search and the
ratio uses their mean, so a change in background load during the run shows up as a gap between the two loops
instead of a wrong ratio. The search's time is everything a user waits for: Ray start-up and shutdown, worker
start-up, data loading in the worker, the study, the model files and the report. Target: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def draw_configs(space, n: int, seed: int) -> list[dict]:
    """The first ``n`` parameter sets that the random sampler with ``seed`` suggests for ``space``."""
    import optuna

    from autoprune.searching.space import define_by_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=seed))
    params = []
    for _ in range(n):
        trial = study.ask()
        define_by_run(trial, space.dims)
        params.append(dict(trial.params))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return params


def run_loop(space, params: list[dict], threads: int) -> float:
    from autoprune.pipeline.trial import run_trial

    t0 = time.perf_counter()
    for p in params:
        run_trial(space.config_for(p), device="cpu", threads=threads)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6, help="number of configurations (default 6)")
    parser.add_argument("--space", default=None, help="space file or shipped name (default lenet300_fashion)")
    parser.add_argument("--train-epochs", type=int, default=None, help="phase-1 epochs per trial (default 24)")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="phase-3 epochs per trial (default 8)")
    parser.add_argument("--quick", action="store_true", help="digits_quick with its own short budget")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="threads per trial (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from autoprune.api import search
    from autoprune.searching.space import load_space

    name = args.space or ("digits_quick" if args.quick else "lenet300_fashion")
    overrides = []
    train_epochs = args.train_epochs if args.train_epochs is not None else (None if args.quick else 24)
    finetune_epochs = args.finetune_epochs if args.finetune_epochs is not None else (None if args.quick else 8)
    if train_epochs is not None:
        overrides.append(f"budget.train_epochs={train_epochs}")
    if finetune_epochs is not None:
        overrides.append(f"budget.finetune_epochs={finetune_epochs}")
    space = load_space(name, overrides)
    params = draw_configs(space, args.trials, args.seed)
    n = args.trials
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    say(f"space {name} {' '.join(overrides)}: {n} configurations, {args.cpus} threads, one trial at a time")

    loop_before = run_loop(space, params, args.cpus)
    say(f"plain loop: {loop_before:.1f}s")
    with tempfile.TemporaryDirectory(prefix="autoprune-bench-") as tmp:
        t0 = time.perf_counter()
        outcome = search(
            name,
            run_dir=Path(tmp) / "run",
            trials=n,
            concurrent=1,
            cpus_per_trial=args.cpus,
            sampler="random",
            seed=args.seed,
            overrides=overrides,
            log=say,
        )
        search_s = time.perf_counter() - t0
    records = sorted(outcome.results.trials, key=lambda r: r["trial"])
    searched = [{d.path: _get(r["config"], d.path) for d in space.dims} for r in records]
    if searched != params:
        say("the search ran other configurations than the loop; the comparison is void")
        return 1
    inside_s = sum(sum(r["seconds"].values()) for r in records)
    loop_after = run_loop(space, params, args.cpus)
    loop_s = (loop_before + loop_after) / 2

    print(f"{'':26s}{'wall s':>10s}{'per trial s':>14s}")
    print(f"{'plain loop, before':26s}{loop_before:10.1f}{loop_before / n:14.2f}")
    print(f"{'plain loop, after':26s}{loop_after:10.1f}{loop_after / n:14.2f}")
    print(f"{'autoprune search':26s}{search_s:10.1f}{search_s / n:14.2f}")
    print(f"{'  of which inside trials':26s}{inside_s:10.1f}{inside_s / n:14.2f}")
    print(
        f"ratio search / mean loop: {search_s / loop_s:.3f}  (overhead {(search_s - loop_s) / n:+.2f} s per trial, "
        f"Ray start-up and shutdown included; outside trials: {search_s - inside_s:.1f} s)"
    )
    return 0


def _get(tree: dict, path: str):
    for part in path.split("."):
        tree = tree[part]
    return tree


if __name__ == "__main__":
    sys.exit(main())
