"""`autoprune trial` end to end, in a subprocess: what a user sees, exit codes included."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoprune.io.export import load_model

TINY = ["--set", "budget.train_epochs=1", "--set", "budget.finetune_epochs=1"]


def autoprune(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autoprune", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_trial_json_prints_one_record_and_saves_a_loadable_model(tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    per_layer = ("--set", "prune.allocation=per_layer", "--set", "prune.sparsity.fc1=0.9")
    proc = autoprune("trial", "digits_quick", *TINY, *per_layer, "--json", "--save", str(out))
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)  # stdout holds exactly one JSON document
    assert record["layer_sparsity"]["fc1"] == pytest.approx(0.9, abs=0.002)
    assert record["config"]["prune"]["sparsity"]["fc1"] == 0.9
    assert record["model_path"] == str(out)
    loaded = load_model(out)
    nonzero = sum(int(torch.count_nonzero(p)) for p in loaded.model.parameters())
    assert nonzero == record["params_nonzero"]


def test_trial_without_json_prints_a_summary(tmp_path: Path) -> None:
    proc = autoprune("trial", "digits_quick", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "val accuracy" in proc.stdout and "parameters" in proc.stdout


def write_space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("autoprune: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


BAD_INPUT = [
    (
        "unknown_model",
        "model: {name: resnet-1000}\n",
        [],
        "unknown model 'resnet-1000'; known models: bn-cnn, lenet-300-100",
    ),
    ("unknown_dataset", "dataset: {name: imagenet}\n", [], "unknown dataset 'imagenet'"),
    ("bad_import", "dataset: {name: 'no_such_module_xyz:make'}\n", [], "cannot import module 'no_such_module_xyz'"),
    ("bad_model_import", "model: {name: 'no_such_module_xyz:net'}\n", [], "cannot import module 'no_such_module_xyz'"),
    ("bad_yaml", "dataset: {name: digits\nmodel: x\n", [], "invalid YAML"),
    ("bad_key", "dataset: {name: digits}\n", ["--set", "prune.sparsty.fc1=0.5"], "unknown key prune.sparsty"),
    ("bad_value", "dataset: {name: digits}\n", ["--set", "train.lr=-1"], "train.lr must be > 0.0, got -1"),
    ("bad_layer", "prune: {sparsity: {fc7: 0.5}}\n", [], "unknown layer 'fc7'; prunable layers: fc1, fc2, fc3"),
    ("inverted", "prune: {sparsity: {fc1: {low: 0.9, high: 0.1}}}\n", [], "inverted range"),
    ("negative_lambda", "train: {lambda_max: -0.1}\n", [], "train.lambda_max must be >= 0.0"),
]


@pytest.mark.parametrize(("text", "extra", "message"), [b[1:] for b in BAD_INPUT], ids=[b[0] for b in BAD_INPUT])
def test_bad_input_gives_one_clear_line(tmp_path: Path, text: str, extra: list[str], message: str) -> None:
    line = one_line_error(autoprune("trial", str(write_space(tmp_path, text)), *extra))
    assert message in line


def test_missing_fashion_mnist_says_how_to_install_it(tmp_path: Path) -> None:
    space = write_space(tmp_path, "dataset: {name: fashion-mnist}\n")
    line = one_line_error(autoprune("trial", str(space), env={"AUTOPRUNE_DATA_DIR": str(tmp_path / "none")}))
    assert "apt-get install -y dataset-fashion-mnist" in line and "AUTOPRUNE_DATA_DIR" in line


def test_corrupt_idx_file_is_named(tmp_path: Path) -> None:
    data = tmp_path / "fm"
    data.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        with gzip.open(data / f"{name}.gz", "wb") as fh:
            fh.write(b"\x00\x00\x08\x03" + b"\x00" * 7)  # a header cut short
    space = write_space(tmp_path, "dataset: {name: fashion-mnist}\n")
    line = one_line_error(autoprune("trial", str(space), env={"AUTOPRUNE_DATA_DIR": str(data)}))
    assert "train-images-idx3-ubyte.gz" in line


def test_diverging_trial_reports_phase_and_step(tmp_path: Path) -> None:
    line = one_line_error(
        autoprune(
            "trial",
            "digits_quick",
            *TINY,
            "--set",
            "train.lr=1e9",
            "--set",
            "train.grad_clip=null",
            "--set",
            "train.weight_clip=null",
        )
    )
    assert "non-finite loss in phase 'train' at step" in line


def test_trial_progress_on_a_terminal_and_silence_with_json(capsys, monkeypatch) -> None:
    from _helpers import run_cli

    args = ["trial", "digits_quick", *TINY, "--threads", "1", "--seed", "5"]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "val accuracy" in out
    assert "train epoch 1/1, loss " in err and "finetune epoch 1/1, loss " in err and " left" in err
    assert "trained: val accuracy" in err
    code, out, err = run_cli([*args, "--json"], capsys, monkeypatch)
    assert code == 0 and err == ""
    assert json.loads(out)["config"]["seed"] == 5
