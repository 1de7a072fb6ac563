"""Models a user already trained: autoprune's search from their checkpoints against ``torch.nn.utils.prune``.

    python benchmarks/real_models.py                          # the three models, 40 trials each, 2 at a time
    python benchmarks/real_models.py --quick                  # transformer, 400 samples, 2 trials (under a minute)
    python benchmarks/real_models.py --models resnet20 --trials 20 --json resnet20.json

The models are ``real_models_nets.py``'s (ResNet-20, a small MobileNetV2, a Transformer encoder over image rows),
written as users write them, on Fashion-MNIST (1x28x28, 10 classes). For each of ``--models``:
1. the checkpoint: the model trained densely as a user trains it (``RECIPES``: SGD with momentum or AdamW, cosine
   lr, ``--epochs``), on autoprune's training split of the first ``--limit`` training images, so that the
   validation split the search chooses on was never trained on. Saved with ``torch.save(model.state_dict(), ...)``
   in ``--cache`` and reused while the file is there;
2. ``autoprune.search`` of ``--trials`` trials from that checkpoint (``model.weights``): the space file the script
   writes beside the run directory (``--train-epochs`` of sparse training, ``--finetune-epochs`` of finetuning;
   allocation global, lamp, erk or uniform; density from 3% to 30% of the prunable weights; the lrs searched);
3. the baseline, what a user does with ``torch.nn.utils.prune``: from the same checkpoint, ``global_unstructured``
   with ``L1Unstructured`` over the weight tensors autoprune prunes (``pruning.units.prunable_weights``), keeping
   exactly 5%, 10% and 25% of them, then ``--finetune-epochs`` epochs with the masks in place (Adam at a fixed
   ``--baseline-lr``), then ``prune.remove``. Measured on autoprune's own splits (same limit, seed and
   validation fraction) with autoprune's own accuracy and parameter counts.

For each size bucket (at most 5%, 10% and 25% of the prunable weights kept; a trial's share is
(params_nonzero - (params_total - params_prunable)) / params_prunable) it prints the search's trial with the best
validation accuracy among those that fit, and the baseline of that size, each with its test accuracy and its drop
in points from the checkpoint's test accuracy. "Dominates": in every bucket the search's model has a test accuracy
at least the baseline's (and, separately, a validation accuracy). The budgets match on finetuning only: a search
trial also runs ``--train-epochs`` of sparse training before it prunes. Prints the commit, the subset size and the
wall time of the dense training (cached: the time it took when it ran), of the search and of the baselines.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from autoprune.io.data import Datasets

HERE = Path(__file__).resolve().parent
MODELS = ("resnet20", "mobilenetv2", "transformer")
BUCKETS = (0.05, 0.10, 0.25)  # kept fractions of the prunable weights; the baseline runs at exactly these
SEED = 0  # the split, the initial weights and the batch order, in the checkpoint, the search and the baseline
VAL_FRACTION = 0.1
BATCH_SIZE = 128  # the search's budget.batch_size too


@dataclass(frozen=True)
class Recipe:
    """How a user trains the model densely: the optimizer, its lr (cosine-annealed to 0) and weight decay."""

    optimizer: str  # sgd (momentum 0.9, Nesterov) | adamw
    lr: float
    weight_decay: float
    epochs: int


# The usual recipes of each family, shortened to a few epochs: SGD with momentum and weight decay for the CNNs,
# AdamW for the Transformer (SGD trains attention poorly at this length).
RECIPES = {
    "resnet20": Recipe("sgd", 0.1, 5e-4, 8),
    "mobilenetv2": Recipe("sgd", 0.1, 4e-5, 8),
    "transformer": Recipe("adamw", 1e-3, 1e-2, 10),
}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def load_data(limit: int) -> Datasets:
    """autoprune's splits of the first ``limit`` Fashion-MNIST training images (and the full test set)."""
    from autoprune.config import DatasetConfig
    from autoprune.io.data import load_datasets

    return load_datasets(DatasetConfig(name="fashion-mnist", val_fraction=VAL_FRACTION, limit=limit), seed=SEED)


def build(name: str, data: Datasets) -> nn.Module:
    """The model as the search's trials build it (the same factory call, so the state_dict keys match)."""
    from autoprune.io.models import build_model

    return build_model(f"real_models_nets:{name}", data.input_shape, data.num_classes)


def fit(
    model: nn.Module,
    data: Datasets,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    *,
    cosine: bool,
) -> None:
    """Plain minibatch training on the training split: shuffled batches, cross-entropy, the lr per step."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    steps = epochs * math.ceil(len(data.train_x) / BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, (lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))) if cosine else (lambda _step: 1.0)
    )
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(data.train_x), generator=gen).split(BATCH_SIZE):
            loss = torch.nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()


def accuracies(model: nn.Module, data: Datasets) -> tuple[float, float]:
    """(validation, test) accuracy, measured as autoprune measures its trials."""
    from autoprune.pipeline.train import evaluate

    return evaluate(model, data.val_x, data.val_y), evaluate(model, data.test_x, data.test_y)


def checkpoint(name: str, data: Datasets, recipe: Recipe, cache: Path) -> dict[str, Any]:
    """Train ``name`` densely (or reuse the cached file) and measure it; the record says where it is and how long
    the training took when it ran."""
    import torch

    stem = f"{name}-n{len(data.train_x) + len(data.val_x)}-seed{SEED}-{recipe.optimizer}-lr{recipe.lr:g}"
    path = cache / f"{stem}-e{recipe.epochs}.pt"
    info = cache / f"{stem}-e{recipe.epochs}.json"  # the training's own numbers, for a later run that reuses it
    cached = path.exists() and info.exists()
    if cached:
        model = build(name, data)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        seconds = json.loads(info.read_text())["seconds"]
    else:
        say(f"{name}: dense training, {plural(recipe.epochs, 'epoch')} on {len(data.train_x)} samples")
        torch.manual_seed(SEED)
        model = build(name, data)
        if recipe.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay
            )
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        t0 = time.perf_counter()
        fit(model, data, opt, recipe.epochs, cosine=True)
        seconds = time.perf_counter() - t0
        cache.mkdir(parents=True, exist_ok=True)
        if not (cache / ".gitignore").exists():  # checkpoints and their notes are outputs, never part of a commit
            (cache / ".gitignore").write_text("*\n")
        torch.save(model.state_dict(), path)
        info.write_text(json.dumps({"seconds": seconds, "recipe": asdict(recipe)}, indent=2))
    val, test = accuracies(model, data)
    say(f"{name}: checkpoint {path}{' (cached)' if cached else ''}: val {val:.4f}, test {test:.4f}")
    return {
        "path": str(path),
        "cached": cached,
        "seconds": seconds,
        "recipe": asdict(recipe),
        "val_accuracy": val,
        "test_accuracy": test,
    }


def prune_targets(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The (module, parameter name) pairs ``torch.nn.utils.prune`` needs, for exactly the tensors autoprune
    prunes (convolutions, linears, attention's packed in_proj_weight; biases and norms stay dense)."""
    from autoprune.pruning.units import parameter_paths, prunable_weights

    weights = prunable_weights(model)
    paths = parameter_paths(model, weights)
    targets = []
    for unit in weights:
        module, _, attr = paths[unit].rpartition(".")
        targets.append((model.get_submodule(module), attr))
    return targets


def baseline(name: str, weights: str, data: Datasets, fraction: float, epochs: int, lr: float) -> dict[str, Any]:
    """Global L1 magnitude pruning with ``torch.nn.utils.prune`` to ``fraction`` of the prunable weights, masked
    finetuning with Adam at ``lr``, then the masks made permanent; the record has the search's keys."""
    import torch
    from torch.nn.utils import prune

    from autoprune.pruning import count_params

    t0 = time.perf_counter()
    torch.manual_seed(SEED)
    model = build(name, data)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    _, total = count_params(model)
    targets = prune_targets(model)
    prunable = sum(getattr(m, a).numel() for m, a in targets)
    kept = round(fraction * prunable)
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=prunable - kept)

    # prune recomputes weight = weight_orig * mask in a forward pre-hook of the layer that holds it, which runs only
    # when that layer is called. nn.MultiheadAttention hands out_proj.weight to its functional forward without
    # calling out_proj, so that weight would keep the product made at pruning time: never trained, and its graph
    # freed by the first backward. Recomputing every masked weight at the model's own forward covers every layer.
    def apply_masks(_model: nn.Module, _inputs: Any) -> None:
        for module, attr in targets:
            setattr(module, attr, getattr(module, f"{attr}_orig") * getattr(module, f"{attr}_mask"))

    hook = model.register_forward_pre_hook(apply_masks)
    # The optimizer is made after pruning: prune swapped each weight for weight_orig, which is what trains.
    fit(model, data, torch.optim.Adam(model.parameters(), lr=lr), epochs, cosine=False)
    hook.remove()
    for module, attr in targets:  # weight = weight_orig * mask for good, before evaluation
        prune.remove(module, attr)
    val, test = accuracies(model, data)
    nonzero, _ = count_params(model)
    return {
        "size": fraction,
        "val_accuracy": val,
        "test_accuracy": test,
        "params_nonzero": nonzero,
        "params_total": total,
        "params_prunable": prunable,
        "seconds": time.perf_counter() - t0,
    }


def _baseline_job(job: tuple[str, str, int, float, int, float]) -> dict[str, Any]:
    """One baseline in a worker process, on one thread as each search trial runs (``cpus_per_trial=1``)."""
    import torch

    torch.set_num_threads(1)
    name, weights, limit, fraction, epochs, lr = job
    return baseline(name, weights, load_data(limit), fraction, epochs, lr)


# Phase 1 of a trial, from the trained weights: an L1 pull at a finetuning lr. No weight clipping: it would change
# the trained weights before anything is pruned.
TRAIN_SECTION = """train:
  lr: {low: 1.0e-3, high: 3.0e-2, log: true, default: 5.0e-3}
  momentum: 0.9
  nesterov: true
  lr_schedule: cosine
  penalty: l1
  lambda_max: {low: 1.0e-6, high: 1.0e-3, log: true, default: 1.0e-4}
  lambda_schedule: {choices: [linear, constant]}   # the first choice is the default
  weight_clip: null
  grad_clip: 5.0
"""


def space_text(name: str, weights: str, limit: int, trials: int, sizes: list[int], args: argparse.Namespace) -> str:
    """The space file of one model's search, in the shipped spaces' style."""
    train_epochs = args.train_epochs
    train, schedule = TRAIN_SECTION, "{choices: [one_shot, gradual_train]}   # gradual_train: AGP over phase 1's end"
    if train_epochs == 0:  # no phase 1: the checkpoint is pruned as it is, as the baseline prunes it
        train, schedule = "train: {enabled: false}\n", "one_shot"
    return f"""# {name} (real_models_nets.py) on the first {limit} Fashion-MNIST training images, from the checkpoint
# real_models.py trained densely: every trial starts from model.weights. Written by real_models.py.
dataset: {{name: fashion-mnist, val_fraction: {VAL_FRACTION}, limit: {limit}}}
model: {{name: "real_models_nets:{name}", weights: {json.dumps(weights)}}}
budget: {{train_epochs: {train_epochs}, finetune_epochs: {args.finetune_epochs}, batch_size: {BATCH_SIZE}}}
search: {{trials: {trials}, sampler: tpe, sizes: {sizes}}}   # sizes: the buckets' limits, in parameters
seed: {SEED}

{train}
prune:                                   # phase 2: an overall density, shared among layers by the allocation
  enabled: true
  criterion: {{choices: [magnitude, taylor]}}
  allocation: {{choices: [global, lamp, erk, uniform]}}
  density: {{low: 0.03, high: 0.3, log: true, default: 0.1}}   # fraction of the prunable weights kept
  schedule: {schedule}
  gradual_start: 0.5
  gradual_end: 0.8

finetune:
  optimizer: adam
  lr: {{low: 3.0e-4, high: 1.0e-2, log: true, default: 2.0e-3}}   # from trained weights: below a fresh net's range
  momentum: 0.9                          # Adam's beta1
  lr_schedule: cosine
  grad_clip: 5.0                         # clip the gradient norm: a pruned net can diverge at a high lr
  distill_weight: {{low: 0.0, high: 0.9, default: 0.0}}   # distillation from the model before pruning
  distill_temperature: 4.0
"""


def kept(record: dict[str, Any]) -> int:
    """Prunable weights a model keeps: its nonzero parameters less those that are never pruned."""
    return record["params_nonzero"] - (record["params_total"] - record["params_prunable"])


def best_within(records: list[dict[str, Any]], limit: int) -> dict[str, Any] | None:
    """The record with the best validation accuracy among those keeping at most ``limit`` prunable weights."""
    fits = [r for r in records if kept(r) <= limit]
    return max(fits, key=lambda r: (r["val_accuracy"], -r["params_nonzero"])) if fits else None


def row(name: str, r: dict[str, Any] | None, dense_test: float) -> str:
    if r is None:
        return f"  {name:<9} none fits"
    if "trial" in r:
        prune = r["config"]["prune"]
        what = f"trial {r['trial']}: {prune['allocation']}, {prune['criterion']}, {prune['schedule']}"
        what += f" [{r['baseline']}]" if r.get("baseline") else ""
    else:
        what = "torch.nn.utils.prune, global L1"
    return (
        f"  {name:<9} {r['params_nonzero']:>7} params, {100 * kept(r) / r['params_prunable']:5.2f}% of prunable  "
        f"val {r['val_accuracy']:.4f}  test {r['test_accuracy']:.4f}  "
        f"drop {100 * (dense_test - r['test_accuracy']):+.2f} pt  ({what})"
    )


def slim(record: dict[str, Any]) -> dict[str, Any]:
    """A trial record without its full configuration: the settings that tell trials apart, and the numbers."""
    keys = ("trial", "baseline", "val_accuracy", "test_accuracy", "params_nonzero", "params_total", "params_prunable")
    out = {k: record[k] for k in keys if k in record}
    cfg = record.get("config") or {}
    out["prune"] = {
        k: cfg.get("prune", {}).get(k) for k in ("allocation", "criterion", "schedule", "density", "nonzero_params")
    }
    out["finetune_lr"] = cfg.get("finetune", {}).get("lr")
    return out


def run_model(name: str, args: argparse.Namespace, root: Path, cache: Path) -> tuple[list[str], dict[str, Any]]:
    """Checkpoint, baselines and search of one model; returns its table's lines and its numbers."""
    from autoprune.api import search
    from autoprune.pruning import count_params
    from autoprune.pruning.units import prunable_weights

    data = load_data(args.limit)
    recipe = RECIPES[name] if args.epochs is None else Recipe(**{**asdict(RECIPES[name]), "epochs": args.epochs})
    ckpt = checkpoint(name, data, recipe, cache)
    model = build(name, data)
    _, total = count_params(model)
    prunable = sum(w.numel() for w in prunable_weights(model).values())
    limits = {b: round(b * prunable) for b in BUCKETS}  # prunable weights kept at each bucket's edge

    t0 = time.perf_counter()
    # Spawned, not forked: this process has run torch, whose threads can hold a lock that a fork copies locked.
    spawn = multiprocessing.get_context("spawn")
    jobs = [(name, ckpt["path"], args.limit, b, args.finetune_epochs, args.baseline_lr) for b in BUCKETS]
    with ProcessPoolExecutor(max_workers=min(args.concurrent, len(jobs)), mp_context=spawn) as pool:
        baselines = list(pool.map(_baseline_job, jobs))
    t_base = time.perf_counter() - t0
    for b in baselines:
        say(f"{name}: baseline at {100 * b['size']:g}%: val {b['val_accuracy']:.4f}, test {b['test_accuracy']:.4f}")

    space = root / f"{name}.yaml"  # beside the run directory: space.yaml inside it is the search's frozen copy
    sizes = [total - prunable + n for n in limits.values()]  # search.sizes: refinements at exactly these counts
    space.write_text(space_text(name, ckpt["path"], args.limit, args.trials, sizes, args))
    run_dir = root / name
    t0 = time.perf_counter()
    launched = search(
        space,
        run_dir=run_dir,
        trials=args.trials,
        concurrent=args.concurrent,
        cpus_per_trial=1,
        seed=args.seed,
        weights=ckpt["path"],
    )
    t_search = time.perf_counter() - t0
    found = launched.results.trials

    dense_test = ckpt["test_accuracy"]
    lines = [
        f"{name}: {total} params, {prunable} prunable; checkpoint val {ckpt['val_accuracy']:.4f}, "
        f"test {dense_test:.4f} ({recipe.optimizer} lr {recipe.lr:g}, {plural(recipe.epochs, 'epoch')})",
        f"search: {args.trials} trials ({len(found)} finished, {args.concurrent} at a time, TPE seed {args.seed}), "
        f"train {args.train_epochs} + finetune {plural(args.finetune_epochs, 'epoch')} a trial; run dir {run_dir}",
        f"baseline: torch.nn.utils.prune global L1 at {', '.join(f'{100 * b:g}%' for b in BUCKETS)}, "
        f"finetune {plural(args.finetune_epochs, 'epoch')} with Adam at lr {args.baseline_lr:g}",
    ]
    if launched.results.calibration:
        lines.append(launched.results.calibration)
    buckets: dict[str, Any] = {}
    dom = {"test": True, "val": True}
    for b in BUCKETS:
        s = best_within(found, limits[b])
        g = next(r for r in baselines if r["size"] == b)
        lines += [
            f"<= {100 * b:g}% of the prunable weights:",
            row("autoprune", s, dense_test),
            row("baseline", g, dense_test),
        ]
        for key in dom:
            dom[key] = dom[key] and s is not None and s[f"{key}_accuracy"] >= g[f"{key}_accuracy"]
        buckets[str(b)] = {"limit": limits[b], "search": s and slim(s), "baseline": g}
    lines.append(
        f"autoprune dominates the baseline at every size: test {'yes' if dom['test'] else 'NO'}, "
        f"val {'yes' if dom['val'] else 'NO'}"
    )
    trained = f"{ckpt['seconds']:.0f}s{' (cached)' if ckpt['cached'] else ''}"
    lines.append(f"wall time: dense training {trained}, search {t_search:.0f}s, baselines {t_base:.0f}s")
    summary = {
        "params_total": total,
        "params_prunable": prunable,
        "checkpoint": ckpt,
        "search": {
            "run_dir": str(run_dir),
            "space": str(space),
            "trials": args.trials,
            "finished": len(found),
            "seconds": t_search,
            "reference": launched.results.baseline,  # the checkpoint as the search measured it
            "records": [slim(r) for r in found],
        },
        "baselines": baselines,
        "baseline_seconds": t_base,
        "buckets": buckets,
        "dominates": dom,
    }
    return lines, summary


def commit() -> str:
    """The checked-out commit, marked when the work tree differs from it."""
    git = ["git", "-C", str(HERE)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + (" (with local changes)" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help=f"comma-separated, of {', '.join(MODELS)} (default all)")
    parser.add_argument("--limit", type=int, default=None, help="training images used (default 12000; --quick 400)")
    parser.add_argument("--epochs", type=int, default=None, help="dense training epochs (default each RECIPE's)")
    parser.add_argument("--trials", type=int, default=None, help="search trials per model (default 40; --quick 2)")
    parser.add_argument("--train-epochs", type=int, default=None, help="sparse training epochs a trial (default 1)")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="finetuning epochs, both (default 2)")
    parser.add_argument("--baseline-lr", type=float, default=1e-3, help="the baseline's Adam lr (default 1e-3)")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at a time, search and baselines (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="TPE sampler seed (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the dense training")
    parser.add_argument("--cache", default=str(HERE / ".cache"), help="checkpoint folder (default benchmarks/.cache)")
    parser.add_argument("--run-dir", default=None, help="folder for the searches (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="one model, 400 samples, 2 trials, 1 epoch each")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)

    names = [m.strip() for m in (args.models or ",".join(MODELS)).split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        parser.error(f"--models: unknown model {unknown[0] if unknown else '(none)'}; choose from {', '.join(MODELS)}")
    if args.quick:
        # The Transformer unless named otherwise: ResNet-20 spends half a minute of one core on each pass over the
        # 10,000 test images, which every trial, the dense reference and every baseline make.
        names = [names[0] if args.models else "transformer"]
    quick = args.quick
    args.limit = args.limit or (400 if quick else 12000)
    args.trials = args.trials or (2 if quick else 40)
    args.epochs = args.epochs if args.epochs is not None else (1 if quick else None)
    args.train_epochs = args.train_epochs if args.train_epochs is not None else 1
    args.finetune_epochs = args.finetune_epochs if args.finetune_epochs is not None else (1 if quick else 2)
    for option in ("limit", "trials", "finetune_epochs", "concurrent"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.train_epochs < 0 or (args.epochs is not None and args.epochs < 1):
        parser.error("--train-epochs must be at least 0 and --epochs at least 1")

    # Paths first, then the working folder: autoprune's Ray workers import real_models_nets from the folder the
    # search starts in (and from PYTHONPATH), and every path given relative to where the script was called.
    cache = Path(args.cache).expanduser().absolute()
    root = Path(args.run_dir or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"real-models-{os.getpid()}"))
    root = root.expanduser().absolute()
    out = Path(args.json).expanduser().absolute() if args.json else None
    os.chdir(HERE)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if any((root / name).exists() for name in names):
        say(f"real_models.py: {root} already holds a search of one of {', '.join(names)}; choose another --run-dir")
        return 2
    root.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    data = load_data(args.limit)
    version = commit()
    head = (
        f"real models: commit {version}, Fashion-MNIST first {args.limit} training images ({len(data.train_x)} train, "
        f"{len(data.val_x)} validation), {len(data.test_x)} test"
    )
    say(head)
    lines, summary = [head], {"commit": version, "limit": args.limit, "args": vars(args), "models": {}}
    for name in names:
        model_lines, summary["models"][name] = run_model(name, args, root, cache)
        lines += ["", *model_lines]
    wall = time.perf_counter() - t_start
    lines.append(f"total wall time {wall:.0f}s")
    print("\n".join(lines), flush=True)
    if out is not None:
        summary["seconds"] = wall
        out.write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
