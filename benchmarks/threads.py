"""How a trial's time depends on its torch threads, on busy neighbours, and on how many trials run at once.

Each measurement starts fresh worker processes that import torch, load the data and build the configuration,
then wait; once all are ready (and any busy neighbours have been running for a moment), they run one full
``run_trial`` at the same instant and report its seconds. Only ``run_trial`` is timed.

A condition is ``K trials at once × T threads each``, on a quiet machine or beside ``--busy`` CPU-bound
neighbour processes (``spin``: ``while True: pass``; ``matmul``: a torch matmul loop on one thread). Conditions
run in rounds, in a shuffled order per round, so that load from other users of a shared machine falls on all of
them alike; ratios are taken within a round (paired) and their median and range are printed.

    python benchmarks/threads.py [--space lenet300_fashion] [--rounds 5] [--busy spin] [--neighbours 2]
        [--conditions 1x1,1x2,2x1] [--set budget.train_epochs=2 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

BUSY_CODE = {
    "spin": "while True: pass",
    "matmul": (
        "import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\nwhile True:\n    a = torch.tanh(a @ a)\n"
    ),
}


@dataclass(frozen=True)
class Condition:
    trials: int  # trials started at the same instant
    threads: int  # torch threads per trial
    busy: bool  # beside the busy neighbours

    @property
    def name(self) -> str:
        return f"{self.trials}x{self.threads}{' busy' if self.busy else ' quiet'}"


def worker(space: str, overrides: list[str], threads: int) -> None:
    """Child process: prepare everything, print 'ready', wait for a line on stdin, run one trial, print JSON."""
    import torch

    from autoprune.io.data import load_datasets
    from autoprune.pipeline.trial import run_trial
    from autoprune.searching.space import load_space

    torch.set_num_threads(threads)
    cfg = load_space(space, overrides).default_config()
    data = load_datasets(cfg.dataset, seed=cfg.seed, device="cpu")
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    result = run_trial(cfg, data=data, device="cpu", threads=threads)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "val_accuracy": result.val_accuracy}), flush=True)


def _start_workers(cond: Condition, args: argparse.Namespace) -> list[subprocess.Popen]:
    cmd = [sys.executable, __file__, "--worker", "--space", args.space, "--threads", str(cond.threads)]
    for item in args.set:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(cond.threads)}
    procs = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(cond.trials)
    ]
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"worker failed to start (got {line!r})")
    return procs


def _start_busy(kind: str, n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_CODE[kind]]) for _ in range(n)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def measure(cond: Condition, args: argparse.Namespace) -> dict:
    """One measurement: seconds of each trial, and the wall time until the last one finished."""
    workers = _start_workers(cond, args)
    busy: list[subprocess.Popen] = []
    try:
        if cond.busy:
            busy = _start_busy(args.busy, args.neighbours)
            time.sleep(1.0)  # let the neighbours reach full speed (and torch import, for matmul)
        t0 = time.perf_counter()
        for p in workers:
            p.stdin.write("go\n")
            p.stdin.flush()
        seconds = []
        for p in workers:
            left = max(0.0, args.limit - (time.perf_counter() - t0))
            ready, _, _ = select.select([p.stdout], [], [], left)
            # A trial past --limit is cut off and counted at the limit (a lower bound: the table says so).
            seconds.append(json.loads(p.stdout.readline())["seconds"] if ready else args.limit)
        wall = time.perf_counter() - t0
    finally:
        _stop(busy)
        _stop(workers)
    return {"seconds": seconds, "wall": wall}


def parse_conditions(text: str, with_busy: bool) -> list[Condition]:
    out = []
    for item in text.split(","):
        k, _, t = item.strip().partition("x")
        for busy in (False, True) if with_busy else (False,):
            out.append(Condition(int(k), int(t), busy))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="lenet300_fashion")
    parser.add_argument("--set", action="append", default=None, help="KEY=VALUE for the trial (space override)")
    parser.add_argument("--conditions", default="1x1,1x2", help="K trials at once x T threads, comma-separated")
    parser.add_argument("--busy", choices=sorted(BUSY_CODE), default="spin")
    parser.add_argument("--neighbours", type=int, default=2, help="busy neighbour processes (0: quiet only)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=float, default=300.0, help="seconds after which a trial is cut off")
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.set is None:  # a short phase: 2 epochs of sparse training, 1 of finetuning
        args.set = ["budget.train_epochs=2", "budget.finetune_epochs=1"]
    if args.worker:
        worker(args.space, args.set, args.threads)
        return

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the finally blocks: never leave neighbours behind
    conds = parse_conditions(args.conditions, with_busy=args.neighbours > 0)
    rng = random.Random(args.seed)
    print(
        f"{args.space} {' '.join(args.set)}; {args.rounds} rounds; busy = {args.neighbours} x {args.busy}; "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    rows: dict[Condition, list[dict]] = {c: [] for c in conds}
    for r in range(args.rounds):
        order = conds[:]
        rng.shuffle(order)
        for cond in order:
            m = measure(cond, args)
            rows[cond].append(m)
            shown = " ".join(f"{s:.2f}" for s in m["seconds"])
            print(f"round {r}: {cond.name:>10}: trial s {shown}  wall {m['wall']:.2f}", flush=True)

    base = conds[0]
    print(f"\n{'condition':>10} | median trial s | trials/min | trial time vs {base.name} (paired: median [min, max])")
    for cond in conds:
        trial_s = [statistics.median(m["seconds"]) for m in rows[cond]]
        rate = [60 * cond.trials / m["wall"] for m in rows[cond]]
        ratios = [a / b for a, b in zip(trial_s, [statistics.median(m["seconds"]) for m in rows[base]], strict=True)]
        print(
            f"{cond.name:>10} | {statistics.median(trial_s):14.2f} | {statistics.median(rate):10.1f} | "
            f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]"
        )
    print("\nbusy / quiet, paired within a round: median [min, max]")
    for cond in conds:
        if cond.busy:
            continue
        twin = Condition(cond.trials, cond.threads, True)
        if twin not in rows:
            continue
        ratios = [
            statistics.median(b["seconds"]) / statistics.median(q["seconds"])
            for q, b in zip(rows[cond], rows[twin], strict=True)
        ]
        print(f"{cond.trials}x{cond.threads}: {statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]")


if __name__ == "__main__":
    main()
