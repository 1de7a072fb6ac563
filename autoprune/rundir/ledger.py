"""The Optuna study as the ledger of a search: samplers, recording outcomes, reading records back. Where the
study is stored, and how each command opens it (read-only for ``report`` and ``pick``), is ``_storage``'s.

Every finished trial is COMPLETE with values (val_accuracy, the searched size: params_nonzero, or macs or
latency_ms under ``search.objective``, which the study keeps as its user attribute ``objective``) and its trial
record and model path as user attributes; a trial that diverged, raised or was cut off is FAIL with its ``outcome`` and
``fail_reason``; a trial that early stopping stopped is PRUNED, with no values (it never enters the front), the
``rung`` and ``rung_epoch`` it was stopped at and the ``stop_reason``. Every trial that reported progress keeps
its ``intermediate`` values: ``[epoch, stage, val_accuracy]`` on the validation subset (see ``trial.py``).

The study itself carries the frozen space document and the autoprune version as user attributes, so a study
opened in Optuna or optuna-dashboard alone says what it is. Only the driver writes to the study, so trial
workers need no database access.

Optuna only: nothing here imports Ray, and everything works on a plain ``optuna.create_study()``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune.errors import SearchError
from autoprune.io._paths import PathError, inside_run
from autoprune.rundir._storage import (
    STORAGE_ENV as STORAGE_ENV,  # re-exported: the storage functions are the ledger's API
)
from autoprune.rundir._storage import open_storage as open_storage
from autoprune.rundir._storage import redact_url as redact_url
from autoprune.rundir._storage import storage_record as storage_record
from autoprune.rundir._storage import storage_spec as storage_spec
from autoprune.rundir.directory import MODELS_DIR, RUN_FILE, STUDY_FILE, RunInfo
from autoprune.searching._attrs import (
    BASELINE_ATTR,
    CALIBRATION_ATTR,
    FAIL_REASON_ATTR,
    INTERMEDIATE_ATTR,
    MODEL_PATH_ATTR,
    OBJECTIVE_ATTR,
    OUTCOME_ATTR,
    RECORD_ATTR,
    REFINE_ATTR,
    RUNG_ATTR,
    RUNG_EPOCH_ATTR,
    SIZE_ATTR,
    SPACE_ATTR,
    SPACE_DIGEST_ATTR,
    STOP_REASON_ATTR,
    VERSION_ATTR,
)
from autoprune.searching._reference import checkpoint_reference, dense_baseline
from autoprune.searching.launchconfig import (
    DEFAULT_SAMPLER as DEFAULT_SAMPLER,  # re-exported: the samplers are the ledger's
)
from autoprune.searching.launchconfig import check_sampler as check_sampler
from autoprune.searching.pareto import SIZE_KEYS
from autoprune.searching.space import SAMPLERS as SAMPLERS  # re-exported: the names make_sampler takes

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from autoprune.searching.space import SearchSpace

# The values Ray Tune's reports carry (early stopping judges the planned parameter count, whatever the objective);
# the study's second value is the searched objective's record key (``objective_key``).
OBJECTIVES = ("val_accuracy", "params_nonzero")
DIRECTIONS = ("maximize", "minimize")
# Trial outcomes kept in the study (user attribute ``OUTCOME_ATTR``). The first five count toward the number of trials
# a search asked for: a trial stopped early was judged, not lost, and a trial whose process was killed (the OOM
# killer's SIGKILL) failed like one that raised, so the search goes on to the number asked for. Only trials cut
# off by an interruption are replaced by resume.
COUNTED_OUTCOMES = ("complete", "diverged", "error", "pruned", "crashed")
OUTCOMES = (*COUNTED_OUTCOMES, "interrupted")


# -------------------------------------------------------------------------------------------------- study


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO; a search reports its own progress."""
    import optuna

    if optuna.logging.get_verbosity() < optuna.logging.WARNING:
        optuna.logging.set_verbosity(optuna.logging.WARNING)


def create_study(storage: optuna.storages.BaseStorage, name: str, space: SearchSpace, version: str) -> optuna.Study:
    """A new two-objective study that says what it is: metric names, the objective, the space document, the
    version."""
    import optuna

    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=list(DIRECTIONS))
    except optuna.exceptions.DuplicatedStudyError:
        raise SearchError(f"study {name!r} exists already in this storage; choose another --run-dir") from None
    with warnings.catch_warnings():  # experimental in Optuna, harmless: names the values in dashboards
        warnings.simplefilter("ignore")
        study.set_metric_names([OBJECTIVES[0], SIZE_KEYS[space.objective]])
    study.set_user_attr(OBJECTIVE_ATTR, space.objective)
    study.set_user_attr(VERSION_ATTR, version)
    study.set_user_attr(SPACE_ATTR, space.document)
    study.set_user_attr(SPACE_DIGEST_ATTR, space.digest)
    return study


def load_study(info: RunInfo, run_dir: Path, storage_override: str | None, *, read_only: bool = False) -> optuna.Study:
    """Open the study of a run directory; it must exist (nothing is created). ``read_only`` (``report``, ``pick``)
    writes nothing at all; reading is safe while a search runs."""
    import optuna

    quiet_optuna()
    spec = storage_spec(info, run_dir, storage_override)
    if spec is None and not (run_dir / STUDY_FILE).exists():
        raise SearchError(f"{run_dir} has {RUN_FILE} but no {STUDY_FILE}; the study of this run is lost")
    storage = open_storage(spec, run_dir, mode="read" if read_only else "write")
    try:
        return optuna.load_study(study_name=info.study_name, storage=storage)
    except KeyError:
        shown = redact_url(spec) if spec else str(run_dir / STUDY_FILE)
        raise SearchError(
            f"study {info.study_name!r} not found in {shown}; is this the storage of {run_dir}?"
        ) from None


def study_objective(study: optuna.Study) -> str:
    """The study's ``search.objective`` (``params`` for a study made before searches had one)."""
    name = study.user_attrs.get(OBJECTIVE_ATTR, "params")
    if not isinstance(name, str) or name not in SIZE_KEYS:
        raise SearchError(f"the study's objective {name!r:.40} is not one of {', '.join(SIZE_KEYS)}; it was edited")
    return name


def check_objective(study: optuna.Study, info: RunInfo, space: SearchSpace) -> None:
    """Refuse to go on with a search whose objective changed since it started: its values would mix two measures."""
    searched = study_objective(study)
    for where, name in ((RUN_FILE, info.objective), ("the frozen space's search.objective", space.objective)):
        if name != searched:
            raise SearchError(
                f"{where} says objective {name!r} but this study was searched for {searched!r}; a search keeps its "
                "objective: restore it, or start a new search in another --run-dir"
            )


def sampler_options(name: str, trials: int) -> dict[str, Any]:
    """Options fixed when a search starts (run.json keeps them so a resume samples the same way)."""
    return {"population_size": max(4, min(50, trials // 4))} if name == "nsga2" else {}


def make_sampler(name: str, seed: int, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    import optuna

    check_sampler(name)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=int(options.get("population_size", 50)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


# ------------------------------------------------------------------------------------------ writing outcomes


@dataclass(frozen=True)
class Outcome:
    """How one trial ended, as the study records it."""

    kind: str  # one of OUTCOMES
    record: dict[str, Any] | None = None  # the trial record (complete only)
    model_path: str | None = None  # run-directory-relative (complete only)
    reason: str | None = None  # why it failed, or why early stopping stopped it
    attrs: dict[str, Any] = field(default_factory=dict)  # where it ran: node_id, hostname, ray_trial_id
    intermediate: list[list[Any]] = field(default_factory=list)  # [epoch, stage, val_accuracy] per report
    rung: tuple[int, float] | None = None  # pruned: (rung, its epoch)

    @property
    def counted(self) -> bool:
        """Whether it counts toward the trials a search asked for (cut-off trials are run again)."""
        return self.kind in COUNTED_OUTCOMES


def record_outcome(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> None:
    """Annotate ``trial`` with its outcome and tell the study: COMPLETE with both values, PRUNED, or FAIL. A
    finished trial that could not measure the searched objective (``study_objective``) fails, saying so."""
    from optuna.trial import TrialState

    objective = study_objective(study)
    if outcome.kind == "complete" and outcome.record is not None and outcome.record.get(SIZE_KEYS[objective]) is None:
        why = f"its {SIZE_KEYS[objective]} could not be measured (autoprune trial on its configuration logs why)"
        outcome = Outcome("error", reason=why, attrs=outcome.attrs, intermediate=outcome.intermediate)
    trial.set_user_attr(OUTCOME_ATTR, outcome.kind)
    for key, value in outcome.attrs.items():
        if value:
            trial.set_user_attr(key, value)
    if outcome.intermediate:
        trial.set_user_attr(INTERMEDIATE_ATTR, outcome.intermediate)
    if outcome.kind == "pruned":
        if outcome.rung is not None:
            trial.set_user_attr(RUNG_ATTR, outcome.rung[0])
            trial.set_user_attr(RUNG_EPOCH_ATTR, outcome.rung[1])
        trial.set_user_attr(STOP_REASON_ATTR, outcome.reason or "")
        study.tell(trial, state=TrialState.PRUNED)
    elif outcome.kind == "complete" and outcome.record is not None:
        trial.set_user_attr(RECORD_ATTR, outcome.record)
        trial.set_user_attr(MODEL_PATH_ATTR, outcome.model_path)
        values = [outcome.record[OBJECTIVES[0]], outcome.record[SIZE_KEYS[objective]]]
        study.tell(trial, values, state=TrialState.COMPLETE)
    else:
        trial.set_user_attr(FAIL_REASON_ATTR, outcome.reason or "")
        study.tell(trial, state=TrialState.FAIL)


def close_stale_trials(study: optuna.Study) -> int:
    """FAIL the trials a dead driver left RUNNING (the run lock guarantees no live driver owns them).

    WAITING trials (``study.enqueue_trial``) are left for the sampler: the next ``ask()`` runs them.
    """
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        # Optuna has no public call to annotate a trial by number; the storage API is the stable way.
        study._storage.set_trial_user_attr(t._trial_id, OUTCOME_ATTR, "interrupted")
        study._storage.set_trial_user_attr(t._trial_id, FAIL_REASON_ATTR, "left running by an interrupted search")
        study.tell(t.number, state=TrialState.FAIL)
    return len(stale)


# ------------------------------------------------------------------------------------------ reading records


@dataclass
class Results:
    """Every trial of a run's study, as records, and the Pareto front over the finished ones."""

    trials: list[dict[str, Any]]  # records of COMPLETE trials, by trial number
    front: list[dict[str, Any]]  # the non-dominated ones, sorted by the objective's key (params_nonzero)
    failed: int  # FAIL trials (diverged, raised, cut off)
    running: int  # RUNNING trials (a search in progress, or one that was killed)
    counted: int  # trials that count toward the requested number
    requested: int
    baseline: dict[str, Any] | None  # the most accurate dense (unpruned) trial, when the search has one
    failures: list[dict[str, Any]] = field(default_factory=list)  # {"trial", "outcome", "reason"}
    stopped: list[dict[str, Any]] = field(default_factory=list)  # PRUNED: {"trial", "rung", "epoch", "val_accuracy"}
    run_dir: Path | None = None
    study_trials: list[dict[str, Any]] = field(default_factory=list)  # every trial: trial, state, params, baseline
    calibration: str | None = None  # what the calibration of the baselines chose, and from which probes
    objective: str = "params"  # search.objective: the front trades val_accuracy against SIZE_KEYS[objective]

    @property
    def key(self) -> str:
        """The record key the front minimizes."""
        return SIZE_KEYS[self.objective]

    def frame(self) -> pd.DataFrame:
        """One row per trial of the study, flat columns, in trial order (``optuna``'s ``trials_dataframe`` style).

        Columns: ``trial``, ``state`` (COMPLETE, PRUNED, FAIL, RUNNING, WAITING), ``outcome``, ``val_accuracy``,
        ``test_accuracy``, ``params_nonzero`` and ``params_total`` (nullable integers), ``fraction_dense``,
        ``macs``, ``latency_ms`` and ``speedup`` where the records have them, ``sparsity.<layer>``, every searched
        parameter under its dotted path, ``on_front``, ``baseline`` (seeded
        by baseline seeding), ``refined_from`` (the trial whose settings a front refinement carries, else
        missing), ``model_path``, ``reason``. The front is ``df[df.on_front]``.
        """
        import pandas as pd

        records = {r["trial"]: r for r in self.trials}
        failures = {f["trial"]: f for f in (*self.failures, *self.stopped)}
        front = {r["trial"] for r in self.front}
        rows = []
        for t in self.study_trials:
            rec, fail = records.get(t["trial"], {}), failures.get(t["trial"], {})
            row = {"trial": t["trial"], "state": t["state"], "outcome": "complete" if rec else fail.get("outcome")}
            for key in ("val_accuracy", "test_accuracy", "params_nonzero", "params_total"):
                row[key] = rec.get(key)
            total = rec.get("params_total")
            row["fraction_dense"] = rec["params_nonzero"] / total if total else None
            row.update({key: rec[key] for key in _SPEED_COLUMNS if key in rec})
            row.update({f"sparsity.{k}": v for k, v in (rec.get("layer_sparsity") or {}).items()})
            row.update(t["params"])
            row.update(on_front=t["trial"] in front, baseline=bool(t.get("baseline")), refined_from=t.get(REFINE_ATTR))
            row.update(model_path=rec.get("model_path"), reason=fail.get("reason"))
            rows.append(row)
        df = pd.DataFrame(rows, columns=list(dict.fromkeys(k for row in rows for k in row)) or ["trial"])
        floats = ["val_accuracy", "test_accuracy", "fraction_dense", "latency_ms", "speedup"]
        floats += [c for c in df if c.startswith("sparsity.")]
        for col in df:
            if col in ("params_nonzero", "params_total", "macs"):
                df[col] = df[col].astype("Int64")
            elif col in floats:
                df[col] = df[col].astype("float64")
            elif col in ("on_front", "baseline"):
                df[col] = df[col].astype(bool)
            elif col == REFINE_ATTR:
                df[col] = df[col].astype("Int64")
        return df


_SPEED_COLUMNS = ("macs", "latency_ms", "speedup")  # in the frame: what the model executes, and how fast


def trial_records(study: optuna.Study, run_dir: Path | None = None) -> tuple[list[dict], list[dict], int]:
    """(records of finished trials, trials that did not finish, number still RUNNING). ``model_path`` becomes
    absolute. Trials stopped early are among those that did not finish, with outcome ``pruned``."""
    from optuna.trial import TrialState

    records, failures, running = [], [], 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE and isinstance(t.user_attrs.get(RECORD_ATTR), dict):
            rec = {"trial": t.number, **t.user_attrs[RECORD_ATTR]}
            for attr in (BASELINE_ATTR, REFINE_ATTR, SIZE_ATTR):  # seeded; refined from a trial; to a size
                if t.user_attrs.get(attr) is not None:
                    rec[attr] = t.user_attrs[attr]
            if t.user_attrs.get(MODEL_PATH_ATTR):
                rel = t.user_attrs[MODEL_PATH_ATTR]
                rec["model_path"] = rel
                if run_dir is not None:
                    try:  # a path from the study is data: it may only name a model of this run
                        rec["model_path"] = str(inside_run(run_dir, rel, what="model_path", under=MODELS_DIR))
                    except PathError:
                        rec["model_path"] = None
                        rec["model_path_refused"] = rel  # shown by report; pick says why it will not read it
            records.append(rec)
        elif t.state == TrialState.FAIL or t.state == TrialState.COMPLETE:  # COMPLETE without a record: cut off
            outcome = t.user_attrs.get(OUTCOME_ATTR, "interrupted")
            reason = t.user_attrs.get(FAIL_REASON_ATTR, "the trial did not report its result")
            failures.append({"trial": t.number, "outcome": outcome, "reason": reason})
        elif t.state == TrialState.PRUNED:
            epoch, _, acc = (t.user_attrs.get(INTERMEDIATE_ATTR) or [[None, None, None]])[-1]
            stop = {"reason": t.user_attrs.get(STOP_REASON_ATTR, ""), "rung": t.user_attrs.get(RUNG_ATTR)}
            failures.append({"trial": t.number, "outcome": "pruned", **stop, "epoch": epoch, "val_accuracy": acc})
        elif t.state == TrialState.RUNNING:
            running += 1
    return records, failures, running


def count_finished(records: list[dict], failures: list[dict]) -> int:
    """Trials that count toward the number a search asked for."""
    return len(records) + sum(f["outcome"] in COUNTED_OUTCOMES for f in failures)


def study_results(study: optuna.Study, *, requested: int, run_dir: Path | None = None) -> Results:
    """Records, failures and the Pareto front of a study."""
    from autoprune.searching.pareto import pareto_front

    records, unfinished, running = trial_records(study, run_dir)
    failures = [f for f in unfinished if f["outcome"] != "pruned"]
    every = [
        {
            "trial": t.number,
            "state": t.state.name,
            "params": dict(t.params),
            "baseline": BASELINE_ATTR in t.user_attrs,
            REFINE_ATTR: t.user_attrs.get(REFINE_ATTR),
        }
        for t in study.get_trials()
    ]
    calibrated = study.user_attrs.get(CALIBRATION_ATTR)
    objective = study_objective(study)
    return Results(
        objective=objective,
        calibration=calibrated.get("summary") if isinstance(calibrated, dict) else None,
        trials=records,
        front=pareto_front(records, SIZE_KEYS[objective]),
        failed=len(failures),
        running=running,
        counted=count_finished(records, unfinished),
        requested=requested,
        baseline=checkpoint_reference(study) or dense_baseline(records),
        failures=failures,
        stopped=[f for f in unfinished if f["outcome"] == "pruned"],
        run_dir=run_dir,
        study_trials=every,
    )


def load_results(run_dir: str | os.PathLike, *, study_storage: str | None = None) -> Results:
    """Read a run's study (no Ray needed; works while a search is running) and compute its Pareto front."""
    run_dir = Path(run_dir)
    info = RunInfo.read(run_dir)
    study = load_study(info, run_dir, study_storage, read_only=True)
    return study_results(study, requested=info.launch.trials, run_dir=run_dir)
