"""The Python API: ``import autoprune`` as a notebook user meets it, the documentation's examples included."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from _doc_blocks import doc_example

import autoprune

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
TINY = ["budget.train_epochs=1", "budget.finetune_epochs=1"]


def test_the_package_lists_its_api_with_docstrings() -> None:
    names = ["run_trial", "search", "resume", "load_results", "results", "refresh_report", "pick", "evaluate"]
    names += ["load_model", "load_space"]
    assert set(names) <= set(autoprune.__all__) <= set(dir(autoprune))
    for name in names:
        assert callable(getattr(autoprune, name)) and getattr(autoprune, name).__doc__, name
    # No name of the API is also a module of the package, where importing the module would replace it.
    package = ROOT / "autoprune"
    assert not [n for n in autoprune.__all__ if (package / f"{n}.py").exists() or (package / n).is_dir()]


def test_run_trial_then_load_model_runs_on_raw_digits(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    from autoprune.io.data import DIGITS_TEST_FRACTION, DIGITS_TEST_SEED, stratified_split

    result = autoprune.run_trial("digits_quick", overrides=TINY, seed=3, threads=1, save=tmp_path / "m.pt")
    assert result.config["seed"] == 3
    model = autoprune.load_model(tmp_path / "m.pt")
    assert isinstance(model, torch.nn.Module) and not model.training
    bunch = load_digits()
    _, test_idx = stratified_split(torch.from_numpy(bunch.target), DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    raw = torch.from_numpy(bunch.images)[test_idx]  # float64 0..16, as scikit-learn holds them
    labels = torch.from_numpy(bunch.target)[test_idx]
    accuracy = (model.predict(raw) == labels).sum().item() / len(labels)
    assert accuracy == result.test_accuracy
    assert model(raw[0]).shape == (1, 10)  # one raw sample works too
    assert model.metrics["params_nonzero"] == result.params_nonzero


def test_a_file_without_stored_preprocessing_gets_its_datasets(tmp_path: Path) -> None:
    from autoprune.io.export import load_model as load_file
    from autoprune.io.export import save_model

    result = autoprune.run_trial("digits_quick", overrides=TINY)
    old = save_model(
        tmp_path / "old.pt",
        result.model,
        masks=result.masks,
        config=result.config,
        metrics=result.record(),
        input_shape=result.input_shape,
        num_classes=result.num_classes,
    )
    assert load_file(old).preprocessing is None
    new = result.save(tmp_path / "new.pt")
    raw = torch.rand(5, 8, 8) * 16
    torch.testing.assert_close(autoprune.load_model(old)(raw), autoprune.load_model(new)(raw), rtol=0, atol=0)


@pytest.mark.fashion
@pytest.mark.skipif(not FASHION.is_dir(), reason="needs the Fashion-MNIST files")
def test_plain_torch_loader_matches_the_recorded_accuracy(tmp_path: Path, monkeypatch) -> None:
    overrides = [
        *TINY,
        "dataset.limit=3000",
        "prune.allocation=per_layer",
        "prune.sparsity.fc1=0.9",
        "prune.sparsity.fc2=0.8",
    ]
    result = autoprune.run_trial("lenet300_fashion", overrides=overrides, save=tmp_path / "model.pt")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(doc_example("load_plain.py"), scope)
    assert scope["accuracy"] == pytest.approx(result.test_accuracy, abs=1e-4)  # 10,000 test images: 1 may flip
    assert scope["accuracy"] > 0.6
    raw, labels = scope["raw"], scope["labels"].long()
    model = autoprune.load_model(tmp_path / "model.pt")
    assert (model.predict(raw) == labels).sum().item() / len(labels) == result.test_accuracy


@pytest.mark.ray
def test_from_python_example_then_evaluate(local_ray, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    scope: dict = {}
    exec(doc_example("from_python.py"), scope)
    df = scope["df"]
    assert len(df) == 3 and df["trial"].tolist() == [0, 1, 2] and (df["state"] == "COMPLETE").all()
    dtypes = df.dtypes.astype(str).to_dict()
    assert dtypes["trial"] == "int64" and dtypes["params_nonzero"] == dtypes["params_total"] == "Int64"
    assert dtypes["val_accuracy"] == dtypes["test_accuracy"] == dtypes["fraction_dense"] == "float64"
    assert dtypes["on_front"] == "bool" and dtypes["sparsity.fc1"] == "float64"
    searched = [c for c in df if c.startswith(("train.", "finetune.", "prune."))]
    assert "train.lambda_max" in searched and dtypes["train.lambda_max"] == "float64"
    res = autoprune.load_results("runs/py")
    assert set(df.loc[df.on_front, "trial"]) == {r["trial"] for r in res.front}
    assert (df["fraction_dense"] == df["params_nonzero"] / df["params_total"]).all()
    best = scope["best"]
    model = scope["model"]
    assert model.metrics["trial"] == best
    row = df.set_index("trial").loc[best]
    measured = autoprune.evaluate(os.path.join("runs", "py", "best.pt"))
    assert measured["test_accuracy"] == row["test_accuracy"] and measured["params_nonzero"] == row["params_nonzero"]
    # pick --trial takes any finished trial, also one off the front.
    off = df.loc[~df.on_front, "trial"].tolist()
    if off:
        chosen = autoprune.pick("runs/py", trial=off[0], out="off.pt")
        assert chosen["trial"] == off[0] and Path("off.pt").is_file()
