"""A trial's configuration checked against its model before any training: one-line ``ConfigError``s."""

from __future__ import annotations

from torch import Tensor

from autoprune.config import TrialConfig
from autoprune.errors import ConfigError


def check_phase_one(cfg: TrialConfig, train_epochs: int) -> None:
    """Levers that reuse phase 1 need one."""
    if train_epochs > 0:
        return
    for needs, key in (
        (cfg.prune.enabled and cfg.prune.schedule == "gradual_train", "prune.schedule gradual_train"),
        (cfg.finetune.lr_rewind, "finetune.lr_rewind"),
    ):
        if needs:
            raise ConfigError(
                f"{key} works within phase 1's schedule, but phase 1 is off (train.enabled false or "
                "budget.train_epochs 0); enable phase 1 or choose another option"
            )


def check_layers(cfg: TrialConfig, layers: dict[str, Tensor]) -> None:
    """Refuse settings that name weights the model does not have, that would empty one, or that prune nothing.

    ``layers``: the prunable weight tensors by unit name (``pruning.units``).
    """
    names = list(layers)
    pc = cfg.prune
    if pc.enabled and not layers:
        left = " left by prune.include/exclude" if pc.include or pc.exclude else ""
        raise ConfigError(
            f"model {cfg.model.name} has no prunable weight{left} (Linear, ConvNd, ConvTranspose, attention, "
            "recurrent, or embeddings with prune.embeddings: true); set prune.enabled: false to measure it dense"
        )
    if pc.enabled and pc.allocation == "per_layer" and not pc.sparsity:
        raise ConfigError(
            "prune.enabled is true but nothing would be pruned: allocation per_layer takes its rates from "
            "prune.sparsity, which is empty; give prune.density with prune.allocation: global (or lamp, uniform, "
            "erk), or rates in prune.sparsity, or set prune.enabled: false"
        )
    structured = cfg.prune.enabled and cfg.prune.structured  # its rates name channel groups: checked by the graph
    for where, mapping in (
        ("prune.sparsity", {} if structured else cfg.prune.sparsity),
        ("prune.shares", cfg.prune.shares),
        ("train.lr_multipliers", cfg.train.lr_multipliers),
    ):
        for layer in mapping:
            if layer not in layers:
                raise ConfigError(f"{where}.{layer}: unknown layer {layer!r}; prunable layers: {', '.join(names)}")
    if cfg.prune.enabled and not cfg.prune.structured:
        _check_not_emptied(cfg, {name: w.numel() for name, w in layers.items()})


def _check_not_emptied(cfg: TrialConfig, numel: dict[str, int]) -> None:
    """Refuse a rate that rounds a layer (or, globally, every layer) to no weight at all: such a network
    predicts one class, and a search would waste trials on it. Structured pruning always keeps a unit.
    """
    pc = cfg.prune
    if pc.allocation == "per_layer":
        for name, rate in pc.sparsity.items():
            n = numel.get(name, 0)
            if n and round(rate * n) >= n:
                raise ConfigError(
                    f"prune.sparsity.{name}={rate!r} prunes all {n} weights of {name} (the rate rounds to 100% "
                    f"zeros); use a rate below {1 - 0.5 / n:.6g}"
                )
        return
    if pc.nonzero_params is not None:  # a target count is checked against the model by the allocation itself
        return
    # Other allocations keep round(density * weights) in all (uniform: in every layer); none may round to zero.
    groups = numel if pc.allocation == "uniform" else {"all layers": sum(numel.values())}
    for name, n in groups.items():
        if n and round(pc.density * n) == 0:
            raise ConfigError(
                f"prune.density={pc.density!r} keeps none of the {n} weights of {name} (the density rounds to "
                f"0 weights); use a density of at least {0.5 / n:.3g}"
            )
