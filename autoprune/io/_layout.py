"""The layout of a run directory: the name of every entry a search owns there, what each is, and a path within it.

``rundir`` reads and writes the entries; ``_paths`` refuses to write over them; the report names model files
relative to the run. Nothing here imports more than ``os`` and ``pathlib``.
"""

from __future__ import annotations

import os
from pathlib import Path

RUN_FILE = "run.json"
SPACE_FILE = "space.yaml"
STUDY_FILE = "study.db"  # ``study.db*`` also covers SQLite's -journal/-wal/-shm side files
MODELS_DIR = "models"
RAY_DIR = "ray"
REPORT_DIR = "report"
LOCK_FILE = ".lock"

# What each entry of a run directory is, in the order ``rundir``'s docstring draws them.
RUN_OWNED = {
    RUN_FILE: "the run's record",
    SPACE_FILE: "the frozen search space",
    STUDY_FILE: "the study (the ledger of every trial)",
    LOCK_FILE: "the run's lock",
    MODELS_DIR: "the trials' models",
    RAY_DIR: "Ray Tune's experiment folders",
    REPORT_DIR: "the run's report, rewritten by every launch and by `report`",
}


def relative_to_run(path: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    """``path`` relative to the run directory when it lies inside it (report files move with their run)."""
    try:
        return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return str(path)
