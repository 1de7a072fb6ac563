"""Resolve ``module:function`` references given by users."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .errors import AutoPruneError, DataError, ModelError


def import_callable(spec: str, *, what: str) -> Callable[..., Any]:
    """Import ``module:function`` or fail with one line that names the spec and the cause.

    ``what`` is "model" or "dataset" and picks the error class.
    """
    error: type[AutoPruneError] = ModelError if what == "model" else DataError
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise error(f"{what} {spec!r} is not of the form module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is reported, not raised through
        raise error(
            f"{what} {spec!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}); "
            "check the name and that it is on PYTHONPATH"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{what} {spec!r} is not callable")
    return obj
