"""The exceptions autoprune raises. Every user-facing failure is an ``AutoPruneError``.

The command line turns any ``AutoPruneError`` into one line on stderr and a non-zero exit, so the
message must stand alone: say what is wrong, the offending value, and how to fix it. ``first_line`` and
``disk_full`` read an exception from other code.
"""

from __future__ import annotations


class AutoPruneError(Exception):
    """Base class of every error autoprune reports to a user."""


class ConfigError(AutoPruneError):
    """A search-space file, a ``--set`` override or a trial configuration is invalid."""


class DataError(AutoPruneError):
    """A dataset cannot be found, read or validated."""


class ModelError(AutoPruneError):
    """A model cannot be built, discovered, exported or loaded."""


class DivergedError(AutoPruneError):
    """Training produced a non-finite loss. ``phase`` and ``step`` say where."""

    def __init__(self, phase: str, step: int, detail: str = "") -> None:
        self.phase = phase
        self.step = step
        msg = f"non-finite loss in phase '{phase}' at step {step}"
        super().__init__(f"{msg}: {detail}" if detail else msg)

    def __reduce__(self):  # keep the fields when Ray pickles the error across processes
        return (type(self), (self.phase, self.step))


class SearchError(AutoPruneError):
    """A search cannot be started, resumed, reported or picked from."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (cut at ``limit``): an exception from other code, fit for one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit]}" if text else type(exc).__name__


_DISK_FULL_WORDS = ("no space", "disk is full", "disk full")  # the OS's, SQLite's and autoprune's wording


def says_disk_full(message: str) -> bool:
    """Whether an error message says the disk is full (for a reason that only its text reached)."""
    text = message.lower()
    return any(words in text for words in _DISK_FULL_WORDS)


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from says the disk is full (an OS error, or SQLite's words)."""
    import errno

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if says_disk_full(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
