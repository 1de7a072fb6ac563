"""Bad input at the edge of what autoprune accepts: values past its limits (``autoprune._bounds``), YAML that
would expand, nest or overflow, files that are not what they claim (a model file's dtypes, shapes and strides; a
checkpoint given as ``model.weights``) and silent partial successes. Each is one line on stderr naming the
problem, a non-zero exit, no traceback, and nothing changed: the run directory and the working folder are
byte-identical afterwards.

No Ray: every case is refused before Ray would start, so the whole file runs in seconds. The run directory is
written by hand (run.json and the frozen space), which is all ``resume`` reads before its refusals.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _helpers import TINY_SPACE as SPACE
from _helpers import run_cli, write_run_json

import autoprune
from autoprune._bounds import MAX_MESSAGE
from autoprune.errors import AutoPruneError

FIXED = SPACE.replace("fc1: {low: 0.5, high: 0.99}", "fc1: 0.9")
DENSITY = """\
dataset: {name: digits, val_fraction: 0.2, limit: 300}
model: {name: lenet-300-100}
budget: {train_epochs: 1, finetune_epochs: 1, batch_size: 64}
prune:
  allocation: global
  density: {low: 0.01, high: 0.5, log: true}
"""
LOL = '["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'
ALIAS_BOMB = (
    f"train: {{lr: [&a {LOL}, &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], "
    "&d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]]}\n"
)
BIG = "99999999999999999999999"  # past 64 bits

Setup = Callable[[Path, Path], None]


def _sha(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
        if not p.is_symlink() and (p.is_file() or p.is_dir())
    }


def _write_run(run: Path) -> None:
    """A run directory as a search leaves it before its first trial: run.json and the frozen space."""
    from autoprune.rundir.directory import space_from_text

    run.mkdir()
    (run / "models").mkdir()
    (run / "space.yaml").write_text(SPACE)
    write_run_json(run, space_from_text(SPACE).digest, trials=3)


# ------------------------------------------------------------------------------------------------ set-ups
# Each takes (tmp, run) and plants what its case needs; checksums are taken after it.


def text(name: str, content: str | bytes) -> Setup:
    def setup(tmp: Path, run: Path) -> None:
        (tmp / name).write_bytes(content.encode() if isinstance(content, str) else content)

    return setup


def run_file(name: str, content: bytes) -> Setup:
    def setup(tmp: Path, run: Path) -> None:
        (run / name).write_bytes(content)

    return setup


def run_json(change: Callable[[dict], object]) -> Setup:
    """run.json edited (a received run, or a hand-edited one): ``change`` alters its parsed content."""

    def setup(tmp: Path, run: Path) -> None:
        doc = json.loads((run / "run.json").read_text())
        change(doc)
        (run / "run.json").write_text(json.dumps(doc))

    return setup


def _resource(key: str, value: object) -> Callable[[dict], object]:
    return lambda doc: doc["resources"].__setitem__(key, value)


def _good_model() -> dict:
    """A model file as ``save_model`` writes it (LeNet-300-100 on digits), as a dict to damage."""
    from autoprune.config import DatasetConfig, TrialConfig
    from autoprune.io.export import save_model
    from autoprune.io.models import build_model

    if not _MODEL:
        torch.manual_seed(0)
        model = build_model("lenet-300-100", (1, 8, 8), 10)
        config = TrialConfig(dataset=DatasetConfig(name="digits", val_fraction=0.2, limit=300)).to_dict()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.pt"
            masks = {"fc1.weight": torch.ones(300, 64)}
            with torch.no_grad():  # a kept weight that is exactly zero: the file stores this mask (not derived)
                model.fc1.weight[0, 0] = 0.0
            save_model(path, model, masks=masks, config=config, metrics={}, input_shape=(1, 8, 8), num_classes=10)
            _MODEL.append(torch.load(path, weights_only=True))
    return copy.deepcopy(_MODEL[0])


_MODEL: list[dict] = []


def model_file(name: str, change: Callable[[dict], None]) -> Setup:
    def setup(tmp: Path, run: Path) -> None:
        doc = _good_model()
        change(doc)
        torch.save(doc, tmp / name)

    return setup


def weights_file(name: str, make: Callable[[], object]) -> Setup:
    def setup(tmp: Path, run: Path) -> None:
        torch.save(make(), tmp / name)

    return setup


def _lenet_state() -> dict[str, torch.Tensor]:
    from autoprune.io.models import build_model

    return build_model("lenet-300-100", (1, 8, 8), 10).state_dict()


def _weights(**replace: torch.Tensor) -> Callable[[], dict]:
    return lambda: {**_lenet_state(), **replace}


def _stride0_model(doc: dict) -> None:
    """A 30000x30000 first layer whose weights are one float each, expanded (a 10 kB file)."""
    for layer in doc["architecture"]:
        if layer["name"] == "fc1":
            layer["kwargs"].update(in_features=30000, out_features=30000)
        if layer["name"] == "fc2":
            layer["kwargs"]["in_features"] = 30000
    doc["input_shape"] = [1, 30000, 1]
    state = doc["state_dict"]
    state["fc1.weight"] = torch.zeros(1).expand(30000, 30000)
    state["fc1.bias"] = torch.zeros(1).expand(30000)
    state["fc2.weight"] = torch.zeros(1).expand(100, 30000)
    doc["masks"].clear()


def _set(key: str, value: object) -> Callable[[dict], None]:
    """Set ``key`` of a model file; ``/`` separates its parts (a weight's name has dots)."""

    def change(doc: dict) -> None:
        target = doc
        *parents, last = key.split("/")
        for part in parents:
            target = target[part]
        target[last] = value

    return change


def _weight_as(dtype: torch.dtype) -> Callable[[dict], None]:
    return lambda doc: doc["state_dict"].__setitem__("fc1.weight", doc["state_dict"]["fc1.weight"].to(dtype))


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _shared_bomb() -> list:
    value: list = [0] * 10
    for _ in range(6):
        value = [value] * 10  # ten million leaves, each list stored once
    return value


def zip_bomb(name: str) -> Setup:
    """A weights file recompressed: torch reads deflated entries, so 36 kB would unpack to 36 MB."""

    def setup(tmp: Path, run: Path) -> None:
        plain = tmp / "plain.tmp"
        torch.save({"fc1.weight": torch.zeros(3000, 3000)}, plain)
        with zipfile.ZipFile(plain) as src, zipfile.ZipFile(tmp / name, "w", zipfile.ZIP_DEFLATED) as out:
            for entry in src.infolist():
                out.writestr(entry.filename, src.read(entry.filename))
        plain.unlink()

    return setup


class _Anything:  # pickled as a class reference: weights_only loading refuses it
    pass


def hostile(name: str) -> Setup:
    def setup(tmp: Path, run: Path) -> None:
        torch.save({"fc1.weight": _Anything()}, tmp / name, pickle_module=pickle)

    return setup


def truncated(name: str) -> Setup:
    def setup(tmp: Path, run: Path) -> None:
        torch.save(_lenet_state(), tmp / name)
        data = (tmp / name).read_bytes()
        (tmp / name).write_bytes(data[: len(data) // 2])

    return setup


# ------------------------------------------------------------------------------------------------- the cases
# (id, argv template, words the one line must hold, set-up). Templates: {run} the hand-written run directory,
# {tmp} the case's scratch folder (also the working folder), holding space.yaml, fixed.yaml and density.yaml.

R, T = "{run}", "{tmp}"
NEW = ["--run-dir", f"{T}/new"]
TRIAL = ["trial", f"{T}/fixed.yaml"]
SEARCH = ["search", f"{T}/space.yaml", *NEW]
WEIGHTS = [*TRIAL, "--set", f"model.weights={T}/w.pt"]
EVALUATE = ["evaluate", f"{T}/m.pt"]
# fmt: off
CASES: list[tuple[str, list[str], list[str], Setup | None]] = [
    # threads and CPUs: at most this machine's
    ("trial-threads-past-cpus", [*TRIAL, "--threads", "100000"], ["--threads", "less than or equal to"], None),
    ("trial-threads-past-64-bits", [*TRIAL, "--threads", BIG], ["--threads"], None),
    ("search-cpus-past-cpus", [*SEARCH, "--cpus-per-trial", "100000"], ["--cpus-per-trial", "CPUs of this machine"],
     None),
    ("resume-cpus-past-cpus", ["resume", R, "--cpus-per-trial", "100000"], ["--cpus-per-trial", "CPUs of this"], None),
    # epochs, batches, ladders, trials: within documented limits, refused fast
    ("epochs-past-limit", [*TRIAL, "--set", "budget.train_epochs=10001"], ["budget.train_epochs", "10000"], None),
    ("epochs-past-64-bits", [*TRIAL, "--set", "budget.train_epochs=" + "1" + "0" * 23],
     ["budget.train_epochs", "64 bits"], None),
    ("epochs-1e23-float", [*TRIAL, "--set", "budget.train_epochs=1e23"], ["budget.train_epochs", "integer"], None),
    ("finetune-epochs-past-limit", [*TRIAL, "--set", "budget.finetune_epochs=20000"], ["budget.finetune_epochs"],
     None),
    ("lr-step-epochs-past-limit", [*TRIAL, "--set", "finetune.lr_step_epochs=10001"], ["finetune.lr_step_epochs"],
     None),
    ("batch-past-limit", [*TRIAL, "--set", "budget.batch_size=16777217"], ["budget.batch_size", "16777216"], None),
    ("eval-batch-past-limit", [*TRIAL, "--set", "budget.eval_batch_size=100000000"], ["budget.eval_batch_size"],
     None),
    ("ladder-million", ["trial", f"{T}/density.yaml", "--set", "search.baselines={{densities: 1000000}}"],
     ["search.baselines.densities", "at most 100"], None),
    ("ladder-list-too-long", ["trial", f"{T}/density.yaml", "--set",
                              "search.baselines={{densities: [" + ", ".join(["0.1"] * 101) + "]}}"],
     ["at most 100 densities"], None),
    ("calibration-grid-too-large", ["trial", f"{T}/calibrate.yaml"], ["search.baselines.calibrate", "probes"],
     text("calibrate.yaml", DENSITY + "train: {lr: {low: 0.01, high: 0.1}, momentum: {low: 0.5, high: 0.9}}\n"
          "finetune: {lr: {low: 0.001, high: 0.1}, momentum: {low: 0.5, high: 0.9}, "
          "weight_decay: {low: 0.0, high: 0.001}}\nsearch: {baselines: {calibrate: [train.lr, train.momentum, "
          "finetune.lr, finetune.momentum, finetune.weight_decay]}}\n")),
    ("choices-too-many", [*TRIAL, "--set", "finetune.lr={{choices: [" + ", ".join(["0.1"] * 1001) + "]}}"],
     ["finetune.lr", "1,001 choices"], None),
    ("space-trials-past-limit", [*TRIAL, "--set", "search.trials=1000001"], ["search.trials", "1,000,000"], None),
    ("search-trials-past-limit", [*SEARCH, "--trials", BIG], ["--trials", "1,000,000"], None),
    ("search-concurrent-past-limit", [*SEARCH, "--concurrent", BIG], ["--concurrent", "1,000,000"], None),
    ("resume-trials-past-limit", ["resume", R, "--trials", "1000001"], ["--trials", "1,000,000"], None),
    ("dense-start-epochs-past-limit", ["search", f"{T}/density.yaml", *NEW, "--set", "search.dense_start=100000"],
     ["search.dense_start", "10,000"], None),
    # ports 1-65535
    ("search-address-port-past-16-bits", [*SEARCH, "--address", "localhost:99999"], ["port 99999", "65535"], None),
    ("search-address-port-0", [*SEARCH, "--address", "127.0.0.1:0"], ["port 0"], None),
    ("search-address-unicode-digits", [*SEARCH, "--address", "localhost:٦٣٧٩"], ["host:port"], None),
    ("resume-address-port-past-16-bits", ["resume", R, "--address", "localhost:70000"], ["port 70000"], None),
    # integers within 64 bits (32 for a sampler seed)
    ("search-seed-past-32-bits", [*SEARCH, "--seed", str(2**32)], ["--seed", "4294967295"], None),
    ("search-seed-past-64-bits", [*SEARCH, "--seed", BIG], ["--seed"], None),
    ("trial-seed-past-64-bits", [*TRIAL, "--seed", BIG], ["--seed"], None),
    ("space-seed-past-64-bits", ["trial", f"{T}/seed.yaml"], ["seed", "64 bits"],
     text("seed.yaml", FIXED + f"seed: {BIG}\n")),
    ("space-batch-past-64-bits", [*TRIAL, "--set", f"budget.batch_size={BIG}"], ["budget.batch_size", "64 bits"],
     None),
    ("space-range-past-64-bits", ["trial", f"{T}/range.yaml"], ["finetune.lr_step_epochs.high", "64 bits"],
     text("range.yaml", FIXED + f"finetune: {{lr_step_epochs: {{low: 1, high: {BIG}}}}}\n")),
    ("space-int-5000-digits", ["trial", f"{T}/digits.yaml"], ["digits.yaml", "cannot be read"],
     text("digits.yaml", FIXED + "seed: " + "9" * 5000 + "\n")),
    ("space-hex-past-64-bits", ["trial", f"{T}/hex.yaml"], ["seed", "64 bits"],
     text("hex.yaml", FIXED + "seed: 0x" + "f" * 40 + "\n")),
    # YAML: size, depth, aliases, tags, encoding
    ("yaml-alias-bomb", ["trial", f"{T}/bomb.yaml"], ["bomb.yaml", "100,000 values"],
     text("bomb.yaml", FIXED + ALIAS_BOMB)),
    ("yaml-5000-brackets", ["trial", f"{T}/deep.yaml"], ["deep.yaml", "nested"],
     text("deep.yaml", "train: {lr: " + "[" * 5000 + "]" * 5000 + "}\n")),
    ("yaml-40-levels", ["trial", f"{T}/deep.yaml"], ["nested more than 32 levels"],
     text("deep.yaml", "train: {lr: " + "[" * 40 + "]" * 40 + "}\n")),
    ("yaml-values-past-limit-stop-the-parse", ["trial", f"{T}/many.yaml"], ["many.yaml", "100,000 values"],
     text("many.yaml", FIXED + "train: {lr: [" + "0, " * 100_001 + "]]] a syntax error never reached\n")),
    ("yaml-recursive-alias", ["trial", f"{T}/loop.yaml"], ["nested more than 32"],
     text("loop.yaml", "train: {lr: &a [*a]}\n")),
    ("yaml-larger-than-1-mib", ["trial", f"{T}/big.yaml"], ["big.yaml", "MiB"],
     text("big.yaml", FIXED + "#" * (1 << 20))),
    ("yaml-bad-int-tag", ["trial", f"{T}/tag.yaml"], ["tag.yaml", "cannot be read"],
     text("tag.yaml", FIXED + "seed: !!int abc\n")),
    ("yaml-13th-month", ["trial", f"{T}/date.yaml"], ["date.yaml", "cannot be read"],
     text("date.yaml", FIXED + "device: 2024-13-01\n")),
    ("yaml-set-alias-bomb",
     [*TRIAL, "--set", "train.lr=" + ALIAS_BOMB.removeprefix("train: {lr: ").removesuffix("}\n")],
     ["--set train.lr", "100,000 values"], None),
    ("trial-space-not-utf8", ["trial", f"{T}/latin1.yaml"], ["latin1.yaml", "not UTF-8"],
     text("latin1.yaml", FIXED.encode() + b"# caf\xe9\n")),
    ("search-space-not-utf8", ["search", f"{T}/latin1.yaml", *NEW], ["latin1.yaml", "not UTF-8"],
     text("latin1.yaml", b"\xff\xfe" + SPACE.encode("utf-16-le"))),
    ("resume-space-not-utf8", ["resume", R], ["space.yaml", "not UTF-8"], run_file("space.yaml", b"seed: \xff\n")),
    ("resume-space-alias-bomb", ["resume", R], ["space.yaml", "100,000 values"],
     run_file("space.yaml", (FIXED + ALIAS_BOMB).encode())),
    ("long-message-cut", ["trial", f"{T}/long.yaml"], ["train.lr must be a number", "..."],
     text("long.yaml", FIXED + "train: {lr: [" + ", ".join(map(str, range(5000))) + "]}\n")),
    # silent partial successes
    ("search-run-dir-empty", ["search", f"{T}/space.yaml", "--run-dir", ""], ["--run-dir", "''"], None),
    ("search-storage-memory", [*SEARCH, "--study-storage", "sqlite:///:memory:"], ["in-memory SQLite"], None),
    ("search-storage-sqlite-no-file", [*SEARCH, "--study-storage", "sqlite://"], ["in-memory SQLite"], None),
    ("search-storage-memory-uri", [*SEARCH, "--study-storage", "sqlite:///file:s?mode=memory&uri=true"],
     ["in-memory SQLite"], None),
    ("search-model-name-searched", [*SEARCH, "--set", "model.name={{choices: [lenet-300-100, bn-cnn]}}"],
     ["model.name cannot be searched"], None),
    ("trial-model-name-searched", [*TRIAL, "--set", "model.name={{choices: [lenet-300-100, bn-cnn]}}"],
     ["model.name cannot be searched"], None),
    ("set-under-scalar-section", ["trial", f"{T}/scalar.yaml", "--set", "train.lr=0.1"],
     ["--set train.lr", "train is 5 (int), not a mapping", "--set 'train={lr: ...}'"],
     text("scalar.yaml", FIXED + "train: 5\n")),
    ("set-under-scalar-layer-map", ["trial", f"{T}/rate.yaml", "--set", "prune.sparsity.fc1=0.9"],
     ["prune.sparsity is 0.5 (float), not a mapping"], text("rate.yaml", FIXED.split("prune:")[0] +
                                                              "prune: {sparsity: 0.5}\n")),
    ("set-under-section-set-earlier", [*TRIAL, "--set", "train=5", "--set", "train.lr=0.1"], ["train is 5"], None),
    ("set-under-string-leaf", [*TRIAL, "--set", "dataset.name.x=1"], ["dataset.name takes a value, not sub-keys"],
     None),
    # run.json read back by resume and report: its integers within the options' bounds
    ("resume-run-json-trials-past-limit", ["resume", R], ["run.json", "trials must be a whole number from 1 to "
     "1,000,000, got an integer of 100 bits"], run_json(lambda doc: doc.update(trials=10**30))),
    ("report-run-json-trials-past-limit", ["report", R], ["run.json", "trials must be"],
     run_json(lambda doc: doc.update(trials=10**30))),
    ("resume-run-json-trials-zero", ["resume", R], ["trials must be", "got 0"], run_json(lambda d: d.update(trials=0))),
    ("report-run-json-seed-negative", ["report", R], ["seed must be", "got -1"],
     run_json(lambda doc: doc.update(seed=-1))),
    ("resume-run-json-concurrent-zero", ["resume", R], ["resources.concurrent must be"],
     run_json(_resource("concurrent", 0))),
    ("resume-run-json-cpus-text", ["resume", R], ["resources.cpus_per_trial", "'abc'"],
     run_json(_resource("cpus_per_trial", "abc"))),
    ("resume-run-json-cpus-nan", ["resume", R], ["resources.cpus_per_trial"],
     run_json(_resource("cpus_per_trial", float("nan")))),
    ("resume-run-json-gpus-negative", ["resume", R], ["resources.gpus_per_trial", "-1"],
     run_json(_resource("gpus_per_trial", -1))),
    ("resume-run-json-early-stop-list", ["resume", R], ["early_stop must be"],
     run_json(lambda doc: doc.update(early_stop=[1]))),
    ("resume-run-json-address-number", ["resume", R], ["address must be"],
     run_json(lambda doc: doc.update(address=5))),
    # a model file: its own dtypes, shapes and strides, checked before anything is computed
    ("evaluate-float64", EVALUATE, ["fc1.weight is torch.float64", "float32"],
     model_file("m.pt", _weight_as(torch.float64))),
    ("evaluate-float16", EVALUATE, ["fc1.weight is torch.float16"], model_file("m.pt", _weight_as(torch.float16))),
    ("evaluate-complex", EVALUATE, ["fc1.weight is torch.complex64"], model_file("m.pt", _weight_as(torch.complex64))),
    ("evaluate-input-shape-text", EVALUATE, ["input_shape", "'abc'"], model_file("m.pt", _set("input_shape", "abc"))),
    ("evaluate-input-shape-empty", EVALUATE, ["input_shape"], model_file("m.pt", _set("input_shape", []))),
    ("evaluate-input-shape-negative", EVALUATE, ["input_shape"], model_file("m.pt", _set("input_shape", [1, -8, 8]))),
    ("evaluate-num-classes-text", EVALUATE, ["num_classes", "'ten'"], model_file("m.pt", _set("num_classes", "ten"))),
    ("evaluate-num-classes-bool", EVALUATE, ["num_classes"], model_file("m.pt", _set("num_classes", True))),
    ("evaluate-config-list", EVALUATE, ["config must be a mapping"], model_file("m.pt", _set("config", [1, 2]))),
    ("evaluate-metrics-list", EVALUATE, ["metrics must be a mapping"], model_file("m.pt", _set("metrics", [1]))),
    ("evaluate-mask-shape-text", EVALUATE, ["mask 'fc1.weight'", "shape"],
     model_file("m.pt", _set("masks/fc1.weight/shape", "abc"))),
    ("evaluate-mask-shape-past-64-bits", EVALUATE, ["64 bits"],
     model_file("m.pt", _set("masks/fc1.weight/shape", [2**70]))),
    ("evaluate-no-flatten", EVALUATE, ["is damaged", "does not run on a sample shaped (1, 8, 8)"],
     model_file("m.pt", lambda doc: doc.__setitem__("architecture", [x for x in doc["architecture"]
                                                                     if x["type"] != "Flatten"]))),
    ("evaluate-stride-0-30000x30000", EVALUATE, ["strides [0, 0]", "share their storage"],
     model_file("m.pt", _stride0_model)),
    ("evaluate-overlapping-strides", EVALUATE, ["strides"], model_file("m.pt", _set(
        "state_dict/fc1.weight", torch.zeros(300 + 63).as_strided((300, 64), (1, 1))))),
    ("evaluate-sparse-weights", EVALUATE, ["sparse"], model_file("m.pt", _set(
        "state_dict/fc2.weight", torch.zeros(100, 300).to_sparse()))),
    ("evaluate-meta-weights", EVALUATE, ["meta"], model_file("m.pt", _set(
        "state_dict/fc2.weight", torch.empty(100, 300, device="meta")))),
    ("evaluate-metrics-nested-deep", EVALUATE, ["nested more than 32"],
     model_file("m.pt", _set("metrics/x", _nested(100)))),
    ("evaluate-metrics-shared-bomb", EVALUATE, ["100,000 values"],
     model_file("m.pt", _set("metrics/x", _shared_bomb()))),
    ("evaluate-metrics-past-64-bits", EVALUATE, ["metrics.trial", "64 bits"],
     model_file("m.pt", _set("metrics/trial", 2**80))),
    ("evaluate-zip-bomb", EVALUATE, ["compressed archive"], zip_bomb("m.pt")),
    # a checkpoint given as model.weights
    ("weights-truncated", WEIGHTS, ["not a complete torch file"], truncated("w.pt")),
    ("weights-wrong-shape", WEIGHTS, ["do not fit model lenet-300-100", "fc1.weight"],
     weights_file("w.pt", _weights(**{"fc1.weight": torch.zeros(300, 50)}))),
    ("weights-hostile-pickle", WEIGHTS, ["holds Python objects"], hostile("w.pt")),
    ("weights-not-a-state-dict", WEIGHTS, ["holds list, not a state_dict"], weights_file("w.pt", lambda: [1, 2])),
    ("weights-stride-0", WEIGHTS, ["weights file", "strides [0, 0]"],
     weights_file("w.pt", _weights(**{"fc1.weight": torch.zeros(1).expand(300, 64)}))),
    ("weights-overlapping", WEIGHTS, ["weights file", "strides [1, 1]"],
     weights_file("w.pt", _weights(**{"fc1.weight": torch.zeros(363).as_strided((300, 64), (1, 1))}))),
    ("weights-zip-bomb", WEIGHTS, ["weights file", "compressed archive"], zip_bomb("w.pt")),
    ("weights-sparse", WEIGHTS, ["weights file", "sparse"],
     weights_file("w.pt", _weights(**{"fc1.weight": torch.zeros(300, 64).to_sparse()}))),
    ("weights-nested-deep", WEIGHTS, ["nested more than 32"], weights_file("w.pt", lambda: {"x": _nested(100)})),
    ("search-weights-stride-0", ["search", f"{T}/space.yaml", *NEW, "--set", f"model.weights={T}/w.pt"],
     ["strides [0, 0]"], weights_file("w.pt", _weights(**{"fc1.weight": torch.zeros(1).expand(300, 64)}))),
]
# fmt: on


@pytest.mark.parametrize(("argv", "words", "setup"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_at_the_edge_is_one_line_and_changes_nothing(
    argv: list[str], words: list[str], setup: Setup | None, tmp_path: Path, capsys, monkeypatch
) -> None:
    run = tmp_path / "run"
    _write_run(run)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "space.yaml").write_text(SPACE)
    (scratch / "fixed.yaml").write_text(FIXED)
    (scratch / "density.yaml").write_text(DENSITY)
    if setup is not None:
        setup(scratch, run)
    monkeypatch.chdir(scratch)  # `--run-dir ''` would be this folder
    before = (_sha(run), _sha(scratch))
    args = [a.format(run=run, tmp=scratch) for a in argv]
    t0 = time.monotonic()
    code, out, err = run_cli(args, capsys, monkeypatch)
    seconds = time.monotonic() - t0
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, f"exit 0 for {args}: {err[:500]}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err[:2000]}"
    assert lines[0].startswith("autoprune: error: "), lines[0]
    assert len(lines[0]) <= len("autoprune: error: ") + MAX_MESSAGE
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    assert out == "", f"stdout: {out[:300]}"
    assert (_sha(run), _sha(scratch)) == before, "a file changed"
    assert seconds < 30, f"{seconds:.0f} s to refuse"  # bounded validation: refused fast, not after minutes


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 80 and len({c[0] for c in CASES}) == len(CASES)


API_IDS = [
    "search-run-dir-none",
    "search-run-dir-empty",
    "resume-none",
    "evaluate-int",
    "load-model-none",
    "load-results-none",
    "results-bytes",
    "refresh-report-none",
    "pick-run-dir-none",
    "pick-out-none",
    "pick-max-params-text",
    "pick-trial-text",
    "pick-min-accuracy-text",
    "run-trial-save-int",
    "run-trial-threads-million",
    "run-trial-threads-text",
]


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda tmp: autoprune.search(run_dir=None), "--run-dir must name a file or folder"),
        (lambda tmp: autoprune.search(run_dir=""), "--run-dir must name a file or folder"),
        (lambda tmp: autoprune.resume(None), "run_dir must name a file or folder"),
        (lambda tmp: autoprune.evaluate(123), "model file must name a file or folder"),
        (lambda tmp: autoprune.load_model(None), "model file must name a file or folder"),
        (lambda tmp: autoprune.load_results(None), "run_dir must name a file or folder"),
        (lambda tmp: autoprune.results(b"run"), "run_dir must name a file or folder"),
        (lambda tmp: autoprune.refresh_report(None), "run_dir must name a file or folder"),
        (lambda tmp: autoprune.pick(None, out=tmp / "m.pt", knee=True), "run_dir must name a file or folder"),
        (lambda tmp: autoprune.pick(tmp, out=None, knee=True), "--out must be a path"),
        (lambda tmp: autoprune.pick(tmp, out=tmp / "m.pt", max_params="100"), "--max-params must be a whole number"),
        (lambda tmp: autoprune.pick(tmp, out=tmp / "m.pt", trial="3"), "--trial must be a whole number"),
        (lambda tmp: autoprune.pick(tmp, out=tmp / "m.pt", min_accuracy="0.9"), "--min-accuracy must be a number"),
        (lambda tmp: autoprune.run_trial(save=3), "--save must be a path"),
        (lambda tmp: autoprune.run_trial(threads=10**6), "--threads must be more than 0 and at most"),
        (lambda tmp: autoprune.run_trial(threads="4"), "--threads must be more than 0"),
    ],
    ids=API_IDS,
)
def test_the_api_refuses_in_one_line_what_the_command_line_does(call, words: str, tmp_path: Path) -> None:
    with pytest.raises(AutoPruneError) as info:
        call(tmp_path)
    message = str(info.value)
    assert words in message and "\n" not in message, message


def test_views_that_share_no_storage_are_read(tmp_path: Path) -> None:
    """A slice (gaps between its elements) or a channels-last weight is stored in the file: only overlap is refused."""
    from autoprune.io.models import read_weights

    columns = torch.arange(128.0).view(8, 16)[:, :4]
    conv = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    torch.save({"columns": columns, "conv": conv}, tmp_path / "w.pt")
    state = read_weights(tmp_path / "w.pt")
    assert torch.equal(state["columns"], columns) and torch.equal(state["conv"], conv)
