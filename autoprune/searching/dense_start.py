"""A search's dense start: the space's model trained once, densely, before the trials; every trial starts from it.

``search: {dense_start: true}`` (or a number of epochs) in a space without ``model.weights``: the driver trains the
model with the space's default phase 1 and no penalty (plain SGD, its lr schedule, its clips), on the trials' own
training split, measures it on their validation and test splits (the search's dense reference: the report's
``dense start`` row and its ``vs dense`` column), and ships its tensors to the workers as it ships a checkpoint's.
Trials then do their sparse training, pruning and finetuning from it, so a space with a dense start usually gives
phase 1 fewer epochs. The tensors are kept in the run directory (``dense_start.pt``, read back as data): resume
and extend start from the same model, trained once.

The trials' validation split was never trained on: the dense model saw the same training split they do. That
holds only while every trial splits the data alike, so a space that searches a dataset or model setting with
a dense start is refused.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from autoprune._bounds import MAX_EPOCHS
from autoprune.errors import ConfigError
from autoprune.io._io import atomic_open
from autoprune.searching._reference import reference_of

if TYPE_CHECKING:
    from autoprune.searching.space import SearchSpace

DENSE_START_FILE = "dense_start.pt"  # in the run directory: the dense model's state_dict
START_KIND = "dense start"  # a trial record's ``start`` when it began from the search's dense start


def dense_epochs(space: SearchSpace) -> int | None:
    """The epochs of ``space``'s dense start (``search.dense_start``), None without one; refuses what cannot run.

    ``true`` trains as many epochs as the space's default trial trains (``budget.train_epochs``).
    """
    raw = (space.document.get("search") or {}).get("dense_start", False)
    if raw is False or raw is None:
        return None
    where = "search.dense_start"
    cfg = space.default_config()
    if raw is True:
        epochs = cfg.budget.train_epochs
    elif isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= MAX_EPOCHS:
        epochs = raw
    else:
        raise ConfigError(f"{where} must be true, false or a number of epochs (1 to {MAX_EPOCHS:,}), got {raw!r}")
    if epochs < 1:
        raise ConfigError(f"{where} is true but budget.train_epochs is {epochs}; give the epochs: dense_start: 10")
    if cfg.model.weights is not None:
        raise ConfigError(
            f"{where}: the space starts from model.weights already; drop one (dense_start trains the model itself)"
        )
    varied = [d.path for d in space.dims if d.path.startswith(("dataset.", "model."))]
    if varied:
        raise ConfigError(
            f"{where} trains on one data split, but the space searches {varied[0]}, which changes the split or "
            "the model per trial; fix it, or drop dense_start"
        )
    return epochs


def train_dense(space: SearchSpace, epochs: int) -> tuple[dict[str, torch.Tensor], dict[str, Any], float]:
    """Train ``space``'s model densely for ``epochs``: its state_dict (on the CPU), its dense reference
    (``_reference.reference_of`` its record) and the seconds it took."""
    from autoprune.pipeline.trial import run_trial

    cfg = space.default_config()
    dense = dataclasses.replace(
        cfg,
        budget=dataclasses.replace(cfg.budget, train_epochs=epochs, finetune_epochs=0),
        train=dataclasses.replace(cfg.train, enabled=True, penalty="none"),
        prune=dataclasses.replace(cfg.prune, enabled=False),
    )
    t0 = time.perf_counter()
    result = run_trial(dense)
    state = {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()}
    return state, {**reference_of(result.record()), "reference": START_KIND, "epochs": epochs}, time.perf_counter() - t0


def save(run_dir: Path, state: dict[str, torch.Tensor]) -> Path:
    """Write the dense start's tensors into ``run_dir`` (atomically)."""
    path = Path(run_dir) / DENSE_START_FILE
    with atomic_open(path) as fh:
        torch.save(state, fh)
    return path


def load_or_train(
    space: SearchSpace, run_dir: Path, log: Callable[[str], None]
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None] | None:
    """For a resumed search: the dense start kept in ``run_dir`` (None when the space has none). A missing file
    (a search stopped while writing it) is trained again, said in the log, and its reference returned."""
    from autoprune.io.models import read_weights

    epochs = dense_epochs(space)
    if epochs is None:
        return None
    path = Path(run_dir) / DENSE_START_FILE
    if path.exists():
        return read_weights(path), None
    log(f"resume: {path} is missing; training the dense start again ({epochs} epochs)")
    state, reference, seconds = train_dense(space, epochs)
    save(run_dir, state)
    describe(reference, seconds, log)
    return state, reference


def describe(reference: dict[str, Any], seconds: float, log: Callable[[str], None]) -> None:
    """The log line of a dense start just trained."""
    log(
        f"search: dense start trained {reference['epochs']} epochs in {seconds:.0f} s: val accuracy "
        f"{reference['val_accuracy']:.4f}, test accuracy {reference['test_accuracy']:.4f}; every trial starts from it"
    )
