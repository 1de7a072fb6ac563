"""A run directory received from someone else is data: ``report`` and ``pick`` import nothing it names and write
nothing but their own outputs, ``resume`` runs its code only when the user started the run here or allows it.

No Ray: the run is made as a search makes one (the study, the frozen space, the models, run.json with this user's
seal), its two trials run in this process. Each case runs the command line on a fresh copy, with ``evilmod.py``
in the working folder, whose import leaves a marker file; every file of the run is byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _helpers import TINY_SPACE, ask, run_cli, write_run_json

from autoprune import api
from autoprune.io import data
from autoprune.io._trust import seal
from autoprune.pipeline.trial import run_trial
from autoprune.rundir import directory as rundir
from autoprune.rundir import ledger
from autoprune.searching.space import document_digest, load_space, load_yaml

EVILMOD = """\
import pathlib

import numpy as np

pathlib.Path(__file__).with_name("MARKER").write_text("evilmod was imported")


def data():
    rng = np.random.default_rng(0)
    x = rng.random((400, 1, 8, 8), dtype=np.float32)
    return x[:300], rng.integers(0, 10, 300), x[300:], rng.integers(0, 10, 100)


def net(input_shape, num_classes):
    import torch

    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, num_classes))
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-trial run, made as ``search`` makes one and sealed by this user, its trials run here."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "space.yaml").write_text(TINY_SPACE)
    space = load_space(folder / "space.yaml")
    run = folder / "run"
    run.mkdir()
    study = ledger.create_study(ledger.open_storage(None, run), "autoprune", space, "test")
    rundir.freeze_space(run, space)
    for _ in range(2):
        trial = ask(study, space.dims)
        result = run_trial(space.config_for(trial.params), threads=1)
        result.save(rundir.new_model_path(run, trial.number))
        outcome = ledger.Outcome("complete", record=result.record(), model_path=rundir.model_file(trial.number))
        ledger.record_outcome(study, trial, outcome)
    resources = {"concurrent": 1, "cpus_per_trial": 1.0, "gpus_per_trial": 0}
    write_run_json(run, space.digest, trials=2, resources=resources, seal=seal(space.digest))
    (run / rundir.LOCK_FILE).touch()  # as a search leaves it
    api.refresh_report(run)
    return run


@pytest.fixture
def run(finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the run, and a working folder holding ``evilmod.py`` (not imported yet)."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    work = tmp_path / "work"
    work.mkdir()
    (work / "evilmod.py").write_text(EVILMOD)
    monkeypatch.chdir(work)
    monkeypatch.delitem(sys.modules, "evilmod", raising=False)
    importlib.invalidate_caches()
    rundir.space_from_text.cache_clear()  # each case builds its space and data anew, importing what they name
    data._load_cached.cache_clear()
    return copy


def _marker(run: Path) -> Path:
    return run.parent / "work" / "MARKER"


def _sha(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def _name_evilmod(run: Path, section: str = "dataset", *, reseal: bool = False, digest: bool = True) -> None:
    """Make the frozen space name ``evilmod``, and recompute run.json's digest as anyone can (``digest``);
    ``reseal``: also this user's seal, as if this user had started the search with that space."""
    document = load_yaml((run / "space.yaml").read_text())
    document[section]["name"] = "evilmod:data" if section == "dataset" else "evilmod:net"
    text = yaml.safe_dump(document, sort_keys=False)
    (run / "space.yaml").write_text(text)
    info = json.loads((run / "run.json").read_text())
    if digest:
        info["space_digest"] = document_digest(load_yaml(text))
    if reseal:
        info["seal"] = seal(info["space_digest"])
    (run / "run.json").write_text(json.dumps(info))


def _refused(args: list[str], capsys, monkeypatch, *words: str) -> str:
    """Run ``autoprune ARGS``: one line on stderr holding ``words``, exit 1, nothing on stdout, no traceback."""
    code, out, err = run_cli(args, capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("autoprune: error: ") and "Traceback" not in err and out == ""
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _ok(args: list[str], capsys, monkeypatch) -> tuple[str, str]:
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "Traceback" not in err, err
    return out, err


# ------------------------------------------------------------------------------------ code named by the run


@pytest.mark.parametrize("section", ["dataset", "model"])
def test_a_tampered_space_makes_report_and_pick_import_nothing(
    run: Path, section: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    _name_evilmod(run, section)
    before = _sha(run)
    out, _ = _ok(["report", str(run), "--csv", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "p.png")], capsys,
                 monkeypatch)  # fmt: skip
    assert "trial" in out
    for rule in (["--trial", "0"], ["--knee"]):
        _ok(["pick", str(run), *rule, "--out", str(tmp_path / "o.pt")], capsys, monkeypatch)
    assert (tmp_path / "o.pt").is_file() and (tmp_path / "t.csv").is_file() and (tmp_path / "p.png").is_file()
    assert not _marker(run).exists() and "evilmod" not in sys.modules
    assert _sha(run) == before


@pytest.mark.parametrize("section", ["dataset", "model"])
def test_resume_refuses_a_tampered_space_without_allow_module(run: Path, section: str, capsys, monkeypatch) -> None:
    _name_evilmod(run, section)
    before = _sha(run)
    _refused(["resume", str(run), "--trials", "1"], capsys, monkeypatch, "'evilmod'", "--allow-module evilmod")
    _refused(["resume", str(run), "--allow-module", "numpy"], capsys, monkeypatch, "--allow-module evilmod")
    assert not _marker(run).exists() and _sha(run) == before


def test_resume_compares_the_digest_before_building_anything(run: Path, capsys, monkeypatch) -> None:
    _name_evilmod(run, digest=False)
    before = _sha(run)
    _refused(["resume", str(run), "--allow-module", "evilmod"], capsys, monkeypatch, "was changed")
    assert not _marker(run).exists() and _sha(run) == before


def test_resume_imports_a_module_the_user_allows(run: Path, capsys, monkeypatch) -> None:
    _name_evilmod(run)
    _, err = _ok(["resume", str(run), "--trials", "1", "--allow-module", "evilmod"], capsys, monkeypatch)
    assert "nothing to run" in err and _marker(run).exists()  # allowed: the space is built with it


def test_resume_of_a_run_started_here_needs_no_flag_and_elsewhere_one(
    run: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    _name_evilmod(run, reseal=True)  # this user searched a space naming their own module
    before, own = _sha(run), os.environ["XDG_CONFIG_HOME"]
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another-user"))
    _refused(["resume", str(run), "--trials", "1"], capsys, monkeypatch, "--allow-module evilmod")
    assert not _marker(run).exists() and _sha(run) == before
    monkeypatch.setenv("XDG_CONFIG_HOME", own)
    _, err = _ok(["resume", str(run), "--trials", "1"], capsys, monkeypatch)
    assert "nothing to run" in err and _marker(run).exists()


@pytest.mark.parametrize(
    ("text", "cause"),
    [(b"model: {name: \xff\xfe}\n", "is not UTF-8 text"),
     (b"model: " + b"[" * 5000 + b"]" * 5000 + b"\n", "is nested too deeply")],
    ids=["not-utf8", "nested-5000"],
)  # fmt: skip
def test_resume_refuses_a_damaged_space_in_one_line(run: Path, text: bytes, cause: str, capsys, monkeypatch) -> None:
    (run / "space.yaml").write_bytes(text)
    before = _sha(run)
    _refused(["resume", str(run), "--trials", "5"], capsys, monkeypatch, "space.yaml", cause)
    assert _sha(run) == before


# ------------------------------------------------------------------------------------ reading never writes


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.db"
    con = sqlite3.connect(victim)
    with con:
        con.execute("create table notes (body text)")
        con.execute("insert into notes values ('mine')")
    con.close()
    return victim


@pytest.mark.parametrize(
    "command", [["report"], ["pick", "--knee", "--out", "{tmp}/o.pt"], ["resume", "--trials", "5"]]
)
def test_a_database_run_json_names_is_never_given_a_schema(
    run: Path, command: list[str], tmp_path: Path, capsys, monkeypatch
) -> None:
    victim = _victim(tmp_path)
    info = json.loads((run / "run.json").read_text())
    info["storage"] = {"kind": "rdb", "url": f"sqlite:///{victim}"}
    (run / "run.json").write_text(json.dumps(info))
    before, kept = _sha(run), victim.read_bytes()
    args = [command[0], str(run), *(a.format(tmp=tmp_path) for a in command[1:])]
    _refused(args, capsys, monkeypatch, str(victim), "holds no Optuna study")
    assert victim.read_bytes() == kept and _sha(run) == before and not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize(
    "command", [["report"], ["pick", "--knee", "--out", "{tmp}/o.pt"], ["resume", "--trials", "5"]]
)
def test_an_empty_study_db_is_refused_not_given_a_schema(
    run: Path, command: list[str], tmp_path: Path, capsys, monkeypatch
) -> None:
    (run / "study.db").write_bytes(b"")
    before = _sha(run)
    args = [command[0], str(run), *(a.format(tmp=tmp_path) for a in command[1:])]
    _refused(args, capsys, monkeypatch, "study.db", "empty (0 bytes)")
    assert (run / "study.db").stat().st_size == 0 and _sha(run) == before


def _unprivileged() -> list[str] | None:
    """A prefix that runs a command without root's power to write where permissions forbid it (none needed for
    another user); None where root cannot give that power up here."""
    if os.geteuid() != 0:
        return []
    prefix = [shutil.which("setpriv") or "setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    try:
        subprocess.run([*prefix, "true"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return prefix


def test_report_on_a_read_only_run_directory(run: Path, tmp_path: Path) -> None:
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("root here cannot drop its power to write into read-only folders (no setpriv)")
    before = _sha(run)
    entries = [run, *run.rglob("*")]
    for entry in entries:
        entry.chmod(0o555 if entry.is_dir() else 0o444)
    try:
        command = [*prefix, sys.executable, "-m", "autoprune"]
        done = subprocess.run([*command, "report", str(run), "--csv", str(tmp_path / "t.csv")], capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert "trial" in done.stdout and (tmp_path / "t.csv").is_file()
        notes = [line for line in done.stderr.splitlines() if "not refreshed" in line]
        assert len(notes) == 1 and str(run / "report") in notes[0]
        done = subprocess.run([*command, "resume", str(run), "--trials", "5"], capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and "cannot lock" in done.stderr, done.stderr
    finally:
        for entry in entries:
            entry.chmod(0o755 if entry.is_dir() else 0o644)
    assert _sha(run) == before


def test_report_csv_and_plot_replace_only_their_own_files(run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    mine, table, plot = tmp_path / "mine.csv", tmp_path / "t.csv", tmp_path / "p.png"
    mine.write_text("my,own\n1,2\n")
    before = _sha(run)
    _refused(["report", str(run), "--csv", str(mine)], capsys, monkeypatch, "refusing to overwrite", str(mine))
    _refused(["report", str(run), "--plot", str(mine)], capsys, monkeypatch, "refusing to overwrite", "--plot")
    assert mine.read_text() == "my,own\n1,2\n"
    for _ in range(2):  # the second time over its own files: replaced
        _ok(["report", str(run), "--csv", str(table), "--plot", str(plot)], capsys, monkeypatch)
    _refused(["report", str(run), "--csv", str(plot)], capsys, monkeypatch, "not an autoprune trials CSV")
    assert _sha(run) == before


def test_a_study_storage_other_than_the_runs_is_refused(run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    other = f"sqlite:///{tmp_path / 'other.db'}"
    before = _sha(run)
    for args in (["report", str(run)], ["pick", str(run), "--knee", "--out", str(tmp_path / "o.pt")],
                 ["resume", str(run), "--trials", "5"]):  # fmt: skip
        _refused([*args, "--study-storage", other], capsys, monkeypatch, other, "not the storage of this run")
    assert not (tmp_path / "other.db").exists() and _sha(run) == before
    _ok(["report", str(run), "--study-storage", f"sqlite:///{run / 'study.db'}"], capsys, monkeypatch)  # its own
    assert _sha(run) == before
