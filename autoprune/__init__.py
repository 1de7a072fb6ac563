"""autoprune: search sparse training, pruning and finetuning jointly; get a Pareto front of loadable models.

The public API is re-exported here lazily, so that ``import autoprune`` (and the command line) stays fast:
torch, Ray and pandas load only when something that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "TrialConfig": "config",
    "load_space": "space",
    "SearchSpace": "space",
    "run_trial": "trial",
    "TrialResult": "trial",
    "load_datasets": "data",
    "build_model": "models",
    "register_model": "models",
    "pareto_front": "pareto",
    "save_model": "export",
    "load_model": "export",
    "AutoPruneError": "errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
