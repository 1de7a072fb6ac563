"""Output, input and ledger paths: refused in one line before any work, and nothing is created on the way."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from autoprune.io._paths import PathError, check_input_file, check_output_file, inside_run


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A folder laid out like a run directory (contents are placeholders: only the names matter here)."""
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    (run / "report").mkdir()
    (run / "ray" / "search-00").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"storage": {"kind": "run-dir"}}))
    for name in ("space.yaml", "study.db", ".lock", "models/trial_3.pt", "report/front.csv"):
        (run / name).write_bytes(b"original")
    return run


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "target",
    ["study.db", "run.json", "space.yaml", ".lock", "models/trial_3.pt", "models/new.pt", "ray/search-00/x.csv",
     "report/front.csv", "report/extra.png", "study.db-journal", "models/../study.db", ".", "models"],
)  # fmt: skip
def test_run_files_are_refused_however_spelled(run_dir: Path, target: str) -> None:
    before = _listing(run_dir)
    with pytest.raises(PathError) as info:
        check_output_file(run_dir / target, what="--csv")
    message = str(info.value)
    assert "\n" not in message and message.startswith("--csv ")
    assert _listing(run_dir) == before and not list(run_dir.rglob("*.probe"))


def test_symlinks_into_a_run_are_resolved(run_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "innocent.csv"
    link.symlink_to(run_dir / "study.db")
    with pytest.raises(PathError, match=r"study\.db of run directory"):
        check_output_file(link, what="--csv")
    linked_dir = tmp_path / "alias"
    linked_dir.symlink_to(run_dir / "models")
    with pytest.raises(PathError, match="models of run directory"):
        check_output_file(linked_dir / "trial_3.pt", what="--out")


def test_protected_dirs_guard_a_run_without_run_json(tmp_path: Path) -> None:
    fresh = tmp_path / "starting"
    (fresh / "models").mkdir(parents=True)
    assert check_output_file(fresh / "models" / "x.pt", what="--out") == (fresh / "models" / "x.pt").resolve()
    with pytest.raises(PathError, match="models of run directory"):
        check_output_file(fresh / "models" / "x.pt", what="--out", protected_dirs=[fresh])


def test_a_journal_study_inside_the_run_is_protected(run_dir: Path) -> None:
    (run_dir / "run.json").write_text(json.dumps({"storage": {"kind": "journal", "path": "j.log", "in_run_dir": True}}))
    with pytest.raises(PathError, match=r"j\.log of run directory"):
        check_output_file(run_dir / "j.log", what="--csv")
    assert check_output_file(run_dir / "mine.csv", what="--csv") == (run_dir / "mine.csv").resolve()


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("/nonexistent/x.csv", "folder /nonexistent does not exist"),
        ("/proc/x.csv", "cannot create a file in /proc"),
        ("/proc/self/status", "cannot create a file in /proc/self"),
        ("/dev/null", "not a regular file"),
        ("/tmp", "is a directory"),
        ("", "is empty"),
    ],
)
def test_unwritable_and_odd_targets(target: str, problem: str) -> None:
    with pytest.raises(PathError, match=problem):
        check_output_file(target, what="--plot")
    assert not Path("/nonexistent").exists()


def test_fifo_and_a_file_as_folder_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(PathError, match="not a regular file"):
        check_output_file(fifo, what="--csv")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(PathError, match="is not a folder"):
        check_output_file(tmp_path / "plain" / "x.csv", what="--csv")


def test_an_ordinary_output_is_accepted_and_nothing_is_left(tmp_path: Path) -> None:
    target = tmp_path / "sub" / ".." / "out.csv"
    (tmp_path / "sub").mkdir()
    assert check_output_file(target, what="--csv") == (tmp_path / "out.csv").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
    (tmp_path / "out.csv").write_text("old")
    assert check_output_file(tmp_path / "out.csv", what="--csv").read_text() == "old"


def test_input_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    for target, problem in [("/dev/zero", "not a regular file"), (fifo, "not a regular file"),
                            (tmp_path, "is a directory"), (tmp_path / "missing.pt", "does not exist")]:  # fmt: skip
        with pytest.raises(PathError, match=problem):
            check_input_file(target, what="model file")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (2 << 20))
    with pytest.raises(PathError, match="2 MiB, more than the 1 MiB"):
        check_input_file(big, what="run.json", max_bytes=1 << 20)
    assert check_input_file(big, what="run.json") == big


def test_ledger_paths_stay_inside_the_run(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-run" / "models"
    other.mkdir(parents=True)
    (other / "trial_0.pt").write_bytes(b"x")
    assert (
        inside_run(run_dir, "models/trial_3.pt", what="model_path", under="models")
        == (run_dir / "models" / "trial_3.pt").resolve()
    )
    refused = ["../../../../etc/passwd", "/etc/passwd", str(other / "trial_0.pt"), "../other-run/models/trial_0.pt",
               "models/../study.db", "", None, 3]  # fmt: skip
    for value in refused:
        with pytest.raises(PathError) as info:
            inside_run(run_dir, value, what="model_path", under="models")
        assert "\n" not in str(info.value)
    (run_dir / "models" / "escape.pt").symlink_to(other / "trial_0.pt")
    with pytest.raises(PathError, match="points outside models/"):
        inside_run(run_dir, "models/escape.pt", what="model_path", under="models")
