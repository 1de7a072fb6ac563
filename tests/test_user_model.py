"""A new user's session, as docs/guides/own-model-and-data.md tells it: my_models.py (a residual CNN with nested
blocks and a keyword-only factory, and an MLP) and my_data.py (a tabular dataset) in the user's folder, and the
installed ``autoprune`` command run from that folder: trial, search with ``sparsity: auto``, pick, evaluate.

Every command runs as a child process with the folder as its working directory and nothing added to PYTHONPATH;
whatever it starts (Ray included) is stopped when it returns.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from _user_folder import TINY_RESNET, TINY_TABULAR, UserFolder, run_console, write_user_folder

RESNET_LAYERS = ("stem", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2", "fc")
MLP_LAYERS = ("0", "2")


@pytest.fixture
def user(tmp_path: Path) -> UserFolder:
    return write_user_folder(tmp_path / "user")


def _sets(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def _ok(args: list[str], cwd: Path) -> str:
    done = run_console(args, cwd)
    assert done.returncode == 0, f"autoprune {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def _evaluate_matches(model_file: Path, record: dict, cwd: Path, allow: tuple[str, ...]) -> None:
    allowed = [arg for module in allow for arg in ("--allow-module", module)]
    measured = json.loads(_ok(["evaluate", str(model_file), "--json", *allowed], cwd))
    assert measured["test_accuracy"] == record["test_accuracy"]
    assert measured["params_nonzero"] == record["params_nonzero"]


@pytest.mark.fashion
def test_resnet_trial_with_a_dotted_set_then_evaluate(user: UserFolder, tmp_path: Path) -> None:
    args = ["trial", "resnet_fashion.yaml", *_sets([*TINY_RESNET, "prune.sparsity.layer1.0.conv1=0.5"])]
    record = json.loads(_ok([*args, "--json", "--save", "trial.pt"], user.path))
    expected = {name: 0.5 if name == "layer1.0.conv1" else 0.0 for name in RESNET_LAYERS}
    assert record["layer_sparsity"] == pytest.approx(expected, abs=0.001)
    assert record["params_nonzero"] < record["params_total"]
    _evaluate_matches(user.path / "trial.pt", record, user.path, allow=("my_models",))

    # The file names its factory's module: not imported unless allowed, even from the folder that holds it.
    done = run_console(["evaluate", str(user.path / "trial.pt")], user.path)
    assert done.returncode == 1 and done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert "'my_models:resnet'" in line and "--allow-module my_models" in line

    # Elsewhere, allowed, it still names its factory's module, and says that it must be importable.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run_console(["evaluate", str(user.path / "trial.pt"), "--allow-module", "my_models"], elsewhere)
    assert done.returncode == 1 and done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert "model 'my_models:resnet': cannot import module 'my_models': there is no my_models.py" in line
    assert f"working folder {elsewhere}" in line


def test_tabular_trial_with_a_flat_mlp_then_evaluate(user: UserFolder) -> None:
    record = json.loads(_ok(["trial", "tabular.yaml", *_sets(TINY_TABULAR), "--json", "--save", "mlp.pt"], user.path))
    assert set(record["layer_sparsity"]) == set(MLP_LAYERS)
    assert record["val_accuracy"] > 0.8  # breast cancer, two epochs: clearly learned (majority class is 0.63)
    _evaluate_matches(user.path / "mlp.pt", record, user.path, allow=("my_data",))  # a Sequential: no factory


def _search_pick_evaluate(
    user: UserFolder, space: str, overrides: list[str], concurrent: int, allow: tuple[str, ...]
) -> tuple[list[dict], list[dict]]:
    run = user.path / "runs" / Path(space).stem
    args = ["search", space, "--run-dir", str(run.relative_to(user.path)), "--trials", "3"]
    args += ["--concurrent", str(concurrent), "--json", *_sets(overrides)]
    doc = json.loads(_ok(args, user.path))
    assert len(doc["trials"]) == 3 and doc["failed"] == 0, doc
    chosen = json.loads(_ok(["pick", str(run), "--knee", "--out", "knee.pt", "--json"], user.path))
    assert chosen["trial"] in {r["trial"] for r in doc["front"]}
    _evaluate_matches(user.path / "knee.pt", chosen, user.path, allow)
    with open(run / "report" / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    return doc["trials"], rows


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.fashion
def test_resnet_search_with_auto_sparsity_pick_and_evaluate(user: UserFolder) -> None:
    trials, rows = _search_pick_evaluate(user, "resnet_fashion.yaml", TINY_RESNET, concurrent=1, allow=("my_models",))
    for record, row in zip(trials, rows, strict=True):
        # every layer searched under its dotted name, in the record and in the CSV columns
        assert set(record["config"]["prune"]["sparsity"]) == set(RESNET_LAYERS)
        for name in RESNET_LAYERS:
            assert float(row[f"sparsity.{name}"]) == pytest.approx(record["layer_sparsity"][name])
            searched = record["config"]["prune"]["sparsity"][name]
            assert record["layer_sparsity"][name] == pytest.approx(searched, abs=0.01)
    import optuna

    storage = f"sqlite:///{user.path / 'runs' / 'resnet_fashion' / 'study.db'}"
    [name] = optuna.get_all_study_names(storage)
    for trial in optuna.load_study(study_name=name, storage=storage).trials:
        assert set(trial.params) == {f"prune.sparsity.{layer}" for layer in RESNET_LAYERS}


@pytest.mark.slow
@pytest.mark.ray
def test_tabular_search_pick_and_evaluate(user: UserFolder) -> None:
    trials, _ = _search_pick_evaluate(user, "tabular.yaml", TINY_TABULAR, concurrent=2, allow=("my_data",))
    assert all(set(record["layer_sparsity"]) == set(MLP_LAYERS) for record in trials)
