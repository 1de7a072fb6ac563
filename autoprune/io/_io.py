"""Atomic file writing: a reader never sees a half-written file, a failure leaves the old one intact."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path``; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x")) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def plain(
    value: Any, *, where: str = "value", tensors: bool = False, json_safe: bool = False, strict: bool = True
) -> Any:
    """A copy made of plain data only: dicts (string or integer keys), lists, strings, numbers, booleans, None.

    Paths become strings and numpy/torch scalars numbers. ``tensors``: tensors stay tensors (moved to the CPU,
    for ``torch.save``), else arrays and tensors become lists. ``json_safe``: non-finite floats become None.
    Anything else raises ``TypeError`` naming where it was found (``where``, then keys and indices), or with
    ``strict=False`` is kept as it is.
    """
    again = functools.partial(plain, tensors=tensors, json_safe=json_safe, strict=strict)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if json_safe and not math.isfinite(value) else value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"{where}: key {k!r} is not a string or integer")
            out[k] = again(v, where=f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [again(v, where=f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if tensors and type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        return value.detach().cpu()
    if hasattr(value, "tolist") and hasattr(value, "ndim"):  # numpy and torch scalars and arrays
        return again(value.tolist(), where=where)
    if not strict:
        return value
    raise TypeError(f"{where}: a {type(value).__name__} value is not plain data (numbers, strings, lists, dicts)")
