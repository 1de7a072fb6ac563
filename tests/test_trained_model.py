"""docs/guides/trained-model.md as a user runs it: train a Transformer with their own script, then trial, search,
report, pick and evaluate from the checkpoint with the installed ``autoprune`` command, in their folder; the picked
model reloads after the checkpoint is deleted. And a search whose trials all fail exits
non-zero with their cause in one line (the command line in the test's process, on the suite's shared Ray).

The files are the guide's own blocks (``doc_example``), so the documented workflow is the tested one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _doc_blocks import doc_example
from _helpers import run_cli
from _user_folder import console_env, run_console

FILES = ("my_encoder.py", "train_encoder.py", "encoder_digits.yaml")
TINY = ["--set", "budget.train_epochs=1", "--set", "budget.finetune_epochs=1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("user")
    for name in FILES:
        (path / name).write_text(doc_example(name))
    done = subprocess.run(
        [sys.executable, "train_encoder.py", "4"], cwd=path, env=console_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (path / "encoder.pt").is_file()
    return path


def _ok(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = run_console(args, cwd)
    assert done.returncode == 0, f"autoprune {' '.join(args)} failed:\n{done.stderr}"
    return done


def test_a_trial_from_the_checkpoint_says_where_it_started(folder: Path) -> None:
    done = _ok(["trial", "encoder_digits.yaml", "--set", "prune.density=0.2", *TINY, "--json"], folder)
    record = json.loads(done.stdout)
    assert record["start"] == "checkpoint" and record["val_source"] == "loader"
    assert record["config"]["model"]["weights"] == str(folder / "encoder.pt")
    assert record["not_pruned"]["pos"] == 8 * 32
    lines = _ok(["trial", "encoder_digits.yaml", "--set", "prune.density=0.2", *TINY], folder).stderr
    assert f"start: trained weights from {folder / 'encoder.pt'}" in lines
    assert "not pruned: " in lines and "pos (" in lines


@pytest.mark.slow
@pytest.mark.ray
def test_search_pick_and_evaluate_from_a_checkpoint_the_user_then_deletes(folder: Path) -> None:
    run = ["search", "encoder_digits.yaml", "--run-dir", "runs/encoder", "--trials", "2", *TINY, "--json"]
    done = _ok(run, folder)
    report = json.loads(done.stdout)
    assert report["trials"] and all(t["start"] == "checkpoint" for t in report["trials"])
    assert "search: dense reference (model.weights " in done.stderr

    table = _ok(["report", "runs/encoder"], folder).stdout
    assert "vs dense" in table
    [reference] = [line for line in table.splitlines() if line.startswith("checkpoint")]
    dense_test = float(reference.split()[4])

    (folder / "encoder.pt").unlink()  # the exported models carry their own weights
    _ok(["pick", "runs/encoder", "--knee", "--out", "knee.pt"], folder)
    measured = json.loads(_ok(["evaluate", "knee.pt", "--allow-module", "my_encoder", "--json"], folder).stdout)
    picked = json.loads((folder / "runs/encoder/report/report.json").read_text())["front"]
    assert measured["test_accuracy"] in {r["test_accuracy"] for r in picked}
    assert 0.0 < dense_test <= 1.0


@pytest.mark.ray
def test_a_search_whose_trials_all_fail_exits_non_zero_with_the_cause(
    local_ray, tmp_path: Path, capsys, monkeypatch
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        "dataset: {name: digits, limit: 200}\nmodel: {name: lenet-300-100}\n"
        "budget: {train_epochs: 1, finetune_epochs: 1, batch_size: 64}\n"
        "train: {lr: 1.0e+9, lr_schedule: constant, penalty: none}\n"
        "prune: {allocation: global, density: {low: 0.1, high: 0.5}}\n"
    )
    monkeypatch.chdir(tmp_path)  # the command line in this process, on the shared Ray
    code, _, err = run_cli(["search", "space.yaml", "--run-dir", "run", "--trials", "2"], capsys, monkeypatch)
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("autoprune: error: all ") and "trials failed, no model was produced" in last
    assert "NaN or infinite" in last
