"""``run_trial``: the whole pipeline for one fixed configuration, in plain PyTorch (no Ray).

1. sparse train: SGD(+momentum) with λ(t)·L1 or group lasso, weight clipping, gradient-norm clipping
2. prune: importance → per-layer amounts → masks, one-shot or gradual (during finetuning); structured pruning
   removes whole units and ends with a physically smaller model
3. finetune: masked SGD with its own lr schedule (pruned weights, their gradients and momentum stay zero)
4. evaluate: validation and test accuracy, parameters, FLOPs

With ``report``, the pipeline also reports an ``IntermediateResult`` after each epoch of sparse training and
of finetuning, and right after one-shot pruning: validation accuracy on a fixed subset of the validation split
(``REPORT_VAL_SAMPLES`` samples drawn once with a fixed seed, so that every trial on the same split is measured
on the same samples, for a few per cent of an epoch's time) and the trial's planned parameter count. These
reports are for deciding early whether a trial is worth finishing; only the final result counts.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import PruneConfig, SGDConfig, TrialConfig, check_structured_sparsity
from .data import Datasets, load_datasets, resolve_device
from .errors import ConfigError
from .models import build_model, layer_positions, prunable_layers
from .preprocess import for_dataset
from .pruning import (
    agp_sparsity,
    compute_masks,
    count_params,
    gradient_statistics,
    gradual_event_steps,
    gradual_plan,
    shrink_sequential,
)
from .train import MaskSet, batches_for_statistics, evaluate, run_phase

REPORT_VAL_SAMPLES = 2048  # validation samples measured for an intermediate result
_REPORT_SUBSET_SEED = 0


@dataclass(frozen=True)
class IntermediateResult:
    """One intermediate report of a running trial (see the module doc). Never a result: it enters no front."""

    stage: str  # "train" (after a sparse-training epoch), "prune" (after one-shot pruning), "finetune"
    epoch: int  # epochs done so far, both phases counted: train epochs, then train_epochs + finetune epochs
    epochs: int  # the trial's epochs in all (train_epochs + finetune_epochs)
    val_accuracy: float  # on the fixed validation subset
    params_planned: int  # the parameters the trial's model keeps after pruning (all of them when dense)


@dataclass
class TrialResult:
    """What one pipeline run measured, and the model it produced."""

    val_accuracy: float  # after finetuning: what the search optimizes
    test_accuracy: float  # reported, never used to choose
    params_nonzero: int  # nonzero parameters of the final model (weights, biases, BatchNorm)
    params_total: int  # parameters of the dense model
    layer_sparsity: dict[str, float]  # prunable layer -> fraction of its dense weights that are zero or removed
    val_accuracy_trained: float  # after phase 1
    val_accuracy_pruned: float | None  # right after one-shot pruning, before finetuning; None for gradual
    flops_dense: int  # multiply-accumulates per sample of the prunable layers, dense
    flops_effective: int  # the same, counting only nonzero weights
    seconds: dict[str, float]  # wall time per phase
    config: dict[str, Any]  # the full TrialConfig as a dict
    device: str
    model: nn.Module = field(repr=False)  # the final model (physically smaller when structured)
    masks: dict[str, torch.Tensor] = field(repr=False)  # parameter name -> 0/1 mask of the final model
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0
    preprocessing: dict[str, Any] = field(default_factory=dict)  # raw input -> model input (preprocess.py)

    def record(self) -> dict[str, Any]:
        """The JSON trial record (DESIGN.md field names)."""
        return {
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "params_nonzero": self.params_nonzero,
            "params_total": self.params_total,
            "layer_sparsity": dict(self.layer_sparsity),
            "val_accuracy_trained": self.val_accuracy_trained,
            "val_accuracy_pruned": self.val_accuracy_pruned,
            "flops_dense": self.flops_dense,
            "flops_effective": self.flops_effective,
            "seconds": dict(self.seconds),
            "device": self.device,
            "config": self.config,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Export the model as a self-describing file (see ``autoprune.export``)."""
        from .export import save_model

        return save_model(
            path,
            self.model,
            masks=self.masks,
            config=self.config,
            metrics=self.record(),
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            preprocessing=self.preprocessing or None,
        )


def run_trial(
    cfg: TrialConfig,
    *,
    data: Datasets | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[str, int, int, float], None] | None = None,
    report: Callable[[IntermediateResult], None] | None = None,
) -> TrialResult:
    """Run the full pipeline for ``cfg``. Same seed, same device and thread count → same result.

    ``log`` receives a line after each phase; ``on_epoch(phase, epoch, epochs, mean_loss)`` is called after
    every epoch of both SGD phases. ``report`` receives an ``IntermediateResult`` after each epoch and after
    one-shot pruning (it may raise to stop the trial there); reporting measures a subset of the validation split
    and does not change the result. Raises ``DivergedError`` (phase, step) on a non-finite loss and
    ``ConfigError`` on a configuration that does not fit the model (e.g. a sparsity for a layer it does not have).
    """
    say = log or (lambda _msg: None)
    dev = resolve_device(device if device is not None else cfg.device)
    if threads is not None and dev.type == "cpu":
        torch.set_num_threads(max(1, int(threads)))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    data = load_datasets(cfg.dataset, seed=cfg.seed, device=dev) if data is None else data.to(dev)
    seconds["data"] = time.perf_counter() - t0

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, data.input_shape, data.num_classes).to(dev)
    layers = prunable_layers(model)
    _check_layers(cfg, layers)
    positions = layer_positions(model, data.input_shape)
    dense_numel = {name: m.weight.numel() for name, m in layers.items()}
    _, params_total = count_params(model)
    flops_dense = sum(dense_numel[n] * positions[n] for n in layers)
    gen = torch.Generator().manual_seed(cfg.seed)
    bs, ebs = cfg.budget.batch_size, cfg.budget.eval_batch_size
    trained_epochs = cfg.budget.train_epochs if cfg.train.enabled else 0
    progress = _progress_reporter(cfg, model, data, trained_epochs, report)

    def sgd(phase: SGDConfig, epochs: int, **kwargs: Any) -> tuple[int, MaskSet | None]:
        """One SGD phase on the training split (both phases share the batch size, batch order and amp)."""
        offset = 0 if phase.section == "train" else trained_epochs
        after = _each(_epochs(on_epoch, phase.section, epochs), progress(phase.section, offset) if progress else None)
        x, y = data.train_x, data.train_y
        return run_phase(
            model, x, y, phase, epochs=epochs, batch_size=bs, generator=gen, amp=cfg.amp, on_epoch=after, **kwargs
        )

    # 1. sparse training
    t0 = time.perf_counter()
    if trained_epochs > 0:
        sgd(cfg.train, trained_epochs)
    val_trained = evaluate(model, data.val_x, data.val_y, batch_size=ebs, amp=cfg.amp)
    seconds["train"] = time.perf_counter() - t0
    say(f"trained: val accuracy {val_trained:.4f} ({seconds['train']:.1f}s)")

    # 2. pruning (one-shot now; gradual as events during finetuning) and 3. finetuning
    pc = cfg.prune
    ft_epochs = cfg.budget.finetune_epochs
    ft_steps = -(-len(data.train_x) // bs) * ft_epochs
    gradual = pc.enabled and pc.schedule == "gradual" and ft_steps > 0

    def prune_to(rates: dict[str, float] | None, amount: float | None, current: MaskSet | None) -> MaskSet:
        grads = None
        if pc.criterion != "magnitude":
            batches = batches_for_statistics(
                data.train_x, data.train_y, batch_size=bs, count=pc.grad_batches, generator=gen
            )
            grads = gradient_statistics(model, batches, layers=list(layers))
        current_masks = current.masks if current is not None else None
        return MaskSet(model, compute_masks(model, pc, rates=rates, amount=amount, grads=grads, current=current_masks))

    rates = dict(pc.sparsity) if pc.allocation == "per_layer" else None
    t0 = time.perf_counter()
    masks: MaskSet | None = None
    events: dict[int, Callable[[], MaskSet]] = {}
    if pc.enabled and not gradual:
        masks = prune_to(rates, pc.amount, None)
        masks.apply_()
    elif gradual:  # AGP: the cubic ramp of Zhu & Gupta, one event per step of the plan
        plan = gradual_plan(rates, pc.gradual_steps) if rates is not None else None
        at_steps = gradual_event_steps(ft_steps, pc.gradual_steps, pc.gradual_end)
        state: dict[str, MaskSet | None] = {"masks": None}
        for k, at in enumerate(at_steps):

            def event(k: int = k) -> MaskSet:
                amount = agp_sparsity(k + 1, pc.gradual_steps, pc.amount)
                state["masks"] = prune_to(plan[k] if plan is not None else None, amount, state["masks"])
                return state["masks"]

            events[at] = event  # when two events share a step, the later (tighter) one wins
    val_pruned: float | None = (
        evaluate(model, data.val_x, data.val_y, batch_size=ebs, amp=cfg.amp) if masks else val_trained
    )
    seconds["prune"] = time.perf_counter() - t0
    if pc.enabled and not gradual:
        say(f"pruned: val accuracy {val_pruned:.4f}")
        if progress:
            progress("prune", trained_epochs)(0)

    t0 = time.perf_counter()
    if gradual:  # pruning happens inside finetuning: there is no pruned-but-not-finetuned model to measure
        _, masks = sgd(cfg.finetune, ft_epochs, masks=masks, prune_events=events)
        val_pruned = None
    else:
        sgd(cfg.finetune, ft_epochs, masks=masks)
    seconds["finetune"] = time.perf_counter() - t0

    # 4. evaluation (structured: on the physically smaller model, whose outputs equal the masked model's)
    t0 = time.perf_counter()
    final_masks = dict(masks.masks) if masks else {}
    if pc.structured and masks:
        model = shrink_sequential(model, _kept_units(masks, layers))
        final_masks = {}
    val_acc = evaluate(model, data.val_x, data.val_y, batch_size=ebs, amp=cfg.amp)
    test_acc = evaluate(model, data.test_x, data.test_y, batch_size=ebs, amp=cfg.amp)
    params_nonzero, _ = count_params(model)
    nonzero = {n: int(torch.count_nonzero(m.weight)) for n, m in prunable_layers(model).items()}
    layer_sparsity = {n: 1.0 - nonzero[n] / dense_numel[n] for n in dense_numel}
    flops_effective = sum(nonzero[n] * positions[n] for n in dense_numel)
    seconds["eval"] = time.perf_counter() - t0
    say(f"finetuned: val accuracy {val_acc:.4f}, test accuracy {test_acc:.4f}, {params_nonzero}/{params_total} params")

    return TrialResult(
        val_accuracy=val_acc,
        test_accuracy=test_acc,
        params_nonzero=params_nonzero,
        params_total=params_total,
        layer_sparsity=layer_sparsity,
        val_accuracy_trained=val_trained,
        val_accuracy_pruned=val_pruned,
        flops_dense=flops_dense,
        flops_effective=flops_effective,
        seconds=seconds,
        config=cfg.to_dict(),
        device=str(dev),
        model=model,
        masks={k: v.detach().to("cpu", torch.bool) for k, v in final_masks.items()},
        input_shape=tuple(data.input_shape),
        num_classes=data.num_classes,
        preprocessing=for_dataset(data.name, tuple(data.input_shape)).to_dict(),
    )


def _epochs(
    on_epoch: Callable[[str, int, int, float], None] | None, phase: str, epochs: int
) -> Callable[[int, float], None] | None:
    if on_epoch is None:
        return None
    return lambda epoch, loss: on_epoch(phase, epoch, epochs, loss)


def _each(*callbacks: Callable[[int, float], None] | None) -> Callable[[int, float], None] | None:
    """One per-epoch callback that calls each given one in turn (None when none is given)."""
    given = [c for c in callbacks if c is not None]
    if not given:
        return None

    def call(epoch: int, loss: float) -> None:
        for callback in given:
            callback(epoch, loss)

    return call


def planned_params(model: nn.Module, pc: PruneConfig) -> int:
    """The parameters ``model`` keeps after pruning by ``pc``: known before training, since the allocation fixes
    how many weights (or units) each layer loses. Counts stored entries the masks keep (a weight that becomes
    exactly zero in training would make the final nonzero count lower).
    """
    total = sum(p.numel() for p in model.parameters())
    if not pc.enabled:
        return total
    # Which weights go depends on the criterion and the trained weights; how many does not (magnitude needs no
    # gradients). Gradual pruning ends at the same rates.
    masks = compute_masks(model, dataclasses.replace(pc, criterion="magnitude"))
    return total - sum(int(m.numel() - torch.count_nonzero(m)) for m in masks.values())


def _progress_reporter(
    cfg: TrialConfig,
    model: nn.Module,
    data: Datasets,
    trained_epochs: int,
    report: Callable[[IntermediateResult], None] | None,
) -> Callable[[str, int], Callable[[int, float], None]] | None:
    """``progress(stage, offset)`` returns the per-epoch callback of a stage, or None without ``report``."""
    if report is None:
        return None
    n = len(data.val_x)
    subset = torch.randperm(n, generator=torch.Generator().manual_seed(_REPORT_SUBSET_SEED))[:REPORT_VAL_SAMPLES]
    subset = torch.sort(subset).values.to(data.val_x.device)
    x, y = data.val_x[subset], data.val_y[subset]
    planned = planned_params(model, cfg.prune)
    epochs = trained_epochs + cfg.budget.finetune_epochs

    def progress(stage: str, offset: int) -> Callable[[int, float], None]:
        def after_epoch(k: int, _loss: float = 0.0) -> None:
            acc = evaluate(model, x, y, batch_size=cfg.budget.eval_batch_size, amp=cfg.amp)
            report(IntermediateResult(stage, offset + k, epochs, val_accuracy=acc, params_planned=planned))

        return after_epoch

    return progress


def _kept_units(masks: MaskSet, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Output units each layer keeps under structured masks (only layers that lost some)."""
    keep = {}
    for name in layers:
        alive = masks.masks[f"{name}.weight"].flatten(1).any(dim=1)
        if not bool(alive.all()):
            keep[name] = alive.nonzero().flatten()
    return keep


def _check_layers(cfg: TrialConfig, layers: dict[str, nn.Module]) -> None:
    names = list(layers)
    for where, mapping in (("prune.sparsity", cfg.prune.sparsity), ("train.lr_multipliers", cfg.train.lr_multipliers)):
        for layer in mapping:
            if layer not in layers:
                raise ConfigError(f"{where}.{layer}: unknown layer {layer!r}; prunable layers: {', '.join(names)}")
    if cfg.prune.enabled and cfg.prune.structured:
        check_structured_sparsity([layer for layer, rate in cfg.prune.sparsity.items() if rate], names)
    if cfg.prune.enabled and not cfg.prune.structured:
        _check_not_emptied(cfg, {name: m.weight.numel() for name, m in layers.items()})


def _check_not_emptied(cfg: TrialConfig, numel: dict[str, int]) -> None:
    """Refuse a rate that rounds a layer (or, globally, every layer) to no weight at all: such a network
    predicts one class, and a search would waste trials on it. Structured pruning always keeps a unit.
    """
    pc = cfg.prune
    if pc.allocation == "per_layer":
        rates = {name: (f"prune.sparsity.{name}", rate) for name, rate in pc.sparsity.items()}
    elif pc.allocation == "global":
        rates = {"all layers": ("prune.amount", pc.amount)}
        numel = {"all layers": sum(numel.values())}
    elif pc.allocation == "uniform":
        rates = {name: ("prune.amount", pc.amount) for name in numel}
    else:  # other allocations spread the amount by their own rule
        return
    for name, (key, rate) in rates.items():
        n = numel.get(name, 0)
        if n and round(rate * n) >= n:
            raise ConfigError(
                f"{key}={rate!r} prunes all {n} weights of {name} (the rate rounds to 100% zeros); use a rate "
                f"below {1 - 0.5 / n:.6g}"
            )
