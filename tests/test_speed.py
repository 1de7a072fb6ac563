"""Speed: latency measured with torch.utils.benchmark, MACs of the model as it runs, and the search objective that
trades accuracy against either (one tiny real search with objective latency, on Ray)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from _helpers import run_cli
from _user_folder import doc_example
from torch import nn

from autoprune.config import MeasureConfig, TrialConfig
from autoprune.errors import ConfigError, SearchError
from autoprune.pipeline.speed import measure_latency
from autoprune.pipeline.trial import run_trial
from autoprune.report.summary import trial_summary
from autoprune.searching.pareto import LATENCY, PickRule, pareto_front, pick
from autoprune.searching.space import load_space, parse_space

SPEED_KEYS = (
    "macs",
    "macs_dense",
    "latency_batch",
    "latency_ms",
    "latency_dense_ms",
    "latency_by_batch_ms",
    "latency_dense_by_batch_ms",
    "speedup",
)


def _mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(256, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def test_latency_is_positive_and_a_net_16_times_narrower_runs_faster() -> None:
    narrow = measure_latency(_mlp(256), (256,), "cpu", batch_sizes=(1, 64), repeats=5)
    wide = measure_latency(_mlp(256 * 16), (256,), "cpu", batch_sizes=(1, 64), repeats=5)
    assert set(narrow) == set(wide) == {1, 64}
    assert all(0 < ms < 1e3 for ms in (*narrow.values(), *wide.values()))
    assert narrow[64] < wide[64]


def test_measuring_leaves_threads_modes_weights_and_the_random_state_as_they_were() -> None:
    model = _mlp(32).train()
    model[0].eval()  # a submodule in its own mode (a frozen layer) keeps it
    weights = [p.detach().clone() for p in model.parameters()]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rng = torch.get_rng_state()
        measure_latency(model, (256,), batch_sizes=(8,), repeats=2, warmup=1)
        assert torch.get_num_threads() == 2
        assert torch.equal(torch.get_rng_state(), rng)  # the inputs come from a generator of their own
    finally:
        torch.set_num_threads(before)
    assert model.training and not model[0].training and model[2].training
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    with pytest.raises(ConfigError, match=r"latency batch size must be a whole number >= 1, got 0"):
        measure_latency(model, (256,), batch_sizes=(0,))


def _trial(**sections: object) -> dict:
    base = {
        "dataset": {"name": "digits", "limit": 200},
        "budget": {"train_epochs": 1, "finetune_epochs": 1, "batch_size": 64},
        "measure": {"latency_repeats": 3},
        "device": "cpu",
    }
    return run_trial(TrialConfig.from_dict({**base, **sections})).record()


def test_a_masked_model_executes_the_dense_macs_and_a_structured_one_fewer() -> None:
    masked = _trial(prune={"allocation": "global", "density": 0.2})
    assert list(masked)[list(masked).index("macs_other") + 1 :][: len(SPEED_KEYS)] == list(SPEED_KEYS)
    assert masked["macs"] == masked["macs_dense"] > 0  # dense kernels for masked weights
    assert masked["flops_effective"] < masked["flops_dense"]  # what sparse kernels would do
    assert masked["latency_batch"] == 64 and set(masked["latency_by_batch_ms"]) == {"1", "64"}
    assert masked["latency_ms"] == masked["latency_by_batch_ms"]["64"] > 0
    assert masked["latency_dense_ms"] == masked["latency_dense_by_batch_ms"]["64"] > 0
    assert masked["speedup"] == pytest.approx(masked["latency_dense_ms"] / masked["latency_ms"])
    assert masked["seconds"]["speed"] > 0
    json.dumps(masked)  # a record stays JSON
    summary = trial_summary(masked)
    assert f"MACs as run    {masked['macs']} of {masked['macs_dense']} per sample (100.0%)" in summary
    assert f"latency        {masked['latency_ms']:.3g} ms at batch 64 against " in summary

    structured = _trial(
        model={"name": "bn-cnn"}, prune={"structured": True, "sparsity": {"conv1": 0.5, "conv2": 0.5, "fc1": 0.75}}
    )
    assert 0 < structured["macs"] < structured["macs_dense"]


def test_latency_off_leaves_its_keys_null_and_still_counts_macs() -> None:
    record = _trial(prune={"allocation": "global", "density": 0.2}, measure={"latency": False})
    assert all(record[k] is None for k in SPEED_KEYS if k.startswith(("latency", "speedup")))
    assert record["macs"] == record["macs_dense"] > 0


def _space(**search: object) -> dict:
    return {
        "dataset": {"name": "digits"},
        "model": {"name": "lenet-300-100"},
        "prune": {"structured": True, "sparsity": {"fc1": {"low": 0.0, "high": 0.9}}},
        "search": search,
    }


def test_the_objective_is_read_checked_and_defaults_to_params() -> None:
    assert parse_space(_space()).objective == "params"
    assert parse_space(_space(objective="latency")).objective == "latency"
    with pytest.raises(ConfigError, match=r"search\.objective must be one of params, macs, latency, got 'speed'"):
        parse_space(_space(objective="speed"))
    unstructured = {**_space(objective="macs"), "prune": {"allocation": "global", "density": {"low": 0.1, "high": 0.5}}}
    with pytest.raises(ConfigError, match=r"search\.objective macs .* set prune\.structured: true"):
        parse_space(unstructured)
    with pytest.raises(ConfigError, match=r"search\.objective latency needs measure\.latency: true, got false"):
        parse_space({**_space(objective="latency"), "measure": {"latency": False}})
    with pytest.raises(ConfigError, match=r"measure\.latency_batch cannot be searched"):
        parse_space({**_space(), "measure": {"latency_batch": {"choices": [1, 64]}}})
    with pytest.raises(ConfigError, match=r"measure\.latency_repeats must be <= 1000, got 5000"):
        MeasureConfig(latency_repeats=5000)


def test_the_guide_s_speed_space_loads(tmp_path: Path) -> None:
    path = tmp_path / "speed_objective.yaml"
    path.write_text(doc_example("speed_objective.yaml"))
    space = load_space(path)
    assert space.objective == "latency" and space.default_config().measure.latency_batch == 64


def _record(trial: int, acc: float, params: int, ms: float | None) -> dict:
    return {"trial": trial, "val_accuracy": acc, "params_nonzero": params, "latency_ms": ms, "val_samples": 10_000}


def test_the_front_and_the_pick_rules_take_the_size_key() -> None:
    records = [_record(0, 0.90, 100, 2.0), _record(1, 0.95, 50, 3.0), _record(2, 0.80, 200, 1.0)]
    assert [r["trial"] for r in pareto_front(records)] == [1]  # by parameters trial 1 beats both
    assert [r["trial"] for r in pareto_front(records, LATENCY)] == [2, 0, 1]  # by latency each is best somewhere
    assert pick(records, PickRule(max_latency_ms=2.5))["trial"] == 0
    assert (
        pick(records, PickRule(knee=True), key=LATENCY)["trial"] == 0
    )  # log latency: 2 ms is the bend between 1 and 3
    assert pick(records, PickRule(min_accuracy=0.85), key=LATENCY)["trial"] == 0
    with pytest.raises(SearchError, match=r"--max-latency-ms must be a non-negative number of milliseconds, got -1"):
        pick(records, PickRule(max_latency_ms=-1))
    with pytest.raises(SearchError, match=r"no front model has latency_ms <= 0.5; the smallest is trial 2 with 1 ms"):
        pick(records, PickRule(max_latency_ms=0.5))
    with pytest.raises(SearchError, match=r"no finished trial recorded macs"):
        pick(records, PickRule(max_macs=10))
    with pytest.raises(SearchError, match=r"exactly one of .*\(got --max-params, --max-latency-ms\)"):
        PickRule(max_params=10, max_latency_ms=1.0)


def test_a_trial_that_could_not_measure_the_objective_fails_in_the_study() -> None:
    import optuna

    from autoprune.rundir.ledger import Outcome, create_study, record_outcome, study_objective

    study = create_study(optuna.storages.InMemoryStorage(), "s", parse_space(_space(objective="latency")), "0")
    assert study_objective(study) == "latency" and study.metric_names == ["val_accuracy", "latency_ms"]
    measured, unmeasured = study.ask(), study.ask()
    record_outcome(study, measured, Outcome("complete", record=_record(0, 0.9, 100, 1.5), model_path="m.pt"))
    record_outcome(study, unmeasured, Outcome("complete", record=_record(1, 0.9, 100, None), model_path="n.pt"))
    done, failed = study.trials
    assert done.state == optuna.trial.TrialState.COMPLETE and done.values == [0.9, 1.5]
    assert (
        failed.state == optuna.trial.TrialState.FAIL
        and "latency_ms could not be measured" in failed.user_attrs["fail_reason"]
    )


# ------------------------------------------------------------------------------------- a search for latency

SPEED_SPACE = """\
dataset: {name: digits, val_fraction: 0.2, limit: 400}
model: {name: lenet-300-100}
budget: {train_epochs: 1, finetune_epochs: 1, batch_size: 64}
measure: {latency_repeats: 5}
prune:
  structured: true
  sparsity:
    fc1: {low: 0.0, high: 0.97}
    fc2: {low: 0.0, high: 0.9}
search: {objective: latency}
"""


@pytest.fixture(scope="module")
def latency_run(shared_ray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("ray")
    from autoprune import api

    shared_ray.ensure()

    folder = tmp_path_factory.mktemp("speed")
    (folder / "space.yaml").write_text(SPEED_SPACE)
    run_dir = folder / "run"
    outcome = api.search(folder / "space.yaml", run_dir=run_dir, trials=4, concurrent=2, seed=0, log=lambda _m: None)
    assert outcome.results.counted == 4 and not outcome.interrupted
    return run_dir


@pytest.mark.ray
def test_a_latency_search_ranks_reports_and_picks_by_latency(
    latency_run: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    from autoprune.rundir.directory import RunInfo
    from autoprune.rundir.ledger import load_results

    results = load_results(latency_run)
    assert results.objective == "latency" and RunInfo.read(latency_run).objective == "latency"
    front = results.front
    assert front and [r["latency_ms"] for r in front] == sorted(r["latency_ms"] for r in front)
    assert [r["trial"] for r in front] == [r["trial"] for r in pareto_front(results.trials, LATENCY)]
    assert all(all(key in r for key in SPEED_KEYS) and r["macs"] <= r["macs_dense"] for r in results.trials)

    code, out, _ = run_cli(["report", str(latency_run), "--json"], capsys, monkeypatch)
    doc = json.loads(out)
    assert code == 0 and doc["objective"] == "latency"
    assert [r["trial"] for r in doc["front"]] == [r["trial"] for r in front]
    hypervolume = json.loads((latency_run / "report" / "report.json").read_text())["hypervolume"]
    assert hypervolume["x"] == "log10(latency_ms)" and hypervolume["value"] > 0
    code, out, _ = run_cli(["report", str(latency_run), "--plot", str(tmp_path / "front.png")], capsys, monkeypatch)
    header = out.splitlines()[1].split()
    assert code == 0 and "latency" in header and "speed-up" in header
    assert (tmp_path / "front.png").stat().st_size > 0

    bound = front[min(1, len(front) - 1)]["latency_ms"]
    out_file = tmp_path / "fast.pt"
    argv = ["pick", str(latency_run), "--max-latency-ms", str(bound), "--out", str(out_file), "--json"]
    code, out, _ = run_cli(argv, capsys, monkeypatch)
    chosen = json.loads(out)
    assert code == 0 and out_file.is_file() and chosen["latency_ms"] <= bound and math.isfinite(chosen["speedup"])
    code, out, err = run_cli([*argv[:3], "-1", *argv[4:]], capsys, monkeypatch)
    assert (
        code == 1
        and out == ""
        and err.strip().splitlines()
        == ["autoprune: error: --max-latency-ms must be a non-negative number of milliseconds, got -1.0; e.g. 0.5"]
    )


@pytest.mark.ray
def test_resume_refuses_a_run_whose_objective_changed(latency_run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(latency_run, run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "objective": "params"}))
    code, out, err = run_cli(["resume", str(run), "--trials", "5"], capsys, monkeypatch)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        "autoprune: error: run.json says objective 'params' but this study was searched for 'latency'; a search "
        "keeps its objective: restore it, or start a new search in another --run-dir"
    ]
