"""The GPU by default: how a search shares GPUs among trials, which device a trial runs on, and the CUDA settings
that reach it. Tested here without a GPU (Ray's GPU count and CUDA's presence faked where they decide); the one
real CUDA trial runs only where a GPU is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoprune.config import TrialConfig
from autoprune.errors import ConfigError, SearchError
from autoprune.pipeline.trial import cuda_settings, run_trial
from autoprune.raytune._launch import TRIALS_PER_GPU, resolve_gpus

ROOT = Path(__file__).resolve().parent.parent


def test_auto_gives_each_trial_a_share_of_a_gpu_where_the_cluster_has_gpus() -> None:
    assert resolve_gpus("auto", cluster_gpus=1.0) == pytest.approx(1.0 / TRIALS_PER_GPU)
    assert resolve_gpus("auto", cluster_gpus=4.0) == pytest.approx(1.0 / TRIALS_PER_GPU)
    assert resolve_gpus("auto", cluster_gpus=0.0) == 0.0  # no GPU: the CPU, as before
    assert resolve_gpus(0, cluster_gpus=8.0) == 0.0  # 0 forces the CPU
    assert resolve_gpus(0.5, cluster_gpus=1.0) == 0.5
    assert resolve_gpus("0.25", cluster_gpus=1.0) == 0.25  # as the command line passes it
    with pytest.raises(SearchError, match="--gpus-per-trial must be auto or a number"):
        resolve_gpus("most", cluster_gpus=1.0)


def test_a_trial_with_a_gpu_share_runs_on_cuda_and_one_without_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from autoprune.raytune._worker import trial_device

    assert trial_device(gpus=0.0, configured="auto") == "cpu"
    assert trial_device(gpus=0.125, configured="auto") is None  # the config's auto: cuda where the trial has one
    assert trial_device(gpus=0.0, configured="cuda:1") is None  # a device the space names is kept
    from autoprune.io.data import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_tf32_and_autocast_settings_reach_the_trial() -> None:
    cfg = TrialConfig.from_dict({"amp": True})
    assert cuda_settings(cfg, torch.device("cuda", 0)) == {"tf32": True, "bf16_autocast": True, "cudnn_benchmark": True}
    off = TrialConfig.from_dict({"tf32": False})
    assert cuda_settings(off, torch.device("cuda", 0)) == {
        "tf32": False,
        "bf16_autocast": False,
        "cudnn_benchmark": True,
    }
    assert cuda_settings(cfg, torch.device("cpu")) == {}  # nothing of it applies on the CPU
    with pytest.raises(ConfigError, match="tf32 must be true or false"):
        TrialConfig.from_dict({"tf32": "yes"})


def test_the_trial_record_says_which_cuda_settings_ran() -> None:
    cfg = TrialConfig.from_dict(
        {
            "dataset": {"name": "digits", "limit": 200},
            "budget": {"train_epochs": 1, "finetune_epochs": 0},
            "prune": {"enabled": False},
            "device": "cpu",
        }
    )
    record = run_trial(cfg).record()
    assert record["device"] == "cpu" and record["cuda"] == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_real_trial_on_cuda() -> None:
    cfg = TrialConfig.from_dict(
        {
            "dataset": {"name": "digits"},
            "budget": {"train_epochs": 2, "finetune_epochs": 1},
            "prune": {"allocation": "global", "density": 0.2},
            "device": "cuda",
        }
    )
    record = run_trial(cfg).record()
    assert record["device"].startswith("cuda") and record["cuda"]["tf32"] is True
    assert 0.5 < record["val_accuracy"] <= 1.0 and record["params_nonzero"] == record["params_planned"]


@pytest.mark.slow
def test_gpu_check_runs_as_a_smoke_test_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    args = ["--device", "cpu", "--quick", "--concurrency", "1,2", "--rounds", "1", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert [t["model"] for t in result["trials"]] == ["lenet-300-100", "lenet-5"]
    assert all(t["finite"] for t in result["trials"])
    assert result["epoch"]["ratio"] > 0 and [r["k"] for r in result["concurrency"]] == [1, 2]
    assert "trials/h" in done.stdout and "phase-1 epoch" in done.stdout
