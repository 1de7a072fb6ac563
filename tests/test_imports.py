"""User code by ``module:function``: the import path, factories called by keyword, one-line errors, and what a
search refuses because its trial workers could not import it."""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune.config import DatasetConfig
from autoprune.errors import DataError, ModelError
from autoprune.io._imports import call_factory, factory_arguments, import_callable
from autoprune.io.data import DATASETS, load_datasets, register_dataset
from autoprune.io.data import check_importable as check_dataset
from autoprune.io.models import MODELS, build_model, register_model
from autoprune.io.models import check_importable as check_model
from autoprune.raytune._localray import worker_runtime_env

FACTORIES = """
import torch
from torch import nn

def keyword_only(*, input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes))

def flat(num_features=30, num_classes=2):
    return nn.Sequential(nn.Linear(num_features, 16), nn.ReLU(), nn.Linear(16, num_classes))

def in_features_only(in_features, hidden=7):
    return nn.Linear(in_features, hidden)

def with_kwargs(num_classes=10, **kw):
    assert not kw, kw
    return nn.Linear(3, num_classes)

def no_args():
    return nn.Linear(4, 2)

def images(in_channels=3, num_classes=10):
    return nn.Conv2d(in_channels, num_classes, 3)

def positional(input_shape, num_classes, /):
    return nn.Linear(input_shape[-1], num_classes)

def needs_depth(depth, num_classes):
    return nn.Linear(depth, num_classes)

def raises(num_classes):
    raise ValueError("width must be even\\nsecond line")

def not_a_module():
    return 42

def three_classes(input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], 3))

def tabular_only(num_features=30, num_classes=2):
    return nn.Linear(num_features, num_classes)
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # a fresh module name per test: imported modules stay in sys.modules for the whole session
    name = f"ap_factories_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)  # found as a user finds it: in the working folder, which is not on sys.path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    return name


def test_a_module_in_the_working_folder_is_imported_and_the_folder_put_on_the_path_once(user_module: str) -> None:
    factory = import_callable(f"{user_module}:flat", what="model")
    assert factory.__module__ == user_module
    import_callable(f"{user_module}:no_args", what="model")
    assert sys.path.count(os.getcwd()) == 1 and sys.path[0] == os.getcwd()
    # A process that moves to another folder (a Ray worker entering each trial's folder) keeps one such entry.
    first = os.getcwd()
    os.chdir(os.path.dirname(first))
    import_callable(f"{user_module}:flat", what="model")
    assert sys.path[0] == os.getcwd() and first not in sys.path


@pytest.mark.parametrize(
    ("factory", "input_shape", "check"),
    [
        ("keyword_only", (1, 4, 4), lambda m: m[1].in_features == 16 and m[1].out_features == 3),
        ("flat", (30,), lambda m: m[0].in_features == 30 and m[2].out_features == 3),
        ("in_features_only", (5,), lambda m: (m.in_features, m.out_features) == (5, 7)),  # default kept
        ("with_kwargs", (1, 4, 4), lambda m: m.out_features == 3),  # **kw gets nothing
        ("no_args", (1, 4, 4), lambda m: (m.in_features, m.out_features) == (4, 2)),
        ("images", (1, 28, 28), lambda m: (m.in_channels, m.out_channels) == (1, 3)),
        ("positional", (9,), lambda m: (m.in_features, m.out_features) == (9, 3)),
    ],
)
def test_factories_get_the_arguments_they_name(user_module: str, factory: str, input_shape, check) -> None:
    model = build_model(f"{user_module}:{factory}", input_shape, 3)
    assert isinstance(model, nn.Module) and check(model)


def test_the_arguments_offered_depend_on_the_data_shape() -> None:
    assert factory_arguments((1, 28, 28), 10) == {"input_shape": (1, 28, 28), "num_classes": 10, "in_channels": 1}
    flat = {"input_shape": (30,), "num_classes": 2, "num_features": 30, "in_features": 30}
    assert factory_arguments((30,), 2) == flat
    # an image model asking for num_features is told which arguments exist
    with pytest.raises(ModelError, match=r"needs argument 'num_features'.*input_shape, num_classes, in_channels"):
        call_factory(lambda num_features: None, "f", factory_arguments((1, 8, 8), 2), what="model")


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (
            "needs_depth",
            r"^model factory \S+:needs_depth needs argument 'depth', which autoprune cannot give; it passes "
            r"input_shape, num_classes, in_channels by name: rename the parameter or give it a default$",
        ),
        ("raises", r"^model factory \S+:raises raised ValueError: width must be even$"),
        ("not_a_module", r"^model factory \S+:not_a_module returned int, expected a torch.nn.Module$"),
    ],
)
def test_factory_failures_are_one_line_naming_the_factory(user_module: str, factory: str, message: str) -> None:
    with pytest.raises(ModelError, match=message) as info:
        build_model(f"{user_module}:{factory}", (1, 4, 4), 3)
    assert "\n" not in str(info.value) and info.value.__cause__ is None


def test_a_missing_module_names_the_file_and_the_working_folder(user_module: str) -> None:
    with pytest.raises(ModelError) as info:
        build_model("my_modles:net", (1, 4, 4), 3)
    message = str(info.value)
    assert "cannot import module 'my_modles': there is no my_modles.py (or package)" in message
    assert f"working folder {os.getcwd()}" in message and "run autoprune from the folder that holds it" in message


def test_an_import_error_inside_the_user_module_is_one_line(tmp_path: Path, user_module: str) -> None:
    name = f"ap_broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import no_such_dependency_xyz\n")
    expected = rf"^model '{name}:net': cannot import module '{name}': ModuleNotFoundError: No module named 'no_such_"
    with pytest.raises(ModelError, match=expected + r"dependency_xyz'$"):
        build_model(f"{name}:net", (1, 4, 4), 3)


def test_a_dataset_loader_that_raises_is_one_line(tmp_path: Path, user_module: str) -> None:
    name = f"ap_data_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent("""
        def load():
            raise FileNotFoundError("no such file: train.csv\\nmore detail")
    """)
    )
    with pytest.raises(DataError, match=rf"^dataset '{name}:load' raised FileNotFoundError: no such file: train.csv$"):
        load_datasets(DatasetConfig(name=f"{name}:load"), seed=0)


def test_a_dataset_in_the_working_folder_loads(tmp_path: Path, user_module: str) -> None:
    name = f"ap_data_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent("""
        import numpy as np
        def load():
            rng = np.random.default_rng(0)
            x = rng.normal(size=(60, 5))
            y = np.arange(60) % 3
            return x[:40], y[:40], x[40:], y[40:]
    """)
    )
    data = load_datasets(DatasetConfig(name=f"{name}:load", val_fraction=0.25), seed=0)
    assert data.input_shape == (5,) and data.num_classes == 3 and data.train_x.shape == (30, 5)


def test_worker_runtime_env_puts_the_working_folder_first_for_a_local_run(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/opt/a", "", "/opt/b"]))
    expected = os.pathsep.join([str(tmp_path), "/opt/a", "/opt/b"])
    assert worker_runtime_env(None) == {"env_vars": {"PYTHONPATH": expected}}
    monkeypatch.delenv("PYTHONPATH")
    assert worker_runtime_env(None) == {"env_vars": {"PYTHONPATH": str(tmp_path)}}
    # On a cluster this machine's folders mean nothing: the job's own runtime environment ships the code.
    assert worker_runtime_env("10.0.0.1:6379") is None


def test_a_model_registered_in_this_process_is_refused_for_a_search(monkeypatch) -> None:
    monkeypatch.setitem(MODELS, "notebook-net", None)

    @register_model("notebook-net")
    def make(input_shape, num_classes):
        return nn.Linear(input_shape[-1], num_classes)

    assert isinstance(build_model("notebook-net", (4,), 2), nn.Linear)  # fine in this process
    expected = r"^model 'notebook-net' was registered with register_model in this process only; .*put the factory in a"
    with pytest.raises(ModelError, match=expected + r" file, e\.g\. my_models\.py"):
        check_model("notebook-net")
    for name in ("lenet-300-100", "bn-cnn", "my_models:net", "no-such-model"):
        check_model(name)  # built-in, module:function (checked by importing), unknown (the space says so)
    with pytest.raises(ModelError, match="lives in the running script or notebook"):
        check_model("__main__:net")


def test_a_registered_importable_factory_is_refused_with_its_module_function_name(monkeypatch) -> None:
    monkeypatch.setitem(MODELS, "short-name", None)
    register_model("short-name")(torch.nn.Identity)
    with pytest.raises(ModelError, match=r"use model\.name: torch\.nn\.modules\.linear:Identity"):
        check_model("short-name")


def test_a_dataset_registered_in_this_process_is_refused_for_a_search(monkeypatch) -> None:
    monkeypatch.setitem(DATASETS, "notebook-data", None)
    register_dataset("notebook-data")(lambda cfg: None)
    with pytest.raises(DataError, match=r"^dataset 'notebook-data' exists only in this process.*my_data:FUNCTION$"):
        check_dataset("notebook-data")
    with pytest.raises(DataError, match="exists only in this process"):
        check_dataset("__main__:load")
    for name in ("digits", "fashion-mnist", "synthetic", "my_data:load"):
        check_dataset(name)


def test_a_search_refuses_a_process_local_model_before_starting_anything(monkeypatch, tmp_path: Path) -> None:
    from autoprune import api

    monkeypatch.setitem(MODELS, "notebook-mlp", None)
    register_model("notebook-mlp")(lambda num_classes: nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes)))
    space = tmp_path / "space.yaml"
    space.write_text("dataset: {name: digits}\nmodel: {name: notebook-mlp}\nprune: {sparsity: auto}\n")
    with pytest.raises(ModelError, match="registered with register_model in this process only"):
        api.search(space, run_dir=tmp_path / "run", trials=1, log=lambda _m: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (
            "tabular_only",
            r"model \S+:tabular_only does not run on a sample shaped \(1, 8, 8\): RuntimeError: mat1 and mat2 shapes "
            r"cannot be multiplied \(8x8 and 30x4\); check how its factory uses input_shape, in_channels or "
            r"num_features$",
        ),
        (
            "three_classes",
            r"model \S+:three_classes gives \(1, 3\) for one sample shaped \(1, 8, 8\), but the data has 4 classes",
        ),
    ],
)
def test_a_model_that_does_not_fit_the_data_is_refused_at_validation(
    user_module: str, tmp_path: Path, factory: str, message: str
) -> None:
    from autoprune.errors import ConfigError
    from autoprune.searching.space import load_space

    space = tmp_path / "space.yaml"
    space.write_text(f"dataset: {{name: synthetic}}\nmodel: {{name: '{user_module}:{factory}'}}\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_space(space)
    assert "\n" not in str(info.value)
