"""The names under which a search keeps its facts in the Optuna study (user attributes).

Studies outlive the code that wrote them (a resume, a report, an extension months later all read them back), so
these strings are stored data: renaming one orphans every study written before. Every module that writes or reads
a study attribute names it from here. Nothing here imports anything.
"""

from __future__ import annotations

# Study user attributes: set when the study is created or seeded.
VERSION_ATTR = "autoprune_version"  # the autoprune version that created the study
SPACE_ATTR = "space"  # the search space's document, as frozen in the run directory
SPACE_DIGEST_ATTR = "space_digest"  # that document's digest
OBJECTIVE_ATTR = "objective"  # search.objective (absent in studies made before: params)
BASELINES_ATTR = "baselines"  # the baseline labels enqueued when the study was seeded
CALIBRATION_ATTR = "calibration"  # {leaves, limit, done, chosen, summary}
DENSE_REFERENCE_ATTR = "dense_reference"  # the dense model a search started from, measured as it is

# Trial user attributes: set when a trial is enqueued.
BASELINE_ATTR = "baseline"  # a seeded baseline's label, e.g. "global@0.01"
PROBE_ATTR = "probe"  # a calibration probe: True
REFINE_ATTR = "refined_from"  # the number of the trial whose settings a refinement carries
SIZE_ATTR = "target_size"  # a size refinement: the parameter count it was asked for

# Trial user attributes: set when a trial ends (``ledger.record_outcome``).
OUTCOME_ATTR = "outcome"  # one of ``ledger.OUTCOMES``
RECORD_ATTR = "record"  # a complete trial's record
MODEL_PATH_ATTR = "model_path"  # a complete trial's saved model, relative to the run directory
FAIL_REASON_ATTR = "fail_reason"  # why a trial failed
INTERMEDIATE_ATTR = "intermediate"  # what it reported while it trained, one entry a report
RUNG_ATTR = "rung"  # a trial stopped early: the rung it was stopped at
RUNG_EPOCH_ATTR = "rung_epoch"  # ... and that rung's epoch
STOP_REASON_ATTR = "stop_reason"  # ... and why
