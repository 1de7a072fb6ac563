"""The public Python API: the same names and meanings as the ``autoprune`` command.

Everything here is re-exported by ``import autoprune``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ModelError


def pick(
    run_dir: str | os.PathLike,
    *,
    out: str | os.PathLike,
    max_params: int | None = None,
    min_accuracy: float | None = None,
    knee: bool = False,
    trial: int | None = None,
    study_storage: str | None = None,
) -> dict[str, Any]:
    """Choose one model of a search and export it to ``out``; returns its record plus ``"out"``.

    Exactly one rule: ``max_params`` (the most accurate front model with at most that many nonzero
    parameters), ``min_accuracy`` (the smallest front model at least that accurate on validation data),
    ``knee`` (the front's best trade-off), or ``trial`` (any finished trial, by number).
    """
    from .errors import SearchError
    from .export import check_output_file, copy_model
    from .ledger import load_results
    from .pareto import check_one_rule
    from .pareto import pick as pick_record

    check_one_rule(max_params=max_params, min_accuracy=min_accuracy, knee=knee, trial=trial)
    out = check_output_file(out)
    results = load_results(run_dir, study_storage=study_storage)
    chosen = pick_record(results.trials, max_params=max_params, min_accuracy=min_accuracy, knee=knee, trial=trial)
    source = chosen.get("model_path")
    if not source or not Path(source).is_file():
        raise SearchError(
            f"the model file of trial {chosen['trial']} is missing ({source}); on a cluster --run-dir must be on a "
            "filesystem every node shares"
        )
    copy_model(source, out, metrics={k: v for k, v in chosen.items() if k not in ("config", "model_path")})
    return {**chosen, "out": str(out)}


def evaluate(path: str | os.PathLike, *, device: str = "cpu") -> dict[str, Any]:
    """Reload an exported model (safely, weights only) without its run directory and re-measure it on its
    dataset: ``test_accuracy``, ``val_accuracy``, ``params_nonzero``, ``params_total`` and what was recorded.
    """
    from .config import TrialConfig, upgrade_config
    from .data import load_datasets
    from .errors import ConfigError
    from .export import load_model
    from .pruning import count_params
    from .train import evaluate as accuracy

    loaded = load_model(path, device=device)
    try:
        cfg = TrialConfig.from_dict(upgrade_config(loaded.config))
    except ConfigError as exc:
        raise ModelError(f"{path}: the configuration stored in the file is invalid ({exc})") from None
    data = load_datasets(cfg.dataset, seed=cfg.seed, device=device)
    if tuple(data.input_shape) != tuple(loaded.input_shape):
        raise ModelError(
            f"{path}: the model expects inputs {list(loaded.input_shape)} but dataset {cfg.dataset.name!r} gives "
            f"{list(data.input_shape)}"
        )
    ebs = cfg.budget.eval_batch_size
    test = accuracy(loaded.model, data.test_x, data.test_y, batch_size=ebs, amp=cfg.amp)
    val = accuracy(loaded.model, data.val_x, data.val_y, batch_size=ebs, amp=cfg.amp)
    nonzero, stored = count_params(loaded.model)
    recorded = {k: loaded.metrics.get(k) for k in ("trial", "val_accuracy", "test_accuracy", "params_nonzero")}
    return {
        "file": str(path),
        "test_accuracy": test,
        "val_accuracy": val,
        "params_nonzero": nonzero,
        "params_total": int(loaded.metrics.get("params_total", stored)),
        "params_stored": stored,
        "recorded": recorded,
    }
