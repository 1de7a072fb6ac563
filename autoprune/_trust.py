"""Names of code found in files (``module:function``): imported only from modules the user allowed.

A model file or a run directory may come from someone else. The factory or dataset loader it names is code,
so ``evaluate`` imports it only when the user named that module on the command line (``--allow-module``),
and ``pick`` only when the run's own frozen space names it (the user chose it when starting the search).
Registry names (``lenet-300-100``, ``digits``) are not code and always allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import AutoPruneError, ModelError

__all__ = ["check_allowed", "named_modules"]


def _module(name: str) -> str | None:
    module, sep, _ = name.partition(":")
    return module.strip() if sep else None


def check_allowed(
    name: Any, allowed: Iterable[str], *, what: str, source: str, error: type[AutoPruneError] = ModelError
) -> None:
    """Refuse, in one line, a ``module:function`` ``name`` read from ``source`` unless its module (or a package
    containing it) is in ``allowed``. ``what`` says where the name was found (``architecture.factory``).
    """
    if not isinstance(name, str):
        return  # not a code reference: whatever reads it validates it as data
    module = _module(name)
    if module is None:
        return
    if any(module == a or module.startswith(f"{a}.") for a in allowed if a):
        return
    raise error(
        f"{source} names code to run ({what} {name!r}); a model file is data, and autoprune imports a module named "
        f"in a file only when you allow it: add --allow-module {module} (in Python, allow_modules=[{module!r}]) "
        "if you trust that code"
    )


def named_modules(document: Any) -> set[str]:
    """The modules a search-space document names for its model and dataset (fixed or among choices)."""
    found: set[str] = set()
    if not isinstance(document, dict):
        return found
    for section in ("model", "dataset"):
        value = (document.get(section) or {}).get("name") if isinstance(document.get(section), dict) else None
        values = value.get("choices", []) if isinstance(value, dict) else [value]
        for v in values if isinstance(values, list) else []:
            module = _module(v) if isinstance(v, str) else None
            if module:
                found.add(module)
    return found
