"""``run_trial``: the whole pipeline for one fixed configuration, in plain PyTorch (no Ray).

1. sparse train: SGD(+momentum) with λ(t)·L1 or group lasso, weight clipping, gradient-norm clipping
2. prune: importance → per-layer counts (fixed by the allocation before training: ``params_planned``) → masks,
   one-shot, gradual during finetuning, or gradual over the end of phase 1 (AGP); structured pruning removes
   whole units and ends with a physically smaller model
3. finetune: masked SGD or Adam (gradient-norm clipping optional), its own lr schedule or phase 1's rewound one,
   optionally distilling from the model right before its first pruning (pruned weights, grads, momentum stay 0)
4. evaluate: validation and test accuracy, parameters, FLOPs; the MACs and latency of the final model, and its
   speed-up over the dense model timed before training (``speed.py``)

With ``report``, the pipeline also reports an ``IntermediateResult`` after each epoch of sparse training and
of finetuning, and right after one-shot pruning: validation accuracy on a fixed subset of the validation split
(``REPORT_VAL_SAMPLES`` samples drawn once with a fixed seed: every trial on the same split is measured on the
same samples, for a few per cent of an epoch's time), the trial's planned parameter count, and whether pruning
is done (``at_size``). They decide early whether a trial is worth finishing; only the final result counts.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._bounds import machine_cpus
from ._trial_checks import check_layers, check_phase_one
from .config import SGDConfig, TrialConfig
from .data import Datasets, load_datasets, resolve_device
from .errors import ModelError
from .measure import count_macs
from .models import build_model, load_weights, read_weights
from .notes import CARVED_VALIDATION_NOTE
from .preprocess import for_dataset
from .pruning import (
    agp_events,
    channel_graph,
    compute_masks,
    count_params,
    gradient_statistics,
    kept_weights,
    layer_sparsity,
    nonzero_weights,
    planned_params,
    removed_by_masks,
    shrink,
)
from .pruning.channels import ChannelGraph
from .pruning.masks import MaskSet
from .pruning.units import Selection, not_pruned, not_pruned_line, parameter_paths, prunable_weights
from .result import TrialResult as TrialResult  # re-exported: what run_trial returns
from .result import majority_share
from .sparsity import rewound_lr_at
from .speed import SpeedProbe
from .train import PhaseOptions, batches_for_statistics, evaluate, run_phase

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
    at_size: bool = True  # pruning is done (or the trial is dense): the accuracy is that of a model of its size


def run_trial(
    cfg: TrialConfig,
    *,
    data: Datasets | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[str, int, int, float], None] | None = None,
    report: Callable[[IntermediateResult], None] | None = None,
    start: Mapping[str, torch.Tensor] | None = None,
    start_kind: str = "checkpoint",
) -> TrialResult:
    """Run the full pipeline for ``cfg``. Same seed, same device and thread count → same result.

    ``log`` receives a line after each phase; ``on_epoch(phase, epoch, epochs, mean_loss)`` is called after
    every epoch of both SGD phases. ``report`` receives an ``IntermediateResult`` after each epoch and after
    one-shot pruning (it may raise to stop the trial there); reporting measures a subset of the validation split
    and does not change the result. The model starts from ``start`` (a ``state_dict``: a search reads
    ``model.weights`` once and ships its tensors), else from the file ``cfg.model.weights`` names, else from its
    factory's initialisation. ``start_kind`` is what the record calls ``start``: ``"dense start"`` for a search's
    own dense model (``dense_start.py``), trained on this trial's training split. Raises ``DivergedError``
    (phase, step) on a non-finite loss, ``ConfigError`` on a configuration that does not fit the model (e.g. a
    sparsity for a layer it does not have) and ``ModelError`` on weights that do not fit it.
    """
    say = log or (lambda _msg: None)
    dev = resolve_device(device if device is not None else cfg.device)
    if threads is not None and dev.type == "cpu":
        torch.set_num_threads(min(max(1, int(threads)), machine_cpus()))  # a node's CPUs bound a trial's threads
    cuda = cuda_settings(cfg, dev)
    _apply_cuda(cuda)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    data = load_datasets(cfg.dataset, seed=cfg.seed, device=dev) if data is None else data.to(dev)
    seconds["data"] = time.perf_counter() - t0

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, data.input_shape, data.num_classes)
    started = "scratch"
    if start is not None or cfg.model.weights is not None:
        source = cfg.model.weights or "the given state_dict"
        load_weights(model, read_weights(source) if start is None else start, source=source, name=cfg.model.name)
        started = start_kind if start is not None else "checkpoint"
        say(f"start: trained weights from {source if started == 'checkpoint' else 'the ' + started}")
        if data.val_source == "carved" and started == "checkpoint":
            say(CARVED_VALIDATION_NOTE)
    model = model.to(dev)
    select = Selection.of(cfg.prune)
    layers = prunable_weights(model, select)
    check_layers(cfg, layers)
    try:  # a count is a measurement, not the pipeline: a model it cannot follow still prunes, and the log says so
        macs = count_macs(model, layers, data.input_shape)
    except ModelError as exc:
        macs = None
        say(f"MACs not counted: {exc}")
    speed = SpeedProbe(model, data.input_shape, dev, cfg.measure, amp=cfg.amp, log=say)  # the dense model, untrained
    dense_numel = {name: w.numel() for name, w in layers.items()}
    prunable, (_, params_total) = sum(dense_numel.values()), count_params(model)
    left_dense = not_pruned(model, layers) if cfg.prune.enabled else {}
    if left_dense:
        say(not_pruned_line(left_dense, params_total))
    graph = structured_groups(model, layers, data) if cfg.prune.enabled and cfg.prune.structured else None
    if graph is not None and graph.kept_whole_line():
        say(graph.kept_whole_line())
    coupled_lasso = graph.group_lasso(model) if graph is not None else None  # over the coupled groups' slices
    # The batch order is drawn where the data lives: on a GPU no permutation crosses from host memory.
    gen = torch.Generator(device=dev if dev.type == "cuda" else "cpu").manual_seed(cfg.seed)
    bs, ebs = cfg.budget.batch_size, cfg.budget.eval_batch_size
    trained_epochs = cfg.budget.train_epochs if cfg.train.enabled else 0
    pruned = [not cfg.prune.enabled]  # the final masks are in place
    pc, fc = cfg.prune, cfg.finetune
    params_planned = planned_params(model, pc, graph)  # fixed before training (fails now if it cannot be)
    progress = _progress_reporter(cfg, params_planned, model, data, trained_epochs, report, lambda: pruned[0])

    def sgd(
        phase: SGDConfig,
        epochs: int,
        prune_events: dict[int, Callable[[], MaskSet]] | None = None,
        **kwargs: Any,
    ) -> tuple[int, MaskSet | None]:
        """One SGD phase on the training split (both phases share the batch size, batch order and amp)."""
        offset = 0 if phase.section == "train" else trained_epochs
        after = _each(_epochs(on_epoch, phase.section, epochs), progress(phase.section, offset) if progress else None)
        events = dict(prune_events or {})
        prune = (lambda step: events.pop(step)() if step in events else None) if events else None
        options = PhaseOptions(
            epochs=epochs,
            batch_size=bs,
            generator=gen,
            amp=cfg.amp,
            prune=prune,
            on_epoch=after,
            prunable=list(layers.values()),
            group_lasso=coupled_lasso,
            **kwargs,
        )
        return run_phase(model, data.train_x, data.train_y, phase, options)

    say(f"planned: {params_planned} of {params_total} params nonzero after pruning")
    ft_epochs = cfg.budget.finetune_epochs
    steps_per_epoch = -(-len(data.train_x) // bs)
    check_phase_one(cfg, trained_epochs)
    schedule = pc.schedule if pc.enabled else None
    schedule = "one_shot" if schedule == "gradual" and ft_epochs == 0 else schedule  # no finetuning to ramp in
    final_kept = kept_weights(model, pc) if pc.enabled and pc.allocation != "per_layer" else 0
    teacher: list[nn.Module] = []  # the model right before its first pruning, when distilling

    def keep_teacher() -> None:
        if fc.distill_weight > 0 and not teacher:
            frozen = copy.deepcopy(model).requires_grad_(False).eval()
            frozen.zero_grad(set_to_none=True)
            teacher.append(frozen)

    def prune_to(fraction: float, current: MaskSet | None) -> MaskSet:
        """Masks ``fraction`` of the way (AGP) from dense to the configured target; 1 is the target exactly."""
        grads = None
        if pc.criterion != "magnitude":
            batches = batches_for_statistics(
                data.train_x, data.train_y, batch_size=bs, count=pc.grad_batches, generator=gen
            )
            grads = gradient_statistics(model, batches, weights=layers)
        rates = {name: rate * fraction for name, rate in pc.sparsity.items()}
        kept = final_kept + round((1.0 - fraction) * (prunable - final_kept))
        current_masks = current.masks if current is not None else None
        pruned[0] = fraction >= 1.0
        masks = compute_masks(model, pc, rates=rates, kept=kept, grads=grads, current=current_masks, graph=graph)
        return MaskSet(model, masks)

    def agp(total_steps: int) -> dict[int, Callable[[], MaskSet]]:
        """AGP events over [gradual_start, gradual_end] of a phase of ``total_steps``."""
        state: list[MaskSet] = []
        events: dict[int, Callable[[], MaskSet]] = {}
        for at, fraction in agp_events(total_steps, pc.gradual_steps, pc.gradual_start, pc.gradual_end):

            def event(fraction: float = fraction) -> MaskSet:
                keep_teacher()
                state[:] = [prune_to(fraction, state[0] if state else None)]
                return state[0]

            events[at] = event  # when two events share a step, the later (tighter) one wins
        return events

    # 1. sparse training (gradual_train: AGP over the end of it)
    t0 = time.perf_counter()
    masks: MaskSet | None = None
    if trained_epochs > 0:
        ramp = agp(trained_epochs * steps_per_epoch) if schedule == "gradual_train" else None
        _, masks = sgd(cfg.train, trained_epochs, prune_events=ramp)
    val_trained = evaluate(model, data.val_x, data.val_y, batch_size=ebs, amp=cfg.amp)
    seconds["train"] = time.perf_counter() - t0
    say(f"trained: val accuracy {val_trained:.4f} ({seconds['train']:.1f}s)")

    # 2. pruning: one-shot now; gradual as events during finetuning; gradual_train is done already
    t0 = time.perf_counter()
    ft_events = None
    val_pruned: float | None = val_trained  # dense, or pruned within phase 1
    if schedule == "one_shot":
        keep_teacher()
        masks = prune_to(1.0, None)
        masks.apply_()
        val_pruned = evaluate(model, data.val_x, data.val_y, batch_size=ebs, amp=cfg.amp)
        say(f"pruned: val accuracy {val_pruned:.4f}")
        if progress:
            progress("prune", trained_epochs)(0)
    elif schedule == "gradual":  # there is no pruned-but-not-finetuned model to measure
        ft_events = agp(ft_epochs * steps_per_epoch)
        val_pruned = None
    seconds["prune"] = time.perf_counter() - t0

    # 3. finetuning, from the teacher's knowledge and phase 1's rewound lr when asked
    t0 = time.perf_counter()
    keep_teacher()
    lr_fn = None
    if fc.lr_rewind:
        tc = cfg.train  # Adam replays phase 1's schedule at its own lr: an SGD lr does not carry to Adam
        lr_fn = functools.partial(
            rewound_lr_at,
            tc.lr_schedule,
            fc.lr if fc.optimizer == "adam" else tc.lr,
            steps_per_epoch=steps_per_epoch,
            train_epochs=trained_epochs,
            finetune_epochs=ft_epochs,
            step_epochs=tc.lr_step_epochs,
            gamma=tc.lr_gamma,
        )
    distill_from = teacher[0] if teacher else None
    _, masks = sgd(fc, ft_epochs, masks=masks, prune_events=ft_events, lr_fn=lr_fn, teacher=distill_from)
    teacher.clear()
    seconds["finetune"] = time.perf_counter() - t0

    # 4. evaluation (structured: on the physically smaller model, whose outputs equal the masked model's)
    t0 = time.perf_counter()
    final_masks = dict(masks.masks) if masks else {}
    structure = None
    if graph is not None and masks:
        structure = shrink(model, graph, removed_by_masks(graph, final_masks), data.input_shape).to_data()
        final_masks = {}
    val_acc = evaluate(model, data.val_x, data.val_y, batch_size=ebs, amp=cfg.amp)
    test_acc = evaluate(model, data.test_x, data.test_y, batch_size=ebs, amp=cfg.amp)
    params_nonzero, _ = count_params(model)
    nonzero = nonzero_weights(model, select)
    seconds["eval"] = time.perf_counter() - t0
    say(f"finetuned: val accuracy {val_acc:.4f}, test accuracy {test_acc:.4f}, {params_nonzero}/{params_total} params")
    final_speed = speed.finish(model, macs)
    seconds["speed"] = speed.seconds

    return TrialResult(
        val_accuracy=val_acc,
        test_accuracy=test_acc,
        params_nonzero=params_nonzero,
        params_total=params_total,
        params_prunable=prunable,
        params_planned=params_planned,
        layer_sparsity=layer_sparsity(model, select, dense_numel=dense_numel),
        val_accuracy_trained=val_trained,
        val_accuracy_pruned=val_pruned,
        val_samples=len(data.val_x),
        val_chance=majority_share(data.val_y),
        flops_dense=macs.dense if macs else None,
        flops_effective=macs.effective(nonzero) if macs else None,
        macs_other=macs.other if macs else None,
        not_pruned=left_dense,
        start=started,
        val_source=data.val_source,
        seconds=seconds,
        config=cfg.to_dict(),
        device=str(dev),
        cuda=cuda,
        model=model,
        masks={k: v.detach().to("cpu", torch.bool) for k, v in final_masks.items()},
        structure=structure,
        input_shape=tuple(data.input_shape),
        num_classes=data.num_classes,
        preprocessing=for_dataset(data.name, tuple(data.input_shape)).to_dict(),
        speed=final_speed,
    )


def cuda_settings(cfg: TrialConfig, device: torch.device) -> dict[str, bool]:
    """What a trial on ``device`` runs with on CUDA: TF32 (``cfg.tf32``), bf16 autocast (``cfg.amp``) and cuDNN's
    autotuner; empty on the CPU, where none of it applies."""
    if device.type != "cuda":
        return {}
    return {"tf32": bool(cfg.tf32), "bf16_autocast": bool(cfg.amp), "cudnn_benchmark": True}


def _apply_cuda(settings: dict[str, bool]) -> None:
    if not settings:
        return
    torch.backends.cuda.matmul.allow_tf32 = settings["tf32"]
    torch.backends.cudnn.allow_tf32 = settings["tf32"]
    torch.backends.cudnn.benchmark = settings["cudnn_benchmark"]


def _epochs(
    on_epoch: Callable[[str, int, int, float], None] | None, phase: str, epochs: int
) -> Callable[[int, float], None] | None:
    return None if on_epoch is None else (lambda epoch, loss: on_epoch(phase, epoch, epochs, loss))


def _each(*callbacks: Callable[[int, float], None] | None) -> Callable[[int, float], None] | None:
    """One per-epoch callback that calls each given one in turn (None when none is given)."""
    given = [c for c in callbacks if c is not None]
    if not given:
        return None

    def call(epoch: int, loss: float) -> None:
        for callback in given:
            callback(epoch, loss)

    return call


def _progress_reporter(
    cfg: TrialConfig,
    planned: int,
    model: nn.Module,
    data: Datasets,
    trained_epochs: int,
    report: Callable[[IntermediateResult], None] | None,
    at_size: Callable[[], bool],
) -> Callable[[str, int], Callable[[int, float], None]] | None:
    """``progress(stage, offset)`` returns the per-epoch callback of a stage, or None without ``report``."""
    if report is None:
        return None
    n = len(data.val_x)
    subset = torch.randperm(n, generator=torch.Generator().manual_seed(_REPORT_SUBSET_SEED))[:REPORT_VAL_SAMPLES]
    subset = torch.sort(subset).values.to(data.val_x.device)
    x, y = data.val_x[subset], data.val_y[subset]
    epochs = trained_epochs + cfg.budget.finetune_epochs

    def progress(stage: str, offset: int) -> Callable[[int, float], None]:
        def after_epoch(k: int, _loss: float = 0.0) -> None:
            acc = evaluate(model, x, y, batch_size=cfg.budget.eval_batch_size, amp=cfg.amp)
            report(IntermediateResult(stage, offset + k, epochs, acc, params_planned=planned, at_size=at_size()))

        return after_epoch

    return progress


def structured_groups(model: nn.Module, layers: Mapping[str, torch.Tensor], data: Datasets) -> ChannelGraph:
    """The channel groups a structured trial prunes: those rooted at a layer whose weight is selected."""
    graph = channel_graph(model, data.input_shape, example=data.train_x[:1])
    modules = {path.rpartition(".")[0] for path in parameter_paths(model, dict(layers)).values()}
    return graph.restricted(modules, "not selected by prune.include/exclude")
