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

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoprune._bounds import machine_cpus
from autoprune.config import CARVED_VALIDATION_NOTE, SGDConfig, TrialConfig
from autoprune.errors import ModelError
from autoprune.io.data import Datasets, load_datasets, resolve_device
from autoprune.io.models import build_model, load_weights, read_weights
from autoprune.io.preprocess import for_dataset
from autoprune.pipeline._trial_checks import check_layers, check_phase_one
from autoprune.pipeline.measure import Macs, count_macs
from autoprune.pipeline.result import TrialResult as TrialResult  # re-exported: what run_trial returns
from autoprune.pipeline.result import majority_share
from autoprune.pipeline.sparsity import rewound_lr_at
from autoprune.pipeline.speed import SpeedProbe
from autoprune.pipeline.train import PhaseOptions, batches_for_statistics, evaluate, run_phase
from autoprune.pruning import (
    PruningSchedule,
    channel_graph,
    count_params,
    layer_sparsity,
    nonzero_weights,
    planned_params,
    removed_by_masks,
    shrink,
)
from autoprune.pruning.channels import ChannelGraph
from autoprune.pruning.units import Selection, not_pruned, not_pruned_line, parameter_paths, prunable_weights

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
    t = _set_up(cfg, dev, data, start, start_kind, say)
    t.on_epoch = on_epoch
    t.progress = _Progress(t, report) if report is not None else None
    val_trained = _sparse_train(t)
    val_pruned = _prune(t, val_trained)
    _finetune(t)
    return _evaluate(t, val_trained, val_pruned, cuda)


@dataclass
class _Trial:
    """What the phases of one trial share: set up once (``_set_up``), then read by each phase in turn."""

    cfg: TrialConfig
    device: torch.device
    data: Datasets
    model: nn.Module  # the trial's model, trained and pruned in place
    started: str  # what it started from: TrialResult.start
    dense_numel: dict[str, int]  # the prunable weights' sizes before any pruning, by unit name
    params_total: int
    left_dense: dict[str, int]  # parameters never pruned (TrialResult.not_pruned)
    graph: ChannelGraph | None  # the channel groups of a structured trial
    macs: Macs | None  # the dense model's MAC counts (None: the count could not follow the model)
    speed: SpeedProbe  # timed the dense model; times the final one
    params_planned: int
    schedule: PruningSchedule  # when and how far the trial prunes; the masks in force
    options: PhaseOptions  # what both SGD phases share: batch size, batch order, amp, the penalised weights
    trained_epochs: int  # of phase 1 (0 when it is off)
    steps_per_epoch: int
    say: Callable[[str], None]
    seconds: dict[str, float]  # wall time per phase
    on_epoch: Callable[[str, int, int, float], None] | None = None
    progress: _Progress | None = None


def _set_up(
    cfg: TrialConfig,
    dev: torch.device,
    data: Datasets | None,
    start: Mapping[str, torch.Tensor] | None,
    start_kind: str,
    say: Callable[[str], None],
) -> _Trial:
    """Data and model; its prunable weights, channel groups, MACs, dense speed and planned size; the pruning
    schedule. A configuration that does not fit the model fails here, before any training."""
    t0 = time.perf_counter()
    data = load_datasets(cfg.dataset, seed=cfg.seed, device=dev) if data is None else data.to(dev)
    seconds = {"data": time.perf_counter() - t0}
    model, started = _start_model(cfg, data, start, start_kind, say)
    model = model.to(dev)
    layers = prunable_weights(model, Selection.of(cfg.prune))
    check_layers(cfg, layers)
    try:  # a count is a measurement, not the pipeline: a model it cannot follow still prunes, and the log says so
        macs = count_macs(model, layers, data.input_shape)
    except ModelError as exc:
        macs = None
        say(f"MACs not counted: {exc}")
    speed = SpeedProbe(model, data.input_shape, dev, cfg.measure, amp=cfg.amp, log=say)  # the dense model, untrained
    params_total = count_params(model)[1]
    left_dense = not_pruned(model, layers) if cfg.prune.enabled else {}
    if left_dense:
        say(not_pruned_line(left_dense, params_total))
    graph = structured_groups(model, layers, data) if cfg.prune.enabled and cfg.prune.structured else None
    if graph is not None and graph.kept_whole_line():
        say(graph.kept_whole_line())
    lasso = graph.group_lasso(model) if graph is not None else None  # over the coupled groups' slices
    # The batch order is drawn where the data lives: on a GPU no permutation crosses from host memory.
    gen = torch.Generator(device=dev if dev.type == "cuda" else "cpu").manual_seed(cfg.seed)
    bs, prunable = cfg.budget.batch_size, list(layers.values())
    options = PhaseOptions(epochs=0, batch_size=bs, generator=gen, amp=cfg.amp, prunable=prunable, group_lasso=lasso)
    trained_epochs = cfg.budget.train_epochs if cfg.train.enabled else 0
    params_planned = planned_params(model, cfg.prune, graph)  # fixed before training (fails now if it cannot be)
    say(f"planned: {params_planned} of {params_total} params nonzero after pruning")
    check_phase_one(cfg, trained_epochs)
    statistics = functools.partial(batches_for_statistics, data.train_x, data.train_y, batch_size=bs, generator=gen)
    finetunes, distils = cfg.budget.finetune_epochs > 0, cfg.finetune.distill_weight > 0
    schedule = PruningSchedule(
        model, cfg.prune, layers, finetunes=finetunes, graph=graph, batches=statistics, keep_teacher=distils
    )
    return _Trial(
        cfg=cfg,
        device=dev,
        data=data,
        model=model,
        started=started,
        dense_numel={name: w.numel() for name, w in layers.items()},
        params_total=params_total,
        left_dense=left_dense,
        graph=graph,
        macs=macs,
        speed=speed,
        params_planned=params_planned,
        schedule=schedule,
        options=options,
        trained_epochs=trained_epochs,
        steps_per_epoch=-(-len(data.train_x) // bs),
        say=say,
        seconds=seconds,
    )


def _start_model(
    cfg: TrialConfig,
    data: Datasets,
    start: Mapping[str, torch.Tensor] | None,
    start_kind: str,
    say: Callable[[str], None],
) -> tuple[nn.Module, str]:
    """The trial's model from ``start``, else ``cfg.model.weights``, else its initialisation; and what it started
    from (``TrialResult.start``)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, data.input_shape, data.num_classes)
    if start is None and cfg.model.weights is None:
        return model, "scratch"
    source = cfg.model.weights or "the given state_dict"
    load_weights(model, read_weights(source) if start is None else start, source=source, name=cfg.model.name)
    started = start_kind if start is not None else "checkpoint"
    say(f"start: trained weights from {source if started == 'checkpoint' else 'the ' + started}")
    if data.val_source == "carved" and started == "checkpoint":
        say(CARVED_VALIDATION_NOTE)
    return model, started


def _sparse_train(t: _Trial) -> float:
    """Phase 1: sparse training (a gradual_train schedule prunes over the end of it). Its validation accuracy."""
    t0 = time.perf_counter()
    if t.trained_epochs > 0:
        prune = t.schedule.ramp(t.trained_epochs * t.steps_per_epoch) if t.schedule.kind == "gradual_train" else None
        _sgd(t, t.cfg.train, t.trained_epochs, prune=prune)
    val = _val_accuracy(t)
    t.seconds["train"] = time.perf_counter() - t0
    t.say(f"trained: val accuracy {val:.4f} ({t.seconds['train']:.1f}s)")
    return val


def _prune(t: _Trial, val_trained: float) -> float | None:
    """Phase 2: a one-shot schedule prunes now (gradual ones prune within a phase). The validation accuracy of
    the pruned model before finetuning: phase 1's when dense or pruned within phase 1, None when gradual."""
    t0 = time.perf_counter()
    val_pruned: float | None = val_trained
    if t.schedule.kind == "one_shot":
        t.schedule.prune_to(1.0).apply_()
        val_pruned = _val_accuracy(t)
        t.say(f"pruned: val accuracy {val_pruned:.4f}")
        if t.progress is not None:
            t.progress("prune", t.trained_epochs)
    elif t.schedule.kind == "gradual":  # there is no pruned-but-not-finetuned model to measure
        val_pruned = None
    t.seconds["prune"] = time.perf_counter() - t0
    return val_pruned


def _finetune(t: _Trial) -> None:
    """Phase 3: masked finetuning (a gradual schedule prunes during it), distilling from the model right before
    its first pruning and on phase 1's rewound lr when asked."""
    t0 = time.perf_counter()
    schedule, epochs = t.schedule, t.cfg.budget.finetune_epochs
    schedule.keep_teacher()
    prune = schedule.ramp(epochs * t.steps_per_epoch) if schedule.kind == "gradual" else None
    _sgd(t, t.cfg.finetune, epochs, prune=prune, lr_fn=_rewound_lr(t), teacher=schedule.teacher)
    schedule.teacher = None  # evaluation needs no teacher: free it
    t.seconds["finetune"] = time.perf_counter() - t0


def _evaluate(t: _Trial, val_trained: float, val_pruned: float | None, cuda: dict[str, bool]) -> TrialResult:
    """Phase 4: accuracies, sizes and speed of the final model (structured: of the physically smaller model,
    whose outputs equal the masked model's)."""
    t0 = time.perf_counter()
    model, data, ebs = t.model, t.data, t.cfg.budget.eval_batch_size
    masks = t.schedule.masks
    final_masks = dict(masks.masks) if masks else {}
    structure = None
    if t.graph is not None and masks:
        structure = shrink(model, t.graph, removed_by_masks(t.graph, final_masks), data.input_shape).to_data()
        final_masks = {}
    val_acc = _val_accuracy(t)
    test_acc = evaluate(model, data.test_x, data.test_y, batch_size=ebs, amp=t.cfg.amp)
    params_nonzero, _ = count_params(model)
    select = Selection.of(t.cfg.prune)
    nonzero = nonzero_weights(model, select)
    t.seconds["eval"] = time.perf_counter() - t0
    accuracies = f"val accuracy {val_acc:.4f}, test accuracy {test_acc:.4f}"
    t.say(f"finetuned: {accuracies}, {params_nonzero}/{t.params_total} params")
    final_speed = t.speed.finish(model, t.macs)
    t.seconds["speed"] = t.speed.seconds
    return TrialResult(
        val_accuracy=val_acc,
        test_accuracy=test_acc,
        params_nonzero=params_nonzero,
        params_total=t.params_total,
        params_prunable=sum(t.dense_numel.values()),
        params_planned=t.params_planned,
        layer_sparsity=layer_sparsity(model, select, dense_numel=t.dense_numel),
        val_accuracy_trained=val_trained,
        val_accuracy_pruned=val_pruned,
        val_samples=len(data.val_x),
        val_chance=majority_share(data.val_y),
        flops_dense=t.macs.dense if t.macs else None,
        flops_effective=t.macs.effective(nonzero) if t.macs else None,
        macs_other=t.macs.other if t.macs else None,
        not_pruned=t.left_dense,
        start=t.started,
        val_source=data.val_source,
        seconds=t.seconds,
        config=t.cfg.to_dict(),
        device=str(t.device),
        cuda=cuda,
        model=model,
        masks={k: v.detach().to("cpu", torch.bool) for k, v in final_masks.items()},
        structure=structure,
        input_shape=tuple(data.input_shape),
        num_classes=data.num_classes,
        preprocessing=for_dataset(data.name, tuple(data.input_shape)).to_dict(),
        speed=final_speed,
    )


def _sgd(t: _Trial, phase: SGDConfig, epochs: int, **options: Any) -> None:
    """One SGD phase on the training split, from the masks in force; both phases share ``t.options``."""
    offset = 0 if phase.section == "train" else t.trained_epochs

    def after_epoch(epoch: int, loss: float) -> None:
        if t.on_epoch is not None:
            t.on_epoch(phase.section, epoch, epochs, loss)
        if t.progress is not None:
            t.progress(phase.section, offset + epoch)

    hooked = t.on_epoch is not None or t.progress is not None
    run = dataclasses.replace(
        t.options, epochs=epochs, masks=t.schedule.masks, on_epoch=after_epoch if hooked else None, **options
    )
    run_phase(t.model, t.data.train_x, t.data.train_y, phase, run)


def _val_accuracy(t: _Trial) -> float:
    return evaluate(t.model, t.data.val_x, t.data.val_y, batch_size=t.cfg.budget.eval_batch_size, amp=t.cfg.amp)


def _rewound_lr(t: _Trial) -> Callable[[int], float] | None:
    """With ``finetune.lr_rewind``, the lr of each finetuning step: phase 1's schedule, rewound."""
    fc, tc = t.cfg.finetune, t.cfg.train
    if not fc.lr_rewind:
        return None
    return functools.partial(
        rewound_lr_at,
        tc.lr_schedule,
        fc.lr if fc.optimizer == "adam" else tc.lr,  # Adam replays phase 1's schedule at its own lr
        steps_per_epoch=t.steps_per_epoch,
        train_epochs=t.trained_epochs,
        finetune_epochs=t.cfg.budget.finetune_epochs,
        step_epochs=tc.lr_step_epochs,
        gamma=tc.lr_gamma,
    )


class _Progress:
    """Intermediate reports (see the module doc): ``progress(stage, epoch)`` measures the model on the fixed
    validation subset and reports it with the trial's planned size and whether pruning is done."""

    def __init__(self, t: _Trial, report: Callable[[IntermediateResult], None]) -> None:
        n = len(t.data.val_x)
        subset = torch.randperm(n, generator=torch.Generator().manual_seed(_REPORT_SUBSET_SEED))[:REPORT_VAL_SAMPLES]
        subset = torch.sort(subset).values.to(t.data.val_x.device)
        self.x, self.y = t.data.val_x[subset], t.data.val_y[subset]
        self.trial, self.report = t, report
        self.epochs = t.trained_epochs + t.cfg.budget.finetune_epochs

    def __call__(self, stage: str, epoch: int) -> None:
        t = self.trial
        acc = evaluate(t.model, self.x, self.y, batch_size=t.cfg.budget.eval_batch_size, amp=t.cfg.amp)
        planned, at_size = t.params_planned, t.schedule.at_size
        self.report(IntermediateResult(stage, epoch, self.epochs, acc, params_planned=planned, at_size=at_size))


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


def structured_groups(model: nn.Module, layers: Mapping[str, torch.Tensor], data: Datasets) -> ChannelGraph:
    """The channel groups a structured trial prunes: those rooted at a layer whose weight is selected."""
    graph = channel_graph(model, data.input_shape, example=data.train_x[:1])
    modules = {path.rpartition(".")[0] for path in parameter_paths(model, dict(layers)).values()}
    return graph.restricted(modules, "not selected by prune.include/exclude")
