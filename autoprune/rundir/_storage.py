"""Where a run's Optuna study lives, and how each command opens it.

``search`` creates the study (and Optuna's tables, in a new database). ``resume`` writes into the study that
exists and never creates tables. ``report`` and ``pick`` only read: SQLite is opened read-only by SQLite itself
(``mode=ro``), a journal file only to read, and a PostgreSQL session is read-only.

A run directory may come from someone else, and its run.json names the storage. Opening that storage must never
change a file the run names: an empty ``study.db``, or ``sqlite:///…/victim.db`` holding no study, is refused in
one line rather than given a fresh schema.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from autoprune.errors import SearchError, first_line
from autoprune.io._paths import check_input_file
from autoprune.rundir import _urls
from autoprune.rundir.directory import RUN_FILE, STUDY_FILE, RunInfo

if TYPE_CHECKING:
    import optuna

STORAGE_ENV = "AUTOPRUNE_STUDY_STORAGE"
Mode = Literal["create", "write", "read"]


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and run.json), whatever the password holds."""
    return _urls.redact_url(url)


def _sqlite_path(spec: str | None, run_dir: Path) -> Path | None:
    """The file of an SQLite study (the run's own ``study.db``, or a ``sqlite:///`` URL), else None."""
    if spec is None:
        return run_dir / STUDY_FILE
    if not _urls.is_url(spec):
        return None
    url = _urls.parse_storage_url(spec)
    if url.family != "sqlite":
        return None
    return Path((url.database or "").partition("?")[0] or ":memory:")


def _check_study_file(path: Path, shown: str) -> None:
    """Refuse an SQLite file that holds no Optuna study, reading it only: missing, empty, not SQLite, or without
    Optuna's tables. Nothing is created, so a file that a damaged or crafted run.json names stays as it was."""
    if str(path) == ":memory:":
        raise SearchError(f"study storage {shown} is an in-memory database, which holds no study once a process ends")
    check_input_file(path, what="study", error=SearchError)  # missing, a FIFO (which would hang SQLite), a folder
    if path.stat().st_size == 0:
        raise SearchError(
            f"study {shown} is empty (0 bytes): it holds no study, and autoprune will not create one in it; restore "
            "the run's study.db from a copy"
        )
    try:
        con = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise SearchError(f"cannot open study storage {shown}: {first_line(exc, 120)}; is it an SQLite file?") from None
    if not {"studies", "trials", "version_info"} <= tables:
        raise SearchError(
            f"study storage {shown} holds no Optuna study (no study tables); autoprune will not create them in a file "
            "a run names: is this the storage of the run?"
        )


def open_storage(spec: str | None, run_dir: Path, *, mode: Mode = "create") -> optuna.storages.BaseStorage:
    """The Optuna storage for ``--study-storage``: None = ``run_dir/study.db`` (SQLite); a database URL
    (``sqlite:///...``, ``postgresql://user:pw@host/db``) = ``RDBStorage``; any other value is the path of a
    journal file (``JournalStorage``, for shared filesystems). Failures are one line, password removed.

    ``mode``: ``create`` (``search``: tables and the journal file are made as needed); ``write`` (``resume``: the
    study's database or file must hold a study already); ``read`` (``report``, ``pick``: as ``write``, and
    nothing is written, not even a lock or journal file).
    """
    import optuna

    shown = redact_url(spec) if spec else str(run_dir / STUDY_FILE)
    existing = mode != "create"
    try:
        sqlite_file = _sqlite_path(spec, run_dir) if existing else None
        if sqlite_file is not None:
            _check_study_file(sqlite_file, shown)
        if spec is None or sqlite_file is not None:
            path = (sqlite_file or run_dir / STUDY_FILE).resolve()
            if mode == "read":  # SQLite's own read-only mode: a URI that SQLAlchemy does not re-parse
                uri = f"file:{quote(str(path))}?mode=ro"
                creator = functools.partial(sqlite3.connect, uri, uri=True, check_same_thread=False)
                return optuna.storages.RDBStorage(
                    "sqlite://", engine_kwargs={"creator": creator}, skip_table_creation=True
                )
            url = f"sqlite:///{path}" if spec is None else _urls.parse_storage_url(spec).connect_url()
            return optuna.storages.RDBStorage(url, skip_table_creation=existing)
        if _urls.is_url(spec):
            url = _urls.parse_storage_url(spec)
            engine_kwargs: dict[str, Any] = {}
            if url.family == "postgresql":
                # Without a timeout a firewalled host hangs the command for minutes.
                engine_kwargs = {"connect_args": {"connect_timeout": 10}}
                if mode == "read":
                    engine_kwargs["connect_args"]["options"] = "-c default_transaction_read_only=on"
            # The parsed URL, re-encoded: SQLAlchemy would misread a password holding '@', '/' or '#'.
            return optuna.storages.RDBStorage(
                url.connect_url(), engine_kwargs=engine_kwargs or None, skip_table_creation=existing
            )
        path = Path(spec).expanduser()
        if path.is_dir():
            raise SearchError(f"--study-storage {spec} is a directory; give a journal file path or a database URL")
        if path.exists() and not path.is_file():
            raise SearchError(f"--study-storage {spec} is not a regular file (a device or pipe); give a journal file")
        if not path.parent.is_dir():
            raise SearchError(f"cannot open study storage {spec}: folder {path.parent} does not exist")
        if existing and not path.exists():  # Optuna would create an empty journal
            raise SearchError(f"study storage {spec} does not exist; is this the storage of {run_dir}?")
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))  # reading takes no lock and writes nothing
    except (SearchError, _urls.StorageURLError):
        raise
    except ModuleNotFoundError as exc:
        hint = " (pip install 'autoprune[postgres]')" if "psycopg" in str(exc) else ""
        raise SearchError(f"cannot open study storage {shown}: missing database driver {exc.name}{hint}") from None
    except Exception as exc:
        first = _urls.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "", spec or "")
        raise SearchError(
            f"cannot open study storage {shown}: {type(exc).__name__}: {first[:200]}; check the URL, the server "
            "and the credentials"
        ) from None


def storage_record(spec: str | None, run_dir: Path) -> dict[str, Any]:
    """How run.json remembers the storage: never with a password."""
    if spec is None:
        return {"kind": "run-dir"}
    if _urls.is_url(spec):
        return {"kind": "rdb", "url": redact_url(spec)}
    path = Path(spec).expanduser().resolve()
    try:
        return {"kind": "journal", "path": str(path.relative_to(run_dir.resolve())), "in_run_dir": True}
    except ValueError:
        return {"kind": "journal", "path": str(path), "in_run_dir": False}


def storage_spec(info: RunInfo, run_dir: Path, override: str | None) -> str | None:
    """The storage spec to open for a run, from run.json, completed by ``--study-storage`` or its env var.

    A given storage is used (a journal moved with its run) or refused (a database other than the run's); it is
    never ignored: a run whose study is its own ``study.db`` refuses any other.
    """
    rec = info.storage
    kind = rec.get("kind")
    given = override or os.environ.get(STORAGE_ENV) or None
    if kind == "run-dir":
        if given and not _same_file(given, run_dir):
            raise SearchError(
                f"--study-storage {redact_url(given)} is not the storage of this run (its study is "
                f"{run_dir / STUDY_FILE}); leave --study-storage out (and {STORAGE_ENV} unset)"
            )
        return None
    if kind == "journal":
        if given:
            return given
        return str(run_dir / rec["path"]) if rec.get("in_run_dir") else rec["path"]
    if kind == "rdb":
        url = rec["url"]
        if given:
            if redact_url(given) != url:
                raise SearchError(
                    f"--study-storage {redact_url(given)} is not the storage of this run ({url}); give the same URL"
                )
            return given
        if ":***@" in url:
            raise SearchError(
                f"the study of {run_dir} is in {url}; run.json keeps no password: pass --study-storage URL or set "
                f"{STORAGE_ENV} (or use a password file such as ~/.pgpass)"
            )
        return url
    raise SearchError(f"{run_dir / RUN_FILE} is damaged: unknown storage kind {kind!r}")


def _same_file(given: str, run_dir: Path) -> bool:
    """Whether ``given`` is a ``sqlite:///`` URL of the run's own ``study.db``, however spelled."""
    try:
        path = _sqlite_path(given, run_dir)
        return path is not None and path.resolve() == (run_dir / STUDY_FILE).resolve()
    except (_urls.StorageURLError, OSError, RuntimeError):
        return False
