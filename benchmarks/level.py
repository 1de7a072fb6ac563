"""The pipeline's level at a size: the space's defaults, and variants of them, once per data seed at exact sizes.

    python benchmarks/level.py                                    # lenet300_fashion at 5%, data seeds 0-3
    python benchmarks/level.py --sizes 0.02,0.05,0.1 --seeds 0,1
    python benchmarks/level.py --train --variant x2="budget.train_epochs=20 budget.finetune_epochs=10"
    python benchmarks/level.py --variant erk="prune.allocation=erk" --variant lamp="prune.allocation=lamp"

What a search can find at a size is bounded by how well the pipeline does there, and a lever (a setting, a patch)
is worth shipping only if it moves that level by more than the data seed moves it. This runs, for each data seed
(``seed``: the validation split, the initialisation and the batch order), one trial per size and variant: the
space's defaults (every searched leaf at its default, ``autoprune trial``'s configuration), then ``--set``, then
the variant's overrides, pruned to exactly the size's parameter count (``prune.nonzero_params``). The first
variant is ``base``, the defaults themselves, unless ``--no-base``. Each seed's dense reference is the one of
``benchmarks/front_quality.py`` (its last phase with SGD and with Adam at three lrs, the best by validation
accuracy; ``--no-dense`` skips it). Sizes are fractions of the dense parameter count, or counts.

Prints every run (validation and test accuracy, with ``--train`` the training split's too) and, per size and
variant, the means, the test accuracy against each seed's dense reference ("vs dense", points; negative is a
drop), on how many seeds it is within ``--bar`` points of it, and the mean change in test accuracy against the
first variant. Trials run in worker processes, one torch thread each, ``--concurrent`` at a time; same seed, same
numbers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from front_quality import DENSE


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run(args: tuple[str, list[str], bool]) -> dict[str, Any]:
    """One trial of ``space`` with ``overrides`` at its defaults (in a worker process, one thread)."""
    import torch

    from autoprune.io.data import load_datasets
    from autoprune.pipeline.train import evaluate
    from autoprune.pipeline.trial import run_trial
    from autoprune.searching.space import load_space

    space, overrides, train = args
    torch.set_num_threads(1)
    cfg = load_space(space, overrides).config_for({})
    data = load_datasets(cfg.dataset, seed=cfg.seed)
    result = run_trial(cfg, data=data, device="cpu", threads=1)
    record = result.record()
    out = {k: record[k] for k in ("val_accuracy", "test_accuracy", "params_nonzero", "params_total")}
    if train:
        out["train_accuracy"] = evaluate(result.model, data.train_x, data.train_y)
    return out


def _total(space: str, overrides: list[str]) -> int:
    """The dense model's parameter count (its model built once, in a worker process)."""
    from autoprune.io.data import load_datasets
    from autoprune.io.models import build_model
    from autoprune.pruning.masks import count_params
    from autoprune.searching.space import load_space

    cfg = load_space(space, overrides).config_for({})
    data = load_datasets(cfg.dataset, seed=cfg.seed)
    return count_params(build_model(cfg.model.name, data.input_shape, data.num_classes))[1]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME=KEY=VALUE KEY=VALUE ...`` -> (NAME, [KEY=VALUE, ...]); the overrides split as a shell would."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f'--variant must be NAME="KEY=VALUE ...", got {text!r}')
    return name.strip(), shlex.split(rest)


def _items(text: str, flag: str, what: str, kind: type = float) -> list[float]:
    """A comma-separated list of numbers, or a ValueError that names the flag, the value and the form."""
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} must list {what}, got {text!r}") from None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _run_all(pool: ProcessPoolExecutor, args: argparse.Namespace, variants: list, seeds: list, sizes: list) -> tuple:
    """Every trial: the dense references first, then each size, variant and seed."""
    from autoprune.searching.refine import size_count

    total = pool.submit(_total, args.space, args.overrides).result()
    counts = [size_count(s, total) for s in sizes]
    dense_jobs = [] if args.no_dense else [(s, d) for s in seeds for d in DENSE]
    jobs = [(n, name, s, ov) for n in counts for name, ov in variants for s in seeds]
    work = [(args.space, [*args.overrides, *d, f"seed={s}"], args.train) for s, d in dense_jobs]
    work += [
        (args.space, [*args.overrides, *ov, f"prune.nonzero_params={n}", f"seed={s}"], args.train)
        for n, _, s, ov in jobs
    ]
    return total, list(pool.map(_run, work)), counts, dense_jobs, jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="lenet300_fashion", help="space file or shipped name")
    parser.add_argument("--sizes", default="0.05", help="fractions of the dense parameters, or counts (default 0.05)")
    parser.add_argument("--seeds", default="0,1,2,3", help="data seeds (default 0,1,2,3)")
    parser.add_argument("--variant", action="append", default=[], help='NAME="KEY=VALUE ..." (repeatable)')
    parser.add_argument("--no-base", action="store_true", help="no 'base' variant (the defaults) first")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense references (no drops printed)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="KEY=VALUE for every run")
    parser.add_argument("--train", action="store_true", help="also measure accuracy on the training split")
    parser.add_argument("--bar", type=float, default=0.5, help="count the seeds within this drop, points (0.5)")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at a time (default 2)")
    parser.add_argument("--json", default=None, help="also write every run to this JSON file")
    args = parser.parse_args(argv)

    from autoprune.errors import AutoPruneError
    from autoprune.searching.refine import size_targets
    from autoprune.searching.space import load_space

    try:
        variants = ([] if args.no_base else [("base", [])]) + [parse_variant(v) for v in args.variant]
        seeds = [int(s) for s in _items(args.seeds, "--seeds", "whole numbers, e.g. 0,1,2,3", int)]
        sizes = _items(args.sizes, "--sizes", "fractions of the dense parameters or counts, e.g. 0.02,0.05,50000")
        size_targets(sizes, "--sizes")  # the rule of a space's search.sizes
        if not variants or not seeds or not sizes:
            raise ValueError("give at least one variant (or drop --no-base), one seed and one size")
        if args.concurrent < 1:
            raise ValueError(f"--concurrent must be at least 1, got {args.concurrent}")
        if args.json and not Path(args.json).resolve().parent.is_dir():  # found out before the trials, not after
            raise ValueError(f"--json {args.json}: its folder does not exist; create it or name another file")
        for _, overrides in variants:  # a bad key or value fails here, before any trial
            load_space(args.space, [*args.overrides, *overrides])
    except (AutoPruneError, ValueError) as e:
        say(f"level.py: {e}")
        return 2

    t0 = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=args.concurrent, mp_context=spawn) as pool:
            total, results, counts, dense_jobs, jobs = _run_all(pool, args, variants, seeds, sizes)
    except AutoPruneError as e:  # a size this model cannot be pruned to, a dataset that is not there, ...
        say(f"level.py: {e}")
        return 2

    denses: dict[int, dict[str, Any]] = {}
    for (s, _), r in zip(dense_jobs, results, strict=False):
        if s not in denses or r["val_accuracy"] > denses[s]["val_accuracy"]:
            denses[s] = r
    runs = [
        {"size": n, "variant": name, "seed": s, **r}
        for (n, name, s, _), r in zip(jobs, results[len(dense_jobs) :], strict=True)
    ]

    def line(r: dict[str, Any]) -> str:
        train = f"train {r['train_accuracy']:.4f}  " if "train_accuracy" in r else ""
        return f"{train}val {r['val_accuracy']:.4f}  test {r['test_accuracy']:.4f}"

    print(f"level: {args.space} {' '.join(args.overrides)}".rstrip() + f", dense {total} params, seeds {seeds}")
    for s, r in sorted(denses.items()):
        print(f"  dense, seed {s}: {line(r)}")
    for r in runs:
        print(f"  {r['variant']} at {r['params_nonzero']} params, seed {r['seed']}: {line(r)}")
    print("means over the seeds (vs dense: test accuracy minus each seed's dense reference's, in points):")
    for n in counts:
        first: list[float] | None = None
        for name, _ in variants:
            rs = [r for r in runs if r["size"] == n and r["variant"] == name]
            tests = [r["test_accuracy"] for r in rs]
            first = tests if first is None else first
            cells = []
            if "train_accuracy" in rs[0]:
                cells.append(f"train {_mean([r['train_accuracy'] for r in rs]):.4f}")
            cells += [f"val {_mean([r['val_accuracy'] for r in rs]):.4f}", f"test {_mean(tests):.4f}"]
            if denses:
                drops = [100 * (r["test_accuracy"] - denses[r["seed"]]["test_accuracy"]) for r in rs]
                within = sum(d >= -args.bar for d in drops)
                cells.append(f"vs dense {_mean(drops):+.2f} pt, within {args.bar:g} pt on {within} of {len(rs)}")
            if tests is not first:
                cells.append(f"change {100 * (_mean(tests) - _mean(first)):+.2f} pt")
            print(f"  {name} at {n} ({100 * n / total:.3g}%): " + ", ".join(cells))
    print(f"wall time {time.perf_counter() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"space": args.space, "overrides": args.overrides, "total": total, "dense": denses, "runs": runs},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
