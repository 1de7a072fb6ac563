"""Samples/s of the pipeline's phase-1 epoch beside a bare hand-written loop and a DataLoader loop.

All loops train the same model (LeNet-300-100 by default) on the same resident data with the same batch size.
The pipeline epoch has everything on: L1 penalty (λ schedule), weight clipping, gradient-norm clipping and
masks. A fourth loop adds the L1 term through autograd, to show what the in-place subgradient saves.
The loops run interleaved, in alternating order, several rounds each, and the median is reported, since the
machine is shared.

    python benchmarks/train_throughput.py [--dataset fashion-mnist] [--rounds 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from autoprune.config import DatasetConfig, PruneConfig, TrainConfig
from autoprune.io.data import load_datasets
from autoprune.io.models import build_model
from autoprune.pipeline.train import PhaseOptions, run_phase
from autoprune.pruning import MaskSet, compute_masks
from autoprune.pruning.units import prunable_weights


def bare_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for idx in torch.randperm(len(x)).split(bs):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def dataloader_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for xb, yb in DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()


def autograd_l1_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    weights = list(prunable_weights(model).values())
    for idx in torch.randperm(len(x)).split(bs):
        loss = F.cross_entropy(model(x[idx]), y[idx]) + 1e-5 * sum(w.abs().sum() for w in weights)
        opt.zero_grad()
        loss.backward()
        opt.step()


def pipeline_epoch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int) -> None:
    masks = model.bench_masks  # computed before the clock starts, as the pipeline does once per phase
    settings = TrainConfig(
        lr=0.05,
        momentum=0.9,
        lr_schedule="cosine",
        penalty="l1",
        lambda_max=1e-5,
        lambda_schedule="linear",
        weight_clip=1.0,
        grad_clip=5.0,
    )
    gen = torch.Generator().manual_seed(0)
    run_phase(model, x, y, settings, PhaseOptions(epochs=1, batch_size=bs, generator=gen, masks=masks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="lenet-300-100")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_datasets(DatasetConfig(name=args.dataset), seed=0, device=args.device)
    x, y = data.train_x, data.train_y
    loops: dict[str, Callable] = {
        "bare loop": bare_loop,
        "pipeline (L1+clip+masks)": pipeline_epoch,
        "DataLoader(TensorDataset)": dataloader_loop,
        "L1 through autograd": autograd_l1_loop,
    }
    times: dict[str, list[float]] = {name: [] for name in loops}
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    for r in range(args.rounds + 1):  # round 0 warms up and is discarded
        order = list(loops.items())
        for name, loop in order if r % 2 else order[::-1]:  # alternate the order: drift cancels out
            torch.manual_seed(r)
            model = build_model(args.model, data.input_shape, data.num_classes).to(x.device)
            model.bench_masks = MaskSet(model, compute_masks(model, PruneConfig(allocation="uniform", density=0.5)))
            sync()
            t0 = time.perf_counter()
            loop(model, x, y, args.batch_size)
            sync()
            if r:
                times[name].append(time.perf_counter() - t0)
    print(
        f"{args.model} on {args.dataset}: {len(x)} samples/epoch, batch {args.batch_size}, "
        f"{args.device}, {args.threads} threads, median of {args.rounds} interleaved rounds"
    )
    bare = statistics.median(times["bare loop"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<28} {med:6.2f} s/epoch  {len(x) / med:9.0f} samples/s  {bare / med:5.2f}x bare loop")


if __name__ == "__main__":
    main()
