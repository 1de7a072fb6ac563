"""Starting from trained weights: ``model.weights`` loads a state_dict as data into the factory's model, a file
that does not fit is refused in one line, and a model exported from such a start reloads without the file."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from _helpers import run_cli

from autoprune.config import TrialConfig
from autoprune.errors import ModelError
from autoprune.io.export import load_model
from autoprune.io.models import build_model
from autoprune.pipeline.trial import run_trial

BASE = {
    "dataset": {"name": "digits", "limit": 500},
    "budget": {"train_epochs": 2, "finetune_epochs": 0, "batch_size": 64},
    "prune": {"enabled": False},
    "device": "cpu",
}


def _config(**sections: dict) -> TrialConfig:
    doc = {k: dict(v) for k, v in BASE.items() if isinstance(v, dict)} | {"device": "cpu"}
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    return TrialConfig.from_dict(doc)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """LeNet-300-100 trained densely on digits, as a user would, and its state_dict saved with torch.save."""
    result = run_trial(_config(model={"name": "lenet-300-100"}))
    path = tmp_path_factory.mktemp("ckpt") / "net.pt"
    torch.save(result.model.state_dict(), path)
    return path, result.record()


def test_a_zero_epoch_trial_reproduces_the_checkpoint_exactly(trained: tuple[Path, dict]) -> None:
    path, record = trained
    lines: list[str] = []
    cfg = _config(model={"name": "lenet-300-100", "weights": str(path)}, budget={"train_epochs": 0})
    result = run_trial(cfg, log=lines.append)
    assert result.val_accuracy == record["val_accuracy"]
    assert result.test_accuracy == record["test_accuracy"]
    assert result.record()["start"] == "checkpoint"
    assert any(line == f"start: trained weights from {path}" for line in lines)


def test_given_tensors_start_a_trial_as_the_file_does(trained: tuple[Path, dict]) -> None:
    path, record = trained
    state = torch.load(path, weights_only=True)
    cfg = _config(model={"name": "lenet-300-100"}, budget={"train_epochs": 0})
    assert run_trial(cfg, start=state).test_accuracy == record["test_accuracy"]


def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(tmp_path: Path) -> None:
    other = tmp_path / "lenet5.pt"
    torch.save(build_model("bn-cnn", (1, 8, 8), 10).state_dict(), other)
    cfg = _config(model={"name": "lenet-300-100", "weights": str(other)})
    with pytest.raises(ModelError) as info:
        run_trial(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert "do not fit model lenet-300-100" in message
    assert "missing fc3.weight, fc3.bias; unexpected conv1.weight, conv1.bias, bn1.weight ...; fc1.weight is" in message

    wrong_shape = build_model("lenet-300-100", (1, 8, 8), 4).state_dict()
    torch.save(wrong_shape, tmp_path / "four.pt")
    with pytest.raises(ModelError, match=r"fc3.weight is \[4, 100\] but the architecture needs \[10, 100\]"):
        run_trial(_config(model={"name": "lenet-300-100", "weights": str(tmp_path / "four.pt")}))


class Hostile:
    def __reduce__(self):  # unpickling would call this
        return (Path.touch, (Path("/tmp/autoprune-hostile-marker"),))


def test_a_pickled_object_or_a_damaged_file_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = Path("/tmp/autoprune-hostile-marker")
    marker.unlink(missing_ok=True)
    hostile = tmp_path / "hostile.pt"
    torch.save({"fc1.weight": Hostile()}, hostile, pickle_module=pickle)
    with pytest.raises(ModelError, match="holds Python objects"):
        run_trial(_config(model={"name": "lenet-300-100", "weights": str(hostile)}))
    assert not marker.exists()
    truncated = tmp_path / "truncated.pt"
    torch.save(build_model("lenet-300-100", (1, 8, 8), 10).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(ModelError, match="not a complete torch file"):
        run_trial(_config(model={"name": "lenet-300-100", "weights": str(truncated)}))
    torch.save({"epoch": 3, "state_dict": [1, 2]}, tmp_path / "odd.pt")
    with pytest.raises(ModelError, match="not a state_dict"):
        run_trial(_config(model={"name": "lenet-300-100", "weights": str(tmp_path / "odd.pt")}))


def test_a_checkpoint_dict_with_a_state_dict_entry_is_read(trained: tuple[Path, dict], tmp_path: Path) -> None:
    path, record = trained
    wrapped = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 7, "state_dict": torch.load(path, weights_only=True)}, wrapped)
    cfg = _config(model={"name": "lenet-300-100", "weights": str(wrapped)}, budget={"train_epochs": 0})
    assert run_trial(cfg).test_accuracy == record["test_accuracy"]


def test_an_export_from_a_checkpoint_start_reloads_with_the_checkpoint_deleted(tmp_path: Path) -> None:
    factory = "test_layer_types:transformer"
    dense = run_trial(_config(model={"name": factory}, budget={"train_epochs": 1}))
    ckpt = tmp_path / "encoder.pt"
    torch.save(dense.model.state_dict(), ckpt)
    cfg = _config(
        model={"name": factory, "weights": str(ckpt)},
        budget={"train_epochs": 1, "finetune_epochs": 1},
        prune={"enabled": True, "allocation": "global", "density": 0.3},
    )
    result = run_trial(cfg)
    result.save(tmp_path / "pruned.pt")
    ckpt.unlink()
    loaded = load_model(tmp_path / "pruned.pt", allow_modules=("test_layer_types",))
    x = torch.randn(7, 1, 8, 8)
    result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), result.model(x))
    nonzero = sum(int(torch.count_nonzero(p)) for p in loaded.model.parameters())
    assert nonzero == result.params_nonzero


def test_the_command_line_sets_weights_and_refuses_a_missing_file(
    trained: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, record = trained
    space = tmp_path / "space.yaml"
    space.write_text(
        "dataset: {name: digits, limit: 500}\nmodel: {name: lenet-300-100}\n"
        "budget: {train_epochs: 0, finetune_epochs: 0, batch_size: 64}\nprune: {enabled: false}\ndevice: cpu\n"
    )
    monkeypatch.chdir(path.parent)
    code, out, err = run_cli(
        ["trial", str(space), "--set", f"model.weights={path.name}", "--json"], capsys, monkeypatch
    )
    assert code == 0, err
    assert f'"test_accuracy": {record["test_accuracy"]}' in out
    code, out, err = run_cli(["trial", str(space), "--set", "model.weights=missing.pt"], capsys, monkeypatch)
    assert code != 0 and out == ""
    [line] = err.strip().splitlines()
    assert "missing.pt" in line and "Traceback" not in err


class TrainsBadly(torch.nn.Module):
    """Runs on a sample in eval mode (so the space loads), and fails once it trains, as a user's bug would."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise ValueError("the batch norm statistics are not set up")
        return self.fc(x.flatten(1))


def trains_badly() -> torch.nn.Module:
    return TrainsBadly()


def test_a_search_whose_trial_cannot_run_is_refused_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        "dataset: {name: digits, limit: 200}\nmodel: {name: 'test_weights:trains_badly'}\n"
        "budget: {train_epochs: 1, finetune_epochs: 1}\nprune: {allocation: global, density: {low: 0.1, high: 0.5}}\n"
    )
    code, out, err = run_cli(["search", str(space), "--run-dir", str(tmp_path / "run")], capsys, monkeypatch)
    assert code == 1 and out == ""
    [line] = err.strip().splitlines()
    assert "the space's trial (its default values) fails before the search starts" in line
    assert "the batch norm statistics are not set up" in line
    assert not (tmp_path / "run").exists()  # refused before Ray or any file


def test_the_api_takes_weights_for_a_config_or_a_space(trained: tuple[Path, dict]) -> None:
    import autoprune
    from autoprune.searching.space import parse_space

    path, record = trained
    cfg = _config(model={"name": "lenet-300-100"}, budget={"train_epochs": 0})
    assert autoprune.run_trial(cfg, weights=path).test_accuracy == record["test_accuracy"]
    space = parse_space(cfg.to_dict())
    result = autoprune.run_trial(space, weights=path)
    assert result.test_accuracy == record["test_accuracy"] and result.record()["start"] == "checkpoint"
