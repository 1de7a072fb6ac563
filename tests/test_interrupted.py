"""What an interrupted search leaves behind, put right by ``resume``: model files of trials that did not finish.
No Ray: the run asks for no more trials than it has, so ``resume`` repairs the run and writes the report only.
(Baselines cut off by an interruption: ``test_baselines.py``.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import pytest
from _helpers import TINY_SPACE as SPACE
from _helpers import run_cli, write_run_json

from autoprune.rundir import interrupted, ledger
from autoprune.rundir.directory import space_from_text
from autoprune.rundir.ledger import Outcome

optuna.logging.set_verbosity(optuna.logging.WARNING)

RECORD = {"val_accuracy": 0.9, "test_accuracy": 0.89, "params_nonzero": 100, "params_total": 1000, "config": {}}
PARTIAL = ".trial_2.pt.0123456789ab.tmp"


def _run(run: Path) -> optuna.Study:
    """A search killed with trials 1 and 2 running: trial 1 had saved its model, trial 2 was saving it. Trial 0
    finished; models/trial_9.pt belongs to no trial of the study."""
    space = space_from_text(SPACE)
    (run / "models").mkdir(parents=True)
    (run / "space.yaml").write_text(SPACE)
    study = ledger.create_study(ledger.open_storage(None, run), "autoprune", space, "0")
    first = study.ask()
    ledger.record_outcome(study, first, Outcome("complete", record=RECORD, model_path="models/trial_0.pt"))
    study.ask(), study.ask()  # left RUNNING by the killed driver
    for name in ("trial_0.pt", "trial_1.pt", PARTIAL, "trial_9.pt"):
        (run / "models" / name).write_bytes(name.encode())
    write_run_json(run, space.digest, trials=1)  # finished already: resume runs nothing and needs no Ray
    return study


def _models(run: Path) -> dict[str, str]:
    folder = run / "models"
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()[:8] for p in folder.rglob("*.*")}


def test_resume_sets_aside_the_model_file_of_a_trial_that_did_not_finish(tmp_path: Path, capsys, monkeypatch):
    run = tmp_path / "run"
    _run(run)
    before = _models(run)
    code, _, err = run_cli(["resume", str(run)], capsys, monkeypatch)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("resume: ")]
    assert lines[:2] == [
        "resume: closed 2 trials left running by an interruption",
        "resume: moved the model file of 1 trial that did not finish (1) to models/interrupted/; removed 1 "
        "half-written model file",
    ]
    after = _models(run)
    assert after == {
        "trial_0.pt": before["trial_0.pt"],  # the finished trial's: the one models/ holds
        "interrupted/trial_1.pt": before["trial_1.pt"],  # moved whole: still loadable by hand
        "trial_9.pt": before["trial_9.pt"],  # no trial of this study: not resume's to judge
    }
    code, _, err = run_cli(["resume", str(run)], capsys, monkeypatch)  # once only
    assert code == 0 and "moved" not in err and "closed" not in err and _models(run) == after


def test_a_linked_folder_for_them_is_not_followed(tmp_path: Path) -> None:
    """A received run directory may hold models/interrupted as a link to anywhere: nothing is moved there."""
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    study = _run(run)
    elsewhere.mkdir()
    (run / "models" / "interrupted").symlink_to(elsewhere)
    lines = interrupted.repair(study, run, requeue=True)
    assert lines[1] == (
        "resume: left the model file of trial 1, which did not finish, in models/ (models/interrupted is not a "
        "folder they can be moved to); removed 1 half-written model file"
    )
    assert list(elsewhere.iterdir()) == [] and (run / "models" / "trial_1.pt").exists()


@pytest.mark.parametrize("state", ["pruned", "diverged", "complete"])
def test_only_files_of_trials_without_a_result_are_moved(state: str, tmp_path: Path) -> None:
    study = optuna.create_study(directions=list(ledger.DIRECTIONS))
    trial = study.ask()
    model_path = "models/trial_0.pt" if state == "complete" else None
    ledger.record_outcome(study, trial, Outcome(state, record=RECORD, model_path=model_path, reason="x"))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "trial_0.pt").write_bytes(b"model")
    moved = interrupted.set_aside_models(study, tmp_path)
    assert (moved is None) == (state == "complete")
    assert (tmp_path / "models" / "trial_0.pt").exists() == (state == "complete")
