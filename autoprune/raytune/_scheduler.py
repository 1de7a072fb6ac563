"""The Ray Tune scheduler of early stopping: ``stopping.ParetoHalving`` applied to each intermediate result."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from autoprune.searching.stopping import Decision, ParetoHalving


@functools.cache
def scheduler_class() -> type:
    """The Ray Tune scheduler that applies ``ParetoHalving`` to each intermediate result.

    Built on first use so that this module imports without Ray. Construct it with
    ``scheduler_class()(halving, epoch_key=..., accuracy_key=..., params_key=..., last_key=...)``: results without
    ``epoch_key`` (a trial's final result) are not judged. ``label(trial)`` names a trial in the rung tables and
    logs; ``log`` receives the reason of every decision taken at a rung. ``stopped`` maps the Ray trial id of
    every trial it stopped to its ``Decision``. ``exempt(trial)`` is true for a trial that is recorded at the
    rungs but never stopped (a seeded baseline).
    """
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class ParetoHalvingScheduler(FIFOScheduler):
        def __init__(
            self,
            halving: ParetoHalving,
            *,
            epoch_key: str,
            accuracy_key: str,
            params_key: str,
            last_key: str | None = None,
            label: Callable[[Any], str] | None = None,
            log: Callable[[str], None] | None = None,
            exempt: Callable[[Any], bool] | None = None,
        ) -> None:
            super().__init__()
            self.halving = halving
            self.keys = (epoch_key, accuracy_key, params_key, last_key)
            self.label = label
            self.log = log
            self.exempt = exempt
            self.stopped: dict[str, Decision] = {}

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            epoch_key, accuracy_key, params_key, last_key = self.keys
            if epoch_key not in result or accuracy_key not in result:
                return TrialScheduler.CONTINUE
            params = result.get(params_key)
            last = result.get(last_key) if last_key else None
            decision = self.halving.judge(
                self.label(trial) if self.label else str(trial.trial_id),
                float(result[epoch_key]),
                float(result[accuracy_key]),
                None if params is None else float(params),
                None if last is None else float(last),
                exempt=bool(self.exempt and self.exempt(trial)),
            )
            if decision.judged and self.log is not None:
                self.log(decision.reason)
            if decision.stop:
                self.stopped[trial.trial_id] = decision
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

        def debug_string(self) -> str:
            h = self.halving
            return f"Pareto-aware successive halving (η={h.reduction_factor:g}): {len(self.stopped)} stopped"

        def __getstate__(self) -> dict:
            # Tune pickles the scheduler with its Tuner: keep the rungs, drop the callables (log, label).
            return {**self.__dict__, "label": None, "log": None, "exempt": None}

    ParetoHalvingScheduler.__qualname__ = ParetoHalvingScheduler.__name__
    return ParetoHalvingScheduler
