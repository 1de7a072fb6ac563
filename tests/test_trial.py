from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import autoprune.pipeline.trial as trial_module
from autoprune.config import BudgetConfig, DatasetConfig, ModelConfig, PruneConfig, TrainConfig, TrialConfig
from autoprune.errors import ConfigError, DivergedError
from autoprune.io.models import build_model
from autoprune.pipeline.result import CLOCK_KEYS
from autoprune.pipeline.trial import IntermediateResult, run_trial
from autoprune.pruning import count_params
from autoprune.pruning.units import prunable_weights


def cfg(**sections) -> TrialConfig:
    base = {
        "dataset": DatasetConfig(name="synthetic"),
        "model": ModelConfig(name="lenet-300-100"),
        "budget": BudgetConfig(train_epochs=2, finetune_epochs=1, batch_size=64),
        "device": "cpu",
    }
    base.update(sections)
    return TrialConfig(**base)


SPARSITY = {"fc1": 0.95, "fc2": 0.9, "fc3": 0.5}


def test_per_layer_sparsity_and_params_are_exact() -> None:
    result = run_trial(cfg(prune=PruneConfig(sparsity=SPARSITY)))
    for layer, rate in SPARSITY.items():
        assert result.layer_sparsity[layer] == pytest.approx(rate, abs=0.002)
    dense = build_model("lenet-300-100", (1, 8, 8), 4)
    layers = prunable_weights(dense)
    kept = sum(round(w.numel() * (1 - SPARSITY[n])) for n, w in layers.items())
    biases = sum(dense.get_submodule(n).bias.numel() for n in layers)
    assert result.params_nonzero == kept + biases
    assert result.params_total == count_params(dense)[1]
    assert result.flops_effective == kept  # linear layers: one MAC per weight
    assert result.val_accuracy > 0.8  # synthetic data is learnable even at this sparsity
    record = result.record()
    json.dumps(record)  # a trial record is plain JSON
    assert set(record) >= {
        "val_accuracy",
        "test_accuracy",
        "params_nonzero",
        "params_total",
        "layer_sparsity",
        "config",
    }
    data = trial_module.load_datasets(DatasetConfig(name="synthetic"), seed=0, device="cpu")
    assert record["val_samples"] == len(data.val_x) > 0  # what the validation accuracy's standard error depends on
    assert record["val_chance"] == int(torch.bincount(data.val_y).max()) / len(data.val_y)  # the majority share
    assert record["val_accuracy"] * record["val_samples"] == pytest.approx(
        round(record["val_accuracy"] * len(data.val_x))
    )
    assert TrialConfig.from_dict(record["config"]) == result_config(result)


def result_config(result) -> TrialConfig:
    return TrialConfig.from_dict(result.config)


def test_the_same_seed_gives_the_same_result_and_another_seed_does_not() -> None:
    c = cfg(
        prune=PruneConfig(criterion="taylor", sparsity=SPARSITY),
        train=TrainConfig(penalty="l1", lambda_max=1e-4, weight_clip=0.5, grad_clip=2.0),
    )
    a, b = run_trial(c), run_trial(c)
    clock = dict.fromkeys(CLOCK_KEYS)
    assert a.record() | clock == b.record() | clock
    for (na, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), na
    other = run_trial(TrialConfig.from_dict({**c.to_dict(), "seed": 1}))
    assert not torch.equal(other.model.fc1.weight, a.model.fc1.weight)


@pytest.mark.parametrize("criterion", ["magnitude", "gradient", "taylor"])
def test_gradual_pruning_reaches_the_target_and_keeps_zeros(criterion: str) -> None:
    result = run_trial(
        cfg(
            prune=PruneConfig(criterion=criterion, schedule="gradual", sparsity=SPARSITY, gradual_steps=4),
            budget=BudgetConfig(train_epochs=1, finetune_epochs=2, batch_size=64),
        )
    )
    for layer, rate in SPARSITY.items():
        assert result.layer_sparsity[layer] == pytest.approx(rate, abs=0.002)
    assert result.val_accuracy_pruned is None
    for name, mask in result.masks.items():
        assert torch.all(dict(result.model.named_parameters())[name][~mask] == 0)


@pytest.mark.parametrize("allocation", ["global", "uniform", "lamp", "erk"])
def test_density_allocations_keep_exactly_the_planned_count(allocation: str) -> None:
    result = run_trial(cfg(prune=PruneConfig(allocation=allocation, density=0.2)))
    layers = prunable_weights(build_model("lenet-300-100", (1, 8, 8), 4))
    total = sum(w.numel() for w in layers.values())
    zeros = sum(round(result.layer_sparsity[n] * w.numel()) for n, w in layers.items())
    assert total - zeros == round(0.2 * total)
    assert result.params_nonzero == result.params_planned == result.record()["params_planned"]
    if allocation == "uniform":
        assert all(v == pytest.approx(0.8, abs=2e-3) for v in result.layer_sparsity.values())


def test_structured_trial_returns_a_physically_smaller_model() -> None:
    c = cfg(
        model=ModelConfig(name="bn-cnn"),
        dataset=DatasetConfig(name="digits"),
        train=TrainConfig(penalty="group_lasso", lambda_max=1e-3),
        prune=PruneConfig(structured=True, sparsity={"conv1": 0.5, "conv2": 0.5, "fc1": 0.75}),
    )
    result = run_trial(c)
    model = result.model
    assert model.conv1.out_channels == 16 and model.conv2.out_channels == 32 and model.fc1.out_features == 32
    assert model.conv2.in_channels == 16 and model.fc1.in_features == 32 * 2 * 2
    nonzero, total = count_params(model)
    assert result.params_nonzero == nonzero == total  # no hidden zeros: the pruned units are gone
    assert result.params_nonzero < 0.4 * result.params_total
    assert result.masks == {}
    assert result.val_accuracy > 0.8


def test_dense_run_without_pruning_or_sparse_training() -> None:
    result = run_trial(cfg(prune=PruneConfig(enabled=False), train=TrainConfig(penalty="none")))
    assert result.params_nonzero == result.params_total
    assert result.val_accuracy_pruned == result.val_accuracy_trained
    assert all(v < 0.01 for v in result.layer_sparsity.values())


def test_a_diverging_trial_raises_a_typed_error_naming_the_phase() -> None:
    with pytest.raises(DivergedError, match="phase 'train' at step"):
        run_trial(cfg(train=TrainConfig(lr=1e8, lr_schedule="constant"), prune=PruneConfig(enabled=False)))


def test_unknown_layer_in_the_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown layer 'conv9'; prunable layers: fc1, fc2, fc3"):
        run_trial(cfg(prune=PruneConfig(sparsity={"conv9": 0.5})))


def test_a_user_model_from_module_function_is_pruned_and_exported(tmp_path, monkeypatch) -> None:
    (tmp_path / "user_nets.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, n_in, n_out):\n"
        "        super().__init__()\n"
        "        self.body = torch.nn.Sequential(torch.nn.Linear(n_in, 32), torch.nn.ReLU())\n"
        "        self.head = torch.nn.Linear(32, n_out)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.body(x.flatten(1)))\n"
        "def make(input_shape, num_classes):\n"
        "    return Net(input_shape[0] * input_shape[1] * input_shape[2], num_classes)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run_trial(
        cfg(model=ModelConfig(name="user_nets:make"), prune=PruneConfig(sparsity={"body.0": 0.8, "head": 0.5}))
    )
    assert result.layer_sparsity == pytest.approx({"body.0": 0.8, "head": 0.5}, abs=0.002)
    from autoprune.io.export import load_model

    loaded = load_model(result.save(tmp_path / "m.pt"), allow_modules=["user_nets"])
    x = torch.randn(5, 1, 8, 8)
    result.model.eval()
    assert torch.equal(loaded.model(x), result.model(x))


def test_one_device_resolver_for_trials_and_data() -> None:
    from autoprune.io.data import resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="invalid device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available here; use --device cpu"):
            run_trial(cfg(), device="cuda")


@pytest.mark.parametrize(
    "prune",
    [
        PruneConfig(sparsity=SPARSITY),
        PruneConfig(allocation="global", density=0.2, criterion="taylor"),
        PruneConfig(schedule="gradual", sparsity=SPARSITY, gradual_steps=3),
        PruneConfig(enabled=False),
    ],
    ids=["per_layer", "global", "gradual", "dense"],
)
def test_progress_reports_every_epoch_with_the_planned_size(prune: PruneConfig) -> None:
    c = cfg(prune=prune, budget=BudgetConfig(train_epochs=2, finetune_epochs=2, batch_size=64))
    reports: list[IntermediateResult] = []
    result = run_trial(c, report=reports.append)
    one_shot = prune.enabled and prune.schedule == "one_shot"
    stages = ["train", "train", *(["prune"] if one_shot else []), "finetune", "finetune"]
    assert [p.stage for p in reports] == stages
    assert [p.epoch for p in reports] == [1, 2, *([2] if one_shot else []), 3, 4]
    assert all(p.epochs == 4 for p in reports)
    # The size is known before training and is the size the trial ends with.
    assert {p.params_planned for p in reports} == {result.params_nonzero}
    assert all(0.0 <= p.val_accuracy <= 1.0 for p in reports)
    assert reports[-1].val_accuracy > 0.5  # measured on the trial's own model, which has learnt by then
    # at_size: the final masks are in place (from one-shot pruning on; at the end of a ramp; always when dense).
    flags = [p.at_size for p in reports]
    assert flags == sorted(flags) and flags[-1]  # once at its size, a trial stays there
    assert all(flags) if not prune.enabled else not any(p.at_size for p in reports if p.stage == "train")
    if one_shot:
        assert all(p.at_size for p in reports if p.stage != "train")
    # Reporting measures the model without changing it.
    plain = run_trial(c)
    clock = dict.fromkeys(CLOCK_KEYS)
    assert plain.record() | clock == result.record() | clock


def test_a_ramp_in_phase_one_reaches_its_size_where_the_ramp_ends() -> None:
    prune = PruneConfig(allocation="global", density=0.1, schedule="gradual_train", gradual_start=0.0)
    c = cfg(prune=dataclasses.replace(prune, gradual_end=0.5), budget=BudgetConfig(4, 1, batch_size=64))
    reports: list[IntermediateResult] = []
    run_trial(c, report=reports.append)
    assert [(p.epoch, p.at_size) for p in reports][:1] == [(1, False)]  # half-way up the ramp
    assert all(p.at_size for p in reports if p.epoch >= 3)  # the ramp ended at epoch 2


def test_progress_is_measured_on_a_subset_of_the_validation_split(monkeypatch) -> None:
    c = cfg(budget=BudgetConfig(train_epochs=1, finetune_epochs=1, batch_size=64), prune=PruneConfig(enabled=False))
    whole: list[IntermediateResult] = []
    result = run_trial(c, report=whole.append)
    assert whole[-1].val_accuracy == result.val_accuracy  # a split smaller than the subset is measured whole
    monkeypatch.setattr(trial_module, "REPORT_VAL_SAMPLES", 64)
    part: list[IntermediateResult] = []
    run_trial(c, report=part.append)
    assert all((p.val_accuracy * 64) == pytest.approx(round(p.val_accuracy * 64)) for p in part)
    assert [p.val_accuracy for p in part] != [p.val_accuracy for p in whole]


def test_planned_params_of_a_structured_trial_is_its_final_size() -> None:
    c = cfg(
        model=ModelConfig(name="bn-cnn"),
        dataset=DatasetConfig(name="digits"),
        budget=BudgetConfig(train_epochs=1, finetune_epochs=1, batch_size=64),
        prune=PruneConfig(structured=True, sparsity={"conv1": 0.5, "conv2": 0.25, "fc1": 0.75}),
    )
    reports: list[IntermediateResult] = []
    result = run_trial(c, report=reports.append)
    assert {p.params_planned for p in reports} == {result.params_nonzero}
