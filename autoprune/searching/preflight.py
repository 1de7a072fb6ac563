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
from typing import TYPE_CHECKING, Any

import torch

from autoprune.config import TrialConfig
from autoprune.errors import DivergedError, SearchError, first_line
from autoprune.io.data import load_datasets
from autoprune.pipeline.trial import run_trial
from autoprune.searching.pareto import SIZE_KEYS

if TYPE_CHECKING:
    from autoprune.searching.space import SearchSpace

PREFLIGHT_SAMPLES = 256  # training, validation and test samples each, at most


def preflight_space(space: SearchSpace, start: Mapping[str, torch.Tensor] | None) -> None:
    """``preflight`` of ``space``'s default trial, with the modules the space names allowed, for its objective."""
    from autoprune.io._trust import named_modules

    preflight(
        space.default_config(), start=start, allow_modules=named_modules(space.document), objective=space.objective
    )


def preflight(
    cfg: TrialConfig,
    *,
    start: Mapping[str, torch.Tensor] | None = None,
    allow_modules: Collection[str] = (),
    objective: str = "params",
) -> None:
    """Run ``cfg``'s pipeline for one epoch per phase on at most ``PREFLIGHT_SAMPLES`` samples, on the CPU, then
    export and reload the model; raise a one-line ``SearchError`` naming the cause when any step fails, or when the
    trial could not measure what the search minimizes (``objective``: ``search.objective``).

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
        lines: list[str] = []
        result = run_trial(small, data=data, device="cpu", start=start, log=lines.append)
        with tempfile.TemporaryDirectory(prefix="autoprune-preflight-") as folder:
            from autoprune.io.export import load_model

            path = result.save(Path(folder) / "model.pt")
            load_model(path, allow_modules=allow_modules)
    except DivergedError:
        return
    except Exception as exc:  # user code runs here: whatever it raises is the cause
        raise SearchError(
            f"the space's trial (its default values) fails before the search starts ({first_line(exc)}): fix that, "
            "then search (autoprune trial SPACE runs that trial with its log)"
        ) from None
    key = SIZE_KEYS[objective]
    if result.record()[key] is None:
        why = next((line for line in lines if " not " in line and ("latency" in line or "MACs" in line)), "")
        raise SearchError(
            f"search.objective {objective}: the space's trial could not measure its {key}"
            f"{f' ({why})' if why else ''}, so no trial could be ranked; fix that, or search.objective: params"
        )


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
