from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest
from _helpers import results_of

from autoprune.report._format import SPARSITY_WIDTH, fmt_sparsity
from autoprune.report.notes import at_chance, chance_collapses, finetune_setbacks, front_notes
from autoprune.report.render import (
    front_table,
    indistinct_note,
    plot_front,
    report_document,
    sizes_table,
    write_report,
)
from autoprune.report.summary import trial_summary
from autoprune.report.trials_csv import write_csv
from autoprune.searching.pareto import hypervolume, pareto_front
from autoprune.searching.progress import Progress, TrialProgress

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_trials(n: int = 25, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    trials = []
    for i in range(n):
        s1, s2 = rng.uniform(0.5, 0.99), rng.uniform(0.3, 0.9)
        nonzero = int(784 * 300 * (1 - s1) + 300 * 100 * (1 - s2) + 1010)
        trials.append(
            {
                "trial": i,
                "val_accuracy": round(0.7 + 0.25 * math.tanh(nonzero / 20_000) + rng.uniform(-0.03, 0.03), 4),
                "test_accuracy": round(0.69 + 0.25 * math.tanh(nonzero / 20_000), 4),
                "params_nonzero": nonzero,
                "params_total": 266_610,
                "layer_sparsity": {"fc1": s1, "fc2": s2, "fc3": 0.0},
                "config": {"train": {"lr": 0.05, "lambda_max": 1e-4 * (i + 1)}, "prune": {"enabled": True}},
                "flops_dense": 266_200,
                "flops_effective": nonzero,
                "seconds": {"train": 1.5, "prune": 0.1, "finetune": 0.7},
                "model_path": f"models/trial_{i}.pt",
            }
        )
    return trials


def baseline_record() -> dict:
    return {
        "trial": 99,
        "val_accuracy": 0.9,
        "test_accuracy": 0.89,
        "params_nonzero": 266_610,
        "params_total": 266_610,
        "layer_sparsity": {"fc1": 0.0, "fc2": 0.0, "fc3": 0.0},
        "config": {"prune": {"enabled": False}},
    }


def test_front_table_lists_every_front_trial_with_counts():
    trials = make_trials()
    front = pareto_front(trials)
    table = front_table(front, total=len(trials), failed=2, baseline=baseline_record())
    lines = table.splitlines()
    assert lines[0] == f"Pareto front: {len(front)} models of {len(trials)} finished trials, 2 failed"
    body = lines[3 : 3 + len(front)]
    assert [int(line.split()[0]) for line in body] == [r["trial"] for r in front]
    for line, r in zip(body, front, strict=True):
        assert str(r["params_nonzero"]) in line
        assert f"{r['val_accuracy']:.4f}" in line and f"{r['test_accuracy']:.4f}" in line
        assert f"{100 * r['params_nonzero'] / r['params_total']:.1f}%" in line
        assert f"fc1 {100 * r['layer_sparsity']['fc1']:.0f}" in line
    assert lines[-1].startswith("dense (99)")
    # Aligned: the accuracy column ends at the same character in every row.
    ends = {line.index(f"{r['val_accuracy']:.4f}") + 6 for line, r in zip(body, front, strict=True)}
    assert len(ends) == 1


def test_a_dense_baseline_on_the_front_is_marked_in_its_row():
    trials = [*make_trials(5), {**baseline_record(), "val_accuracy": 0.99}]
    front = pareto_front(trials)
    assert front[-1]["trial"] == 99
    lines = front_table(front, total=len(trials), baseline=trials[-1]).splitlines()
    assert lines[2 + len(front)].startswith("99 dense ")
    assert lines[-1].startswith("dense (99)")


def test_the_speed_up_column_shows_only_where_a_model_can_run_faster():
    # a model pruned weight by weight runs its dense tensors: its measured speed-up is 1x give or take noise
    timed = [{**t, "latency_ms": 1.1, "latency_dense_ms": 1.0, "speedup": 1.0 / 1.1} for t in make_trials(8)]
    front = pareto_front(timed)
    assert "speed-up" not in front_table(front).splitlines()[1].split()
    shrunk = [{**r, "config": {**r["config"], "prune": {"enabled": True, "structured": True}}} for r in front]
    header = front_table(shrunk).splitlines()[1].split()
    assert "speed-up" in header and "0.91x" in front_table(shrunk)
    assert "speed-up" in front_table(front, key="latency_ms").splitlines()[1].split()  # speed is the objective
    dense = [{**r, "config": {"prune": {"enabled": False, "structured": True}}} for r in front]
    assert "speed-up" not in front_table(dense).splitlines()[1].split()


def test_the_sparsity_column_keeps_to_its_width_and_a_trial_summary_names_every_layer():
    assert fmt_sparsity({"fc1": 0.974, "fc2": 0.9, "fc3": 0.5}) == "fc1 97 fc2 90 fc3 50"  # short names: all shown
    layers = {f"encoder.layers.{i}.self_attn.in_proj_weight": 0.5 + i / 100 for i in range(6)} | {"head": 0.1}
    cell = fmt_sparsity(layers)
    shown = cell.count("encoder.layers.")
    assert len(cell) <= SPARSITY_WIDTH and 1 <= shown < 6 and cell.endswith(f"+{7 - shown} more")
    assert cell.startswith("encoder.layers.0.self_attn.in_proj_weight 50")
    assert fmt_sparsity({"x" * 80: 0.5, "y": 0.2}) == f"{'x' * 80} 50 +1 more"  # one layer even when it is longer

    lines = trial_summary({"layer_sparsity": layers, "seconds": {}}).splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("sparsity %"))
    block = [lines[first]] + [line for line in lines[first + 1 :] if line.startswith(" " * 15)]
    assert len(block) > 1 and all(len(line) <= 115 for line in block)
    assert " ".join(block).split()[2:] == " ".join(f"{n} {100 * v:.0f}" for n, v in layers.items()).split()


def test_front_table_of_an_empty_search():
    table = front_table([], total=0)
    assert table.splitlines()[0] == "Pareto front: 0 models of 0 finished trials"
    assert "no finished trials yet" in table


def test_finetune_setbacks_names_the_worst_trial_and_the_seeded_baselines_among_them():
    def record(trial: int, pruned: float | None, final: float, **extra) -> dict:
        ft = {"lr": 0.05, "grad_clip": 5.0, "lr_rewind": trial == 2}
        return {
            "trial": trial,
            "val_accuracy_pruned": pruned,
            "val_accuracy": final,
            "config": {"finetune": ft},
            **extra,
        }

    recovered = [record(0, 0.25, 0.88), record(1, 0.90, 0.87), record(5, None, 0.1)]  # gradual: no pruned model
    assert finetune_setbacks(recovered) is None  # 3 pt lost: within the 5 pt margin
    assert finetune_setbacks(recovered, margin=0.02) is not None
    lost = [*recovered, record(2, 0.66, 0.29, baseline="erk@0.3"), record(3, 0.80, 0.70, baseline="global@0.05")]
    note = finetune_setbacks(lost)
    assert note is not None and "\n" not in note
    assert "in 2 of 5 trials, including 2 seeded baselines (the space's defaults)" in note
    assert "worst: trial 2, 0.6600 after pruning, 0.2900 after finetuning with phase 1's rewound lr" in note
    assert note.endswith("lower finetune.lr or finetune.grad_clip (now 5)")


TINY = """\
dataset: {name: digits, val_fraction: 0.2, limit: 600}
model: {name: lenet-300-100}
budget: {train_epochs: 3, finetune_epochs: 1, batch_size: 64}
train: {grad_clip: 5.0, weight_clip: 1.0}
prune: {sparsity: {fc1: 0.9}}
finetune: {grad_clip: 5.0}
"""


def test_trials_that_diverged_to_chance_are_named_with_the_lr_to_lower(tmp_path: Path):
    """Real trials: at lr 1e6 clipping keeps the loss finite and the trial "completes" at the split's majority
    share; at lr 0.05 it learns. Only the first is named, with the phase it collapsed in and its lr."""
    from autoprune import run_trial

    (tmp_path / "tiny.yaml").write_text(TINY)
    records = []
    for number, lr in enumerate(["1e6", "0.05"]):
        record = run_trial(tmp_path / "tiny.yaml", overrides=[f"train.lr={lr}"], threads=1).record()
        records.append({**record, "trial": number})
    diverged, learned = records
    assert 0.1 <= diverged["val_chance"] < 0.2  # ten digits, one of them the most frequent in the split
    assert at_chance(diverged) and not at_chance(learned)
    note = chance_collapses(records)
    assert note is not None and "\n" not in note
    assert note.startswith("note: 1 of 2 trials collapsed to chance")
    assert note.endswith("in phase 1, trial 0: lower train.lr (now 1e+06)")
    assert note in front_notes(results_of(records))  # said under the front by search, resume and report
    assert "collapsed      no better than chance" in trial_summary(diverged)  # and by `autoprune trial`
    assert "collapsed" not in trial_summary(learned)


def test_chance_is_the_majority_share_plus_two_standard_errors_and_old_or_damaged_records_are_not_judged():
    def record(trial: int, final: object, trained: float = 0.9, pruned: float | None = 0.8, **extra) -> dict:
        config = {"train": {"lr": 0.05}, "finetune": {"lr": 0.5}}
        base = {"val_chance": 0.5, "val_samples": 100, "config": config}  # ceiling 0.5 + 2 * 0.05 = 0.6
        return {"trial": trial, "val_accuracy": final, "val_accuracy_trained": trained,
                "val_accuracy_pruned": pruned, **base, **extra}  # fmt: skip

    assert at_chance(record(0, 0.6)) and not at_chance(record(0, 0.61))
    assert at_chance(record(0, 0.2))  # one minority class answered: below the majority share is chance too
    old = record(1, 0.5, val_chance=None)  # runs made before records held val_chance: nothing claimed
    damaged = [
        record(2, "abc"),
        record(3, 0.5, val_samples="many"),
        record(4, float("nan")),
        record(5, 0.5, val_chance=1),  # one class only: no accuracy tells learning from chance
    ]
    assert chance_collapses([old, *damaged]) is None
    mixed = [record(6, 0.55), record(7, 0.5, trained=0.5), record(8, 0.5, pruned=0.5), record(9, 0.9)]
    note = chance_collapses(mixed)
    assert note is not None
    assert "3 of 4 trials collapsed to chance (validation accuracy at most 0.6000" in note
    assert "in phase 1, trial 7: lower train.lr (now 0.05)" in note
    assert "in finetuning, trial 6: lower finetune.lr (now 0.5)" in note
    assert "at pruning, not learned back, trial 8: too small a size, or lower finetune.lr" in note


def test_sizes_table_names_the_pick_at_each_size_and_the_trials_validation_cannot_tell_apart():
    def r(trial: int, params: int, acc: float) -> dict:
        return {"trial": trial, "params_nonzero": params, "params_total": 100_000, "val_accuracy": acc,
                "test_accuracy": acc - 0.01, "val_samples": 6000}  # fmt: skip

    trials = [r(1, 1_500, 0.85), r(2, 4_800, 0.9), r(3, 4_000, 0.8985), r(4, 5_000, 0.897), r(5, 9_000, 0.9)]
    table = sizes_table(pareto_front(trials), [0.02, 0.05, 0.1], trials)
    lines = table.splitlines()
    assert lines[1] == "  <= 2000 params (2%): trial 1, 1500 params, val 0.8500, test 0.8400"
    # Within 5%, trials 3 and 4 are within one standard error (0.39 pt on 6,000 samples) of trial 2's 0.9000:
    # the pick is the largest of the three, trial 4.
    assert lines[2] == (
        "  <= 5000 params (5%): trial 4, 5000 params, val 0.8970, test 0.8870; the largest of 3 models within one "
        "standard error (0.39 pt) of the most accurate on validation, trial 2 (4800 params, val 0.9000)"
    )
    # Within 10%, trial 5 is as accurate as trial 2 and the largest.
    assert lines[3] == (
        "  <= 10000 params (10%): trial 5, 9000 params, val 0.9000, test 0.8900; validation cannot tell it from "
        "trials 2, 3, 4 (within one standard error, 0.39 pt)"
    )
    # Without the trials (or records that do not say their validation size) the table claims nothing more.
    assert (
        sizes_table(pareto_front(trials), [0.05])
        .splitlines()[1]
        .endswith("trial 2, 4800 params, val 0.9000, test 0.8900")
    )
    keys = ("trial", "params_nonzero", "val_accuracy")
    chosen = {**trials[4], "indistinct": [{k: t[k] for k in keys} for t in trials[1:4]]}
    note = indistinct_note(chosen)
    assert note.startswith("note: validation cannot tell it from trials 2 (4800 params, val 0.9000), 3 (4000")
    assert "(0.39 pt on 6000 samples)" in note and "pick --trial N" in note
    assert indistinct_note({**chosen, "indistinct": []}) is None
    chosen = {**trials[3], "indistinct": [{k: t[k] for k in keys} for t in trials[1:3]]}
    assert indistinct_note(chosen) == (
        "note: the largest of the 3 models within one standard error (0.39 pt on 6000 samples) of the most accurate "
        "on validation, trial 2: validation cannot rank them, and with the same pipeline more parameters are the "
        "better bet; the others: 2 (4800 params, val 0.9000), 3 (4000 params, val 0.8985) (--most-accurate takes "
        "trial 2, --trial N another)"
    )


def test_report_document_layout_is_json_safe():
    trials = make_trials(6)
    trials[0]["val_accuracy_pruned"] = float("nan")
    trials[1]["model_path"] = Path("models/x.pt")
    front = pareto_front(trials)
    stopped = [{"trial": 9, "outcome": "pruned", "rung": 0, "epoch": 1, "val_accuracy": float("nan"), "reason": "r"}]
    doc = report_document(results_of(trials, front, failed=3, stopped=stopped))
    assert set(doc) == {"front", "trials", "failed", "stopped", "baseline_front", "calibration", "dense"}
    assert doc["baseline_front"] == [] and doc["calibration"] is None  # no seeded baselines, no calibration
    assert doc["failed"] == 3 and [s["trial"] for s in doc["stopped"]] == [9]
    assert doc["stopped"][0]["val_accuracy"] is None  # JSON-safe like the rest
    assert report_document(results_of(trials, front))["stopped"] == []
    assert [r["trial"] for r in doc["front"]] == [r["trial"] for r in front]
    assert len(doc["trials"]) == 6
    text = json.dumps(doc, allow_nan=False)  # raises if a NaN slipped through
    back = json.loads(text)
    assert back["trials"][0]["val_accuracy_pruned"] is None
    assert back["trials"][1]["model_path"] == "models/x.pt"


def test_write_csv_columns_and_rows(tmp_path: Path):
    trials = make_trials(7)
    del trials[3]["trial"]  # an unnumbered record must not turn the column into floats
    path = tmp_path / "trials.csv"
    write_csv(trials, path)
    frame = pd.read_csv(path)
    assert len(frame) == 7
    cols = list(frame.columns)
    assert cols[:5] == ["trial", "val_accuracy", "test_accuracy", "params_nonzero", "params_total"]
    assert cols[-1] == "model_path"
    for col in (
        "flops_dense",
        "flops_effective",
        "seconds.train",
        "seconds.finetune",
        "sparsity.fc1",
        "sparsity.fc3",
        "config.train.lr",
        "config.train.lambda_max",
        "config.prune.enabled",
    ):
        assert col in cols
    assert cols.index("seconds.train") < cols.index("sparsity.fc1") < cols.index("config.train.lr")
    assert frame["params_nonzero"].tolist() == [t["params_nonzero"] for t in trials]
    assert frame["sparsity.fc2"].tolist() == pytest.approx([t["layer_sparsity"]["fc2"] for t in trials])
    assert frame["config.train.lambda_max"].tolist() == pytest.approx(
        [t["config"]["train"]["lambda_max"] for t in trials]
    )
    raw_trial_cells = path.read_text().splitlines()[1:]
    assert [line.split(",")[0] for line in raw_trial_cells] == ["0", "1", "2", "", "4", "5", "6"]


def test_write_csv_of_no_records_has_the_header(tmp_path: Path):
    path = tmp_path / "empty.csv"
    write_csv([], path)
    assert path.read_text().strip() == "trial,val_accuracy,test_accuracy,params_nonzero,params_total"


def test_plot_front_writes_a_png(tmp_path: Path):
    trials = make_trials()
    path = tmp_path / "front.png"
    plot_front(trials, pareto_front(trials), path, baseline=baseline_record(), title="demo")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000


def test_plot_of_an_empty_search_is_still_a_png(tmp_path: Path):
    path = tmp_path / "empty.png"
    plot_front([], [], path)
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_write_report_writes_all_files_atomically(tmp_path: Path):
    trials = make_trials()
    front = pareto_front(trials)
    run_dir = tmp_path / "run"
    paths = write_report(run_dir, results_of(trials, front, failed=1, baseline=baseline_record()))
    assert set(paths) == {"front_csv", "trials_csv", "json", "plot"}
    report = run_dir / "report"
    assert sorted(p.name for p in report.iterdir()) == ["front.csv", "pareto.png", "report.json", "trials.csv"]
    assert all(p.parent == report for p in paths.values())
    assert len(pd.read_csv(paths["front_csv"])) == len(front)
    assert len(pd.read_csv(paths["trials_csv"])) == len(trials)
    doc = json.loads(paths["json"].read_text())
    assert doc["failed"] == 1 and len(doc["front"]) == len(front) and len(doc["trials"]) == len(trials)
    assert doc["hypervolume"]["ref_params"] == 266_610
    assert doc["hypervolume"]["value"] == pytest.approx(hypervolume(front, ref_params=266_610))
    assert doc["hypervolume"]["value"] > 0
    # Model paths are stored relative to the run directory, however the records name them.
    assert [r["model_path"] for r in doc["trials"]] == [f"models/trial_{i}.pt" for i in range(len(trials))]
    absolute = [{**r, "model_path": str((run_dir / r["model_path"]).resolve())} for r in trials]
    write_report(run_dir, results_of(absolute, failed=1))
    assert json.loads(paths["json"].read_text())["trials"][3]["model_path"] == "models/trial_3.pt"
    assert pd.read_csv(paths["front_csv"])["model_path"].str.startswith("models/").all()
    assert paths["plot"].read_bytes()[:8] == PNG_MAGIC
    # Writing again replaces the files in place and still leaves no temporaries behind.
    write_report(run_dir, results_of(trials, front[:1]))
    assert sorted(p.name for p in report.iterdir()) == ["front.csv", "pareto.png", "report.json", "trials.csv"]
    assert json.loads(paths["json"].read_text())["failed"] == 0


def test_a_failed_write_keeps_the_previous_file_and_no_temporary(tmp_path: Path):
    path = tmp_path / "trials.csv"
    write_csv(make_trials(3), path)
    before = path.read_bytes()

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("cannot format")

    with pytest.raises(RuntimeError, match="cannot format"):
        write_csv([{"trial": 1, "val_accuracy": Unprintable()}], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["trials.csv"]


def test_search_progress_counts_trials_whose_process_runs():
    lines: list[str] = []
    progress = Progress(log=lines.append, requested=3, already=1, records=[])
    progress.trial_started("a")
    progress.trial_started("b")
    rec = {"val_accuracy": 0.9, "params_nonzero": 1200}
    progress.finished(4, "complete", rec, None, counted=True, key="a")
    assert "2/4 done, 1 running, 0 failed | trial 4: val 0.9000, 1200 params | front 1: 0.9000@1.2k" in lines[-1]
    progress.finished(5, "error", None, "ValueError: x", counted=True, key="b")
    assert "3/4 done, 0 running, 1 failed | trial 5 failed (error): ValueError: x" in lines[-1]
    progress.finished(6, "interrupted", None, "stopped", counted=False, key="c")
    assert "3/4 done, 0 running, 1 failed | trial 6 stopped (interrupted)" in lines[-1]


def test_search_progress_pickles_without_the_callers_log():
    """Ray Tune cloudpickles the callbacks and the searcher that hold the progress; a log need not pickle."""
    import threading

    ray = pytest.importorskip("ray")
    from autoprune.raytune._launch import _started_callback

    class Widget:  # a log that holds a lock, as a notebook widget or a logger would
        def __init__(self) -> None:
            self.lock, self.lines = threading.Lock(), []

        def write(self, line: str) -> None:
            with self.lock:
                self.lines.append(line)

    widget = Widget()
    progress = Progress(log=widget.write, requested=2, already=0, records=[])
    with pytest.raises(TypeError, match="lock"):
        ray.cloudpickle.dumps(widget.write)
    copy = ray.cloudpickle.loads(ray.cloudpickle.dumps(progress))
    copy.finished(1, "complete", {"val_accuracy": 0.9, "params_nonzero": 10}, None, counted=True)  # silent
    progress.finished(1, "complete", {"val_accuracy": 0.9, "params_nonzero": 10}, None, counted=True)
    assert len(widget.lines) == 1 and progress.log == widget.write and copy.done == 1
    assert ray.cloudpickle.loads(ray.cloudpickle.dumps(_started_callback(progress))) is not None


def test_trial_progress_line_estimates_the_time_left():
    written: list[str] = []
    status = TrialProgress({"train": 2, "finetune": 2}, written.append)
    status("train", 1, 2, 0.5)
    assert written[-1].startswith("\r\x1b[Ktrain epoch 1/2, loss 0.5000, ~") and written[-1].endswith("s left")
    status.line("trained: val accuracy 0.9")
    assert written[-1] == "\r\x1b[Ktrained: val accuracy 0.9\n"
