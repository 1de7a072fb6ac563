"""Files a user names or receives: checked before any work starts, so bad input costs nothing and breaks nothing.

Three rules, each in one place:

- ``check_output_file``: a file autoprune will write (``--csv``, ``--plot``, ``--out``, ``--save``) is a regular
  file or a new name in an existing, writable folder, and never one of a run directory's own files (the study,
  run.json, the frozen space, the lock, the models, Ray's and the report's folders), however it is spelled
  (symlinks and ``..`` are resolved). Checked before the work, so a mistyped path does not waste a trial.
- ``check_input_file``: a file autoprune will read is a regular file (not ``/dev/zero``, a FIFO or a folder)
  within a size limit, checked before it is opened, so a wrong path cannot hang or exhaust the process.
- ``inside_run``: a path read from a run's ledger (a trial's model file) names a file inside that run,
  so a crafted study cannot make autoprune read ``/etc/passwd`` or another run's model.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path

from autoprune.errors import AutoPruneError, disk_full
from autoprune.io._layout import RUN_FILE, RUN_OWNED, STUDY_FILE

__all__ = [
    "RUN_OWNED",
    "PathError",
    "as_path",
    "check_input_file",
    "check_output_file",
    "find_run_dir",
    "inside_run",
    "run_owned_entry",
]

MB = 1 << 20


class PathError(AutoPruneError):
    """A file or folder named by a user cannot be read or written safely."""


def _shown(path: str | os.PathLike) -> str:
    return os.fspath(path) or "''"


def as_path(value: object, what: str, error: type[AutoPruneError] = PathError) -> Path:
    """``value`` as a ``Path``, refused in one line unless it is a non-empty ``str`` or ``os.PathLike``: an API
    caller's ``None`` would otherwise be a ``TypeError``, and ``''`` would quietly mean the current folder."""
    if isinstance(value, (str, os.PathLike)) and isinstance(os.fspath(value), str) and os.fspath(value).strip():
        return Path(value)
    raise error(f"{what} must name a file or folder (a non-empty str or os.PathLike), got {value!r:.80}")


def find_run_dir(path: Path) -> Path | None:
    """The run directory ``path`` lies in (the nearest ancestor holding run.json), or None."""
    for parent in path.parents:
        with contextlib.suppress(OSError):
            if (parent / RUN_FILE).is_file():
                return parent
    return None


def _journal_name(run_dir: Path) -> str | None:
    """The name of a journal-file study kept inside the run directory, as run.json records it."""
    import json

    try:
        storage = json.loads((run_dir / RUN_FILE).read_text()).get("storage") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if storage.get("kind") == "journal" and storage.get("in_run_dir") and isinstance(storage.get("path"), str):
        return Path(storage["path"]).parts[0] if Path(storage["path"]).parts else None
    return None


def run_owned_entry(resolved: Path, run_dir: Path) -> str | None:
    """The run-owned entry (``study.db``, ``models``, ...) that ``resolved`` is or lies in, else None."""
    try:
        first = resolved.relative_to(run_dir).parts[0]
    except (ValueError, IndexError):
        return None
    owned = set(RUN_OWNED)
    journal = _journal_name(run_dir)
    if journal:
        owned.add(journal)
    if first in owned:
        return first
    if first.startswith(STUDY_FILE):  # SQLite side files
        return STUDY_FILE
    return None


def check_output_file(
    path: str | os.PathLike,
    *,
    what: str,
    protected_dirs: Iterable[str | os.PathLike] = (),
    example: str = "out.csv",
    guard_runs: bool = True,
    error: type[AutoPruneError] = PathError,
) -> Path:
    """Refuse, in one line, an output ``path`` that cannot or must not be written; return it resolved.

    ``what`` names the option (``--csv``). Refused: an empty name, a directory, an existing non-regular file
    (device, FIFO, socket), a missing or non-folder parent (never created), a folder where no file can be
    created (read-only, ``/proc``), and any path inside the own files of a run directory: the run the path
    lies in (found by its run.json) and every folder of ``protected_dirs`` (``guard_runs=False``: a run's own
    writer, saving a trial's model into ``models/``). A file that can be created here is created and removed
    again, which is the only test that tells for every filesystem and for root.
    """
    if not (isinstance(path, (str, os.PathLike)) and isinstance(os.fspath(path), str)):
        raise error(f"{what} must be a path (a str or os.PathLike), got {path!r:.80}")
    shown = _shown(path)
    if not os.fspath(path).strip():
        raise error(f"{what} is empty; give a file name such as {example}")
    given = Path(path).expanduser()
    try:
        resolved = given.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise error(f"{what} {shown}: cannot resolve the path ({exc}); give another file name") from None
    runs = [Path(p).expanduser().resolve() for p in protected_dirs]
    found = find_run_dir(resolved) if guard_runs else None
    if found is not None:
        runs.append(found)
    for run_dir in runs:
        if resolved == run_dir:
            raise error(f"{what} {shown} is the run directory {run_dir}; give a file name outside it, e.g. {example}")
        entry = run_owned_entry(resolved, run_dir)
        if entry is not None:
            raise error(
                f"{what} {shown} is inside {entry} of run directory {run_dir} ({RUN_OWNED.get(entry, 'the study')});"
                f" writing there would damage the run: give a file outside, e.g. {example}"
            )
    try:
        st = resolved.stat()
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as exc:
        raise error(f"{what} {shown}: cannot inspect it ({exc.strerror or exc}); give another file name") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {shown} is a directory; give a file name such as {Path(shown) / example}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {shown} is not a regular file (a device, pipe or socket); give a file name")
    parent = resolved.parent
    if not parent.exists():
        raise error(f"{what} {shown}: folder {given.parent} does not exist; create it first or choose another path")
    if not parent.is_dir():
        raise error(f"{what} {shown}: {given.parent} is not a folder; choose another path")
    probe = parent / f".{resolved.name[:40]}.{uuid.uuid4().hex[:8]}.probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        reason = "no space left on the device" if disk_full(exc) else (exc.strerror or str(exc)).lower()
        raise error(f"{what} {shown}: cannot create a file in {given.parent} ({reason}); choose a writable folder") \
            from None  # fmt: skip
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return resolved


def check_input_file(
    path: str | os.PathLike,
    *,
    what: str,
    max_bytes: int | None = None,
    error: type[AutoPruneError] = PathError,
) -> Path:
    """Refuse, before opening it, an input ``path`` that is missing, not a regular file, or larger than
    ``max_bytes``; return it. ``what`` names it in the message ("model file", "run.json").
    """
    shown = _shown(as_path(path, what, error))
    p = Path(path).expanduser()
    try:
        st = p.stat()  # follows symlinks: what counts is what would be read
    except FileNotFoundError:
        raise error(f"{what} {shown} does not exist") from None
    except OSError as exc:
        raise error(f"{what} {shown} cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {shown} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {shown} is not a regular file (a device, pipe or socket); give the file itself")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(
            f"{what} {shown} is {st.st_size / MB:.0f} MiB, more than the {max_bytes / MB:.0f} MiB such a file can "
            "be; is it the right file?"
        )
    return p


def inside_run(
    run_dir: str | os.PathLike,
    relative: object,
    *,
    what: str,
    under: str | None = None,
    error: type[AutoPruneError] = PathError,
) -> Path:
    """``run_dir / relative`` for a path read from the run's own records, refused unless it stays inside the run
    (below ``under`` when given) after resolving ``..`` and symlinks. Absolute paths are refused: a run's
    records name its files relative to the run, so the run can move.
    """
    root = Path(run_dir).resolve()
    if not isinstance(relative, str) or not relative:
        raise error(f"{what} recorded in {run_dir} is {relative!r}, not a path; the study may be damaged")
    if os.path.isabs(relative):
        raise error(
            f"{what} {relative!r} recorded in {run_dir} is an absolute path; a run names its own files relative to "
            "the run directory, so this study was altered or comes from elsewhere"
        )
    base = root / under if under else root
    target = (root / relative).resolve()
    if target != base and base not in target.parents:
        where = f"{under}/ of {run_dir}" if under else str(run_dir)
        raise error(
            f"{what} {relative!r} recorded in {run_dir} points outside {where}; refusing to read it (the study was "
            "altered or comes from elsewhere)"
        )
    return target
