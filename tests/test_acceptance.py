"""The pipeline's accuracy promises on the real Fashion-MNIST files, with the shipped lenet300_fashion budget."""

from __future__ import annotations

import pytest

from autoprune.pipeline.trial import run_trial
from autoprune.searching.space import load_space

pytestmark = [pytest.mark.fashion, pytest.mark.slow]


def test_dense_lenet300_reaches_0885_test_accuracy() -> None:
    # The dense settings of benchmarks/front_quality.py: the space's defaults suit pruned models (its strong L1 and a
    # finetune lr of 8e-3 for Adam leave the dense model at test 0.8803)
    dense = ["prune.enabled=false", "train.lambda_max=1e-5", "train.lambda_schedule=constant", "finetune.lr=6e-4"]
    result = run_trial(load_space("lenet300_fashion", dense).default_config(), device="cpu")
    assert result.params_nonzero == result.params_total == 266_610
    assert result.test_accuracy >= 0.885


def test_pruned_lenet300_keeps_0875_with_exact_layer_sparsity() -> None:
    overrides = ["prune.allocation=per_layer", "prune.sparsity.fc1=0.95", "prune.sparsity.fc2=0.90"]
    overrides.append("prune.sparsity.fc3=0.5")
    result = run_trial(load_space("lenet300_fashion", overrides).default_config(), device="cpu")
    assert result.layer_sparsity == pytest.approx({"fc1": 0.95, "fc2": 0.90, "fc3": 0.5}, abs=0.002)
    # 784*300*0.05 + 300*100*0.10 + 100*10*0.5 kept weights, plus the 410 biases
    assert result.params_nonzero == 11_760 + 3_000 + 500 + 410
    assert result.test_accuracy >= 0.875
