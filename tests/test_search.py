"""The search on a real Ray runtime and a real Optuna study, with tiny budgets (digits, LeNet-300-100, 1 epoch).

Every in-process search of this module runs on the suite's shared local Ray (``local_ray``, conftest.py); the
driver-kill and cluster tests run the command line in a subprocess, and stop every process they started by PID.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import run_cli
from _session import driver_env, kill_driver_when, stop_session

optuna = pytest.importorskip("optuna")
ray = pytest.importorskip("ray")

from optuna.trial import TrialState  # noqa: E402

from autoprune import api  # noqa: E402
from autoprune.api import evaluate as evaluate_model  # noqa: E402
from autoprune.api import pick as pick_model  # noqa: E402
from autoprune.config import TrialConfig  # noqa: E402
from autoprune.errors import SearchError  # noqa: E402
from autoprune.io._trust import sealed_here  # noqa: E402
from autoprune.io.data import load_datasets  # noqa: E402
from autoprune.rundir.directory import RunInfo  # noqa: E402
from autoprune.rundir.ledger import load_results  # noqa: E402
from autoprune.searching.pareto import pick_max_params  # noqa: E402

pytestmark = pytest.mark.ray

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TINY_SPACE = """\
dataset: {name: digits, val_fraction: 0.2, limit: 600}
model: {name: lenet-300-100}
budget: {train_epochs: 1, finetune_epochs: 1, batch_size: 64}
seed: 0
train:
  lr: 0.05
  lambda_max: {low: 1.0e-6, high: 1.0e-3, log: true}
prune:
  sparsity:
    fc1: {low: 0.5, high: 0.99}
    fc2: {low: 0.3, high: 0.95}
finetune:
  lr: {low: 1.0e-3, high: 0.1, log: true}
"""


def _study(run_dir: Path) -> optuna.Study:
    info = RunInfo.read(run_dir)
    return optuna.load_study(study_name=info.study_name, storage=f"sqlite:///{run_dir / 'study.db'}")


def _brute_force_front(study: optuna.Study) -> set[int]:
    """Trial numbers no other COMPLETE trial dominates, straight from the values Optuna stored."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    front = set()
    for t in done:
        acc, params = t.values
        dominated = any(
            o.values[0] >= acc and o.values[1] <= params and (o.values[0] > acc or o.values[1] < params) for o in done
        )
        if not dominated:
            front.add(t.number)
    return front


@pytest.fixture(scope="module")
def space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return path


@pytest.fixture(scope="module")
def finished_run(shared_ray, space_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    shared_ray.ensure()
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    outcome = api.search(space_file, run_dir=run_dir, trials=4, concurrent=2, seed=0, log=lambda _m: None)
    assert not outcome.interrupted
    return run_dir


@pytest.mark.slow
def test_two_node_cluster(no_shared_ray, space_file: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    # No Ray in this process while the cluster starts: its head would take the node address of this process's
    # Ray (127.0.0.1 for a local one), which the driver, a process of its own, resolves to the network address.
    # First in the module: the shared Ray starts once, after it.
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        run_dir = tmp_path / "cluster"
        cmd = [
            sys.executable,
            "-m",
            "autoprune.cli",
            "search",
            str(space_file),
            "--run-dir",
            str(run_dir),
            "--trials",
            "4",
            "--address",
            cluster.address,
        ]
        driver = subprocess.Popen(
            cmd, env=driver_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            _, err = driver.communicate(timeout=120)
        finally:
            stop_session(driver)
        assert driver.returncode == 0, err.decode()
    finally:
        cluster.shutdown()
    study = _study(run_dir)
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 4
    nodes = {t.user_attrs["node_id"] for t in study.trials}
    assert len(nodes) == 2, f"all trials ran on one node: {nodes}"
    code, out, _ = run_cli(["report", str(run_dir), "--json"], capsys, monkeypatch)
    doc = json.loads(out)
    assert code == 0 and len(doc["trials"]) == 4 and doc["failed"] == 0
    assert {r["trial"] for r in doc["front"]} == _brute_force_front(study)
    assert all(Path(r["model_path"]).is_file() for r in doc["trials"])


def test_search_front_equals_brute_force_over_the_study(finished_run: Path) -> None:
    study = _study(finished_run)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 4 and len(states) == 4
    results = load_results(finished_run)
    assert {r["trial"] for r in results.front} == _brute_force_front(study)
    assert [r["params_nonzero"] for r in results.front] == sorted(r["params_nonzero"] for r in results.front)
    for t in study.trials:  # the study alone describes every trial: record, values and the model file
        record = t.user_attrs["record"]
        assert t.values == [record["val_accuracy"], record["params_nonzero"]]
        assert (finished_run / t.user_attrs["model_path"]).is_file()
        assert 0.0 <= record["test_accuracy"] <= 1.0 and record["config"]["dataset"]["name"] == "digits"
    report = json.loads((finished_run / "report" / "report.json").read_text())
    assert {r["trial"] for r in report["front"]} == _brute_force_front(study)
    assert len(report["trials"]) == 4 and report["failed"] == 0
    assert (finished_run / "report" / "pareto.png").stat().st_size > 0
    assert (finished_run / "space.yaml").is_file() and (finished_run / "ray" / "search-00").is_dir()


def test_report_json_is_one_document(finished_run: Path, capsys, monkeypatch) -> None:
    code, out, _ = run_cli(["report", str(finished_run), "--json"], capsys, monkeypatch)
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"front", "trials", "failed", "stopped", "baseline_front", "calibration", "dense"}
    assert {r["trial"] for r in doc["front"]} == _brute_force_front(_study(finished_run))
    assert doc["stopped"] == []  # early stopping was off
    assert doc["baseline_front"] == []  # a space of per-layer rates is not seeded with baselines
    assert doc["calibration"] is None  # nor calibrated


def test_pick_then_evaluate_round_trip(finished_run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "knee.pt"
    code, stdout, _ = run_cli(["pick", str(finished_run), "--knee", "--out", str(out), "--json"], capsys, monkeypatch)
    assert code == 0
    chosen = json.loads(stdout)
    assert chosen["out"] == str(out) and out.is_file()
    assert chosen["trial"] in {r["trial"] for r in load_results(finished_run).front}
    code, stdout, _ = run_cli(["evaluate", str(out), "--json"], capsys, monkeypatch)
    assert code == 0
    measured = json.loads(stdout)
    assert measured["test_accuracy"] == chosen["test_accuracy"]
    assert measured["params_nonzero"] == chosen["params_nonzero"]
    assert measured["params_total"] == chosen["params_total"]
    # The model saved by the trial itself re-measures the same too.
    assert evaluate_model(chosen["model_path"])["test_accuracy"] == chosen["test_accuracy"]


def test_pick_by_size_takes_the_largest_model_validation_cannot_tell_from_the_most_accurate(
    finished_run: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    results = load_results(finished_run)
    for k, limit in enumerate(r["params_nonzero"] for r in results.front):
        fits = sorted(
            (r for r in results.trials if r["params_nonzero"] <= limit),
            key=lambda r: (-r["val_accuracy"], r["params_nonzero"]),
        )
        best = fits[0]  # the most accurate, the smaller on a tie
        n, acc = best["val_samples"], best["val_accuracy"]
        cfg = TrialConfig.from_dict(best["config"])
        assert n == len(load_datasets(cfg.dataset, seed=cfg.seed, device="cpu").val_x) > 0
        close = [r for r in fits if r["val_accuracy"] >= acc - math.sqrt(acc * (1 - acc) / n)]
        largest = max(close, key=lambda r: (r["params_nonzero"], r["val_accuracy"]))
        out = tmp_path / f"at{k}.pt"
        code, stdout, stderr = run_cli(
            ["pick", str(finished_run), "--max-params", str(limit), "--out", str(out), "--json"], capsys, monkeypatch
        )
        assert code == 0
        chosen = json.loads(stdout)
        assert chosen["trial"] == largest["trial"]
        assert [r["trial"] for r in chosen["indistinct"]] == [r["trial"] for r in close if r is not largest]
        code, stdout, _ = run_cli(
            ["pick", str(finished_run), "--max-params", str(limit), "--most-accurate", "--out", str(out), "--json"],
            capsys,
            monkeypatch,
        )
        assert code == 0 and json.loads(stdout)["trial"] == best["trial"]
        # The text form says so on stderr (stdout keeps its one line), and only when there are such trials.
        code, stdout, stderr = run_cli(
            ["pick", str(finished_run), "--max-params", str(limit), "--out", str(tmp_path / f"again{k}.pt")],
            capsys,
            monkeypatch,
        )
        assert code == 0 and len(stdout.strip().splitlines()) == 1
        alone = len(close) == 1
        top = largest["val_accuracy"] >= acc
        assert ("validation cannot tell it from trial" in stderr) == (not alone and top)
        assert (f"the largest of the {len(close)} models" in stderr) == (not top)


def test_pick_unmet_constraint_names_the_closest_and_writes_nothing(finished_run: Path, tmp_path: Path) -> None:
    smallest = load_results(finished_run).front[0]
    out = tmp_path / "none.pt"
    with pytest.raises(SearchError, match=f"trial {smallest['trial']} with {smallest['params_nonzero']} params"):
        pick_model(finished_run, out=out, max_params=smallest["params_nonzero"] - 1)
    assert not out.exists()
    picked = pick_model(finished_run, out=out, max_params=smallest["params_nonzero"])
    assert picked["trial"] == smallest["trial"]


def test_extend_reruns_nothing_and_recomputes_the_front(local_ray, finished_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "extended"
    shutil.copytree(finished_run, run_dir)
    before = {t.number: (t.datetime_complete, t.user_attrs["ray_trial_id"]) for t in _study(run_dir).trials}
    mtimes = {p.name: p.stat().st_mtime_ns for p in (run_dir / "models").iterdir()}
    # A configuration a user enqueued into the study runs first, with exactly its values.
    wanted = {"train.lambda_max": 1.5e-4, "prune.sparsity.fc1": 0.6, "prune.sparsity.fc2": 0.4, "finetune.lr": 0.02}
    _study(run_dir).enqueue_trial(wanted)
    outcome = api.resume(run_dir, trials=6, log=lambda _m: None)
    study = _study(run_dir)
    assert outcome.ran == 2 and not outcome.interrupted
    assert study.trials[4].params == wanted and study.trials[4].state == TrialState.COMPLETE
    assert study.trials[4].user_attrs["record"]["config"]["finetune"]["lr"] == 0.02
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 6
    for t in study.trials:
        if t.number in before:  # untouched: same completion time and Ray trial, model file not rewritten
            assert (t.datetime_complete, t.user_attrs["ray_trial_id"]) == before[t.number]
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "models").iterdir() if p.name in mtimes} == mtimes
    assert len(list((run_dir / "models").iterdir())) == 6
    assert {r["trial"] for r in outcome.results.front} == _brute_force_front(study)
    assert len(json.loads((run_dir / "report" / "report.json").read_text())["trials"]) == 6
    assert RunInfo.read(run_dir).launch.trials == 6
    # Resuming a search that has all its trials runs nothing.
    assert api.resume(run_dir, log=lambda _m: None).ran == 0


def test_resume_refuses_a_changed_space(finished_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "changed"
    shutil.copytree(finished_run, run_dir)
    info = RunInfo.read(run_dir)  # sealed by this user: resume may import what the space names
    assert sealed_here(info.space_digest, info.seal) and not sealed_here(info.space_digest, "0" * 64)
    frozen = run_dir / "space.yaml"
    frozen.write_text(frozen.read_text().replace("limit: 600", "limit: 500"))
    listing = sorted(p.name for p in run_dir.rglob("*"))
    with pytest.raises(SearchError, match=r"space\.yaml was changed"):
        api.resume(run_dir, trials=5, log=lambda _m: None)
    assert sorted(p.name for p in run_dir.rglob("*")) == listing
    assert len(_study(run_dir).trials) == 4


def test_diverging_trials_are_failed_and_the_search_completes(local_ray, space_file: Path, tmp_path: Path) -> None:
    # Also the other ledger and sampler: a journal file outside the run directory, and NSGA-II.
    run_dir, journal = tmp_path / "diverge", tmp_path / "journal.log"
    outcome = api.search(
        space_file,
        run_dir=run_dir,
        trials=2,
        concurrent=1,
        overrides=["train.lr=1000000.0"],
        sampler="nsga2",
        study_storage=str(journal),
        log=lambda _m: None,
    )
    assert journal.is_file() and not (run_dir / "study.db").exists()
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    info = RunInfo.read(run_dir)
    study = optuna.load_study(study_name=info.study_name, storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    for t in study.trials:
        assert t.user_attrs["outcome"] == "diverged"
        assert "non-finite loss" in t.user_attrs["fail_reason"]
    assert not outcome.interrupted  # both count as run: the search asked for 2 and ran 2
    assert outcome.results.front == [] and outcome.results.failed == 2
    assert list((run_dir / "models").iterdir()) == []


def test_same_seed_suggests_the_same_sequence(local_ray, space_file: Path, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        api.search(
            space_file, run_dir=tmp_path / name, trials=3, concurrent=1, seed=7, sampler="random", log=lambda _m: None
        )
        runs.append([(t.params, t.values) for t in _study(tmp_path / name).trials])
    assert runs[0] == runs[1]
    assert len({json.dumps(p, sort_keys=True) for p, _ in runs[0]}) == 3


def _completed(run_dir: Path) -> dict[int, str]:
    try:
        con = sqlite3.connect(f"file:{run_dir / 'study.db'}?mode=ro", uri=True)
        rows = con.execute("select number, datetime_complete from trials where state = 'COMPLETE'").fetchall()
        con.close()
    except sqlite3.Error:
        return {}
    return dict(rows)


@pytest.mark.slow
def test_sigkill_of_the_driver_then_resume(local_ray, space_file: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "autoprune.cli",
        "search",
        str(space_file),
        "--run-dir",
        str(run_dir),
        "--trials",
        "4",
        "--concurrent",
        "1",
        "--set",
        "budget.train_epochs=30",
    ]
    kill_driver_when(cmd, lambda: bool(_completed(run_dir)), 60)
    finished_before = _completed(run_dir)
    assert 1 <= len(finished_before) < 4
    models_before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "models").glob("trial_*.pt")}

    outcome = api.resume(run_dir, log=lambda _m: None)
    study = _study(run_dir)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and not outcome.interrupted
    for t in complete:  # finished before the kill: still the same trial, not re-run
        if t.number in finished_before:
            assert t.datetime_complete == datetime.datetime.fromisoformat(finished_before[t.number])
    assert {k: v for k, v in models_before.items() if int(k[6:-3]) in finished_before} == {
        p.name: p.stat().st_mtime_ns
        for p in (run_dir / "models").glob("trial_*.pt")
        if int(p.name[6:-3]) in finished_before
    }
    cut = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs["outcome"] == "interrupted" for t in cut)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert len(study.trials) == 4 + len(cut)
    # models/ holds the finished trials' models only (one a killed trial saved would be in models/interrupted/)
    assert {p.name for p in (run_dir / "models").glob("*.pt")} == {f"trial_{t.number}.pt" for t in complete}
    assert [launch["kind"] for launch in RunInfo.read(run_dir).launches] == ["search", "resume"]


def _density_space(folder: Path, density: str, search: str) -> Path:
    """TINY_SPACE searching the overall density (global or ERK allocation) instead of per-layer rates."""
    text = TINY_SPACE.replace(
        "prune:\n  sparsity:\n    fc1: {low: 0.5, high: 0.99}\n    fc2: {low: 0.3, high: 0.95}\n",
        f"prune:\n  allocation: {{choices: [global, erk]}}\n  density: {density}\n",
    )
    path = folder / "density.yaml"
    path.write_text(f"{text}search: {search}\n")
    return path


def test_a_density_space_runs_its_baselines_first_and_resume_adds_none(local_ray, tmp_path: Path) -> None:
    path = _density_space(
        tmp_path, "{low: 0.02, high: 0.2, log: true}", "{baselines: {densities: 2, allocations: [global]}}"
    )
    run_dir = tmp_path / "run"
    api.search(path, run_dir=run_dir, trials=3, concurrent=1, seed=0, log=lambda _m: None)
    records = {r["trial"]: r for r in load_results(run_dir).trials}
    assert [records[n].get("baseline") for n in sorted(records)] == ["global@0.02", "global@0.2", None]
    for n in (0, 1):
        assert records[n]["config"]["prune"]["allocation"] == "global"
        assert records[n]["params_nonzero"] == records[n]["params_planned"]
    api.resume(run_dir, trials=4, log=lambda _m: None)
    res = load_results(run_dir)
    assert [r.get("baseline") for r in res.trials] == ["global@0.02", "global@0.2", None, None]
    assert res.frame()["baseline"].tolist() == [True, True, False, False]  # the API's DataFrame says so too


def test_the_ladder_runs_at_the_finetune_lr_its_probes_chose(local_ray, tmp_path: Path, capsys, monkeypatch) -> None:
    path = _density_space(
        tmp_path, "{low: 0.02, high: 0.2, log: true}", "{baselines: {densities: 2, allocations: [global]}}"
    )
    run_dir, lines = tmp_path / "run", []
    api.search(path, run_dir=run_dir, trials=6, concurrent=1, seed=0, log=lines.append)
    records = {r["trial"]: r for r in load_results(run_dir).trials}
    probes = [records[n] for n in (0, 1, 2)]
    lrs = [r["config"]["finetune"]["lr"] for r in probes]
    assert lrs == pytest.approx([0.01, 10**-2.5, 10**-1.5])  # the default (the range's middle), then the midpoints
    assert [r["baseline"] for r in probes] == [f"global@0.06325 finetune.lr={lr:.4g}" for lr in lrs]
    assert [r["config"]["prune"]["density"] for r in probes] == pytest.approx([math.sqrt(0.02 * 0.2)] * 3)
    best, verb = max(probes, key=lambda r: (r["val_accuracy"], -r["trial"])), "chose"
    p, n = probes[0]["val_accuracy"], probes[0]["val_samples"]
    if best is not probes[0] and best["val_accuracy"] - p <= math.sqrt(p * (1 - p) / n):  # within noise: default
        best, verb = probes[0], "kept the default"
    assert [records[n].get("baseline") for n in (3, 4, 5)] == ["global@0.02", "global@0.2", None]
    assert [records[n]["config"]["finetune"]["lr"] for n in (3, 4)] == [best["config"]["finetune"]["lr"]] * 2
    said = [line for line in lines if line.startswith("search: calibration ")]
    assert len(said) == 1 and said[0].startswith(f"search: calibration {verb} finetune.lr={lrs[best['trial']]:.4g} ")
    api.resume(run_dir, trials=7, log=lines.append)  # the study is calibrated once: resume adds no baseline
    res = load_results(run_dir)
    assert [r.get("baseline") is not None for r in res.trials] == [True] * 5 + [False] * 2
    assert [line for line in lines if line.startswith("search: calibration ")] == said
    assert said[0].startswith(f"search: {res.calibration}; the next 2 trials are baselines at it: ")
    code, _, err = run_cli(["report", str(run_dir)], capsys, monkeypatch)
    assert code == 0 and res.calibration in err.splitlines()  # the report says it too


def test_front_refinement_in_a_real_search_and_after_resume(local_ray, tmp_path: Path) -> None:
    search = "{baselines: {densities: 3, allocations: [global], calibrate: false}, refine: {every: 2, after: 1}}"
    path = _density_space(tmp_path, "{low: 0.01, high: 0.3, log: true}", search)
    run_dir, lines = tmp_path / "run", []
    # trials 0-2: baselines; 3: the warm-up; then every second new trial of a launch is a refinement
    api.search(path, run_dir=run_dir, trials=6, concurrent=1, seed=0, log=lines.append)
    api.resume(run_dir, trials=8, log=lines.append)
    res = load_results(run_dir)
    assert len(res.trials) == 8
    refined = {r["trial"]: r for r in res.trials if "refined_from" in r}
    assert set(refined) == {5, 7}  # the second new trial of each launch
    assert sum(line.startswith("refine: trial ") for line in lines) == len(refined)
    records = {r["trial"]: r for r in res.trials}
    study = _study(run_dir)
    for number, rec in refined.items():
        source = records[rec["refined_from"]]
        assert source["trial"] < number
        same = {k: v for k, v in study.trials[number].params.items() if k != "prune.density"}
        assert same == {k: v for k, v in study.trials[source["trial"]].params.items() if k != "prune.density"}
        assert rec["config"]["prune"]["density"] != source["config"]["prune"]["density"]
        assert rec["params_nonzero"] == rec["params_planned"]
    assert res.frame()["refined_from"].notna().sum() == len(refined)


def test_declared_sizes_are_refined_to_exactly_in_a_real_search(local_ray, tmp_path: Path, capsys, monkeypatch) -> None:
    search = "{baselines: {densities: 2, allocations: [global], calibrate: false}, refine: false, sizes: [0.05]}"
    path = _density_space(tmp_path, "{low: 0.01, high: 0.3, log: true}", search)
    run_dir, lines = tmp_path / "run", []
    api.search(path, run_dir=run_dir, trials=4, concurrent=1, seed=0, log=lines.append)
    res = load_results(run_dir)
    records = {r["trial"]: r for r in res.trials}
    size = int(0.05 * records[0]["params_total"])
    # trials 0-1: baselines (1% and 30% density); 2: global@0.01's settings at exactly 5% of the parameters
    assert records[2]["target_size"] == size == records[2]["params_nonzero"] and records[2]["refined_from"] == 0
    assert records[2]["params_prunable"] == records[0]["params_prunable"] < records[0]["params_total"]
    assert [line for line in lines if line.startswith("refine: ")] == [
        line for line in lines if f"at exactly {size} params" in line
    ]
    assert "target_size" not in records[3]  # the size's best is held now: the sampler's turn
    code, out, _ = run_cli(["report", str(run_dir)], capsys, monkeypatch)
    best = pick_max_params(res.trials, size)  # what `pick --max-params` takes there
    assert code == 0 and f"<= {size} params (5%): trial {best['trial']}, {best['params_nonzero']} params" in out


@pytest.mark.slow
def test_a_dense_start_is_trained_once_kept_for_resume_and_every_trial_starts_from_it(
    local_ray, space_file: Path, tmp_path: Path
) -> None:
    from autoprune.io.models import read_weights
    from autoprune.searching.preflight import evaluate_start
    from autoprune.searching.space import load_space

    run_dir, lines = tmp_path / "dense", []
    outcome = api.search(
        space_file,
        run_dir=run_dir,
        trials=2,
        concurrent=2,
        seed=0,
        overrides=["search.dense_start=2"],
        log=lines.append,
    )
    assert sum("search: dense start trained 2 epochs" in line for line in lines) == 1
    res = outcome.results
    assert res.baseline["reference"] == "dense start" and "trial" not in res.baseline
    assert len(res.trials) == 2 and all(t["start"] == "dense start" for t in res.trials)
    # The kept tensors measure exactly the reference the report reads against.
    kept = run_dir / "dense_start.pt"
    again = evaluate_start(load_space(space_file).default_config(), read_weights(kept), device="cpu")
    assert (again["val_accuracy"], again["test_accuracy"]) == (
        res.baseline["val_accuracy"],
        res.baseline["test_accuracy"],
    )
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert report["dense"]["reference"] == "dense start"
    # Resume starts from the kept model (nothing trained again); a missing file is trained again, and said.
    mtime, lines = kept.stat().st_mtime_ns, []
    assert api.resume(run_dir, trials=3, log=lines.append).ran == 1
    assert kept.stat().st_mtime_ns == mtime and not any("dense start trained" in line for line in lines)
    kept.unlink()
    lines.clear()
    assert api.resume(run_dir, trials=4, log=lines.append).ran == 1
    assert any(line.endswith("dense_start.pt is missing; training the dense start again (2 epochs)") for line in lines)
    assert kept.is_file() and all(t["start"] == "dense start" for t in load_results(run_dir).trials)
