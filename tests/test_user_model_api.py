"""The same user session as ``test_user_model.py``, through the Python API: the guide's my_models.py in the user's
folder, the working folder set to it, and ``autoprune.run_trial``, ``search``, ``results``, ``pick`` and
``load_model`` called in this process. The loaded models are called on raw Fashion-MNIST images as the IDX files
hold them (uint8 28x28).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _user_folder import TINY_RESNET, UserFolder, write_user_folder

import autoprune
from autoprune.config import TrialConfig
from autoprune.errors import ModelError
from autoprune.io.idx import read_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")
RESNET_LAYERS = ("stem", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2", "fc")
USER_MODULES = ("my_models", "my_data")

pytestmark = [
    pytest.mark.fashion,
    pytest.mark.skipif(not FASHION.is_dir(), reason="needs the Fashion-MNIST files"),
]


def _forget_user_modules() -> None:
    for name in USER_MODULES:  # another test's folder may have left its own my_models imported
        sys.modules.pop(name, None)


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UserFolder]:
    folder = write_user_folder(tmp_path / "user")
    monkeypatch.chdir(folder.path)
    _forget_user_modules()
    yield folder
    _forget_user_modules()


def _raw_test_set() -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(FASHION / "t10k-images-idx3-ubyte.gz", magic=0x00000803)
    labels = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz", magic=0x00000801)
    assert images.dtype == torch.uint8 and images.shape == (10000, 28, 28)
    return images, labels.long()


def _check_on_raw_images(path: Path, record: dict) -> None:
    """``load_model(path)`` takes raw images, gives what the network gives on the loader's tensors, and is as
    accurate on them as the trial measured."""
    with pytest.raises(ModelError, match="allow_modules=\\['my_models'\\]"):
        autoprune.load_model(path)  # the file names my_models:resnet, code that is imported only when allowed
    model = autoprune.load_model(path, allow_modules=["my_models"])
    assert isinstance(model, torch.nn.Module) and not model.training
    convs = {name for name, m in model.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs == set(RESNET_LAYERS[:-1])
    raw, labels = _raw_test_set()
    cfg = TrialConfig.from_dict(model.config)
    data = autoprune.load_datasets(cfg.dataset, seed=cfg.seed, device="cpu")
    with torch.inference_mode():
        torch.testing.assert_close(model(raw[:500]), model.model(data.test_x[:500]), rtol=1e-4, atol=1e-5)
    accuracy = (model.predict(raw) == labels).sum().item() / len(labels)
    # Batches of another size may flip the argmax of one image of 10,000 (conv sums in another order).
    assert accuracy == pytest.approx(record["test_accuracy"], abs=1e-4)
    assert model.metrics["params_nonzero"] == record["params_nonzero"]


def test_resnet_trial_through_the_api_then_load_model_on_raw_images(user: UserFolder) -> None:
    overrides = [*TINY_RESNET, "prune.sparsity.layer1.0.conv1=0.5"]
    result = autoprune.run_trial("resnet_fashion.yaml", overrides=overrides, seed=1, threads=1, save="trial.pt")
    record = result.record()
    expected = {name: 0.5 if name == "layer1.0.conv1" else 0.0 for name in RESNET_LAYERS}
    assert record["layer_sparsity"] == pytest.approx(expected, abs=0.001)
    assert record["params_nonzero"] < record["params_total"]
    _check_on_raw_images(user.path / "trial.pt", record)
    measured = autoprune.evaluate("trial.pt", allow_modules=["my_models"])
    assert measured["test_accuracy"] == record["test_accuracy"]
    assert measured["params_nonzero"] == record["params_nonzero"]


@pytest.mark.ray
def test_resnet_search_results_pick_and_load_model_through_the_api(
    no_shared_ray, user: UserFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # The trials run in Ray's worker processes, each in its own trial folder: they must import my_models too. The
    # search starts its own Ray here (no_shared_ray), from the user's folder, as a user's search does.
    launch = autoprune.search(
        "resnet_fashion.yaml", run_dir="runs/api", trials=3, concurrent=1, overrides=TINY_RESNET, log=lambda _m: None
    )
    assert launch.ran == 3 and launch.results.failed == 0 and len(launch.results.trials) == 3

    df = autoprune.results("runs/api")
    assert df["trial"].tolist() == [0, 1, 2] and (df["state"] == "COMPLETE").all()
    for name in RESNET_LAYERS:  # every layer searched under its dotted name
        assert df[f"prune.sparsity.{name}"].between(0.0, 0.95).all()
        assert (df[f"sparsity.{name}"] - df[f"prune.sparsity.{name}"]).abs().max() < 0.01
    front = set(df.loc[df.on_front, "trial"])
    assert front == {r["trial"] for r in launch.results.front}

    chosen = autoprune.pick("runs/api", knee=True, out="knee.pt")
    assert chosen["trial"] in front and chosen["out"] == "knee.pt"
    row = df.set_index("trial").loc[chosen["trial"]]
    assert chosen["test_accuracy"] == row["test_accuracy"] and chosen["params_nonzero"] == row["params_nonzero"]
    _check_on_raw_images(user.path / "knee.pt", chosen)
