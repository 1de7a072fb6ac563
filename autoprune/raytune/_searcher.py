"""The searcher of one launch: Ray Tune asks it for each new trial's configuration, and it asks the study.

Only Ray Tune's public ``Searcher`` interface is used: the driver opens the study with the launch's sampler and hands
it over, the searcher asks it for each new trial (after the search's policies, ``refine.SearchPolicies``, have had
their turn), and records each outcome in it (``ledger.record_outcome``) before it is told. Ray's ``OptunaSearch``
is not used: the study is the ledger, and none of Ray's private fields is read.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from autoprune.errors import first_line
from autoprune.raytune._worker import NO_SPACE, outcome_of, suggest
from autoprune.rundir import ledger
from autoprune.searching.baselines import Calibration
from autoprune.searching.refine import Refiner, SearchPolicies

if TYPE_CHECKING:
    import optuna

    from autoprune.searching.progress import Progress
    from autoprune.searching.space import SearchSpace

_MODES = tuple({"maximize": "max", "minimize": "min"}[d] for d in ledger.DIRECTIONS)  # Ray's names


class _AskTheStudy:
    """The searcher's logic, joined with Ray Tune's ``Searcher`` by ``searcher_class`` (which imports Ray).

    ``study`` is asked for every new trial of ``space``; ``scheduler`` (early stopping) knows the trials it stopped;
    after ``deadline`` (``time.monotonic()``) no trial starts. Tune pickles the searcher into its experiment folder;
    the state kept there is deliberately empty (no storage URL, no password): a resume reopens the study instead.
    """

    FINISHED: str  # Ray Tune's "no more trials", from its Searcher

    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        policies: SearchPolicies | None = None,
        *,
        progress: Progress | None = None,
        scheduler: Any = None,
        deadline: float | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        policies = policies or SearchPolicies()  # none: the sampler alone
        super().__init__(metric=list(ledger.OBJECTIVES), mode=list(_MODES))  # type: ignore[call-arg]
        self.study = study
        self.dims = space.dims
        self.progress = progress
        self.scheduler = scheduler
        self.deadline = deadline
        self.calibration = Calibration(space, log=log) if policies.calibrate else None
        self.refiner = Refiner(policies.refine, space.dims, log=log, sizes=policies.sizes)
        self.trials: dict[str, optuna.Trial] = {}  # Tune trial id -> the Optuna trial it runs
        self.completed: set[str] = set()
        self.timed_out = False
        self.stop_reason: str | None = None  # set when going on would only fail: no new trial is started

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.stop_reason is not None:
            return self.FINISHED
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.timed_out = True
            return self.FINISHED  # running trials go on; no new one starts
        if trial_id not in self.trials:  # the ask below takes what the policies enqueue
            calibrating = self.calibration is not None and self.calibration.before_ask(self.study)
            if not calibrating:
                self.refiner.before_ask(self.study)
            self.trials[trial_id] = self.study.ask()
        return suggest(self.trials[trial_id], self.dims)  # asked again for one trial: the same values

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Optuna refuses intermediate values in a multi-objective study (trial.report): every report carries
        # the trial's values so far, and the last one goes into the study as a user attribute.
        return None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.completed or trial_id not in self.trials:
            return
        ot_trial = self.trials[trial_id]
        stopped = self.scheduler.stopped.get(trial_id) if self.scheduler is not None else None
        outcome = outcome_of(result or {}, error, trial_id, stopped=stopped)
        if outcome.reason and outcome.reason.startswith(NO_SPACE) and self.stop_reason is None:
            self.stop_reason = outcome.reason
        unrecorded = _record(self.study, ot_trial, outcome)
        if unrecorded is not None and self.stop_reason is None:
            self.stop_reason = unrecorded
        self.completed.add(trial_id)
        if self.progress is not None:
            self.progress.finished(
                ot_trial.number, outcome.kind, outcome.record, outcome.reason, counted=outcome.counted, key=trial_id
            )

    def close_open_trials(self) -> int:
        """FAIL the trials this searcher started that Tune never completed (Ctrl-C stops without telling)."""
        open_ids = [t for t in self.trials if t not in self.completed]
        for trial_id in open_ids:
            self.on_trial_complete(trial_id, result=None, error=False)
        return len(open_ids)

    @property
    def started(self) -> int:
        return len(self.trials)

    def save(self, checkpoint_path: str) -> None:
        return None  # nothing to save: the study is the ledger

    def __getstate__(self) -> dict:
        return {"_metric": self.metric, "_mode": self.mode}  # type: ignore[attr-defined]


@functools.cache
def searcher_class() -> type:
    """The Ray Tune searcher of a launch, built on first use so that importing this module does not import Ray:
    ``searcher_class()(study, space, policies, progress=..., scheduler=..., deadline=..., log=...)``."""
    from ray.tune.search import Searcher as TuneSearcher

    return type("AutopruneSearcher", (_AskTheStudy, TuneSearcher), {"__module__": __name__})


def _record(study: optuna.Study, trial: optuna.Trial, outcome: ledger.Outcome) -> str | None:
    """Record ``outcome`` in the study; when the ledger cannot be written (a full disk), the reason to stop starting
    trials (resume closes this one)."""
    try:
        ledger.record_outcome(study, trial, outcome)
    except Exception as exc:
        root = exc
        while root.__cause__ is not None or root.__context__ is not None:  # Optuna wraps the database's
            root = root.__cause__ or root.__context__
        return f"cannot record trial {trial.number} in the study ({first_line(root, 160)})"
    return None
