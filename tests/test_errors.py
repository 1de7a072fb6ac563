"""errors.disk_full and says_disk_full: the one test of a full disk that the CLI, the trial worker, the driver and
the output-file checks share."""

from __future__ import annotations

import errno
import sqlite3

import pytest

from autoprune.errors import disk_full, says_disk_full


def _raised_from(cause: BaseException) -> RuntimeError:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise RuntimeError("could not write the model file") from exc
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        sqlite3.OperationalError("database or disk is full"),
        RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed, no space left"),
    ],
)
def test_a_full_disk_is_told_by_its_errno_or_its_words_also_as_a_cause(exc: BaseException) -> None:
    assert disk_full(exc)
    assert disk_full(_raised_from(exc))


def test_other_errors_are_not_a_full_disk() -> None:
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(_raised_from(ValueError("bad value")))
    assert not says_disk_full("trial 3 raised ValueError: bad value")


def test_a_message_that_says_the_disk_is_full() -> None:
    assert says_disk_full("no space left on the device of the run directory: its model file could not be written")
    assert says_disk_full("OperationalError: database or disk is full")
