"""The repository keeps its promises: README's commands, CI running exactly them, ruff-clean and -formatted code."""

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
    for command in (["check"], ["format", "--check"]):
        proc = subprocess.run(
            [ruff, *command, "autoprune", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout


def _imports(path: Path) -> set[str]:
    """Modules a source file imports (relative ones as ``autoprune.x``), wherever in the file."""
    import ast

    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            found.add(".".join([*base, *(node.module or "").split(".")]).strip("."))
    return found


def test_one_home_for_ray_and_small_modules() -> None:
    sources = sorted((ROOT / "autoprune").rglob("*.py"))
    adapter = ROOT / "autoprune" / "raytune"
    for path in sources:
        imported = _imports(path)
        if adapter not in path.parents:
            assert not any(m == "ray" or m.startswith("ray.") for m in imported), f"{path.name} imports Ray"
            if path.name not in ("cli.py", "api.py"):
                assert not any(m.startswith("autoprune.raytune") for m in imported), f"{path.name} imports raytune"
        lines = len(path.read_text().splitlines())
        assert lines <= 420, f"{path.relative_to(ROOT)} has {lines} lines"
