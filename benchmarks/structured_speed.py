"""Smaller and faster: autoprune's structured search from a trained checkpoint against Torch-Pruning's uniform
magnitude pruning, on measured CPU latency.

    python benchmarks/structured_speed.py                               # ResNet-20 and MobileNetV2, 40 trials each
    python benchmarks/structured_speed.py --models resnet20 --trials 12 --limit 6000

For each of ``--models`` (``real_models_nets.py``'s ResNet-20 and MobileNetV2 on Fashion-MNIST):
1. the checkpoint ``real_models.py`` trains densely (the same recipe and cache, so both benchmarks share it);
2. the baseline, what a Torch-Pruning user does: ``MagnitudePruner`` (L2 magnitude, the same rate for every layer,
   the output layer ignored) at each of ``--ratios`` of channels removed, then ``--finetune-epochs`` epochs of Adam
   at ``--baseline-lr`` (cosine) on autoprune's training split;
3. ``autoprune.search`` of ``--trials`` structured trials from the checkpoint: ``prune.structured``, a rate per
   channel group searched (``sparsity: auto``; or ``--allocation uniform``: one rate for every group, the density
   searched), magnitude or Taylor, the front's second axis ``--objective``, ``--train-epochs`` of group-lasso training
   and ``--finetune-epochs`` of finetuning, as the baseline finetunes.
Every model, dense, baseline and every finished trial's exported file, is then timed in this one process the same
way: ``torch.utils.benchmark.Timer``, 1 thread, a batch of ``--batch`` inputs, the median of ``--repeats`` blocks
after warm-up, interleaved so the machine's noise falls on all of them alike. The search's latency front (the
trials that no faster-or-equal trial beats on validation accuracy) is set against each baseline point: the most
accurate front model (on validation) no slower than the baseline, with its test accuracy. Prints the commit, the
subset, the wall times and the dense file's size against the exported files'.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import real_models as rm  # noqa: E402  (the checkpoint, data and fitting helpers of the real-models benchmark)

MODELS = ("resnet20", "mobilenetv2")


def latency_ms(model: Any, shape: tuple[int, ...], batch: int, repeats: int) -> float:
    """Median milliseconds of one forward pass of ``batch`` inputs on the CPU, 1 thread, eval, inference mode."""
    import torch
    from torch.utils import benchmark

    model = model.eval()
    x = torch.randn(batch, *shape)
    with torch.inference_mode():
        timer = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=1)
        timer.timeit(3)  # warm-up
        runs = [timer.timeit(5).median for _ in range(repeats)]
    runs.sort()
    return 1000 * runs[len(runs) // 2]


def macs(model: Any, shape: tuple[int, ...]) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


def baseline(name: str, weights: str, data: Any, ratio: float, epochs: int, lr: float) -> Any:
    """Torch-Pruning's uniform L2-magnitude channel pruning at ``ratio``, then finetuning as the search does."""
    import torch
    import torch_pruning as tp

    model = rm.build(name, data)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    head = model.fc if hasattr(model, "fc") else model.classifier
    pruner = tp.pruner.MagnitudePruner(
        model,
        torch.zeros(1, *data.input_shape),
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[head],
    )
    pruner.step()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rm.fit(model, data, opt, epochs, cosine=True)
    return model


def space_text(name: str, weights: str, limit: int, trials: int, args: argparse.Namespace) -> str:
    return f"""# {name}: structured search from the checkpoint real_models.py trained. Written by structured_speed.py.
dataset: {{name: fashion-mnist, val_fraction: {rm.VAL_FRACTION}, limit: {limit}}}
model: {{name: "real_models_nets:{name}", weights: {json.dumps(weights)}}}
budget: {{train_epochs: {args.train_epochs}, finetune_epochs: {args.finetune_epochs}, batch_size: {rm.BATCH_SIZE}}}
search: {{trials: {trials}, sampler: tpe, objective: {args.objective}}}
seed: {rm.SEED}

train:
  lr: {{low: 1.0e-3, high: 3.0e-2, log: true, default: 1.0e-2}}
  momentum: 0.9
  lr_schedule: constant
  penalty: group_lasso
  lambda_max: {{low: 1.0e-6, high: 1.0e-3, log: true, default: 1.0e-5}}
  lambda_schedule: linear
  grad_clip: 5.0

prune:
  enabled: true
  structured: true
  criterion: {{choices: [magnitude, taylor]}}
{allocation(args.allocation)}
  schedule: one_shot

finetune:
  optimizer: adam
  lr: {{low: 3.0e-4, high: 1.0e-2, log: true, default: 2.0e-3}}
  momentum: 0.9
  lr_schedule: cosine
  grad_clip: 5.0
"""


def allocation(name: str) -> str:
    """The space's allocation lines: a rate per channel group searched, or one density every group shares."""
    if name == "uniform":  # Torch-Pruning's prior (the same channel rate everywhere), its level searched
        return "  allocation: uniform\n  density: {low: 0.05, high: 0.8, log: true}   # weights kept; one rate for all"
    return (
        "  allocation: per_layer\n  sparsity: auto                         # one rate per channel group, in [0, 0.95]"
    )


def front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials no faster-or-equal trial beats on validation accuracy, fastest first."""
    out, best = [], -1.0
    for p in sorted(points, key=lambda r: (r["latency_ms"], -r["val_accuracy"])):
        if p["val_accuracy"] > best:
            out.append(p)
            best = p["val_accuracy"]
    return out


def run_model(name: str, args: argparse.Namespace, root: Path) -> tuple[list[str], dict[str, Any]]:
    import torch

    from autoprune import load_model
    from autoprune.api import search
    from autoprune.pruning import count_params

    data = rm.load_data(args.limit)
    ckpt = rm.checkpoint(name, data, rm.RECIPES[name], Path(args.cache))
    dense = rm.build(name, data)
    dense.load_state_dict(torch.load(ckpt["path"], weights_only=True))
    shape = tuple(data.input_shape)

    t0 = time.perf_counter()
    bases = []
    for ratio in args.ratios:
        torch.manual_seed(rm.SEED)
        model = baseline(name, ckpt["path"], data, ratio, args.finetune_epochs, args.baseline_lr)
        val, test = rm.accuracies(model, data)
        bases.append({"ratio": ratio, "model": model, "val_accuracy": val, "test_accuracy": test})
        rm.say(f"{name}: Torch-Pruning at {ratio:g}: val {val:.4f}, test {test:.4f}")
    t_base = time.perf_counter() - t0

    space = root / f"{name}.yaml"
    space.write_text(space_text(name, ckpt["path"], args.limit, args.trials, args))
    t0 = time.perf_counter()
    launched = search(
        space, run_dir=root / name, trials=args.trials, concurrent=args.concurrent, cpus_per_trial=1, seed=args.seed
    )
    t_search = time.perf_counter() - t0
    trials = []
    for rec in launched.results.trials:
        path = rec.get("model_path")
        if path and Path(path).exists():
            loaded = load_model(path, allow_modules=["real_models_nets"])
            trials.append({"record": rec, "model": loaded.model, "size": Path(path).stat().st_size})

    # every model timed in the same interleaved rounds
    timed = [("dense", dense)] + [(f"tp{b['ratio']}", b["model"]) for b in bases]
    timed += [(f"t{t['record']['trial']}", t["model"]) for t in trials]
    samples: dict[str, list[float]] = {k: [] for k, _ in timed}
    for _ in range(args.rounds):
        for key, model in timed:
            samples[key].append(latency_ms(model, shape, args.batch, args.repeats))
    lat = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}

    dense_ms, dense_macs = lat["dense"], macs(dense, shape)
    dense_file = root / f"{name}-dense.pt"
    torch.save(dense.state_dict(), dense_file)
    points = [
        {
            "trial": t["record"]["trial"],
            "val_accuracy": t["record"]["val_accuracy"],
            "test_accuracy": t["record"]["test_accuracy"],
            "params": count_params(t["model"])[1],
            "macs": macs(t["model"], shape),
            "latency_ms": lat[f"t{t['record']['trial']}"],
            "file_bytes": t["size"],
        }
        for t in trials
    ]
    fr = front(points)
    lines = [
        f"{name}: dense {count_params(dense)[1]} params, {dense_macs / 1e6:.2f}M MACs, {dense_ms:.1f} ms "
        f"(batch {args.batch}, 1 thread), file {dense_file.stat().st_size / 1e3:.0f} kB; checkpoint val "
        f"{ckpt['val_accuracy']:.4f}, test {ckpt['test_accuracy']:.4f}",
        f"search: {args.trials} structured trials ({args.allocation}, objective {args.objective}; "
        f"{len(trials)} finished), train {args.train_epochs} + finetune "
        f"{args.finetune_epochs} epochs a trial, {t_search:.0f}s; Torch-Pruning: {t_base:.0f}s",
        "| model | val | test | Δ test (pt) | params | MACs | ms | speed-up | file/dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(label: str, r: dict[str, Any]) -> str:
        return (
            f"| {label} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | "
            f"{100 * (r['test_accuracy'] - ckpt['test_accuracy']):+.2f} | {r['params']} | {r['macs'] / 1e6:.2f}M | "
            f"{r['latency_ms']:.1f} | {dense_ms / r['latency_ms']:.2f}x | "
            + (f"{r['file_bytes'] / dense_file.stat().st_size:.2f} |" if "file_bytes" in r else " |")
        )

    numbers: dict[str, Any] = {"dense_ms": dense_ms, "front": fr, "baselines": []}
    dominated = True
    for b in bases:
        bp = {
            "val_accuracy": b["val_accuracy"],
            "test_accuracy": b["test_accuracy"],
            "params": count_params(b["model"])[1],
            "macs": macs(b["model"], shape),
            "latency_ms": lat[f"tp{b['ratio']}"],
        }
        fits = [p for p in fr if p["latency_ms"] <= bp["latency_ms"]]
        best = max(fits, key=lambda p: p["val_accuracy"]) if fits else None
        lines.append(row(f"Torch-Pruning {b['ratio']:g}", bp))
        lines.append(row(f"autoprune trial {best['trial']}", best) if best else "| autoprune | none as fast |")
        dominated = dominated and best is not None and best["test_accuracy"] >= bp["test_accuracy"]
        numbers["baselines"].append({"ratio": b["ratio"], **bp, "search": best})
    lines.append(
        "front (fastest first): " + ", ".join(f"{p['latency_ms']:.1f} ms {p['test_accuracy']:.4f}" for p in fr)
    )
    for goal, drop in ((2.0, 1.0), (1.5, 1.5)):
        ok = [p for p in fr if dense_ms / p["latency_ms"] >= goal]
        close = max(ok, key=lambda p: p["test_accuracy"]) if ok else None
        lines.append(
            f">= {goal}x faster: "
            + (
                f"trial {close['trial']}, {dense_ms / close['latency_ms']:.2f}x, test "
                f"{100 * (close['test_accuracy'] - ckpt['test_accuracy']):+.2f} pt (goal within -{drop} pt)"
                if close
                else "none"
            )
        )
    lines.append(f"front dominates Torch-Pruning at every latency (test accuracy): {'yes' if dominated else 'no'}")
    return lines, numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--limit", type=int, default=6000, help="training images (default 6000)")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--train-epochs", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--ratios", default="0.3,0.5,0.7", help="Torch-Pruning's channel ratios")
    parser.add_argument("--baseline-lr", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks a round (median)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--allocation", choices=("per_layer", "uniform"), default="per_layer")
    parser.add_argument("--objective", choices=("params", "macs", "latency"), default="params")
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=str(HERE / ".cache"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    args.ratios = [float(r) for r in args.ratios.split(",")]
    t0 = time.perf_counter()
    out: dict[str, Any] = {"commit": rm.commit(), "limit": args.limit}
    with tempfile.TemporaryDirectory(prefix="autoprune-speed-") as tmp:
        for name in args.models.split(","):
            lines, numbers = run_model(name, args, Path(tmp))
            print("\n".join(lines), flush=True)
            out[name] = numbers
    print(f"commit {out['commit']}, {args.limit} training images, wall {time.perf_counter() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
