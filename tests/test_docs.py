"""README.md and docs/ keep their promises: every code block is run by a test or parsed by the real command line,
every link leads somewhere, and the reference pages list exactly what the code has.

The examples other tests run (``doc_example``): my_models.py, my_data.py, resnet_fashion.yaml and tabular.yaml in
``test_user_model*.py``; my_encoder.py, train_encoder.py and encoder_digits.yaml in ``test_trained_model.py``;
from_python.py and load_plain.py in ``test_api.py``. This file runs the others.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import shlex
import sys
import types
from contextlib import redirect_stdout
from functools import cache
from pathlib import Path

import pytest
import torch
import typer
import typer.main
import yaml
from _doc_blocks import ROOT, all_blocks, blocks, doc_example, doc_files
from _user_folder import run_console, write_user_folder

import autoprune
from autoprune.config import _SECTIONS, TrialConfig

README_MAX_LINES = 220
# Programs a shell line of the documentation may start with, besides autoprune itself.
PROGRAMS = {"./setup.sh", ".venv/bin/python", "python", "ray", "optuna-dashboard"}
LINKED = [*doc_files(), *(ROOT / p for p in ("CHANGELOG.md", "benchmarks/README.md", "benchmarks/RESULTS.md"))]
LINKED.append(ROOT / "benchmarks" / "LOG-2026.md")


@cache
def _commands() -> dict:
    from autoprune.cli import app

    return dict(typer.main.get_command(app).commands)


def _options(command: str) -> set[str]:
    return {name for p in _commands()[command].params if p.param_type_name == "option" for name in p.opts}


def _prose(path: Path) -> str:
    """A page without its fenced blocks."""
    return re.sub(r"^[ \t]*```.*?^[ \t]*```[ \t]*$", "", path.read_text(), flags=re.S | re.M)


def _section(text: str, heading: str) -> str:
    """From the heading line to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(f"\n{heading}\n")
    end = re.search(rf"\n#{{1,{level}}} ", text[start + 1 :])
    return text[start : start + 1 + end.start()] if end else text[start:]


def _rows(text: str) -> list[list[str]]:
    """The code spans of each table row's first cell, and its second cell, for rows that start with a code span."""
    return [list(m) for m in re.findall(r"^\| `([^`]+)` \| (.*?) \|", text, flags=re.M)]


# ---------------------------------------------------------------------------------------------- the pages


def test_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move the detail into docs/"


def test_every_code_block_is_named_and_run_or_parsed() -> None:
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("*.py"))
    seen: dict[str, str] = {}
    for block in all_blocks():
        assert block.info in ("python", "yaml", "bash", "text"), (
            f"{block.where}: a fence needs a language: python, yaml or bash (run or parsed by a test), or text"
        )
        if block.info in ("python", "yaml"):
            assert block.name, f"{block.where}: a {block.info} block starts with '# NAME' and a test runs it"
        if block.name is not None and block.info != "text":
            assert block.name not in seen, f"{block.where}: '# {block.name}' is also at {seen[block.name]}"
            seen[block.name] = block.where
            assert f'"{block.name}"' in tests, f"{block.where}: no test runs '# {block.name}' (doc_example)"


def _shell_lines(text: str) -> list[list[str]]:
    """Each command of a shell block as words: comments dropped, `\\` continuations joined, `&&` split."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:cut])
            words = words[cut + 1 :]
    return commands


def _parse(words: list[str], where: str) -> None:
    """Parse ``autoprune WORDS...`` with the command line's own parser (types and required options included)."""
    assert words and words[0] in _commands(), f"{where}: no command {words[:1]}; commands: {', '.join(_commands())}"
    try:
        _commands()[words[0]].make_context(words[0], list(words[1:]))
    except typer.TyperException as exc:
        pytest.fail(f"{where}: autoprune {' '.join(words)}: {exc.format_message()}")


def test_every_shell_line_is_a_command_that_parses() -> None:
    parsed = 0
    for block in all_blocks():
        if block.info != "bash":
            continue
        for words in _shell_lines(block.text):
            program = words[0]
            if program == "ray" and "--" in words:  # ray job submit ... -- autoprune search ...
                words = words[words.index("--") + 1 :]
                program = words[0]
            if program in ("autoprune", ".venv/bin/autoprune"):
                _parse(words[1:], block.where)
                parsed += 1
            else:
                assert program in PROGRAMS, f"{block.where}: {program!r} is not a program the docs run"
    assert parsed > 30


def _named_options(line: str, command: str, where: str) -> None:
    for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", line):
        assert option in _options(command) | {"--help"}, f"{where}: autoprune {command} has no option {option}"


def test_every_synopsis_and_inline_command_names_options_that_exist() -> None:
    for block in all_blocks():
        if block.info != "text":
            continue
        command = None
        for line in block.text.splitlines():
            match = re.match(r"autoprune (\w+)", line)
            if match:
                command = match.group(1) if match.group(1) in _commands() else None
            elif line[:1] != " ":  # an indented line goes on with the command above it
                command = None
            if command is not None:
                _named_options(line, command, block.where)
    for path in LINKED:
        for span in re.findall(r"`(autoprune [a-z]+[^`]*)`", _prose(path)):
            command = span.split()[1]
            if command in _commands():
                _named_options(span, command, str(path.relative_to(ROOT)))


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a page: lower case, punctuation dropped, spaces as hyphens."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(path), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def test_every_relative_link_points_to_a_file_and_heading_that_exist() -> None:
    for path in LINKED:
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", _prose(path))):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            where = f"{path.relative_to(ROOT)}: link {target}"
            assert linked.exists(), f"{where}: no such file"
            if anchor:
                assert anchor in _anchors(linked), f"{where}: no such heading in {linked.name}"


def test_readme_results_table_is_the_one_in_results_md() -> None:
    readme = _section((ROOT / "README.md").read_text(), "## Results")
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text().splitlines()
    rows = [line for line in readme.splitlines() if line.startswith("|")]
    assert len(rows) >= 3
    for row in rows:
        assert row in results, f"README's results row is not in benchmarks/RESULTS.md word for word: {row}"


def test_benchmark_commands_name_scripts_and_options_that_exist() -> None:
    spans = [" ".join(w) for b in all_blocks() if b.info == "bash" for w in _shell_lines(b.text)]
    for path in (ROOT / "benchmarks" / "README.md", ROOT / "benchmarks" / "RESULTS.md"):
        spans += re.findall(r"`(python benchmarks/[^`]+)`", _prose(path))
        spans += [" ".join(w) for b in blocks(path) if b.info == "bash" for w in _shell_lines(b.text)]
    checked = 0
    for span in spans:
        match = re.match(r"python (benchmarks/\w+\.py)(.*)", span.strip())
        if not match:
            continue
        script = ROOT / match.group(1)
        assert script.is_file(), f"{span}: no such script"
        source = script.read_text()
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", match.group(2)):
            assert f'"{option}"' in source, f"{span}: {script.name} has no option {option}"
        checked += 1
    assert checked >= 8


# ---------------------------------------------------------------------------------------------- the reference


def test_the_cli_reference_lists_every_command_and_option() -> None:
    text = (ROOT / "docs" / "reference" / "cli.md").read_text()
    for name in _commands():
        section = _section(text, f"## `autoprune {name}`")
        documented = {row[0] for row in _rows(section) if row[0].startswith("--")}
        actual = {p.opts[0] for p in _commands()[name].params if p.param_type_name == "option"}
        assert documented == actual, f"autoprune {name}: documented {sorted(documented)}, it has {sorted(actual)}"


def test_the_api_reference_lists_every_function_and_argument() -> None:
    text = (ROOT / "docs" / "reference" / "python-api.md").read_text()
    from autoprune import api

    for name in api.__all__:
        section = _section(text, f"## `autoprune.{name}`")
        documented = {row[0] for row in _rows(section)}
        actual = set(inspect.signature(getattr(autoprune, name)).parameters)
        assert documented == actual, f"autoprune.{name}: documented {sorted(documented)}, it takes {sorted(actual)}"
    for name in autoprune.__all__:
        assert f"`{name}`" in text, f"docs/reference/python-api.md does not name autoprune.{name}"


def _plain(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    return value


def test_the_space_file_reference_lists_every_key_with_its_default() -> None:
    from autoprune.searching._leaves import SEARCH_KEYS, TOP_LEVEL

    text = (ROOT / "docs" / "reference" / "space-file.md").read_text()
    tables = {section: cls() for section, cls in _SECTIONS.items()}
    tables["Top-level values"] = TrialConfig()
    for section, defaults in tables.items():
        heading = f"### `{section}`" if section in _SECTIONS else f"### {section}"
        rows = {key: cell for key, cell in _rows(_section(text, heading))}
        keys = [f.name for f in dataclasses.fields(defaults) if f.name not in _SECTIONS]
        assert list(rows) == keys, f"{heading}: documented {list(rows)}, the dataclass has {keys}"
        for key in keys:
            written = yaml.safe_load(rows[key].strip("`"))
            assert written == _plain(getattr(defaults, key)), f"{section}.{key}: documented default {rows[key]}"
    assert [key for key, _ in _rows(_section(text, "### `search`"))] == list(SEARCH_KEYS)
    for key in TOP_LEVEL:
        assert f"`{key}`" in text.split("## Sections")[0], f"the top-level key {key} is not named"


def test_the_run_directory_reference_lists_every_field_of_run_json() -> None:
    from autoprune.rundir.directory import RunInfo
    from autoprune.searching.launchconfig import LaunchConfig

    text = (ROOT / "docs" / "reference" / "run-directory.md").read_text()
    documented = [row[0] for row in _rows(_section(text, "## `run.json`"))]
    info = RunInfo("autoprune", {"kind": "run-dir"}, "0" * 64, "s.yaml", LaunchConfig(trials=1, sampler="tpe", seed=0))
    assert documented == list(info.to_dict())  # the keys of the file, the launch configuration's among them


def test_the_trial_record_reference_lists_every_key() -> None:
    from autoprune.pipeline.result import TrialResult
    from autoprune.searching._attrs import BASELINE_ATTR, REFINE_ATTR, SIZE_ATTR

    blank = {f.name: {} if "dict" in str(f.type) else None for f in dataclasses.fields(TrialResult)}
    record = TrialResult(**blank).record()
    text = (ROOT / "docs" / "reference" / "trial-record.md").read_text()
    first, second = text.split("In a search, a record also has:")
    assert [row[0] for row in _rows(first)] == list(record)
    assert {row[0] for row in _rows(second)} == {"trial", "model_path", BASELINE_ATTR, REFINE_ATTR, SIZE_ATTR}


def test_the_model_file_reference_lists_every_key(tmp_path: Path) -> None:
    from autoprune.io._architecture import _LAYERS
    from autoprune.io.export import save_model

    path = save_model(
        tmp_path / "m.pt",
        torch.nn.Sequential(torch.nn.Linear(4, 2)),
        masks=None,
        config=TrialConfig().to_dict(),
        metrics={},
        input_shape=(4,),
        num_classes=2,
    )
    text = (ROOT / "docs" / "reference" / "model-file.md").read_text()
    assert [row[0] for row in _rows(text)] == list(torch.load(path, weights_only=True))
    for layer in _LAYERS:
        assert f"`{layer}`" in text, f"docs/reference/model-file.md does not name the layer type {layer}"


def test_the_package_layout_names_every_module() -> None:
    """Each row of docs/development.md's map is a folder of the package (the root in two rows: below every folder
    and above them) and, together, its rows name every module in it."""
    text = _section((ROOT / "docs" / "development.md").read_text(), "## Package layout")
    rows: dict[str, set[str]] = {}
    for folder, owns in re.findall(r"^\| `([^`]+)`[^|]* \| (.*?) \|$", text, flags=re.M):
        rows.setdefault(folder, set()).update(re.findall(r"`([\w.]+\.py)`", owns))
    package = ROOT / "autoprune"
    folders = {"autoprune/"} | {
        f"{p.relative_to(package).as_posix()}/" for p in package.rglob("*") if p.is_dir() and p.name != "__pycache__"
    }
    assert set(rows) == folders, f"docs/development.md's package layout: {sorted(set(rows) ^ folders)}"
    for folder, named in rows.items():
        where = package if folder == "autoprune/" else package / folder
        modules = {p.name for p in where.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
        assert named - {"__init__.py"} == modules, f"docs/development.md's row {folder}: {sorted(named ^ modules)}"


# ---------------------------------------------------------------------------------------------- the examples


def _space(tmp_path: Path, name: str, overrides: tuple[str, ...] = ()) -> autoprune.SearchSpace:
    path = tmp_path / name
    path.write_text(doc_example(name))
    return autoprune.load_space(path, overrides)


def test_the_annotated_space_loads(tmp_path: Path) -> None:
    space = _space(tmp_path, "annotated_space.yaml")
    assert space.early_stop == "off" and space.trials == 40
    cfg = space.default_config()
    assert cfg.dataset.name == "fashion-mnist" and cfg.finetune.optimizer == "adam" and cfg.train.nesterov
    assert "finetune.lr" in {d.path for d in space.dims}


def test_a_leaf_that_depends_on_the_searched_optimizer(tmp_path: Path) -> None:
    space = _space(tmp_path, "optimizer_searched.yaml")
    dims = {d.path: d for d in space.dims}
    assert {"finetune.optimizer", "finetune.lr[adam]", "finetune.lr[sgd]"} <= set(dims)
    assert dims["finetune.lr[sgd]"].high == 0.3 and dims["finetune.lr[adam]"].high == 0.05
    fixed = _space(tmp_path, "optimizer_searched.yaml", ("finetune.optimizer=sgd",))
    lr = {d.path: d for d in fixed.dims}["finetune.lr"]
    assert (lr.low, lr.high) == (1e-3, 0.3)  # the range switched with the optimizer


def test_the_search_section_example(tmp_path: Path) -> None:
    from autoprune.searching.baselines import calibrate_leaves, ladder
    from autoprune.searching.refine import refine_settings

    space = _space(tmp_path, "search_section.yaml")
    assert space.trials == 40 and space.sizes == [0.02, 0.05, 10000]
    assert refine_settings(space.refine) == refine_settings(True)  # every 3, after 10: the defaults, written out
    assert {b.allocation for b in ladder(space)} == {"global", "lamp"} and len(ladder(space)) == 8
    assert calibrate_leaves(space) == ["finetune.lr"]


def test_enqueued_configurations_reach_the_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    (tmp_path / "runs" / "fm").mkdir(parents=True)
    storage = f"sqlite:///{tmp_path / 'runs' / 'fm' / 'study.db'}"
    optuna.create_study(storage=storage, study_name="autoprune", directions=["maximize", "minimize"])
    monkeypatch.chdir(tmp_path)
    exec(doc_example("enqueue_trial.py"), {})
    [waiting] = optuna.load_study(study_name="autoprune", storage=storage).get_trials(deepcopy=False)
    searched = {d.path for d in autoprune.load_space("lenet300_fashion").dims}
    assert waiting.state.name == "WAITING" and set(waiting.params) <= searched  # the names a search suggests


def test_the_cluster_job_starts_ray_with_the_user_files_then_searches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, tuple, dict]] = []
    fake_ray = types.SimpleNamespace(init=lambda *a, **kw: calls.append(("ray.init", a, kw)))
    monkeypatch.setitem(sys.modules, "ray", fake_ray)  # no cluster here: the block's calls are recorded
    monkeypatch.setattr(autoprune, "search", lambda *a, **kw: calls.append(("search", a, kw)))
    folder = write_user_folder(tmp_path / "user").path
    monkeypatch.chdir(folder)
    exec(doc_example("cluster_job.py"), {})
    (first, _, init), (second, args, kwargs) = calls
    assert first == "ray.init" and init["address"] == "auto"
    assert all((folder / name).is_file() for name in init["runtime_env"]["py_modules"])
    assert second == "search" and (folder / args[0]).is_file()
    inspect.signature(autoprune.api.search).bind(*args, **kwargs)  # arguments the real search takes


@pytest.mark.slow
@pytest.mark.ray
def test_readme_quickstart_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for words in _shell_lines(doc_example("quickstart.sh")):
        assert words[0] == "autoprune"
        done = run_console(words[1:], tmp_path, timeout=900)
        assert done.returncode == 0, f"{' '.join(words)} failed:\n{done.stderr}"
    assert (tmp_path / "front.png").is_file() and "test accuracy" in done.stdout
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with redirect_stdout(out):
        exec(doc_example("use_the_model.py"), {})
    assert re.match(r"tensor\(\[(\d, ){7}\d\]\) \[", out.getvalue())
