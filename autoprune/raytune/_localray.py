"""What a Ray runtime started by autoprune may see and where it listens. No Ray import here.

A local search starts its own Ray: the GCS, the raylet, the agents and every worker open TCP ports, and Ray
2.60 binds them to the node's network address, reachable from the whole network. Anyone who reaches those ports
can run code as the user. Ray listens on 127.0.0.1 only when the node's address is the loopback one, and it
takes the loopback address as the node's address only where clusters are off
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read into ``ray._private.ray_constants.ENABLE_RAY_CLUSTER``):
``ray.init(_node_ip_address="127.0.0.1")`` alone is turned back into the network address. A cluster is the
user's explicit choice (``--address``), and is left as it is.

Ray's processes inherit the driver's environment, so a storage URL given through ``AUTOPRUNE_STUDY_STORAGE``
(with its password) is taken out of the environment while Ray starts: trial workers never need the database.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["LOOPBACK", "ray_start_environment", "worker_runtime_env"]

LOOPBACK = "127.0.0.1"
_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_CONSTANTS = "ray._private.ray_constants"
_SECRET_ENV = ("AUTOPRUNE_STUDY_STORAGE",)


@contextlib.contextmanager
def ray_start_environment(*, local: bool) -> Iterator[dict[str, Any]]:
    """Around ``ray.init``: yields extra ``ray.init`` keyword arguments, restores the process state after.

    ``local=True`` (a Ray this process starts) binds every Ray process to 127.0.0.1. The environment is
    restored on exit: the processes started inside keep what they inherited, and a later ``ray.init`` in
    this process (a cluster, in tests) sees the environment as it was.
    """
    saved = {name: os.environ.get(name) for name in (_CLUSTER_ENV, *_SECRET_ENV)}
    constants = sys.modules.get(_CONSTANTS)
    saved_flag = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    kwargs: dict[str, Any] = {}
    try:
        for name in _SECRET_ENV:
            os.environ.pop(name, None)
        if local:
            os.environ[_CLUSTER_ENV] = "0"  # read by ray_constants at import, here and in Ray's child processes
            constants = sys.modules.get(_CONSTANTS)
            if constants is not None:  # Ray imported already: its constant was read with the old environment
                constants.ENABLE_RAY_CLUSTER = False
            kwargs["_node_ip_address"] = LOOPBACK
        yield kwargs
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        constants = sys.modules.get(_CONSTANTS)
        if constants is not None and saved_flag is not None:
            constants.ENABLE_RAY_CLUSTER = saved_flag
        elif constants is not None and local:
            constants.ENABLE_RAY_CLUSTER = _env_flag(saved.get(_CLUSTER_ENV))


def _env_flag(value: str | None) -> bool:
    """What Ray reads from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` on Linux (unset: clusters on)."""
    if value is None:
        return not sys.platform.startswith(("darwin", "win"))
    return value.lower() in ("1", "true")


def worker_runtime_env(address: str | None) -> dict[str, Any] | None:
    """What ``ray.init(runtime_env=...)`` needs so that trial workers import user modules as the driver does.

    A local run (no ``address``) puts the working folder first on the workers' ``PYTHONPATH``, before whatever
    ``PYTHONPATH`` the driver has. Ray 2.60 also copies the driver's working folder into its workers' ``sys.path``,
    through a private job setting; this says it through the public API. On a cluster, None: a folder shared by
    every node at the same path needs nothing more, anything else travels in the job's own runtime environment
    (``py_modules`` or ``working_dir``, see README), which a ``runtime_env`` given here would have to merge with.
    """
    if address:
        return None
    path = [os.getcwd(), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(path)}}
