"""The run directory of a search: its layout, ``run.json``, the lock, and the frozen search space.

Everything one search produced lives under one folder (the names are ``io._layout``'s)::

    run.json          what was asked for: study name and storage, space digest, sampler, seed, resources, trials,
                      the objective;
                      the seal of the user who started it (``_trust``: resume imports the space's modules)
    space.yaml        the search space as searched (after --set), frozen; resume checks it against run.json
    study.db          the Optuna study (SQLite), unless --study-storage names a server database or a journal file
    models/trial_N.pt the exported model of every trial that finished (N is the Optuna trial number)
    ray/              Ray Tune's experiment folders, one per launch (search-00, resume-01, ...)
    report/           front.csv, trials.csv, report.json, pareto.png, rewritten after each launch and by `report`
    .lock             locked (flock) by the driver running trials, so two drivers never share one run

Nothing here imports Optuna or Ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import functools
import json
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autoprune._bounds import INT64_MAX, MAX_TRIALS
from autoprune.errors import SearchError, first_line
from autoprune.io._io import atomic_open
from autoprune.io._layout import (
    LOCK_FILE as LOCK_FILE,  # re-exported: the layout's names are the run directory's API
)
from autoprune.io._layout import MODELS_DIR as MODELS_DIR
from autoprune.io._layout import RAY_DIR as RAY_DIR
from autoprune.io._layout import REPORT_DIR as REPORT_DIR
from autoprune.io._layout import RUN_FILE as RUN_FILE
from autoprune.io._layout import SPACE_FILE as SPACE_FILE
from autoprune.io._layout import STUDY_FILE as STUDY_FILE
from autoprune.io._paths import check_input_file, find_run_dir
from autoprune.io._trust import check_run_modules, sealed_here
from autoprune.searching._spacefile import read_text
from autoprune.searching.launchconfig import SEARCH_RESOURCES, LaunchConfig
from autoprune.searching.pareto import SIZE_KEYS
from autoprune.searching.space import SearchSpace, document_digest, load_yaml, parse_space

RUN_FORMAT = 1
_MARKERS = (RUN_FILE, SPACE_FILE, STUDY_FILE, MODELS_DIR)  # any of these: the folder held a search
_MAX_RECORD_BYTES = 16 << 20  # run.json and space.yaml are a few kB; anything this large is not one


def autoprune_version() -> str:
    from autoprune import __version__

    return __version__


def now() -> str:
    """The current UTC time as ISO 8601 text (seconds), as run.json stores times."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunInfo:
    """The content of ``run.json``: what a search asked for, enough to resume it anywhere."""

    study_name: str
    storage: dict[str, Any]  # {"kind": "run-dir"} | {"kind": "rdb", "url": redacted} | {"kind": "journal", "path"}
    space_digest: str
    space_source: str
    launch: LaunchConfig  # the search's options; run.json keeps them at its top level (LaunchConfig.to_record)
    sampler_options: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    created: str = ""
    launches: list[dict[str, Any]] = field(default_factory=list)
    format: int = RUN_FORMAT
    seal: str | None = None  # _trust.seal(space_digest): this user started the run, so resume imports its modules
    objective: str = "params"  # search.objective: what the front trades accuracy against (params for runs from before)

    @classmethod
    def read(cls, run_dir: Path) -> RunInfo:
        path = run_dir / RUN_FILE
        if not run_dir.is_dir():
            raise SearchError(
                f"run directory {run_dir} does not exist; start a search with `autoprune search --run-dir {run_dir}`"
            )
        if not path.exists():
            raise SearchError(
                f"{run_dir} holds no search (no {RUN_FILE}); start one with `autoprune search --run-dir {run_dir}`"
            )
        check_input_file(path, what="run file", max_bytes=_MAX_RECORD_BYTES, error=SearchError)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            missing = [name for name in _REQUIRED if name not in data]
            if missing:
                raise ValueError(f"{missing[0]} is missing")
            for name, kind in _FIELD_TYPES.items():
                value = data.get(name, kind())
                if not isinstance(value, kind) or isinstance(value, bool):
                    raise TypeError(f"{name} is {type(value).__name__} {value!r:.40}")
        except (OSError, ValueError, TypeError) as exc:
            raise SearchError(f"{path} is unreadable or damaged ({type(exc).__name__}: {exc})") from None
        data["resources"] = {**dataclasses.asdict(SEARCH_RESOURCES), **data["resources"]}
        bad = _out_of_bounds(data)
        try:
            if bad is not None:
                raise SearchError(bad)
            launch = LaunchConfig.from_record(data)
        except SearchError as exc:
            edited = f"{path}: {exc}; the file was edited or damaged: set it within that in {RUN_FILE}"
            raise SearchError(edited) from None
        own = {f.name for f in dataclasses.fields(cls)} - {"launch"}
        return cls(launch=launch, **{k: v for k, v in data.items() if k in own})

    def to_dict(self) -> dict[str, Any]:
        """run.json's document: the launch configuration's options among the run's own, in the file's order."""
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "launch"}
        doc.update(self.launch.to_record())
        return {**{key: doc.pop(key) for key in _ORDER}, **doc}

    def write(self, run_dir: Path) -> None:
        with atomic_open(run_dir / RUN_FILE, "w") as fh:
            fh.write(json.dumps(self.to_dict(), indent=2) + "\n")


_REQUIRED = ("study_name", "storage", "space_digest", "space_source", "sampler", "seed", "trials", "resources")
_ORDER = (*_REQUIRED, "sampler_options", "early_stop", "address")  # the order of the keys files have had
# What the code reading run.json relies on; a hand-edited file fails here, in one line, not later.
_FIELD_TYPES = {"study_name": str, "storage": dict, "space_digest": str, "sampler": str, "seed": int, "trials": int,
                "resources": dict, "sampler_options": dict, "launches": list}  # fmt: skip


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value: Any, low: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= MAX_TRIALS


def _gpus(value: Any) -> bool:
    if isinstance(value, str):  # as --gpus-per-trial takes it: auto, or a number as text
        if value.strip().lower() == "auto":
            return True
        try:
            value = float(value)
        except ValueError:
            return False
    return _number(value, 0) and (value <= 1 or value == int(value))


def _out_of_bounds(data: dict[str, Any]) -> str | None:
    """The first value of a run.json outside the bounds its option has (``search`` wrote it within them), as
    "NAME must be RULE, got VALUE"; None when every one is within. A received file is data: a trial count of 10**30
    would start a search that never ends, text where a number belongs fails as a traceback. The seed may take
    64 bits: runs made before ``--seed`` was held to 32 bits hold such seeds (``LaunchConfig.from_record``)."""
    concurrent, cpus, gpus = (data["resources"][f.name] for f in dataclasses.fields(SEARCH_RESOURCES))
    trials, seed, address = data["trials"], data["seed"], data.get("address")
    early_stop, objective = data.get("early_stop", {"mode": "off"}), data.get("objective", "params")
    checks = (
        ("trials", trials, _whole(trials, 1, MAX_TRIALS), f"a whole number from 1 to {MAX_TRIALS:,}"),
        ("seed", seed, _whole(seed, 0, INT64_MAX), "a whole number from 0 to 2**63 - 1"),
        ("resources.concurrent", concurrent, concurrent is None or _whole(concurrent, 1, MAX_TRIALS),
         f"null or a whole number from 1 to {MAX_TRIALS:,}"),
        ("resources.cpus_per_trial", cpus, _number(cpus, 0) and cpus > 0, "a number of CPUs above 0"),
        ("resources.gpus_per_trial", gpus, _gpus(gpus), "auto, a share of one GPU (0 to 1) or a whole number of GPUs"),
        ("early_stop", early_stop, isinstance(early_stop, dict), 'an object such as {"mode": "off"}'),
        ("address", address, address is None or isinstance(address, str), "null or host:port text"),
        ("objective", objective, isinstance(objective, str) and objective in SIZE_KEYS, " or ".join(SIZE_KEYS)),
    )  # fmt: skip
    for name, value, ok, rule in checks:
        if not ok:
            huge = isinstance(value, int) and value.bit_length() > 64
            shown = f"an integer of {value.bit_length()} bits" if huge else f"{value!r:.60}"
            return f"{name} must be {rule}, got {shown}"
    return None


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory while a driver runs trials in it.

    ``flock`` is released by the kernel when the process dies, even by SIGKILL, so a crashed driver never
    leaves a stale lock behind; a second driver on the same directory is refused instead of closing the
    first one's running trials.
    """
    try:
        fh = open(run_dir / LOCK_FILE, "a+")
    except OSError as exc:  # a read-only run directory (received, or a read-only mount)
        raise SearchError(
            f"cannot lock {run_dir} ({exc.strerror or exc}); running trials writes into the run directory: make it "
            "writable, or copy it somewhere writable"
        ) from None
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SearchError(
                f"another autoprune process is running a search in {run_dir}; wait for it or stop it first"
            ) from None
        yield
    finally:
        fh.close()


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a ``--run-dir`` that is a file, already holds (part of) a search, or lies inside another run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise SearchError(f"--run-dir {run_dir} is a file; give a directory")
    outer = find_run_dir(run_dir.resolve())
    if outer is not None:
        raise SearchError(
            f"--run-dir {run_dir} lies inside the run directory {outer}, whose files it would mix with; "
            "choose a folder outside it"
        )
    if (run_dir / RUN_FILE).exists():
        raise SearchError(
            f"{run_dir} already holds a search; continue or extend it with `autoprune resume {run_dir}` "
            "or choose another --run-dir"
        )
    taken = [m for m in _MARKERS if (run_dir / m).exists()]
    if taken:
        raise SearchError(
            f"{run_dir} holds {taken[0]} but no {RUN_FILE} (a search that never started?); "
            "choose another --run-dir or empty it"
        )


# ------------------------------------------------------------------------------------------- frozen space


@functools.lru_cache(maxsize=4)
def space_from_text(text: str) -> SearchSpace:
    """The search space of a frozen ``space.yaml`` text (cached: every trial of a worker reads the same one)."""
    return parse_space(load_yaml(text, SPACE_FILE) or {}, source=SPACE_FILE)


def freeze_space(run_dir: Path, space: SearchSpace) -> str:
    """Write ``space.yaml`` (never over an existing one) and check it reads back identically; returns its text."""
    path = run_dir / SPACE_FILE
    with open(path, "x") as fh:
        fh.write(f"# Frozen search space of this run (from {space.source}); resume checks its digest.\n")
        yaml.safe_dump(space.document, fh, sort_keys=False)
    text = path.read_text()
    if space_from_text(text).digest != space.digest:  # a YAML round trip that changed a value would break resume
        raise SearchError(f"the frozen space in {path} does not read back identically")
    return text


def frozen_document(run_dir: Path, info: RunInfo) -> tuple[Any, str]:
    """The run's frozen space as data and its text, refused unless its digest is run.json's. Nothing the space
    names is imported or built: the digest is compared before the space is parsed."""
    path = run_dir / SPACE_FILE
    if not path.exists():
        raise SearchError(f"{path} is missing; it is needed to resume this search")
    check_input_file(path, what="frozen space", max_bytes=_MAX_RECORD_BYTES, error=SearchError)
    text = read_text(path, str(path), SearchError)  # not UTF-8, or larger than a space file: one line
    try:
        document = load_yaml(text, str(path), SearchError) or {}
        digest = document_digest(document)
    except (ValueError, TypeError, RecursionError, yaml.YAMLError) as exc:
        raise SearchError(f"{path} is unreadable or damaged ({first_line(exc, 120)}); restore it") from None
    if digest != info.space_digest:
        raise SearchError(
            f"{path} was changed since the search started (digest {digest[:12]} != {info.space_digest[:12]} in "
            f"{RUN_FILE}); restore it, or start a new search in another --run-dir"
        )
    return document, text


def read_frozen_space(run_dir: Path, info: RunInfo, *, allow_modules: Collection[str] = ()) -> tuple[SearchSpace, str]:
    """The run's frozen space and its text, for ``resume``, checked before anything it names is imported: its
    digest against run.json (``frozen_document``), then its modules (``_trust.check_run_modules``: those of a run
    this user sealed, or in ``allow_modules``). Only then is it parsed, which builds the model to find its layers.
    """
    document, text = frozen_document(run_dir, info)
    sealed = sealed_here(info.space_digest, info.seal)
    check_run_modules(document, sealed=sealed, allow_modules=allow_modules, source=str(run_dir / SPACE_FILE))
    return space_from_text(text), text


def declared_sizes(run_dir: Path) -> tuple[float, ...]:
    """``search.sizes`` of the run's frozen space, read as data (nothing the space names is imported or
    checked); () when the space declares none, or is missing, unreadable or not a space."""
    from autoprune.errors import AutoPruneError
    from autoprune.searching.refine import size_targets

    path = run_dir / SPACE_FILE
    try:
        check_input_file(path, what="frozen space", max_bytes=_MAX_RECORD_BYTES, error=SearchError)
        search = (load_yaml(path.read_text()) or {}).get("search") or {}
        return size_targets(search.get("sizes"))
    except (AutoPruneError, OSError, ValueError, AttributeError, yaml.YAMLError):
        return ()


# ------------------------------------------------------------------------------------------- output paths


def model_file(number: int) -> str:
    """Where a trial's model lives, relative to the run directory (what the study records)."""
    return f"{MODELS_DIR}/trial_{number}.pt"


def new_model_path(run_dir: str | os.PathLike, number: int) -> Path:
    """The absolute path to save trial ``number``'s model to; refuses to replace another trial's file."""
    target = Path(run_dir) / model_file(number)
    if target.exists():  # trial numbers are unique within a study; never replace another trial's model
        raise SearchError(f"{target} exists already; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target
