"""The processes of a driver started with ``start_new_session=True``: the driver and everything Ray forked from it
share its session id. Read from /proc; tests stop them all by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def driver_env() -> dict[str, str]:
    """The environment of a driver subprocess: a local Ray without authentication, this checkout first on the path."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("RAY_ADDRESS", None)
    return env


def session_processes(sid: int) -> dict[int, str]:
    """pid -> name of every live (not zombie) process in session ``sid``."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid and fields[0] != "Z":
                    found[int(entry)] = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
    return found


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL every process of ``proc``'s session, ``proc`` included."""
    for pid in session_processes(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()


def stop_session(proc: subprocess.Popen) -> None:
    """``kill_session``, then reap ``proc``."""
    kill_session(proc)
    proc.wait(timeout=30)


def kill_driver_when(cmd: list[str], ready: Callable[[], bool], timeout: float) -> None:
    """Run ``cmd`` as a driver in its own session and SIGKILL it once ``ready()`` holds (or at ``timeout``
    seconds), then stop what it started. Fails when the driver ends on its own before that."""
    driver = subprocess.Popen(
        cmd, env=driver_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + timeout
        while not ready() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert driver.poll() is None, "the search ended before it could be killed: " + driver.stderr.read().decode()
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        stop_session(driver)
