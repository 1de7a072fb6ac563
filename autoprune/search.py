"""The search: Ray Tune schedules pipeline trials, Optuna suggests them and keeps the ledger.

This is the only module that talks to Ray, and it imports Ray only inside the functions that start trials:
``report``, ``pick`` and ``evaluate`` read the Optuna study and never start (or import) Ray.

A search lives in one run directory (``--run-dir``)::

    run.json          what was asked for: study name and storage, space digest, sampler, seed, resources, trials
    space.yaml        the search space as searched (after --set), frozen; resume checks it against run.json
    study.db          the Optuna study (SQLite), unless --study-storage names a server database or a journal file
    models/trial_N.pt the exported model of every trial that finished (N is the Optuna trial number)
    ray/              Ray Tune's experiment folders, one per launch (search-00, resume-01, ...)
    report/           front.csv, trials.csv, report.json, pareto.png, rewritten after each launch and by `report`
    .lock             locked (flock) by the driver running trials, so two drivers never share one run

The study is the ledger. Every finished trial is COMPLETE with values (val_accuracy, params_nonzero) and its
trial record and model path as user attributes; a trial that diverged, raised or was cut off is FAIL with its
``outcome`` and ``fail_reason``. Only the driver writes to the study, so trial workers need no database access.
Workers write the model files straight into ``models/``: on a multi-node cluster ``--run-dir`` must be on a
filesystem every node mounts at the same path, and autoprune must be installed on every node.

Resume does not replay Ray's experiment state: it opens the same study, closes trials an interruption left
RUNNING as FAIL, and launches a fresh Tuner for the trials still missing. Finished trials are never re-run
because every new trial is a new Optuna trial, and the sampler sees every earlier trial through the study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import functools
import json
import logging
import math
import os
import secrets
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from ._io import atomic_open
from .errors import DivergedError, ModelError, SearchError
from .space import SearchSpace, define_by_run, load_space, load_yaml, parse_space

if TYPE_CHECKING:
    import optuna

__all__ = [
    "SAMPLERS",
    "LaunchResult",
    "Results",
    "RunInfo",
    "evaluate_model",
    "load_results",
    "open_storage",
    "pick_model",
    "redact_url",
    "resume_search",
    "run_search",
    "write_run_report",
]

RUN_FILE = "run.json"
SPACE_FILE = "space.yaml"
STUDY_FILE = "study.db"
MODELS_DIR = "models"
RAY_DIR = "ray"
REPORT_DIR = "report"
LOCK_FILE = ".lock"
SAMPLERS = ("tpe", "nsga2", "random")
DEFAULT_TRIALS = 20
OBJECTIVES = ("val_accuracy", "params_nonzero")
MODES = ("max", "min")
RUN_FORMAT = 1
STORAGE_ENV = "AUTOPRUNE_STUDY_STORAGE"

# Trial outcomes kept in the study (user attribute "outcome"). The first three count toward the number of
# trials a search asked for; the others were cut short and are replaced by resume.
COUNTED_OUTCOMES = ("complete", "diverged", "error")
_NUMBER_KEY = "_trial"  # the Optuna trial number, added to each suggested config
_RECORD_KEY = "autoprune_record"  # result key: the trial record as JSON text (Tune flattens nested dicts)
_MODEL_KEY = "autoprune_model"
_OUTCOME_KEY = "autoprune_outcome"
_REASON_KEY = "autoprune_reason"
_RUN_DIR_MARKERS = (RUN_FILE, SPACE_FILE, STUDY_FILE, MODELS_DIR)

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ run.json


@dataclass
class RunInfo:
    """The content of ``run.json``: what a search asked for, enough to resume it anywhere."""

    study_name: str
    storage: dict[str, Any]  # {"kind": "run-dir"} | {"kind": "rdb", "url": redacted} | {"kind": "journal", "path"}
    space_digest: str
    space_source: str
    sampler: str
    seed: int
    trials: int  # the number of trials the search should end with (counted outcomes)
    resources: dict[str, Any]  # concurrent, cpus_per_trial, gpus_per_trial
    sampler_options: dict[str, Any] = field(default_factory=dict)
    address: str | None = None
    version: str = ""
    created: str = ""
    launches: list[dict[str, Any]] = field(default_factory=list)
    format: int = RUN_FORMAT

    @classmethod
    def read(cls, run_dir: Path) -> RunInfo:
        path = run_dir / RUN_FILE
        if not run_dir.is_dir():
            raise SearchError(
                f"run directory {run_dir} does not exist; start a search with `autoprune search --run-dir {run_dir}`"
            )
        if not path.is_file():
            raise SearchError(
                f"{run_dir} holds no search (no {RUN_FILE}); start one with `autoprune search --run-dir {run_dir}`"
            )
        try:
            data = json.loads(path.read_text())
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (OSError, ValueError, TypeError) as exc:
            raise SearchError(f"{path} is unreadable or damaged ({type(exc).__name__}: {exc})") from None

    def write(self, run_dir: Path) -> None:
        with atomic_open(run_dir / RUN_FILE, "w") as fh:
            fh.write(json.dumps(dataclasses.asdict(self), indent=2) + "\n")


def _version() -> str:
    from . import __version__

    return __version__


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory while a driver runs trials in it.

    ``flock`` is released by the kernel when the process dies, even by SIGKILL, so a crashed driver never
    leaves a stale lock behind; a second driver on the same directory is refused instead of closing the
    first one's running trials.
    """
    fh = open(run_dir / LOCK_FILE, "a+")
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


# ---------------------------------------------------------------------------------------------- storage


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and run.json)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _scrub(text: str, url: str) -> str:
    """Remove the password of ``url`` from an error message, however the library quoted it."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        from urllib.parse import quote, unquote

        for form in {password, unquote(password), quote(password, safe="")}:
            text = text.replace(form, "***")
    return text


def _is_url(spec: str) -> bool:
    return "://" in spec


def open_storage(spec: str | None, run_dir: Path) -> optuna.storages.BaseStorage:
    """The Optuna storage for ``--study-storage``: None = ``run_dir/study.db`` (SQLite); a database URL
    (``sqlite:///...``, ``postgresql://user:pw@host/db``) = ``RDBStorage``; any other value is the path of a
    journal file (``JournalStorage``, for shared filesystems). Failures are one line, password removed.
    """
    import optuna

    shown = redact_url(spec) if spec else str(run_dir / STUDY_FILE)
    try:
        if spec is None:
            return optuna.storages.RDBStorage(f"sqlite:///{(run_dir / STUDY_FILE).resolve()}")
        if _is_url(spec):
            engine_kwargs: dict[str, Any] = {}
            if spec.startswith(("postgresql", "postgres")):
                # Without a timeout a firewalled host hangs the command for minutes.
                engine_kwargs = {"connect_args": {"connect_timeout": 10}}
            return optuna.storages.RDBStorage(spec, engine_kwargs=engine_kwargs or None)
        path = Path(spec).expanduser()
        if path.is_dir():
            raise SearchError(f"--study-storage {spec} is a directory; give a journal file path or a database URL")
        if not path.parent.is_dir():
            raise SearchError(f"cannot open study storage {spec}: folder {path.parent} does not exist")
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    except SearchError:
        raise
    except ModuleNotFoundError as exc:
        hint = " (pip install 'autoprune[postgres]')" if "psycopg" in str(exc) else ""
        raise SearchError(f"cannot open study storage {shown}: missing database driver {exc.name}{hint}") from None
    except Exception as exc:
        first = _scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "", spec or "")
        raise SearchError(
            f"cannot open study storage {shown}: {type(exc).__name__}: {first[:200]}; check the URL, the server "
            "and the credentials"
        ) from None


def _storage_record(spec: str | None, run_dir: Path) -> dict[str, Any]:
    if spec is None:
        return {"kind": "run-dir"}
    if _is_url(spec):
        return {"kind": "rdb", "url": redact_url(spec)}
    path = Path(spec).expanduser().resolve()
    try:
        return {"kind": "journal", "path": str(path.relative_to(run_dir.resolve())), "in_run_dir": True}
    except ValueError:
        return {"kind": "journal", "path": str(path), "in_run_dir": False}


def _storage_spec(info: RunInfo, run_dir: Path, override: str | None) -> str | None:
    """The storage spec to open for a run, from run.json, completed by ``--study-storage`` or its env var."""
    rec = info.storage
    kind = rec.get("kind")
    given = override or os.environ.get(STORAGE_ENV) or None
    if kind == "run-dir":
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


def _load_study(info: RunInfo, run_dir: Path, storage_override: str | None) -> optuna.Study:
    import optuna

    _quiet_optuna()
    spec = _storage_spec(info, run_dir, storage_override)
    if spec is None and not (run_dir / STUDY_FILE).is_file():
        raise SearchError(f"{run_dir} has {RUN_FILE} but no {STUDY_FILE}; the study of this run is lost")
    storage = open_storage(spec, run_dir)
    try:
        return optuna.load_study(study_name=info.study_name, storage=storage)
    except KeyError:
        shown = redact_url(spec) if spec else str(run_dir / STUDY_FILE)
        raise SearchError(
            f"study {info.study_name!r} not found in {shown}; is this the storage of {run_dir}?"
        ) from None


def _quiet_optuna() -> None:
    import optuna

    if optuna.logging.get_verbosity() < optuna.logging.WARNING:
        optuna.logging.set_verbosity(optuna.logging.WARNING)


# ------------------------------------------------------------------------------------------- study reading


@dataclass
class Results:
    """Every trial of a run's study, as records, and the Pareto front over the finished ones."""

    trials: list[dict[str, Any]]  # records of COMPLETE trials, by trial number
    front: list[dict[str, Any]]  # the non-dominated ones, sorted by params_nonzero
    failed: int  # FAIL trials (diverged, raised, cut off)
    running: int  # RUNNING trials (a search in progress, or one that was killed)
    counted: int  # trials that count toward the requested number
    requested: int
    baseline: dict[str, Any] | None  # the most accurate dense (unpruned) trial, when the search has one
    failures: list[dict[str, Any]] = field(default_factory=list)  # {"trial", "outcome", "reason"}


def _trial_records(study: optuna.Study, run_dir: Path) -> tuple[list[dict], list[dict], int]:
    from optuna.trial import TrialState

    records, failures, running = [], [], 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE and isinstance(t.user_attrs.get("record"), dict):
            rec = {"trial": t.number, **t.user_attrs["record"]}
            if t.user_attrs.get("model_path"):
                rec["model_path"] = str(run_dir / t.user_attrs["model_path"])
            records.append(rec)
        elif t.state == TrialState.FAIL or t.state == TrialState.COMPLETE:  # COMPLETE without a record: cut off
            failures.append(
                {
                    "trial": t.number,
                    "outcome": t.user_attrs.get("outcome", "interrupted"),
                    "reason": t.user_attrs.get("fail_reason", "the trial did not report its result"),
                }
            )
        elif t.state == TrialState.RUNNING:
            running += 1
    return records, failures, running


def load_results(run_dir: str | os.PathLike, *, study_storage: str | None = None) -> Results:
    """Read a run's study (no Ray needed; works while a search is running) and compute its Pareto front."""
    from .pareto import pareto_front

    run_dir = Path(run_dir)
    info = RunInfo.read(run_dir)
    study = _load_study(info, run_dir, study_storage)
    records, failures, running = _trial_records(study, run_dir)
    counted = len(records) + sum(f["outcome"] in COUNTED_OUTCOMES for f in failures)
    dense = [r for r in records if not (r.get("config") or {}).get("prune", {}).get("enabled", True)]
    baseline = max(dense, key=lambda r: r["val_accuracy"]) if dense else None
    return Results(
        trials=records,
        front=pareto_front(records),
        failed=len(failures),
        running=running,
        counted=counted,
        requested=info.trials,
        baseline=baseline,
        failures=failures,
    )


def write_run_report(run_dir: str | os.PathLike, results: Results) -> dict[str, Path]:
    """(Re)write ``run_dir/report/``: front.csv, trials.csv, report.json, pareto.png."""
    from .report import write_report

    return write_report(run_dir, results.front, results.trials, results.failed, baseline=results.baseline)


# --------------------------------------------------------------------------------------------- pick, evaluate


def pick_model(
    run_dir: str | os.PathLike,
    *,
    out: str | os.PathLike,
    max_params: int | None = None,
    min_accuracy: float | None = None,
    knee: bool = False,
    study_storage: str | None = None,
) -> dict[str, Any]:
    """Choose one front model by exactly one rule and export it to ``out``; returns its record plus ``out``."""
    from .export import load_model, save_model
    from .pareto import knee_point, pick_max_params, pick_min_accuracy

    given = {"--max-params": max_params is not None, "--min-accuracy": min_accuracy is not None, "--knee": knee}
    rules = [name for name, on in given.items() if on]
    if len(rules) != 1:
        raise SearchError(
            f"give exactly one of --max-params N, --min-accuracy A, --knee (got {', '.join(rules) or 'none'})"
        )
    out = Path(out)
    if out.is_dir():
        raise SearchError(f"--out {out} is a directory; give a file name such as model.pt")
    if not out.parent.is_dir():
        raise SearchError(f"--out {out}: folder {out.parent} does not exist")
    results = load_results(run_dir, study_storage=study_storage)
    if not results.front:
        raise SearchError(f"{run_dir} has no finished trials yet; nothing to pick")
    if max_params is not None:
        chosen = pick_max_params(results.front, max_params)
    elif min_accuracy is not None:
        chosen = pick_min_accuracy(results.front, min_accuracy)
    else:
        chosen = knee_point(results.front)
    source = chosen.get("model_path")
    if not source or not Path(source).is_file():
        raise SearchError(
            f"the model file of trial {chosen['trial']} is missing ({source}); on a cluster --run-dir must be on a "
            "filesystem every node shares"
        )
    loaded = load_model(source)
    metrics = {k: v for k, v in chosen.items() if k not in ("config", "model_path")}
    save_model(
        out,
        loaded.model,
        masks=loaded.masks,
        config=loaded.config,
        metrics=metrics,
        input_shape=loaded.input_shape,
        num_classes=loaded.num_classes,
    )
    return {**chosen, "out": str(out)}


def evaluate_model(path: str | os.PathLike, *, device: str = "cpu") -> dict[str, Any]:
    """Reload an exported model (``weights_only``) without its run directory and re-measure it on its data."""
    from .config import TrialConfig
    from .data import load_datasets
    from .errors import ConfigError
    from .export import load_model
    from .pruning import count_params
    from .train import evaluate

    loaded = load_model(path, device=device)
    try:
        cfg = TrialConfig.from_dict(loaded.config)
    except ConfigError as exc:
        raise ModelError(f"{path}: the configuration stored in the file is invalid ({exc})") from None
    data = load_datasets(cfg.dataset, seed=cfg.seed, device=device)
    if tuple(data.input_shape) != tuple(loaded.input_shape):
        raise ModelError(
            f"{path}: the model expects inputs {list(loaded.input_shape)} but dataset {cfg.dataset.name!r} gives "
            f"{list(data.input_shape)}"
        )
    ebs = cfg.budget.eval_batch_size
    test = evaluate(loaded.model, data.test_x, data.test_y, batch_size=ebs, amp=cfg.amp)
    val = evaluate(loaded.model, data.val_x, data.val_y, batch_size=ebs, amp=cfg.amp)
    nonzero, stored = count_params(loaded.model)
    recorded = {k: loaded.metrics.get(k) for k in ("trial", "val_accuracy", "test_accuracy", "params_nonzero")}
    return {
        "file": str(path),
        "test_accuracy": test,
        "val_accuracy": val,
        "params_nonzero": nonzero,
        "params_total": int(loaded.metrics.get("params_total", stored)),
        "params_stored": stored,
        "recorded": recorded,
    }


# ------------------------------------------------------------------------------------------ trial side (Ray)


@dataclass(frozen=True)
class _Job:
    """What every trial of one launch shares (sent once through Ray's object store)."""

    run_dir: str  # absolute
    space_yaml: str  # the frozen space document as YAML text
    threads: int  # torch threads: the trial's CPUs
    gpus: float  # GPUs reserved per trial (0: run on the CPU)


@functools.lru_cache(maxsize=4)
def _space_from_text(text: str) -> SearchSpace:
    return parse_space(load_yaml(text) or {}, source=SPACE_FILE)


def _suggest(trial: optuna.Trial, dims: tuple) -> dict[str, int]:
    """Define-by-run space for OptunaSearch: every searched dimension, plus the trial number as a constant.

    Module level so that it pickles by reference (bind ``dims`` with ``functools.partial``).
    """
    define_by_run(trial, dims)
    return {_NUMBER_KEY: trial.number}


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.config.get(_NUMBER_KEY, trial.trial_id)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _tune_trial(config: dict[str, Any], job: _Job) -> None:
    """Tune function trainable: one full pipeline run, reported once at the end.

    Reporting once is what keeps a trial cut off half-way out of the front: OptunaSearch tells the study the
    last reported values, and a trial that never reports is closed as FAIL. Every Python error is caught and
    reported as an outcome so the search goes on and the reason reaches the study.
    """
    import ray
    from ray import tune

    from .trial import run_trial

    number = int(config[_NUMBER_KEY])
    params = {k: v for k, v in config.items() if k != _NUMBER_KEY}
    node = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}
    started = time.perf_counter()
    report: dict[str, Any]
    try:
        cfg = _space_from_text(job.space_yaml).config_for(params)
        # A trial that reserved no GPU stays off the GPUs, which belong to the trials that reserved them.
        device = "cpu" if not job.gpus and cfg.device == "auto" else None
        result = run_trial(cfg, device=device, threads=job.threads)
        rel = f"{MODELS_DIR}/trial_{number}.pt"
        target = Path(job.run_dir) / rel
        if target.exists():  # trial numbers are unique within a study; never replace another trial's model
            raise SearchError(f"{target} exists already; refusing to overwrite it")
        target.parent.mkdir(parents=True, exist_ok=True)
        result.save(target)
        report = {
            OBJECTIVES[0]: float(result.val_accuracy),
            OBJECTIVES[1]: int(result.params_nonzero),
            _RECORD_KEY: json.dumps(result.record()),
            _MODEL_KEY: rel,
            _OUTCOME_KEY: "complete",
        }
    except DivergedError as exc:
        report = {OBJECTIVES[0]: math.nan, OBJECTIVES[1]: math.nan, _OUTCOME_KEY: "diverged", _REASON_KEY: str(exc)}
    except Exception as exc:  # the trial's own failure: recorded, and the search goes on
        traceback.print_exc()  # into the worker's log (ray/ and the session logs), for --verbose
        reason = _first_line(exc)
        report = {OBJECTIVES[0]: math.nan, OBJECTIVES[1]: math.nan, _OUTCOME_KEY: "error", _REASON_KEY: reason}
    report.update(node, trial_seconds=time.perf_counter() - started)
    tune.report(report)


# ----------------------------------------------------------------------------------------- driver side (Ray)


@dataclass
class _Progress:
    """Progress lines on stderr: counts, elapsed time, the front size and its best points."""

    log: Log
    requested: int  # trials this launch runs
    already: int  # counted trials before this launch
    records: list[dict[str, Any]]  # finished records so far (earlier launches included)
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    failed: int = 0
    cut: int = 0
    running: int = 0

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"

    def started_trial(self, number: int) -> None:
        self.running += 1

    def finished(self, number: int, outcome: str, record: dict[str, Any] | None, reason: str | None) -> None:
        from .pareto import pareto_front

        self.running = max(0, self.running - 1)
        if outcome == "complete" and record is not None:
            self.done += 1
            self.records.append({"trial": number, **record})
            what = f"trial {number}: val {record['val_accuracy']:.4f}, {record['params_nonzero']} params"
        elif outcome in COUNTED_OUTCOMES:
            self.failed += 1
            what = f"trial {number} failed ({outcome}): {reason}"
        else:
            self.cut += 1
            what = f"trial {number} stopped ({outcome})"
        front = pareto_front(self.records)
        shown = front if len(front) <= 4 else [front[round(i * (len(front) - 1) / 3)] for i in range(4)]
        points = " ".join(f"{r['val_accuracy']:.4f}@{_short(r['params_nonzero'])}" for r in reversed(shown))
        finished = self.already + self.done + self.failed
        total = self.already + self.requested
        self.log(
            f"[{self.elapsed()}] {finished}/{total} done, {self.running} running, {self.failed} failed | {what} | "
            f"front {len(front)}: {points or '-'}"
        )


def _short(n: float) -> str:
    n = float(n)
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{int(n)}"


def _outcome(result: dict[str, Any], error: bool) -> tuple[str, dict[str, Any] | None, str | None]:
    """(outcome, record, reason) of a trial from its last (flattened) result."""
    outcome = result.get(_OUTCOME_KEY)
    if outcome == "complete" and result.get(_RECORD_KEY):
        return "complete", json.loads(result[_RECORD_KEY]), None
    if outcome in ("diverged", "error"):
        return outcome, None, str(result.get(_REASON_KEY, ""))
    if error:
        return "crashed", None, "the trial's process failed (killed, out of memory or node lost); see the Ray logs"
    return "interrupted", None, "stopped before it finished (the search was interrupted)"


@functools.cache
def _ledger_class() -> type:
    """OptunaSearch that records each trial's outcome, record and model path in the study before telling it.

    Built on first use so that importing this module does not import Ray. Tune pickles the searcher into its
    experiment folder; the state kept there is deliberately empty (no storage URL, no password): the study is
    the ledger, and a resume reopens it rather than unpickling a searcher.
    """
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class Ledger(OptunaSearch):
        progress: _Progress | None = None

        def suggest(self, trial_id: str) -> dict | None:
            config = super().suggest(trial_id)
            if config is not None and self.progress is not None:
                self.progress.started_trial(config.get(_NUMBER_KEY, -1))
            return config

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            result = result or {}
            outcome, record, reason = _outcome(result, error)
            try:
                ot_trial.set_user_attr("outcome", outcome)
                for key in ("node_id", "hostname"):
                    if result.get(key):
                        ot_trial.set_user_attr(key, result[key])
                ot_trial.set_user_attr("ray_trial_id", trial_id)
                if record is not None:
                    ot_trial.set_user_attr("record", record)
                    ot_trial.set_user_attr("model_path", result[_MODEL_KEY])
                    self._ot_study.tell(ot_trial, [record["val_accuracy"], record["params_nonzero"]],
                                        state=TrialState.COMPLETE)  # fmt: skip
                else:
                    ot_trial.set_user_attr("fail_reason", reason)
                    self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            except Exception as exc:  # a storage hiccup must not stop the search; the trial stays RUNNING
                logging.getLogger(__name__).error("could not record trial %s in the study: %s", ot_trial.number, exc)
            self._completed_trials.add(trial_id)
            if self.progress is not None:
                self.progress.finished(ot_trial.number, outcome, record, reason)

        def close_open_trials(self) -> int:
            """FAIL the trials this searcher started that Tune never completed (Ctrl-C stops without telling)."""
            closed = 0
            for trial_id in list(self._ot_trials):
                if trial_id not in self._completed_trials:
                    self.on_trial_complete(trial_id, result=None, error=False)
                    closed += 1
            return closed

        @property
        def started(self) -> int:
            return len(self._ot_trials)

        def save(self, checkpoint_path: str) -> None:
            return None  # nothing to save: the study is the ledger

        def __getstate__(self) -> dict:
            return {"_metric": self._metric, "_mode": self._mode, "_study_name": self._study_name}

    Ledger.__qualname__ = Ledger.__name__ = "AutopruneLedger"
    return Ledger


def _make_sampler(name: str, seed: int, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=int(options.get("population_size", 50)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SearchError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")


def _check_address(address: str) -> None:
    """Fail fast on a ``host:port`` nothing listens on (ray.init would retry for a long time)."""
    if address == "auto" or address.startswith(("ray://", "local")):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SearchError(f"--address {address!r}: expected auto or host:port, e.g. 10.0.0.1:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise SearchError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); start it with `ray start --head` or "
            "check the address"
        ) from None


def _init_ray(address: str | None, verbose: bool) -> bool:
    """Start Ray (locally, or connect to ``address``); True when this call started it and must shut it down."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not verbose:
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # No address: a fresh local Ray, never a cluster some earlier `ray start` left behind; RAY_ADDRESS (set by
    # Ray's job submission for the entrypoint) counts as an address.
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_address(address)
    import ray

    if ray.is_initialized():
        return False
    level = logging.INFO if verbose else logging.ERROR
    from ._imports import worker_runtime_env

    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": level,
        "log_to_driver": verbose,
        "runtime_env": worker_runtime_env(address),  # trial workers import user modules as the driver does
    }
    try:
        ray.init(address=address or "local", **kwargs)
    except Exception as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray runtime"
        hint = (
            "; the cluster may use token authentication: set RAY_AUTH_MODE and RAY_AUTH_TOKEN as on its nodes"
            if "auth" in str(exc).lower()
            else ""
        )
        raise SearchError(f"cannot start or connect to {where}: {_first_line(exc)}{hint}") from None
    for name in ("ray", "ray.tune", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(level)
    return True


def _cluster_concurrency(cpus: float, gpus: float) -> int:
    import ray

    res = ray.cluster_resources()
    fits = math.floor(res.get("CPU", 1) / cpus) if cpus > 0 else 10**6
    if gpus > 0:
        fits = min(fits, math.floor(res.get("GPU", 0) / gpus))
    if fits < 1:
        raise SearchError(
            f"no node can run a trial with {cpus} CPUs and {gpus} GPUs (the cluster has {res.get('CPU', 0):g} CPUs, "
            f"{res.get('GPU', 0):g} GPUs); lower --cpus-per-trial/--gpus-per-trial"
        )
    return fits


@dataclass(frozen=True)
class LaunchResult:
    """What a ``search`` or ``resume`` call ran, and the run's results afterwards."""

    run_dir: Path
    ran: int  # trials this call started
    results: Results
    interrupted: bool  # fewer trials counted than requested (Ctrl-C, or trials cut off)
    seconds: float
    report_files: dict[str, Path]


def _launch(
    run_dir: Path,
    info: RunInfo,
    storage: optuna.storages.BaseStorage,
    *,
    n_trials: int,
    sampler_seed: int,
    kind: str,
    verbose: bool,
    log: Log,
    already: list[dict[str, Any]],
    already_counted: int,
) -> int:
    """Run ``n_trials`` new trials of the run's study through Ray Tune (Ray must be initialized).

    Returns the number of trials started.
    """
    from ray import tune

    space_yaml = (run_dir / SPACE_FILE).read_text()
    space = _space_from_text(space_yaml)
    res = info.resources
    cpus, gpus = float(res["cpus_per_trial"]), float(res["gpus_per_trial"])
    fits = _cluster_concurrency(cpus, gpus)
    concurrent = min(int(res["concurrent"]), fits) if res.get("concurrent") else fits
    concurrent = max(1, min(concurrent, n_trials))
    ledger = _ledger_class()(
        space=functools.partial(_suggest, dims=space.dims),
        metric=list(OBJECTIVES),
        mode=list(MODES),
        sampler=_make_sampler(info.sampler, sampler_seed, info.sampler_options),
        study_name=info.study_name,
        storage=storage,
    )
    ledger.progress = _Progress(log=log, requested=n_trials, already=already_counted, records=list(already))
    job = _Job(
        run_dir=str(run_dir.resolve()),
        space_yaml=space_yaml,
        threads=max(1, int(cpus)),
        gpus=gpus,
    )
    trainable = tune.with_resources(tune.with_parameters(_tune_trial, job=job), {"cpu": cpus, "gpu": gpus})
    name = f"{kind}-{len(info.launches):02d}"
    info.launches.append({"kind": kind, "name": name, "started": _now(), "trials": n_trials, "seed": sampler_seed,
                          "concurrent": concurrent})  # fmt: skip
    info.write(run_dir)
    log(
        f"{kind}: {n_trials} trial{'s' if n_trials != 1 else ''}, {concurrent} at a time, {cpus:g} CPU"
        f"{f' + {gpus:g} GPU' if gpus else ''} each, sampler {info.sampler} (seed {sampler_seed}), run dir {run_dir}"
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ledger,
            num_samples=n_trials,
            max_concurrent_trials=concurrent,
            reuse_actors=True,  # one worker process runs many trials: data stays loaded, no actor start-up
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str((run_dir / RAY_DIR).resolve()),
            verbose=1 if verbose else 0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    try:
        # Tune's status tables (--verbose) print to stdout, which belongs to --json: send them to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            tuner.fit()
    finally:
        ledger.close_open_trials()
    return ledger.started


def _finish(run_dir: Path, info: RunInfo, study_storage: str | None, ran: int, t0: float, log: Log) -> LaunchResult:
    results = load_results(run_dir, study_storage=study_storage)
    files: dict[str, Path] = {}
    try:
        files = write_run_report(run_dir, results)
    except OSError as exc:
        log(f"warning: could not write the report files: {exc}")
    return LaunchResult(
        run_dir=run_dir,
        ran=ran,
        results=results,
        interrupted=results.counted < results.requested,
        seconds=time.perf_counter() - t0,
        report_files=files,
    )


def _check_resources(concurrent: int | None, cpus: float, gpus: float) -> None:
    if concurrent is not None and (isinstance(concurrent, bool) or not isinstance(concurrent, int) or concurrent < 1):
        raise SearchError(f"--concurrent must be a positive integer, got {concurrent!r}")
    if not (isinstance(cpus, (int, float)) and math.isfinite(cpus) and cpus > 0):
        raise SearchError(f"--cpus-per-trial must be > 0, got {cpus!r}")
    if not (isinstance(gpus, (int, float)) and math.isfinite(gpus) and gpus >= 0):
        raise SearchError(f"--gpus-per-trial must be >= 0 (fractions share a GPU, e.g. 0.25), got {gpus!r}")
    if gpus > 1 and gpus != int(gpus):
        raise SearchError(f"--gpus-per-trial above 1 must be a whole number, got {gpus!r}")


def run_search(
    space: str | os.PathLike | None,
    run_dir: str | os.PathLike,
    *,
    trials: int | None = None,
    concurrent: int | None = None,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    address: str | None = None,
    sampler: str | None = None,
    seed: int = 0,
    study_storage: str | None = None,
    overrides: Sequence[str] = (),
    verbose: bool = False,
    log: Log = _stderr,
) -> LaunchResult:
    """Start a new search in ``run_dir`` (which must not hold one) and run it to the end.

    ``trials`` defaults to the space's ``search.trials``, else 20; ``sampler`` to its ``search.sampler``, else
    tpe. ``concurrent`` defaults to as many trials as the cluster's CPUs (and GPUs) fit. With ``concurrent=1``
    the sequence of suggested configurations is reproducible for a given ``seed``.
    """
    import optuna

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    spec = load_space(space, overrides)
    spec.check_importable()
    n = trials if trials is not None else (spec.trials or DEFAULT_TRIALS)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SearchError(f"--trials must be a positive integer, got {n!r}")
    sampler = sampler or spec.sampler or "tpe"
    if sampler not in SAMPLERS:
        raise SearchError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SearchError(f"--seed must be a non-negative integer, got {seed!r}")
    _check_resources(concurrent, cpus_per_trial, gpus_per_trial)
    if run_dir.exists() and not run_dir.is_dir():
        raise SearchError(f"--run-dir {run_dir} is a file; give a directory")
    if (run_dir / RUN_FILE).exists():
        raise SearchError(
            f"{run_dir} already holds a search; continue or extend it with `autoprune resume {run_dir}` "
            "or choose another --run-dir"
        )
    taken = [m for m in _RUN_DIR_MARKERS if (run_dir / m).exists()]
    if taken:
        raise SearchError(f"{run_dir} holds {taken[0]} but no {RUN_FILE} (a search that never started?); "
                          "choose another --run-dir or empty it")  # fmt: skip
    _quiet_optuna()
    # A storage given by URL or path is opened now: a bad one fails before Ray starts or anything is written.
    given_storage = open_storage(study_storage, run_dir) if study_storage is not None else None
    started_ray = _init_ray(address, verbose)
    created: list[Path] = []
    new_study: tuple[str, optuna.storages.BaseStorage] | None = None
    try:
        made_dir = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        if made_dir:
            created.append(run_dir)
        if not (run_dir / LOCK_FILE).exists():
            created.append(run_dir / LOCK_FILE)
        with _run_lock(run_dir):
            if study_storage is None:
                created.append(run_dir / STUDY_FILE)
            storage = given_storage if given_storage is not None else open_storage(None, run_dir)
            study_name = "autoprune"
            if study_storage is not None:  # a shared database holds many studies: make the name unique
                study_name = f"autoprune-{run_dir.resolve().name}-{secrets.token_hex(3)}"
            try:
                study = optuna.create_study(storage=storage, study_name=study_name, directions=["maximize", "minimize"])
            except optuna.exceptions.DuplicatedStudyError:
                raise SearchError(f"study {study_name!r} exists already in {redact_url(study_storage or '')}") from None
            new_study = (study_name, storage)
            with warnings.catch_warnings():  # experimental in Optuna, harmless: names the values in dashboards
                warnings.simplefilter("ignore")
                study.set_metric_names(list(OBJECTIVES))
            with open(run_dir / SPACE_FILE, "x") as fh:
                created.append(run_dir / SPACE_FILE)
                fh.write(f"# Frozen search space of this run (from {spec.source}); resume checks its digest.\n")
                yaml.safe_dump(spec.document, fh, sort_keys=False)
            frozen = _space_from_text((run_dir / SPACE_FILE).read_text())
            if frozen.digest != spec.digest:  # a YAML round trip that changed a value would break resume
                raise SearchError(f"the frozen space in {run_dir / SPACE_FILE} does not read back identically")
            info = RunInfo(
                study_name=study_name,
                storage=_storage_record(study_storage, run_dir),
                space_digest=spec.digest,
                space_source=str(spec.source),
                sampler=sampler,
                seed=seed,
                trials=n,
                resources={
                    "concurrent": concurrent,
                    "cpus_per_trial": cpus_per_trial,
                    "gpus_per_trial": gpus_per_trial,
                },
                sampler_options={"population_size": max(4, min(50, n // 4))} if sampler == "nsga2" else {},
                address=address,
                version=_version(),
                created=_now(),
            )
            info.write(run_dir)
            created.clear()  # the run exists from here on: never remove anything of it
            new_study = None
            (run_dir / MODELS_DIR).mkdir(exist_ok=True)
            ran = _launch(
                run_dir, info, storage, n_trials=n, sampler_seed=seed, kind="search",
                verbose=verbose, log=log, already=[], already_counted=0,
            )  # fmt: skip
            return _finish(run_dir, info, study_storage, ran, t0, log)
    except BaseException:
        # Undo a start that failed before run.json existed: what this call created, and nothing else.
        if new_study is not None and study_storage is not None:
            with contextlib.suppress(Exception):
                optuna.delete_study(study_name=new_study[0], storage=new_study[1])
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _close_stale_trials(study: optuna.Study) -> int:
    """FAIL the trials a dead driver left RUNNING (the run lock guarantees no live driver owns them)."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    for t in stale:
        # Optuna has no public call to annotate a trial by number; the storage API is the stable way.
        study._storage.set_trial_user_attr(t._trial_id, "outcome", "interrupted")
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "left running by an interrupted search")
        study.tell(t.number, state=TrialState.FAIL)
    return len(stale)


def resume_search(
    run_dir: str | os.PathLike,
    *,
    trials: int | None = None,
    study_storage: str | None = None,
    address: str | None = None,
    concurrent: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    verbose: bool = False,
    log: Log = _stderr,
) -> LaunchResult:
    """Finish an interrupted search, or extend a finished one to ``trials`` trials in total.

    Trials an interruption left RUNNING are closed as FAIL (outcome ``interrupted``) and replaced; finished
    ones are kept and never re-run. Resources default to those in run.json.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    info = RunInfo.read(run_dir)
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        raise SearchError(f"--trials must be a positive integer, got {trials!r}")
    frozen_path = run_dir / SPACE_FILE
    if not frozen_path.is_file():
        raise SearchError(f"{frozen_path} is missing; it is needed to resume this search")
    frozen = _space_from_text(frozen_path.read_text())
    frozen.check_importable()
    if frozen.digest != info.space_digest:
        raise SearchError(
            f"{frozen_path} was changed since the search started (digest {frozen.digest[:12]} != "
            f"{info.space_digest[:12]} in {RUN_FILE}); restore it, or start a new search in another --run-dir"
        )
    resources = dict(info.resources)
    overrides = {"concurrent": concurrent, "cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial}
    for key, value in overrides.items():
        if value is not None:
            resources[key] = value
    _check_resources(resources["concurrent"], float(resources["cpus_per_trial"]), float(resources["gpus_per_trial"]))
    with _run_lock(run_dir):
        study = _load_study(info, run_dir, study_storage)
        records, failures, _ = _trial_records(study, run_dir)
        counted = len(records) + sum(f["outcome"] in COUNTED_OUTCOMES for f in failures)
        target = trials if trials is not None else info.trials
        missing = target - counted
        where = address if address is not None else info.address
        started_ray = False
        try:
            if missing > 0:  # connect first: an unreachable cluster must leave the study as it is
                try:
                    started_ray = _init_ray(None if where in (None, "local") else where, verbose)
                except SearchError as exc:
                    if address is None and where:
                        raise SearchError(
                            f"{exc} (this search ran on {where}; use --address local to resume here)"
                        ) from None
                    raise
            closed = _close_stale_trials(study)
            if closed:
                log(f"resume: closed {closed} trial{'s' if closed != 1 else ''} left running by an interruption")
            if missing <= 0:
                log(f"resume: {counted} trials finished already (requested {target}); nothing to run")
                return _finish(run_dir, info, study_storage, 0, t0, log)
            info.trials = target
            info.resources = resources
            info.address = where
            # A new seed per launch: the same seed would make the random sampler repeat the first trials' configs.
            sampler_seed = info.seed + len(study.trials)
            ran = _launch(
                run_dir, info, study._storage, n_trials=missing, sampler_seed=sampler_seed, kind="resume",
                verbose=verbose, log=log, already=records, already_counted=counted,
            )  # fmt: skip
        finally:
            if started_ray:
                import ray

                ray.shutdown()
        return _finish(run_dir, info, study_storage, ran, t0, log)
