"""autoprune: search sparse training, pruning and finetuning jointly; get a Pareto front of loadable models.

The same commands as the ``autoprune`` command line, as functions::

    import autoprune

    result = autoprune.run_trial("digits_quick", overrides=["budget.train_epochs=2"])
    launch = autoprune.search("digits_quick", run_dir="runs/quick", trials=8)
    df = autoprune.results("runs/quick")          # one row per trial; the front: df[df.on_front]
    autoprune.pick("runs/quick", trial=3, out="model.pt")
    model = autoprune.load_model("model.pt")      # an nn.Module that takes raw inputs

Names load lazily, so ``import autoprune`` (and the command line) stays fast: torch, Ray and pandas load only
when something that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # the commands (api.py)
    "run_trial": "api",
    "search": "api",
    "resume": "api",
    "refresh_report": "api",
    "load_results": "api",
    "results": "api",
    "pick": "api",
    "evaluate": "api",
    "load_model": "api",
    "load_space": "api",
    # the pieces, for building on
    "TrialConfig": "config",
    "SearchSpace": "searching.space",
    "TrialResult": "pipeline.trial",
    "load_datasets": "io.data",
    "register_dataset": "io.data",
    "build_model": "io.models",
    "register_model": "io.models",
    "pareto_front": "searching.pareto",
    "save_model": "io.export",
    "AutoPruneError": "errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'autoprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
