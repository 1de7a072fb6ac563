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
        assert lines <= 400, f"{path.relative_to(ROOT)} has {lines} lines"


# The package's parts from the bottom up: a module imports only from its own part and those before it. The root's
# modules stand below every folder (config, errors, limits, the version) or above them all (api, cli).
LAYERS = ("pruning", "io", "pipeline", "searching", "rundir", "report", "raytune")
_FOUNDATION = {"autoprune", "autoprune.config", "autoprune.errors", "autoprune._bounds"}


def _layer(module: str) -> int:
    if module in _FOUNDATION:
        return 0
    part = module.split(".")[1]
    return LAYERS.index(part) + 1 if part in LAYERS else len(LAYERS) + 1


def test_the_folders_stand_in_layers() -> None:
    paths = {_module_name(p): p for p in sorted((ROOT / "autoprune").rglob("*.py"))}
    assert {_module_name(p).split(".")[1] for p in (ROOT / "autoprune").glob("*/__init__.py")} == set(LAYERS)
    upward = [
        f"{name} -> {target}"
        for name, path in paths.items()
        for target in sorted(_package_imports(path, set(paths)))
        if _layer(target) > _layer(name)
    ]
    assert not upward, f"imports from a layer above (docs/development.md, Package layout): {upward}"


def test_no_function_over_80_lines() -> None:
    """A function reads as a few steps: one over 80 lines (docstring included) is split into the steps it takes."""
    import ast

    long = []
    for path in sorted((ROOT / "autoprune").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, f"functions over 80 lines: {long}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules a source file imports at run time, in functions too: not under ``TYPE_CHECKING``."""
    import ast

    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = set()
    pending: list[ast.AST] = [ast.parse(path.read_text())]
    while pending:
        for node in ast.iter_child_nodes(pending.pop()):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            pending.append(node)
            if isinstance(node, ast.ImportFrom):
                base = list(package[: len(package) - node.level + 1]) if node.level else []
                target = ".".join([*base, *(node.module or "").split(".")]).strip(".")
                found.update(f"{target}.{alias.name}" for alias in node.names)
                found.add(target)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return (found & modules) - {_module_name(path)}


def test_imports_flow_one_way() -> None:
    """No circle of imports among the package's modules, counting imports inside functions (a function-local
    import that only dodges a circle at load time is still one); ``TYPE_CHECKING`` imports are annotations."""
    paths = {_module_name(p): p for p in sorted((ROOT / "autoprune").rglob("*.py"))}
    edges = {name: _package_imports(path, set(paths)) for name, path in paths.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            pytest.fail("import circle: " + " -> ".join([*trail[trail.index(name) :], name]))
        if name not in done:
            for target in sorted(edges[name]):
                visit(target, [*trail, name])
            done.add(name)

    for name in paths:
        visit(name, [])
