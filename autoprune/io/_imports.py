"""Resolve ``module:function`` references given by users, and call their factories.

A user's ``my_models.py`` usually sits in the folder autoprune is run from. ``python script.py`` and
``python -m`` put that folder on ``sys.path``, a console script does not, so the import here adds it (as uvicorn
and celery do); ``raytune._localray.worker_runtime_env`` gives trial workers the same import path.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from autoprune.errors import AutoPruneError, DataError, ModelError, first_line

_ERRORS: dict[str, type[AutoPruneError]] = {"model": ModelError, "dataset": DataError}


_ADDED: list[str] = []  # the folder this module put on sys.path, if any


def _working_folder_on_path() -> str:
    """Put the current working directory first on ``sys.path`` unless it is there already; return it.

    Only one such entry is kept: a process that changes folders (a Ray worker moves into each trial's folder)
    replaces it rather than piling up entries.
    """
    cwd = os.getcwd()
    if "" in sys.path or any(os.path.abspath(p) == cwd for p in sys.path if p):
        return cwd
    while _ADDED:
        old = _ADDED.pop()
        if old in sys.path:
            sys.path.remove(old)
    sys.path.insert(0, cwd)
    _ADDED.append(cwd)
    return cwd


def import_callable(spec: str, *, what: str) -> Callable[..., Any]:
    """Import ``module:function`` or fail with one line that names the spec and the cause.

    ``what`` is "model" or "dataset" and picks the error class. The working folder is on the import path.
    """
    error = _ERRORS[what]
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise error(f"{what} {spec!r} is not of the form module:function")
    cwd = _working_folder_on_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):  # the module itself is missing
            file = module_name.replace(".", "/") + ".py"
            raise error(
                f"{what} {spec!r}: cannot import module {module_name!r}: there is no {file} (or package) in the "
                f"working folder {cwd} nor on PYTHONPATH; run autoprune from the folder that holds it, or add "
                "that folder to PYTHONPATH"
            ) from None
        raise error(f"{what} {spec!r}: cannot import module {module_name!r}: {first_line(exc)}") from None
    except Exception as exc:  # any import-time failure of user code is reported, not raised through
        raise error(f"{what} {spec!r}: cannot import module {module_name!r}: {first_line(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{what} {spec!r} is not callable")
    return obj


def factory_arguments(input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """The keyword arguments a model factory may ask for, by name.

    ``input_shape`` (one sample, e.g. ``(1, 28, 28)`` or ``(30,)``) and ``num_classes`` always;
    ``in_channels`` for images ``(C, H, W)``; ``num_features`` and ``in_features`` for flat data ``(F,)``.
    """
    shape = tuple(int(s) for s in input_shape)
    args: dict[str, Any] = {"input_shape": shape, "num_classes": int(num_classes)}
    if len(shape) == 3:
        args["in_channels"] = shape[0]
    if len(shape) == 1:
        args["num_features"] = args["in_features"] = shape[0]
    return args


def call_factory(factory: Callable[..., Any], name: str, available: Mapping[str, Any], *, what: str) -> Any:
    """Call ``factory`` with the keyword arguments it names among ``available``; one-line errors otherwise.

    Parameters with defaults that autoprune does not know keep their defaults, ``**kwargs`` receives nothing
    (a factory that forwards it to a constructor would otherwise get surprises), and a required parameter
    autoprune cannot fill is reported before the call. An exception from the factory becomes one line that
    names the factory and the exception.
    """
    error = _ERRORS[what]
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # some builtins and C callables have no signature: call them bare
        params = ()  # type: ignore[assignment]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in available:
            if p.kind == p.POSITIONAL_ONLY:
                args.append(available[p.name])
            else:
                kwargs[p.name] = available[p.name]
        elif p.default is p.empty:
            raise error(
                f"{what} factory {name} needs argument {p.name!r}, which autoprune cannot give; it passes "
                f"{', '.join(available)} by name: rename the parameter or give it a default"
            )
        elif p.kind == p.POSITIONAL_ONLY:
            args.append(p.default)  # keeps the positions of any later positional-only argument
    try:
        return factory(*args, **kwargs)
    except AutoPruneError:
        raise
    except Exception as exc:  # user code: one line that names it, not a traceback from inside autoprune
        raise error(f"{what} factory {name} raised {first_line(exc)}") from None
