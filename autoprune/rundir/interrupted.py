"""What an interrupted search leaves behind, put right by ``resume`` before it runs a trial.

A search cut off (Ctrl-C, its driver killed, a full disk) leaves trials RUNNING in the study; model files of
trials the study never recorded as finished (a worker saved its model, then the driver died before it was told),
or half-written ones (``.trial_N.pt.*.tmp``, from a worker killed while saving); and seeded baselines that never
finished, whose sizes would stay missing from the front, since an interrupted trial is replaced by a sampled one.
``repair`` closes the first as FAIL (``ledger.close_stale_trials``), moves the second to ``models/interrupted/``
(still loadable by hand; ``models/`` holds the models of finished trials only) and removes the third, and
enqueues the baselines again; each is said in one line. Optuna and files only: nothing here imports Ray.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune.rundir.directory import MODELS_DIR
from autoprune.rundir.ledger import close_stale_trials
from autoprune.searching._attrs import BASELINE_ATTR, CALIBRATION_ATTR, OUTCOME_ATTR, PROBE_ATTR, RECORD_ATTR

if TYPE_CHECKING:
    import optuna

INTERRUPTED_DIR = "interrupted"  # under models/: model files of trials that did not finish
_MODEL = re.compile(r"trial_(\d{1,18})\.pt")  # rundir.model_file
_PARTIAL = re.compile(r"\.trial_(\d{1,18})\.pt\.[0-9a-f]+\.tmp")  # _io.atomic_open's temporary sibling


def repair(study: optuna.Study, run_dir: str | os.PathLike, *, requeue: bool) -> list[str]:
    """Put right what an interruption left in ``study`` and ``run_dir`` (held under the run lock, so no driver
    runs trials); the lines to log. ``requeue``: enqueue cut-off baselines again (when trials will run)."""
    lines = []
    closed = close_stale_trials(study)
    if closed:
        lines.append(f"resume: closed {closed} trial{'s' if closed != 1 else ''} left running by an interruption")
    moved = set_aside_models(study, run_dir)
    if moved:
        lines.append(moved)
    labels = requeue_baselines(study) if requeue else []
    if labels:
        one = len(labels) == 1
        lines.append(
            f"resume: {len(labels)} seeded baseline{'' if one else 's'} cut off by an interruption "
            f"{'runs' if one else 'run'} again before any sampled trial: {', '.join(labels)}"
        )
    return lines


def _finished_with_record(trial: optuna.trial.FrozenTrial) -> bool:
    from optuna.trial import TrialState

    return trial.state == TrialState.COMPLETE and isinstance(trial.user_attrs.get(RECORD_ATTR), dict)


def _cut_off(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` ended without a result because of an interruption, as ``ledger.trial_records`` reads it
    (FAIL, or COMPLETE without a record, with outcome ``interrupted``): not counted, and replaced on resume."""
    from optuna.trial import TrialState

    ended = trial.state == TrialState.FAIL or (trial.state == TrialState.COMPLETE and not _finished_with_record(trial))
    return ended and trial.user_attrs.get(OUTCOME_ATTR, "interrupted") == "interrupted"


def _names(numbers: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, numbers[:limit]))
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def set_aside_models(study: optuna.Study, run_dir: str | os.PathLike) -> str | None:
    """Move ``models/trial_N.pt`` of every trial N the study holds as finished without a result (failed, stopped
    early, cut off) to ``models/interrupted/``, and remove half-written model files of finished trials; a line
    saying what moved, or None. Files of trials the study does not know, and of trials still to run, are left."""
    models = Path(run_dir) / MODELS_DIR
    if models.is_symlink() or not models.is_dir():
        return None
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    orphans: list[tuple[int, Path]] = []
    removed = 0
    for path in sorted(models.iterdir()):
        partial, whole = _PARTIAL.fullmatch(path.name), _MODEL.fullmatch(path.name)
        trial = trials.get(int((partial or whole)[1])) if partial or whole else None
        if trial is None or not trial.state.is_finished():
            continue
        if partial:  # only a killed writer leaves one: its model is incomplete
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
        elif not _finished_with_record(trial) and path.is_file() and not path.is_symlink():
            orphans.append((trial.number, path))
    if not orphans and not removed:
        return None
    target = models / INTERRUPTED_DIR
    moved: list[int] = []
    if orphans and not target.is_symlink():
        with contextlib.suppress(OSError):
            target.mkdir(exist_ok=True)
    for number, path in orphans:
        if target.is_dir() and not target.is_symlink() and not (target / path.name).exists():
            with contextlib.suppress(OSError):
                path.rename(target / path.name)
                moved.append(number)
    parts = []
    if moved:
        plural = "s" if len(moved) != 1 else ""
        parts.append(
            f"moved the model file{plural} of {len(moved)} trial{plural} that did not finish ({_names(moved)}) to "
            f"{MODELS_DIR}/{INTERRUPTED_DIR}/"
        )
    if len(moved) < len(orphans):
        left = [n for n, _ in orphans if n not in moved]
        plural = "s" if len(left) != 1 else ""
        parts.append(
            f"left the model file{plural} of trial{plural} {_names(left)}, which did not finish, in {MODELS_DIR}/ "
            f"({MODELS_DIR}/{INTERRUPTED_DIR} is not a folder they can be moved to)"
        )
    if removed:
        parts.append(f"removed {removed} half-written model file{'s' if removed != 1 else ''}")
    return "resume: " + "; ".join(parts)


def requeue_baselines(study: optuna.Study) -> list[str]:
    """Enqueue again every seeded baseline whose every run was cut off by an interruption; the labels enqueued.

    A baseline stands for a size on the front; a sampled trial that replaces it does not. Its own failure
    (diverged, an error) is a result and is not run again, and a baseline waiting or run again already is not
    enqueued twice. A calibration probe runs again only while the calibration waits for it: once the ladder is
    chosen it has nothing left to decide."""
    by_label: dict[str, list[Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        label = trial.user_attrs.get(BASELINE_ATTR)
        if isinstance(label, str):
            by_label.setdefault(label, []).append(trial)
    calibration = study.user_attrs.get(CALIBRATION_ATTR)
    calibrated = isinstance(calibration, dict) and bool(calibration.get("done"))
    again = []
    for label, runs in by_label.items():
        last = runs[-1]
        probe = bool(last.user_attrs.get(PROBE_ATTR))
        if not all(_cut_off(t) for t in runs) or (probe and calibrated):
            continue
        params = last.system_attrs.get("fixed_params") or last.params  # what seeding enqueued
        attrs: dict[str, Any] = {BASELINE_ATTR: label}
        if probe:
            attrs[PROBE_ATTR] = True
        study.enqueue_trial(dict(params), user_attrs=attrs)
        again.append(label)
    return again
