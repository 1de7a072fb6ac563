"""Before a search starts its trials: the space's own trial, run once on a few samples, and the checkpoint a
search starts from, measured as it is.

A model, a dataset or a setting that cannot run the pipeline would fail every trial of a search, each after
Ray's start-up and its data loading. ``preflight`` finds that first, in the driver, in one line: it runs the whole
pipeline (sparse training, pruning, finetuning, evaluation, export and reload) on a handful of samples, with the
space's defaults and the same working folder and import path the trial workers have.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from .config import TrialConfig
from .data import load_datasets
from .errors import DivergedError, SearchError, first_line
from .trial import run_trial

PREFLIGHT_SAMPLES = 256  # training, validation and test samples each, at most


def preflight(
    cfg: TrialConfig, *, start: Mapping[str, torch.Tensor] | None = None, allow_modules: Collection[str] = ()
) -> None:
    """Run ``cfg``'s pipeline for one epoch per phase on at most ``PREFLIGHT_SAMPLES`` samples, on the CPU, then
    export and reload the model; raise a one-line ``SearchError`` naming the cause when any step fails.

    A trial that diverges on so few samples says nothing about a search, so divergence passes.
    """
    n = PREFLIGHT_SAMPLES
    small = dataclasses.replace(
        cfg,
        budget=dataclasses.replace(
            cfg.budget,
            train_epochs=min(cfg.budget.train_epochs, 1),
            finetune_epochs=min(cfg.budget.finetune_epochs, 1),
        ),
    )
    try:
        data = load_datasets(cfg.dataset, seed=cfg.seed, device="cpu")
        data = dataclasses.replace(
            data,
            train_x=data.train_x[:n],
            train_y=data.train_y[:n],
            val_x=data.val_x[:n],
            val_y=data.val_y[:n],
            test_x=data.test_x[:n],
            test_y=data.test_y[:n],
        )
        result = run_trial(small, data=data, device="cpu", start=start)
        with tempfile.TemporaryDirectory(prefix="autoprune-preflight-") as folder:
            from .export import load_model

            path = result.save(Path(folder) / "model.pt")
            load_model(path, allow_modules=allow_modules)
    except DivergedError:
        return
    except Exception as exc:  # user code runs here: whatever it raises is the cause
        raise SearchError(
            f"the space's trial fails before the search starts ({first_line(exc)}); every trial would fail the "
            "same way: fix that, then search (autoprune trial SPACE runs one trial with its log)"
        ) from None


def evaluate_start(
    cfg: TrialConfig, start: Mapping[str, torch.Tensor], *, device: str | torch.device | None = None
) -> dict[str, Any]:
    """The trial record of the dense model ``start`` holds, measured as it is on ``cfg``'s splits (no training,
    no pruning): a search's dense reference. Weights that do not fit the model are a one-line ``ModelError``."""
    dense = dataclasses.replace(
        cfg,
        budget=dataclasses.replace(cfg.budget, train_epochs=0, finetune_epochs=0),
        train=dataclasses.replace(cfg.train, enabled=False),
        prune=dataclasses.replace(cfg.prune, enabled=False),
    )
    return run_trial(dense, device=device, start=start).record()
