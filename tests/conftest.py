"""Suite-wide settings for the Ray that tests start in the pytest process, and the one local Ray they share."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Ray reads its authentication mode once per process: a Ray started later in the same process with another mode
# loses every trial worker at start ("Missing authorization header"). Every in-process Ray of the suite is a
# local one on loopback, so the whole suite runs with authentication off, and subprocesses inherit the setting.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

# Torch's CPU work runs on one thread in the pytest process and in every process it starts (inherited), as a trial
# of a search does (its threads are its CPUs, one by default). On the 2-core machine the suite is timed on, two
# OpenMP threads a process wait on each other whenever anything else runs: an epoch of LeNet-300-100 on
# Fashion-MNIST took 19 to 43 s with two threads and 1.1 to 1.3 s with one, with another search running beside it.
# A value the environment sets is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported before this file (a plugin): the variable came too late for it
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# A search seals its run with a key kept in the user's config folder (autoprune.io._trust): the suite gets a folder
# of its own, so running it writes nothing into the home of whoever runs it, and subprocesses share the key.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="autoprune-tests-config-")


def _started(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), None once it is gone or a zombie: with the PID,
    it names one process even if the PID is used again."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


class SharedRay:
    """The suite's one local Ray in the pytest process, started as a search starts its own (``init_ray``: every
    process on 127.0.0.1, trial workers importing what the driver imports, a watchdog) on first use.

    A search in this process attaches to the running Ray instead of starting one (``init_ray`` starts nothing when
    Ray is initialized, and the search leaves it running). Tests that check a search's own Ray (its addresses, what
    its processes inherit, what it leaves behind) release the shared one first; the next test that needs it
    starts it again. Its processes are stopped by PID if any outlives ``ray.shutdown``.
    """

    def __init__(self) -> None:
        self._processes: dict[int, int] = {}  # pid -> start time, of the processes this Ray started

    def ensure(self) -> None:
        import ray

        from autoprune.raytune import init_ray

        if ray.is_initialized():
            return
        from _sockets import descendants

        before = descendants(os.getpid())
        address = os.environ.pop("RAY_ADDRESS", None)  # never a cluster the environment names: a local Ray
        try:
            init_ray(None, verbose=False)
        finally:
            if address is not None:
                os.environ["RAY_ADDRESS"] = address
        self._processes = {pid: t for pid in descendants(os.getpid()) - before if (t := _started(pid)) is not None}

    def release(self) -> None:
        import ray

        from autoprune.raytune import shutdown_ray

        if not ray.is_initialized():
            return
        from _sockets import descendants

        ours = {pid for pid, t in self._processes.items() if _started(pid) == t}
        for pid in list(ours):  # and the workers the raylet started since
            ours |= descendants(pid)
        running = {pid: t for pid in ours if (t := _started(pid)) is not None}
        shutdown_ray()
        deadline = time.monotonic() + 10
        while any(_started(pid) == t for pid, t in running.items()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid, t in running.items():
            if _started(pid) == t:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._processes = {}


@pytest.fixture(scope="session")
def shared_ray() -> Iterator[SharedRay]:
    """The session's local Ray, not started yet: module-scoped fixtures that search call ``ensure()``."""
    shared = SharedRay()
    yield shared
    shared.release()


@pytest.fixture
def local_ray(shared_ray: SharedRay) -> SharedRay:
    """The session's local Ray, running: a search in this process attaches to it."""
    shared_ray.ensure()
    return shared_ray


@pytest.fixture
def no_shared_ray(shared_ray: SharedRay) -> None:
    """No Ray in this process: what the test runs starts its own, as a search does."""
    shared_ray.release()
