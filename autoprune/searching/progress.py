"""Live progress: one line per finished trial of a search, and a self-rewriting status line for one trial."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _no_log(_line: str) -> None:
    """The log of a pickled copy of ``Progress``."""


@dataclass
class Progress:
    """Progress lines of a search on stderr: counts, elapsed time, the front size and its best points."""

    log: Callable[[str], None]
    requested: int  # trials this launch runs
    already: int  # counted trials before this launch
    records: list[dict[str, Any]]  # finished records so far (earlier launches included)
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    failed: int = 0
    stopped: int = 0  # by early stopping (counted: they were judged, not lost)
    cut: int = 0
    running: set[Any] = field(default_factory=set)  # keys of trials whose process started and did not end

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune pickles its callbacks and searcher, which hold this object, when it saves the experiment's state.
        # The live object in the driver keeps the caller's log, which need not pickle (a lock, a file, a widget).
        return {**self.__dict__, "log": _no_log}

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"

    def trial_started(self, key: Any) -> None:
        self.running.add(key)

    def finished(
        self, number: int, outcome: str, record: dict | None, reason: str | None, *, counted: bool, key: Any = None
    ) -> None:
        """One line for a trial the study has recorded; ``counted``: it counts toward the requested number."""
        from autoprune.searching.pareto import pareto_front

        self.running.discard(key)
        if outcome == "complete" and record is not None:
            self.done += 1
            self.records.append({"trial": number, **record})
            what = f"trial {number}: val {record['val_accuracy']:.4f}, {record['params_nonzero']} params"
        elif outcome == "pruned":
            self.stopped += 1
            what = f"trial {number} stopped early at {(reason or '').removeprefix(f'trial {number} ')}"
        elif counted:
            self.failed += 1
            what = f"trial {number} failed ({outcome}): {reason}"
        else:
            self.cut += 1
            what = f"trial {number} stopped ({outcome})"
        front = pareto_front(self.records)
        shown = front if len(front) <= 4 else [front[round(i * (len(front) - 1) / 3)] for i in range(4)]
        points = " ".join(f"{r['val_accuracy']:.4f}@{_short(r['params_nonzero'])}" for r in reversed(shown))
        finished = self.already + self.done + self.failed + self.stopped
        total = self.already + self.requested
        stopped = f", {self.stopped} stopped early" if self.stopped else ""
        self.log(
            f"[{self.elapsed()}] {finished}/{total} done, {len(self.running)} running, {self.failed} failed{stopped} | "
            f"{what} | front {len(front)}: {points or '-'}"
        )


def _short(n: float) -> str:
    n = float(n)
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{int(n)}"


class TrialProgress:
    """One self-rewriting status line for ``autoprune trial`` on a terminal: phase, epoch k/N, the epoch's
    mean loss, and the time left, estimated from the epochs done so far.
    """

    def __init__(self, epochs: dict[str, int], write: Callable[[str], None]) -> None:
        self.epochs = dict(epochs)  # phase -> its number of epochs, in running order
        self.write = write
        self.started = time.monotonic()
        self.done: dict[str, int] = dict.fromkeys(epochs, 0)

    def __call__(self, phase: str, epoch: int, epochs: int, loss: float) -> None:
        self.done[phase] = epoch
        finished = sum(self.done.values())
        left = sum(self.epochs.values()) - finished
        per_epoch = (time.monotonic() - self.started) / max(finished, 1)
        self.write(f"\r\x1b[K{phase} epoch {epoch}/{epochs}, loss {loss:.4f}, ~{_duration(per_epoch * left)} left")

    def line(self, message: str) -> None:
        """A message of its own line, over the status line."""
        self.write(f"\r\x1b[K{message}\n")


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
