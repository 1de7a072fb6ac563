"""``TrialResult``: what one pipeline run measured, the model it produced, its JSON record and its export."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.pipeline.speed import Speed

# Record keys a clock measures: two runs of one configuration differ in them only (the rest is reproducible).
CLOCK_KEYS = (
    "seconds",
    "latency_ms",
    "latency_dense_ms",
    "latency_by_batch_ms",
    "latency_dense_by_batch_ms",
    "speedup",
)


@dataclass
class TrialResult:
    """What one pipeline run measured, and the model it produced."""

    val_accuracy: float  # after finetuning: what the search optimizes
    test_accuracy: float  # reported, never used to choose
    params_nonzero: int  # nonzero parameters of the final model (weights, biases, BatchNorm)
    params_total: int  # parameters of the dense model
    params_prunable: int  # of them, the prunable weight tensors' (what the allocations share out: pruning.units)
    params_planned: int  # nonzero parameters the configuration fixes before training (equals params_nonzero)
    layer_sparsity: dict[str, float]  # prunable weight -> fraction of its dense entries that are zero or removed
    val_accuracy_trained: float  # after phase 1
    val_accuracy_pruned: float | None  # right after one-shot pruning, before finetuning; None for gradual
    val_samples: int  # the validation split's size: an accuracy on it has standard error sqrt(p(1-p)/n)
    val_chance: float | None  # the split's majority-class share: what always answering one class scores at best
    flops_dense: int | None  # multiply-accumulates per sample of the prunable weights, dense (measure.count_macs);
    # None when the count could not follow the model (the log says why)
    flops_effective: int | None  # the same, counting only nonzero weights
    macs_other: int | None  # MACs per sample outside the prunable weights (attention scores, weights left dense)
    not_pruned: dict[str, int]  # parameters left dense, by group (biases, normalization) or parameter path
    start: str  # what phase 1 started from: "checkpoint" (model.weights or given tensors) or "scratch"
    val_source: str  # "carved" from the training data, or the dataset "loader"'s own validation split
    seconds: dict[str, float]  # wall time per phase
    config: dict[str, Any]  # the full TrialConfig as a dict
    device: str
    cuda: dict[str, bool]  # the CUDA settings the trial ran with (tf32, bf16_autocast, cudnn_benchmark); {} on CPU
    model: nn.Module = field(repr=False)  # the final model (physically smaller when structured)
    masks: dict[str, torch.Tensor] = field(repr=False)  # parameter name -> 0/1 mask of the final model
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0
    preprocessing: dict[str, Any] = field(default_factory=dict)  # raw input -> model input (preprocess.py)
    structure: list | None = None  # structured: the channels removed, as data (pruning.channels.Structure)
    speed: Speed | None = None  # MACs and latency of the final and the dense model (speed.py); None: not measured

    def record(self) -> dict[str, Any]:
        """The JSON trial record (DESIGN.md field names)."""
        return {
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "params_nonzero": self.params_nonzero,
            "params_total": self.params_total,
            "params_prunable": self.params_prunable,
            "params_planned": self.params_planned,
            "layer_sparsity": dict(self.layer_sparsity),
            "val_accuracy_trained": self.val_accuracy_trained,
            "val_accuracy_pruned": self.val_accuracy_pruned,
            "val_samples": self.val_samples,
            "val_chance": self.val_chance,
            "flops_dense": self.flops_dense,
            "flops_effective": self.flops_effective,
            "macs_other": self.macs_other,
            **(self.speed or Speed()).record(),
            "not_pruned": dict(self.not_pruned),
            "start": self.start,
            "val_source": self.val_source,
            "seconds": dict(self.seconds),
            "device": self.device,
            "cuda": dict(self.cuda),
            "config": self.config,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Export the model as a self-describing file (see ``autoprune.io.export``)."""
        from autoprune.io.export import save_model

        return save_model(
            path,
            self.model,
            masks=self.masks,
            config=self.config,
            metrics=self.record(),
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            preprocessing=self.preprocessing or None,
            structure=self.structure,
        )


def majority_share(labels: torch.Tensor) -> float | None:
    """The share of ``labels`` (class indices) held by the most frequent class: the accuracy chance sets on them.

    A network whose updates diverged answers one class, or noise; either way it scores at most this, so a trial
    no better than it learned nothing (``notes.chance_collapses``). The majority share rather than 1/classes: on
    an unbalanced split one class alone already scores above 1/classes. None for an empty split."""
    if labels.numel() == 0:
        return None
    return int(torch.bincount(labels.flatten().long()).max()) / labels.numel()
