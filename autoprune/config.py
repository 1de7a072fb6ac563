"""One trial's full configuration: frozen dataclasses, validated on construction.

A ``TrialConfig`` holds fixed values only; the search space (``space.py``) decides which of them are
searched. Nothing here imports torch or ray, so configs are cheap to build, compare and pickle.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from autoprune._bounds import INT64_MAX, MAX_BATCH, MAX_EPOCHS, MAX_REPEATS
from autoprune.errors import ConfigError

LR_SCHEDULES = ("constant", "step", "cosine", "cosine_restarts")
FINETUNE_OPTIMIZERS = ("sgd", "adam")
PENALTIES = ("l1", "group_lasso", "none")
LAMBDA_SCHEDULES = ("constant", "linear", "step", "cosine")
CRITERIA = ("magnitude", "gradient", "taylor")  # importance criteria: each names its function in pruning/criteria.py
ALLOCATIONS = ("per_layer", "global", "uniform", "lamp", "erk")
STRUCTURED_ALLOCATIONS = ("per_layer", "uniform")  # a ranking across layers removes weights, not whole units
PRUNE_SCHEDULES = ("one_shot", "gradual", "gradual_train")
# torch CPU threads of one trial (`autoprune trial`; a search trial gets --cpus-per-trial). One thread: on a
# shared machine a busy neighbour slows it in proportion, where two threads collapse (benchmarks/threads.py).
DEFAULT_THREADS = 1


def _check_choice(where: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(choices)}, got {value!r}")


def _check_number(
    where: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> None:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{where} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where} must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{where} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ConfigError(f"{where} must be {'<' if high_open else '<='} {high}, got {value!r}")


# A search from trained weights whose validation split comes out of the training data: said in the log and report.
CARVED_VALIDATION_NOTE = (
    "note: the validation split is carved from the training data (dataset.val_fraction), which the checkpoint may "
    "have trained on: validation accuracy can read high and choose worse models; have the dataset loader return "
    "val_x/val_y held out from the checkpoint's training"
)


@dataclass(frozen=True)
class DatasetConfig:
    name: str = "digits"  # fashion-mnist | digits | synthetic | module:function returning tensors
    val_fraction: float = 0.1  # stratified share of the training set held out for selection
    data_dir: str | None = None  # Fashion-MNIST IDX folder; None = $AUTOPRUNE_DATA_DIR or the Debian path
    limit: int | None = None  # use only the first N training samples (quick runs); None = all

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"dataset.name must be a non-empty string, got {self.name!r}")
        _check_number("dataset.val_fraction", self.val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        if self.limit is not None:
            _check_number("dataset.limit", self.limit, low=1, integer=True)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "lenet-300-100"  # registry name (see `models.MODELS`) or module:function
    weights: str | None = None  # a state_dict file (trained weights) the built model starts from; None = fresh init

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"model.name must be a non-empty string, got {self.name!r}")
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights):
            raise ConfigError(
                f"model.weights must be the path of a state_dict file, got {self.weights!r}; e.g. model.weights: "
                "net.pt (saved with torch.save(model.state_dict(), 'net.pt'))"
            )


@dataclass(frozen=True)
class BudgetConfig:
    train_epochs: int = 10  # phase 1, sparse training
    finetune_epochs: int = 5  # phase 3, masked finetuning
    batch_size: int = 128
    eval_batch_size: int = 4096

    def __post_init__(self) -> None:
        # Bounded (``_bounds``): 1e23 epochs would run until killed; a batch of billions is a typo.
        _check_number("budget.train_epochs", self.train_epochs, low=0, high=MAX_EPOCHS, integer=True)
        _check_number("budget.finetune_epochs", self.finetune_epochs, low=0, high=MAX_EPOCHS, integer=True)
        _check_number("budget.batch_size", self.batch_size, low=1, high=MAX_BATCH, integer=True)
        _check_number("budget.eval_batch_size", self.eval_batch_size, low=1, high=MAX_BATCH, integer=True)


@dataclass(frozen=True)
class SGDConfig:
    """One SGD phase: optimizer and learning-rate schedule. Sparse training and finetuning both are one."""

    section: ClassVar[str] = "sgd"  # the space-file section it is read from: names it in messages

    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"  # constant | step | cosine | cosine_restarts
    lr_step_epochs: int = 3  # step: decay every this many epochs; cosine_restarts: first cycle length
    lr_gamma: float = 0.1  # step: multiply the lr by this at each step
    lr_warmup: float = 0.0  # fraction of the phase over which the lr ramps up linearly to its schedule's value
    grad_clip: float | None = None  # clip the global gradient norm to this (after masking); None = off

    def __post_init__(self) -> None:
        at = self.section
        _check_number(f"{at}.lr", self.lr, low=0.0, low_open=True)
        _check_number(f"{at}.momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        _check_number(f"{at}.weight_decay", self.weight_decay, low=0.0)
        _check_choice(f"{at}.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_number(f"{at}.lr_step_epochs", self.lr_step_epochs, low=1, high=MAX_EPOCHS, integer=True)
        _check_number(f"{at}.lr_gamma", self.lr_gamma, low=0.0, high=1.0, low_open=True)
        _check_number(f"{at}.lr_warmup", self.lr_warmup, low=0.0, high=1.0, high_open=True)
        if self.grad_clip is not None:
            _check_number(f"{at}.grad_clip", self.grad_clip, low=0.0, low_open=True)
        if self.nesterov and self.momentum == 0:
            raise ConfigError(f"{at}.nesterov needs {at}.momentum > 0, got momentum 0")


@dataclass(frozen=True)
class TrainConfig(SGDConfig):
    """Phase 1: SGD sparse training. ``penalty: none`` with both clips off is plain SGD."""

    section: ClassVar[str] = "train"

    enabled: bool = True  # False skips phase 1 (the model keeps its initial weights)
    lr_multipliers: dict[str, float] = field(default_factory=dict)  # layer name -> lr factor
    penalty: str = "l1"  # l1 (sum |w|) | group_lasso (per output unit) | none
    lambda_max: float = 1.0e-4  # the penalty weight reached by the lambda schedule
    lambda_schedule: str = "constant"  # constant | linear | step | cosine (ramps reach lambda_max at the end)
    lambda_warmup: float = 0.0  # fraction of phase 1 with lambda = 0 before the schedule starts
    lambda_steps: int = 3  # step schedule: number of equal stages, lambda_max * k / steps in stage k
    weight_clip: float | None = None  # clamp weights to [-c, c] after each step; None = off

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, mult in self.lr_multipliers.items():
            _check_number(f"train.lr_multipliers.{name}", mult, low=0.0)
        _check_choice("train.penalty", self.penalty, PENALTIES)
        _check_number("train.lambda_max", self.lambda_max, low=0.0)
        _check_choice("train.lambda_schedule", self.lambda_schedule, LAMBDA_SCHEDULES)
        _check_number("train.lambda_warmup", self.lambda_warmup, low=0.0, high=1.0, high_open=True)
        _check_number("train.lambda_steps", self.lambda_steps, low=1, integer=True)
        if self.weight_clip is not None:
            _check_number("train.weight_clip", self.weight_clip, low=0.0, low_open=True)


def check_globs(where: str, globs: Any) -> tuple[str, ...]:
    """A list of glob patterns as a tuple; one given as a string is that glob, not its characters."""
    if isinstance(globs, str):
        globs = (globs,)
    if not isinstance(globs, (list, tuple)) or not all(isinstance(g, str) and g for g in globs):
        raise ConfigError(f"{where} must be a list of glob patterns such as ['encoder.*'], got {globs!r}")
    return tuple(globs)


@dataclass(frozen=True)
class PruneConfig:
    """Phase 2: which weights to remove, how many, and when.

    How many: ``per_layer`` takes a rate per layer from ``sparsity``; every other allocation keeps ``density`` of
    the prunable weights (or what leaves ``nonzero_params`` parameters in all) and shares them among layers by its
    rule, so the count is exact and known before training (``pruning.planned_params``).
    """

    enabled: bool = True  # False keeps the dense model (a baseline)
    criterion: str = "magnitude"  # magnitude |w| | gradient |dL/dw| | taylor |w * dL/dw|
    allocation: str = "per_layer"  # per_layer (sparsity) | global | uniform | lamp | erk (density)
    schedule: str = "one_shot"  # one_shot | gradual (AGP in finetuning) | gradual_train (AGP in phase 1)
    sparsity: dict[str, float] = field(default_factory=dict)  # per_layer: layer -> fraction of zeros
    density: float = 0.1  # other allocations: fraction of the prunable weights kept (see pruning.units)
    nonzero_params: int | None = None  # other allocations: nonzero parameters of the pruned model, instead of density
    shares: dict[str, float] = field(default_factory=dict)  # layer -> multiplier on its allocated density
    structured: bool = False  # remove whole output units (neurons/channels): a physically smaller model
    include: tuple[str, ...] = ()  # globs over weight names: prune only these (empty: every supported weight)
    exclude: tuple[str, ...] = ()  # globs over weight names: leave these dense
    embeddings: bool = False  # also prune nn.Embedding tables (a choice: a lookup table is not a layer's compute)
    floor: float = 0.1  # global/lamp: every tensor keeps at least floor x density of its weights (0: may empty one)
    grad_batches: int = 8  # batches to accumulate gradients over for gradient/taylor importance
    gradual_start: float = 0.0  # gradual schedules: fraction of their phase at which the first pruning step happens
    gradual_end: float = 0.75  # gradual schedules: fraction of their phase by which the target is reached
    gradual_steps: int = 10  # gradual schedules: number of pruning steps

    def __post_init__(self) -> None:
        _check_choice("prune.criterion", self.criterion, CRITERIA)
        _check_choice("prune.allocation", self.allocation, ALLOCATIONS)
        _check_choice("prune.schedule", self.schedule, PRUNE_SCHEDULES)
        for name, rate in self.sparsity.items():
            _check_number(f"prune.sparsity.{name}", rate, low=0.0, high=1.0, high_open=True)
        _check_number("prune.density", self.density, low=0.0, high=1.0, low_open=True)
        if self.nonzero_params is not None:
            _check_number("prune.nonzero_params", self.nonzero_params, low=1, integer=True)
        for name, share in self.shares.items():
            _check_number(f"prune.shares.{name}", share, low=0.0, low_open=True)
        for key in ("include", "exclude"):
            object.__setattr__(self, key, check_globs(f"prune.{key}", getattr(self, key)))
        if not isinstance(self.embeddings, bool):
            raise ConfigError(f"prune.embeddings must be true or false, got {self.embeddings!r}")
        _check_number("prune.floor", self.floor, low=0.0, high=1.0)
        _check_number("prune.grad_batches", self.grad_batches, low=1, integer=True)
        _check_number("prune.gradual_end", self.gradual_end, low=0.0, high=1.0, low_open=True)
        _check_number("prune.gradual_start", self.gradual_start, low=0.0, high=self.gradual_end)
        _check_number("prune.gradual_steps", self.gradual_steps, low=1, integer=True)
        if self.structured and self.allocation not in STRUCTURED_ALLOCATIONS:
            raise ConfigError(
                f"prune.allocation {self.allocation!r} is unstructured only; with prune.structured use "
                f"{' or '.join(STRUCTURED_ALLOCATIONS)}"
            )
        if self.sparsity and self.allocation != "per_layer":
            raise ConfigError(
                f"prune.sparsity sets per-layer rates, which only allocation per_layer uses; got allocation "
                f"{self.allocation!r}: set prune.allocation per_layer or give prune.density instead"
            )
        if self.shares and (self.allocation == "per_layer" or self.structured):
            raise ConfigError(
                "prune.shares reshape an unstructured density allocation (global, uniform, lamp, erk); "
                f"got allocation {self.allocation!r}{' with structured' if self.structured else ''}; remove them"
            )


@dataclass(frozen=True)
class FinetuneConfig(SGDConfig):
    """Phase 3: masked finetuning (pruned weights stay exactly zero), with SGD or Adam.

    Adam (decoupled weight decay, as ``torch.optim.AdamW``) takes ``momentum`` as its β1 and ignores
    ``nesterov``; it sizes each kept weight's step by that weight's own gradient history.
    """

    section: ClassVar[str] = "finetune"

    lr: float = 0.01
    optimizer: str = "sgd"  # sgd | adam
    distill_weight: float = 0.0  # a in (1-a)·CE + a·T²·KL(teacher ‖ student); the teacher is the model before pruning
    distill_temperature: float = 4.0  # T, softens both distributions
    lr_rewind: bool = False  # replay the end of phase 1's lr schedule instead of lr_schedule (adam: at base lr `lr`)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("finetune.optimizer", self.optimizer, FINETUNE_OPTIMIZERS)
        _check_number("finetune.distill_weight", self.distill_weight, low=0.0, high=1.0)
        _check_number("finetune.distill_temperature", self.distill_temperature, low=0.0, low_open=True)


@dataclass(frozen=True)
class MeasureConfig:
    """What a trial measures besides accuracy and size: how fast its dense and final models run (``speed.py``)."""

    latency: bool = True  # time forward passes of the dense model (before training) and of the final model
    latency_batch: int = 64  # the batch size of latency_ms, speedup and search.objective latency (1 is timed too)
    latency_repeats: int = 20  # timed blocks per batch size, of which the median is kept

    def __post_init__(self) -> None:
        if not isinstance(self.latency, bool):
            raise ConfigError(f"measure.latency must be true or false, got {self.latency!r}")
        _check_number("measure.latency_batch", self.latency_batch, low=1, high=MAX_BATCH, integer=True)
        _check_number("measure.latency_repeats", self.latency_repeats, low=1, high=MAX_REPEATS, integer=True)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one pipeline run needs. ``TrialConfig.from_dict(cfg.to_dict()) == cfg``."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    seed: int = 0  # seeds the split, the initial weights and the batch order
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    amp: bool = False  # bf16 autocast on CUDA (ignored on CPU)
    tf32: bool = True  # TF32 tensor cores for float32 matmuls and convolutions on CUDA (ignored on CPU)

    def __post_init__(self) -> None:
        _check_number("seed", self.seed, low=0, high=INT64_MAX, integer=True)
        for key in ("amp", "tf32"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        ):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> TrialConfig:
        """Build from a nested dict; unknown keys are rejected with their dotted path."""
        return _from_dict(cls, data, where)


# Keys renamed since files were first written: (section, old name) -> new name.
_RENAMED = {("finetune", "schedule"): "lr_schedule"}


def upgrade_config(data: dict[str, Any]) -> dict[str, Any]:
    """A configuration dict written by an earlier version (a saved model's), with renamed keys brought up to date."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for (section, old), new in _RENAMED.items():
        node = out.get(section)
        if isinstance(node, dict) and old in node and new not in node:
            node[new] = node.pop(old)
    return out


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        prefix = "" if where == "config" else f"{where}."
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; known keys here: {', '.join(known)}")
    kwargs = {}
    for name, value in data.items():
        sub = _SECTIONS.get(name) if cls is TrialConfig else None
        child = name if where == "config" else f"{where}.{name}"
        kwargs[name] = _from_dict(sub, value, child) if sub is not None else value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a wrong type for a field that is itself a mapping
        raise ConfigError(f"{where}: {exc}") from None


_SECTIONS: dict[str, type] = {
    "dataset": DatasetConfig,
    "model": ModelConfig,
    "budget": BudgetConfig,
    "train": TrainConfig,
    "prune": PruneConfig,
    "finetune": FinetuneConfig,
    "measure": MeasureConfig,
}
