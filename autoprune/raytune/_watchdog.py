"""Stops the Ray processes a driver started when the driver dies without shutting them down (SIGKILL).

Ray's GCS and raylet follow a dead driver within seconds, but its agents wait on the dead GCS for minutes,
still listening on their ports. The driver starts this script (a plain file: no package import) with a pipe on
its stdin and the session folder as argument. While the pipe is open it notes, every second, the processes Ray
started below the driver (pid and start time, so a reused pid is never taken for one of them). When the pipe
closes, because the driver shut Ray down or died, it gives them a few seconds to exit on their own, then
SIGTERM, then SIGKILL to those still there. Linux only (``/proc``); elsewhere it does nothing.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

_GRACE_S = 3.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def _below(root: int) -> dict[int, int]:
    """pid -> start time of every process below ``root``."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info is not None:
                table[int(entry)] = info
    found: dict[int, int] = {}
    frontier = {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier and pid not in found}
        found.update({pid: table[pid][1] for pid in frontier})
    return found


def _alive(tracked: dict[int, int]) -> dict[int, int]:
    return {pid: start for pid, start in tracked.items() if (_stat(pid) or (0, -1))[1] == start}


def _ray_roots(driver: int, session_dir: str) -> dict[int, int]:
    """The driver's children that Ray started: their command lines name the session folder."""
    roots = {}
    for pid, start in _below(driver).items():
        info = _stat(pid)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        # This script is a child of the driver with the session folder in its command line too: not a root.
        if info is not None and info[0] == driver and session_dir.encode() in cmdline and pid != os.getpid():
            roots[pid] = start
    return roots


def main() -> None:
    if not os.path.isdir("/proc") or len(sys.argv) != 2:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the driver, which then shuts Ray down itself
    driver, session_dir = os.getppid(), sys.argv[1]
    tracked: dict[int, int] = {}
    while True:
        # Only Ray's processes and what they started: the driver's other children are none of this script's business.
        for root, start in _ray_roots(driver, session_dir).items():
            tracked[root] = start
            tracked.update(_below(root))
        ready, _, _ = select.select([sys.stdin], [], [], 1.0)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # the driver closed the pipe or died
    deadline = time.monotonic() + _GRACE_S
    while _alive(tracked) and time.monotonic() < deadline:
        time.sleep(0.2)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = _alive(tracked)
        for pid in left:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if left and sig == signal.SIGTERM:
            time.sleep(1.0)


if __name__ == "__main__":
    main()
