"""The repository keeps its promises: README's commands, CI running exactly them, ruff-clean code."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_opens_with_the_setup_and_test_commands() -> None:
    main, tests = readme_commands()
    assert main.startswith("./setup.sh && ") and "autoprune search" in main
    assert tests.startswith("./setup.sh && ") and "pytest" in tests
    text = (ROOT / "README.md").read_text()
    assert text.index(main) < 600, "the two commands come first"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == readme_commands()[1]


def test_code_is_ruff_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: install the test extra, pip install -e '.[test]'")
    proc = subprocess.run([ruff, "check", "autoprune", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
