"""A user's own folder, as docs/guides/own-model-and-data.md describes it, and the console script run from it.

The files are the guide's own examples (``doc_example``), so the documented example is the one that is tested.
``write_user_folder`` is plain (no fixture) so that tests of the command line and of the Python API can share it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from _doc_blocks import doc_example
from _session import kill_session

USER_FILES = ("my_models.py", "my_data.py", "resnet_fashion.yaml", "tabular.yaml")

# Tiny budgets for the tests: a few hundred training samples, one epoch per phase.
TINY_RESNET = ["dataset.limit=600", "budget.train_epochs=1", "budget.finetune_epochs=1", "budget.batch_size=64"]
TINY_TABULAR = ["budget.train_epochs=2", "budget.finetune_epochs=1"]


@dataclass(frozen=True)
class UserFolder:
    path: Path
    resnet_space: Path
    tabular_space: Path


def write_user_folder(path: Path) -> UserFolder:
    """Write the guide's my_models.py, my_data.py and the two space files into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    for name in USER_FILES:
        (path / name).write_text(doc_example(name))
    return UserFolder(path=path, resnet_space=path / "resnet_fashion.yaml", tabular_space=path / "tabular.yaml")


def console_command() -> list[str]:
    """How a user runs ``autoprune``: the installed console script, whose own folder (not the working folder) is
    first on ``sys.path``. ``python -m autoprune`` would put the working folder there and hide a missing import
    path, so it is not used here."""
    script = Path(sys.executable).parent / "autoprune"
    if not script.is_file():  # no console script next to this interpreter: the same three lines pip writes
        script = Path(__file__).resolve().parent / "_console_script.py"
    return [sys.executable, str(script)]


def console_env() -> dict[str, str]:
    """The test's environment for a child process, minus anything that would put the working folder on the path."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != "."]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        env.pop("PYTHONPATH", None)
    return env


def run_console(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``autoprune ARGS`` in ``cwd``; whatever it started (a local Ray included) is stopped before returning."""
    proc = subprocess.Popen(
        [*console_command(), *args],
        cwd=cwd,
        env=console_env(),
        start_new_session=True,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        running = proc.poll() is None
        kill_session(proc)
        if running:
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
