"""The pipeline on a GPU, in one script: no Ray, no network, at most about 8 minutes on one H100.

    python benchmarks/gpu_check.py                                  # on cuda, the shipped budgets
    python benchmarks/gpu_check.py --data-dir fashion-mnist/        # the four IDX .gz files elsewhere
    python benchmarks/gpu_check.py --device cpu --quick             # smoke test (the test suite runs it)

It prints three things, each measured on ``--device``:
1. ``run_trial`` for LeNet-300-100 and LeNet-5 on Fashion-MNIST with their shipped spaces' defaults and budgets:
   validation and test accuracy (finite, as on the CPU) and the seconds of each phase;
2. the pipeline's phase-1 epoch (L1 penalty, clipping, masks: everything on) against a bare loop of the same model
   (plain SGD with momentum over the same resident batches), as samples per second and their ratio, the median of
   ``--rounds`` interleaved rounds; on CUDA also the epoch with bf16 autocast, which decides ``amp``'s default;
3. K = 1, 2, 4, 8, 16 trial processes at once on the one device (LeNet-300-100, the shipped budget): trials per
   hour, and each trial's time against a trial run alone. How many trials share a GPU well decides the default
   share of a GPU a search gives each trial (``--gpus-per-trial auto``).
With ``--json FILE`` the numbers are also written to FILE. Needs torch, numpy and pyyaml (not Ray or Optuna).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a machine with a copy of the repository and no install: import autoprune from it
    sys.path.insert(0, str(ROOT))
SPACES = {"lenet-300-100": "lenet300_fashion", "lenet-5": "lenet5_fashion"}
CONCURRENCY = (1, 2, 4, 8, 16)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def config(space: str, device: str, args: argparse.Namespace) -> Any:
    """The space's default trial on ``device``, shrunk for ``--quick``."""
    from autoprune.searching.space import load_space

    sets = [f"device={device}"]
    if args.data_dir:
        sets.append(f"dataset.data_dir={json.dumps(str(Path(args.data_dir).absolute()))}")
    if args.quick:
        sets += ["dataset.limit=1024", "budget.train_epochs=1", "budget.finetune_epochs=1"]
    return load_space(space, sets).default_config()


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def trials(device: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part 1: a whole trial of each LeNet on the device."""
    from autoprune.pipeline.trial import run_trial

    rows = []
    for model, space in SPACES.items():
        cfg = config(space, device, args)
        t0 = time.perf_counter()
        record = run_trial(cfg, device=device).record()
        seconds = time.perf_counter() - t0
        finite = all(math.isfinite(record[k]) for k in ("val_accuracy", "test_accuracy"))
        rows.append(
            {
                "model": model,
                "val_accuracy": record["val_accuracy"],
                "test_accuracy": record["test_accuracy"],
                "finite": finite,
                "seconds": seconds,
                "phases": record["seconds"],
                "epochs": cfg.budget.train_epochs + cfg.budget.finetune_epochs,
            }
        )
        say(f"{model}: val {record['val_accuracy']:.4f}, test {record['test_accuracy']:.4f}, {seconds:.1f}s")
    return rows


def epoch_ratio(device: str, args: argparse.Namespace) -> dict[str, Any]:
    """Part 2: samples/s of the pipeline's phase-1 epoch against a bare loop of the same model and batches."""
    import torch
    import torch.nn.functional as F

    from autoprune.io.data import batch_indices, load_datasets
    from autoprune.io.models import build_model
    from autoprune.pipeline.train import PhaseOptions, run_phase

    cfg = config(SPACES["lenet-300-100"], device, args)
    data = load_datasets(cfg.dataset, seed=0, device=device)
    x, y, bs = data.train_x, data.train_y, cfg.budget.batch_size

    def pipeline(amp: bool = False) -> None:
        model = build_model(cfg.model.name, data.input_shape, data.num_classes).to(device)
        gen = torch.Generator(device=x.device).manual_seed(0)
        run_phase(model, x, y, cfg.train, PhaseOptions(epochs=1, batch_size=bs, generator=gen, amp=amp))

    def pipeline_bf16() -> None:  # bf16 autocast (the space's amp: true); on the CPU it changes nothing
        pipeline(amp=True)

    def bare() -> None:
        model = build_model(cfg.model.name, data.input_shape, data.num_classes).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum)
        gen = torch.Generator(device=x.device).manual_seed(0)
        for idx in batch_indices(len(x), bs, generator=gen, device=x.device):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    loops = (pipeline, bare, pipeline_bf16) if device.startswith("cuda") else (pipeline, bare)
    times: dict[str, list[float]] = {loop.__name__: [] for loop in loops}
    for loop in loops:  # warm-up: kernels, allocator, cuDNN autotuning
        loop()
    for r in range(args.rounds):
        order = loops if r % 2 == 0 else loops[::-1]
        for loop in order:
            sync(device)
            t0 = time.perf_counter()
            loop()
            sync(device)
            times[loop.__name__].append(time.perf_counter() - t0)
    pipe, base = statistics.median(times["pipeline"]), statistics.median(times["bare"])
    out = {"samples": len(x), "pipeline_s": pipe, "bare_s": base, "ratio": base / pipe}
    say(f"phase-1 epoch: pipeline {len(x) / pipe:.0f} samples/s, bare loop {len(x) / base:.0f}: {base / pipe:.2f}x")
    if times.get("pipeline_bf16"):
        out["pipeline_bf16_s"] = statistics.median(times["pipeline_bf16"])
        say(f"phase-1 epoch with bf16 autocast: {len(x) / out['pipeline_bf16_s']:.0f} samples/s")
    return out


def _one_trial(job: tuple[str, str, bool, str | None]) -> float:
    """One LeNet-300-100 trial in a fresh process; its wall time."""
    device, space, quick, data_dir = job
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from autoprune.pipeline.trial import run_trial

    torch.set_num_threads(1)
    args = argparse.Namespace(quick=quick, data_dir=data_dir)
    cfg = config(space, device, args)
    t0 = time.perf_counter()
    run_trial(cfg, device=device, threads=1)
    sync(device)
    return time.perf_counter() - t0


def concurrency(device: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part 3: K trial processes at once on the device: throughput and each trial's slowdown."""
    spawn = multiprocessing.get_context("spawn")  # a forked CUDA context is unusable
    job = (device, SPACES["lenet-300-100"], args.quick, args.data_dir)
    rows: list[dict[str, Any]] = []
    solo = None
    for k in args.concurrency:
        with spawn.Pool(k) as pool:
            pool.map(_one_trial, [job] * k)  # warm-up: process start, imports, data, CUDA context
            t0 = time.perf_counter()
            each = pool.map(_one_trial, [job] * k)
            wall = time.perf_counter() - t0
        mean = statistics.mean(each)
        solo = mean if solo is None else solo
        row = {
            "k": k,
            "wall_s": wall,
            "trial_s": mean,
            "trials_per_hour": 3600.0 * k / wall,
            "speed_vs_solo": solo / mean,
        }
        rows.append(row)
        say(
            f"K={k}: {row['trials_per_hour']:.0f} trials/h, each trial {mean:.1f}s "
            f"({100 * row['speed_vs_solo']:.0f}% of its solo speed)"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST IDX files (default: Debian's)")
    parser.add_argument("--quick", action="store_true", help="1,024 samples, one epoch a phase, K = 1 and 2")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the epoch timing (default 5)")
    parser.add_argument("--concurrency", default=None, help="comma-separated K values (default 1,2,4,8,16)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    default_k = (1, 2) if args.quick else CONCURRENCY
    args.concurrency = tuple(int(k) for k in args.concurrency.split(",")) if args.concurrency else default_k
    if args.quick:
        args.rounds = min(args.rounds, 2)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        say(f"gpu_check.py: --device {args.device} but CUDA is not available here; use --device cpu for a smoke test")
        return 2
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    say(f"gpu_check: {name}, torch {torch.__version__}")
    t0 = time.perf_counter()
    result = {
        "device": name,
        "torch": torch.__version__,
        "quick": args.quick,
        "trials": trials(args.device, args),
        "epoch": epoch_ratio(args.device, args),
        "concurrency": concurrency(args.device, args),
    }
    result["seconds"] = time.perf_counter() - t0
    lines = [f"gpu_check on {name} (torch {torch.__version__}){' --quick' if args.quick else ''}"]
    lines += [
        f"  {r['model']:<14} val {r['val_accuracy']:.4f}  test {r['test_accuracy']:.4f}  {r['seconds']:6.1f}s "
        f"for {r['epochs']} epochs  finite: {'yes' if r['finite'] else 'NO'}"
        for r in result["trials"]
    ]
    e = result["epoch"]
    lines.append(f"  phase-1 epoch: pipeline {e['pipeline_s']:.3f}s, bare loop {e['bare_s']:.3f}s: {e['ratio']:.2f}x")
    if "pipeline_bf16_s" in e:
        lines.append(f"  phase-1 epoch with bf16 autocast (amp: true): {e['pipeline_bf16_s']:.3f}s")
    lines += [
        f"  K={r['k']:<3} {r['trials_per_hour']:8.0f} trials/h  each trial {r['trial_s']:6.1f}s  "
        f"{100 * r['speed_vs_solo']:4.0f}% of solo"
        for r in result["concurrency"]
    ]
    lines.append(f"  wall time {result['seconds']:.0f}s")
    print("\n".join(lines), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if all(r["finite"] for r in result["trials"]) else 1


if __name__ == "__main__":
    sys.exit(main())
