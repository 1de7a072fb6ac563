"""Bad input to every command: one line on stderr naming the problem, a non-zero exit, no traceback, and every
file of a real run directory byte-identical afterwards.

One tiny real search (Ray, once per session) makes the run directory; each case runs the command line in this
process on a fresh copy of it, after an optional set-up that plants what the case needs (a FIFO, an edited
run.json, a crafted study or model file).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _helpers import TINY_SPACE as SPACE
from _helpers import run_cli

pytestmark = pytest.mark.ray

FIXED_SPACE = SPACE.replace("fc1: {low: 0.5, high: 0.99}", "fc1: 0.9")
SECRET = "Xk9/q2Lm"


@pytest.fixture(scope="session")
def prepared_run(shared_ray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-trial search (the real thing: Ray Tune, an Optuna study, models, report) on the shared Ray."""
    from autoprune import api

    shared_ray.ensure()
    folder = tmp_path_factory.mktemp("prepared")
    (folder / "space.yaml").write_text(SPACE)
    run_dir = folder / "run"
    outcome = api.search(folder / "space.yaml", run_dir=run_dir, trials=3, concurrent=2, seed=0, log=lambda _m: None)
    assert outcome.results.counted == 3 and outcome.results.front
    return run_dir


def _sha(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
        if not p.is_symlink() and (p.is_file() or p.is_dir())
    }


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------------ set-ups
# Each takes (tmp, run) and returns extra template values; the run's checksums are taken after it.

Setup = Callable[[Path, Path], dict]


def _model(run: Path, **changes: object) -> dict:
    doc = torch.load(run / "models" / "trial_0.pt", weights_only=True)
    for key, value in changes.items():
        target = doc
        *parents, last = key.split(".")
        for part in parents:
            target = target[part]
        target[last] = value
    return doc


def crafted(name: str, **changes: object) -> Setup:
    def setup(tmp: Path, run: Path) -> dict:
        torch.save(_model(run, **changes), tmp / name)
        return {}

    return setup


def fifo(name: str) -> Setup:
    def setup(tmp: Path, run: Path) -> dict:
        os.mkfifo(tmp / name)
        return {}

    return setup


def run_file(name: str, content: bytes | None = None, *, fifo_: bool = False, link: str | None = None) -> Setup:
    """Replace (or remove) a file of the run; ``models/*.pt`` means every model."""

    def setup(tmp: Path, run: Path) -> dict:
        for path in sorted(run.glob(name)) if "*" in name else [run / name]:
            if path.exists() or path.is_symlink():
                path.unlink()
            if fifo_:
                os.mkfifo(path)
            elif link is not None:
                path.symlink_to(link)
            elif content is not None:
                path.write_bytes(content)
        return {}

    return setup


def run_json(**changes: object) -> Setup:
    def setup(tmp: Path, run: Path) -> dict:
        doc = json.loads((run / "run.json").read_text())
        doc.update(changes)
        (run / "run.json").write_text(json.dumps(doc))
        return {}

    return setup


def model_path(value: str | Callable[[Path, Path], str], *, plant: Setup | None = None) -> Setup:
    """Rewrite the model path the study records for every trial (a crafted or damaged ledger)."""

    def setup(tmp: Path, run: Path) -> dict:
        if plant is not None:
            plant(tmp, run)
        text = value(tmp, run) if callable(value) else value
        con = sqlite3.connect(run / "study.db")
        with con:
            con.execute("update trial_user_attributes set value_json = ? where key = 'model_path'", (json.dumps(text),))
        con.close()
        return {}

    return setup


def other_run(tmp: Path, run: Path) -> str:
    shutil.copytree(run, tmp / "other", symlinks=True)
    return str(tmp / "other" / "models" / "trial_1.pt")


def evil_link(tmp: Path, run: Path) -> dict:
    (run / "models" / "evil.pt").symlink_to("/etc/passwd")
    return {}


def write(name: str, text: str | bytes) -> Setup:
    def setup(tmp: Path, run: Path) -> dict:
        data = text.encode() if isinstance(text, str) else text
        (tmp / name).write_bytes(data)
        return {}

    return setup


def symlink(name: str, target: str) -> Setup:
    def setup(tmp: Path, run: Path) -> dict:
        (tmp / name).symlink_to(target.format(run=run, tmp=tmp))
        return {}

    return setup


def truncated(tmp: Path, run: Path) -> dict:
    data = (run / "models" / "trial_0.pt").read_bytes()
    (tmp / "cut.pt").write_bytes(data[: len(data) // 2])
    return {}


class _Anything:  # pickled as a class reference: weights_only loading must refuse it
    pass


def pickled(tmp: Path, run: Path) -> dict:
    torch.save({"format": "autoprune-model", "payload": _Anything()}, tmp / "pickled.pt")
    return {}


def locked(tmp: Path, run: Path) -> dict:
    handle = open(run / ".lock", "a+")  # held until the case ends: another driver's lock
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    _held.append(handle)
    return {}


_held: list = []


def space_files(tmp: Path, run: Path) -> dict:
    (tmp / "space.yaml").write_text(SPACE)
    (tmp / "fixed.yaml").write_text(FIXED_SPACE)
    (tmp / "bad.yaml").write_text("dataset: [unclosed\n")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    return {}


def chain(*setups: Setup) -> Setup:
    def setup(tmp: Path, run: Path) -> dict:
        values: dict = {}
        for s in setups:
            values.update(s(tmp, run) or {})
        return values

    return setup


def edit_space(tmp: Path, run: Path) -> dict:
    path = run / "space.yaml"
    path.write_text(path.read_text().replace("limit: 300", "limit: 200"))
    return {}


# ------------------------------------------------------------------------------------------------- the cases
# (id, argv template, words the one line must hold, set-up). Templates: {run} the run copy, {tmp} the case's
# scratch folder, {port} a closed local port.

R, T = "{run}", "{tmp}"
PICK = ["pick", R, "--knee", "--out"]
# fmt: off
CASES: list[tuple[str, list[str], list[str], Setup | None]] = [
    # usage errors (Typer)
    ("no-such-command", ["nosuch"], ["No such command"], None),
    ("unknown-option", ["search", "--bogus"], ["No such option", "--bogus"], None),
    ("trials-not-int", ["search", "--run-dir", f"{T}/new", "--trials", "abc"], ["--trials"], None),
    ("cpus-not-number", ["search", "--run-dir", f"{T}/new", "--cpus-per-trial", "x"], ["--cpus-per-trial"], None),
    ("search-no-run-dir", ["search"], ["--run-dir"], None),
    ("pick-no-args", ["pick"], ["run_dir"], None),
    ("evaluate-no-args", ["evaluate"], ["model_file"], None),
    ("resume-no-args", ["resume"], ["run_dir"], None),
    ("csv-without-value", ["report", R, "--csv"], ["--csv"], None),
    ("trial-bad-json-flag", ["trial", "--json=yes"], ["--json"], None),
    # trial
    ("trial-missing-space", ["trial", f"{T}/none.yaml"], ["none.yaml", "not found"], None),
    ("trial-space-is-dev-zero", ["trial", "/dev/zero"], ["/dev/zero", "not a regular file"], None),
    ("trial-space-is-dir", ["trial", T], ["not a regular file"], None),
    ("trial-space-bad-yaml", ["trial", f"{T}/bad.yaml"], ["bad.yaml", "invalid YAML"], space_files),
    ("trial-space-not-mapping", ["trial", f"{T}/list.yaml"], ["list.yaml", "mapping"], space_files),
    ("trial-set-no-equals", ["trial", "--set", "prune.sparsity.fc1"], ["KEY=VALUE"], None),
    ("trial-set-unknown-key", ["trial", "--set", "prune.nonsense=1"], ["nonsense"], None),
    ("trial-set-sparsity-1.5", ["trial", "--set", "prune.sparsity.fc1=1.5"], ["1.5"], None),
    ("trial-set-objective-bogus", ["trial", "--set", "search.objective=speed"],
     ["search.objective must be one of params, macs, latency, got 'speed'"], None),
    ("trial-set-objective-unstructured", ["trial", "--set", "search.objective=latency"],
     ["search.objective latency", "prune.structured: true"], None),
    ("trial-set-latency-batch-0", ["trial", "--set", "measure.latency_batch=0"], ["measure.latency_batch", "0"], None),
    ("trial-sparsity-empties-layer", ["trial", f"{T}/fixed.yaml", "--set", "prune.sparsity.fc3=0.99999"],
     ["0.99999", "fc3", "100%"], space_files),
    ("trial-save-onto-study", ["trial", "--save", f"{R}/study.db"], ["study.db of run directory"], None),
    ("trial-save-onto-model", ["trial", "--save", f"{R}/models/trial_0.pt"], ["models of run directory"], None),
    ("trial-save-proc", ["trial", "--save", "/proc/m.pt"], ["/proc/m.pt", "cannot create a file in /proc"], None),
    ("trial-save-dir", ["trial", "--save", T], ["is a directory"], None),
    ("trial-save-nonexistent", ["trial", "--save", "/nonexistent/m.pt"], ["/nonexistent", "does not exist"], None),
    # search (refused before Ray starts)
    ("search-into-run", ["search", f"{T}/space.yaml", "--run-dir", R], ["already holds a search"], space_files),
    ("search-run-dir-is-file", ["search", "--run-dir", f"{R}/run.json"], ["is a file"], None),
    ("search-inside-run-models", ["search", "--run-dir", f"{R}/models/sub"], ["inside the run directory"], None),
    ("search-inside-run-report", ["search", "--run-dir", f"{R}/report"], ["inside the run directory"], None),
    ("search-trials-0", ["search", "--run-dir", f"{T}/new", "--trials", "0"], ["--trials", "0"], None),
    ("search-trials-negative", ["search", "--run-dir", f"{T}/new", "--trials", "-3"], ["--trials", "-3"], None),
    ("search-concurrent-0", ["search", "--run-dir", f"{T}/new", "--concurrent", "0"], ["--concurrent"], None),
    ("search-cpus-0", ["search", "--run-dir", f"{T}/new", "--cpus-per-trial", "0"], ["--cpus-per-trial"], None),
    ("search-cpus-nan", ["search", "--run-dir", f"{T}/new", "--cpus-per-trial", "nan"], ["--cpus-per-trial"], None),
    ("search-gpus-negative", ["search", "--run-dir", f"{T}/new", "--gpus-per-trial", "-1"], ["--gpus-per-trial"],
     None),
    ("search-gpus-1.5", ["search", "--run-dir", f"{T}/new", "--gpus-per-trial", "1.5"], ["whole number"], None),
    ("search-sampler", ["search", "--run-dir", f"{T}/new", "--sampler", "bogus"], ["--sampler", "bogus"], None),
    ("search-seed-negative", ["search", "--run-dir", f"{T}/new", "--seed", "-1"], ["--seed"], None),
    ("search-address-nonsense", ["search", "--run-dir", f"{T}/new", "--address", "nonsense"], ["host:port"], None),
    ("search-address-closed", ["search", "--run-dir", f"{T}/new", "--address", "127.0.0.1:{port}"],
     ["cannot reach a Ray cluster"], None),
    ("storage-bad-port", ["search", "--run-dir", f"{T}/new", "--study-storage",
                          f"postgresql+psycopg2://u:{SECRET}@host:54x2/db"], ["port '54x2'"], None),
    ("storage-unclosed-bracket", ["search", "--run-dir", f"{T}/new", "--study-storage",
                                  f"postgresql://u:{SECRET}@[::1/db"], ["unclosed '['"], None),
    ("storage-hash-in-password", ["search", "--run-dir", f"{T}/new", "--study-storage",
                                  "postgresql://u:{port}#Xk9/q2Lm@127.0.0.1:{port}/db"], ["cannot open study storage"],
     None),
    ("storage-unreachable", ["search", "--run-dir", f"{T}/new", "--study-storage",
                             f"postgresql+psycopg2://u:{SECRET}@127.0.0.1:{{port}}/db"], ["cannot open study storage"],
     None),
    ("storage-unknown-dialect", ["search", "--run-dir", f"{T}/new", "--study-storage",
                                 f"nosuchdb://u:{SECRET}@localhost/db"], ["cannot open study storage"],
     None),
    ("storage-journal-no-folder", ["search", "--run-dir", f"{T}/new", "--study-storage", f"{T}/none/j.log"],
     ["does not exist"], None),
    ("storage-journal-dir", ["search", "--run-dir", f"{T}/new", "--study-storage", T], ["is a directory"], None),
    ("storage-journal-dev-null", ["search", "--run-dir", f"{T}/new", "--study-storage", "/dev/null"],
     ["not a regular file"], None),
    ("search-nothing-to-search", ["search", f"{T}/fixed.yaml", "--run-dir", f"{T}/new", "--trials", "3"],
     ["nothing to search", "3 trials"], space_files),
    ("search-space-dev-zero", ["search", "/dev/zero", "--run-dir", f"{T}/new"], ["not a regular file"], None),
    ("search-set-bad-value", ["search", "--run-dir", f"{T}/new", "--set", "train.lr=-1"], ["train.lr"], None),
    # resume
    ("resume-missing", ["resume", f"{T}/missing"], ["does not exist"], None),
    ("resume-empty", ["resume", T], ["holds no search"], None),
    ("resume-trials-0", ["resume", R, "--trials", "0"], ["--trials"], None),
    ("resume-cpus-negative", ["resume", R, "--cpus-per-trial", "-1"], ["--cpus-per-trial"], None),
    ("resume-gpus-2.5", ["resume", R, "--gpus-per-trial", "2.5"], ["whole number"], None),
    ("resume-concurrent-0", ["resume", R, "--concurrent", "0"], ["--concurrent"], None),
    ("resume-run-json-garbage", ["resume", R], ["run.json", "damaged"], run_file("run.json", b"{not json")),
    ("resume-run-json-list", ["resume", R], ["run.json", "damaged"], run_file("run.json", b"[1, 2]")),
    ("resume-run-json-bad-type", ["resume", R], ["run.json", "trials"], run_json(trials="many")),
    ("resume-run-json-bad-storage", ["resume", R], ["run.json", "storage"], run_json(storage="sqlite")),
    ("resume-run-json-unknown-kind", ["resume", R], ["unknown storage kind"], run_json(storage={"kind": "tape"})),
    ("resume-run-json-fifo", ["resume", R], ["run.json", "not a regular file"], run_file("run.json", fifo_=True)),
    ("resume-run-json-huge", ["resume", R], ["run.json", "MiB"], run_file("run.json", b" " * (17 << 20))),
    ("resume-space-edited", ["resume", R, "--trials", "5"], ["was changed"], edit_space),
    ("resume-space-missing", ["resume", R], ["space.yaml", "missing"], run_file("space.yaml")),
    ("resume-space-dev-zero", ["resume", R], ["space.yaml", "not a regular file"],
     run_file("space.yaml", link="/dev/zero")),
    ("resume-study-missing", ["resume", R], ["study.db", "lost"], run_file("study.db")),
    ("resume-study-garbage", ["resume", R], ["cannot open study storage"], run_file("study.db", b"garbage" * 300)),
    ("resume-study-fifo", ["resume", R], ["study", "not a regular file"], run_file("study.db", fifo_=True)),
    ("resume-address-nonsense", ["resume", R, "--trials", "5", "--address", "nonsense"], ["host:port"], None),
    ("resume-other-storage", ["resume", R, "--study-storage", f"postgresql://u:{SECRET}@h/db"],
     ["not the storage of this run"], run_json(storage={"kind": "rdb", "url": "postgresql://u:***@other/db"})),
    ("resume-locked", ["resume", R, "--trials", "5"], ["another autoprune process"], locked),
    # report: outputs never onto the run, a folder, /proc or a missing folder
    ("report-csv-study", ["report", R, "--csv", f"{R}/study.db"], ["study.db of run directory"], None),
    ("report-csv-run-json", ["report", R, "--csv", f"{R}/run.json"], ["run.json of run directory"], None),
    ("report-csv-space", ["report", R, "--csv", f"{R}/space.yaml"], ["space.yaml of run directory"], None),
    ("report-csv-lock", ["report", R, "--csv", f"{R}/.lock"], [".lock of run directory"], None),
    ("report-csv-journal-side", ["report", R, "--csv", f"{R}/study.db-journal"], ["study.db of run"], None),
    ("report-plot-model", ["report", R, "--plot", f"{R}/models/trial_0.pt"], ["models of run directory"], None),
    ("report-csv-report-file", ["report", R, "--csv", f"{R}/report/front.csv"], ["report of run directory"], None),
    ("report-csv-ray", ["report", R, "--csv", f"{R}/ray/x.csv"], ["ray of run directory"], None),
    ("report-csv-dotdot", ["report", R, "--csv", f"{R}/models/../study.db"], ["study.db of run directory"], None),
    ("report-csv-symlink", ["report", R, "--csv", f"{T}/innocent.csv"], ["study.db of run directory"],
     symlink("innocent.csv", "{run}/study.db")),
    ("report-csv-run-dir", ["report", R, "--csv", R], ["is the run directory"], None),
    ("report-csv-dir", ["report", R, "--csv", T], ["is a directory"], None),
    ("report-plot-dir", ["report", R, "--plot", T], ["is a directory"], None),
    ("report-csv-proc", ["report", R, "--csv", "/proc/x.csv"], ["cannot create a file in /proc"], None),
    ("report-plot-proc", ["report", R, "--plot", "/proc/x.png"], ["cannot create a file in /proc"], None),
    ("report-csv-nonexistent", ["report", R, "--csv", "/nonexistent/x.csv"], ["/nonexistent", "does not exist"], None),
    ("report-plot-nonexistent", ["report", R, "--plot", "/nonexistent/x.png"], ["does not exist"], None),
    ("report-csv-dev-null", ["report", R, "--csv", "/dev/null"], ["not a regular file"], None),
    ("report-csv-fifo", ["report", R, "--csv", f"{T}/pipe.csv"], ["not a regular file"], fifo("pipe.csv")),
    ("report-csv-equals-plot", ["report", R, "--csv", f"{T}/f.out", "--plot", f"{T}/f.out"], ["same file"], None),
    ("report-missing-run", ["report", f"{T}/missing"], ["does not exist"], None),
    ("report-run-json-garbage", ["report", R], ["damaged"], run_file("run.json", b"\x00\x01")),
    ("report-study-fifo", ["report", R], ["not a regular file"], run_file("study.db", fifo_=True)),
    ("report-without-password", ["report", R], ["--study-storage", "keeps no password"],
     run_json(storage={"kind": "rdb", "url": "postgresql://u:***@127.0.0.1/db"})),
    # pick
    ("pick-out-onto-other-model", [*PICK, f"{R}/models/trial_0.pt"], ["models of run directory"], None),
    ("pick-out-onto-study", [*PICK, f"{R}/study.db"], ["study.db of run directory"], None),
    ("pick-out-symlink-to-model", [*PICK, f"{T}/link.pt"], ["models of run directory"],
     symlink("link.pt", "{run}/models/trial_1.pt")),
    ("pick-out-proc", [*PICK, "/proc/x.pt"], ["cannot create a file in /proc"], None),
    ("pick-out-dir", [*PICK, T], ["is a directory"], None),
    ("pick-out-nonexistent", [*PICK, "/nonexistent/x.pt"], ["does not exist"], None),
    ("pick-out-not-a-model", [*PICK, f"{T}/notes.txt"], ["refusing to overwrite"], write("notes.txt", "mine")),
    ("pick-no-rule", ["pick", R, "--out", f"{T}/m.pt"], ["exactly one"], None),
    ("pick-two-rules", ["pick", R, "--knee", "--max-params", "10", "--out", f"{T}/m.pt"], ["exactly one"], None),
    ("pick-max-params-too-small", ["pick", R, "--max-params", "1", "--out", f"{T}/m.pt"], ["1"], None),
    ("pick-most-accurate-alone", ["pick", R, "--knee", "--most-accurate", "--out", f"{T}/m.pt"],
     ["--most-accurate chooses among the models within --max-params N; give --max-params"], None),
    ("pick-min-accuracy-1.5", ["pick", R, "--min-accuracy", "1.5", "--out", f"{T}/m.pt"], ["1.5"], None),
    ("pick-max-latency-negative", ["pick", R, "--max-latency-ms", "-1", "--out", f"{T}/m.pt"],
     ["--max-latency-ms must be a non-negative number of milliseconds, got -1.0"], None),
    ("pick-max-latency-too-small", ["pick", R, "--max-latency-ms", "0", "--out", f"{T}/m.pt"],
     ["no front model has latency_ms <= 0.0", "raise --max-latency-ms"], None),
    ("pick-max-macs-and-params", ["pick", R, "--max-macs", "10", "--max-params", "10", "--out", f"{T}/m.pt"],
     ["exactly one", "--max-params, --max-macs"], None),
    ("pick-max-params-not-int", ["pick", R, "--max-params", "1e3", "--out", f"{T}/m.pt"], ["--max-params"], None),
    ("pick-ledger-etc-passwd", [*PICK, f"{T}/m.pt"], ["../../../../etc/passwd"],
     model_path("../../../../etc/passwd")),
    ("pick-ledger-absolute-other-run", [*PICK, f"{T}/m.pt"], ["absolute path"],
     model_path(other_run)),
    ("pick-ledger-symlink-out", [*PICK, f"{T}/m.pt"], ["points outside"],
     model_path("models/evil.pt", plant=evil_link)),
    ("pick-model-names-os-abort", [*PICK, f"{T}/m.pt"], ["os:abort", "damaged"],
     lambda tmp, run: [torch.save(_model(run, architecture={"factory": "os:abort"}), p)
                       for p in sorted(run.glob("models/*.pt"))] and {}),
    ("pick-model-fifo", [*PICK, f"{T}/m.pt"], ["not a regular file"],
     run_file("models/*.pt", fifo_=True)),
    ("pick-model-missing", [*PICK, f"{T}/m.pt"], ["missing"],
     run_file("models/*.pt")),
    # evaluate: a model file is data
    ("evaluate-dev-zero", ["evaluate", "/dev/zero"], ["/dev/zero", "not a regular file"], None),
    ("evaluate-fifo", ["evaluate", f"{T}/pipe.pt"], ["not a regular file"], fifo("pipe.pt")),
    ("evaluate-dir", ["evaluate", T], ["is a directory"], None),
    ("evaluate-missing", ["evaluate", f"{T}/none.pt"], ["does not exist"], None),
    ("evaluate-text", ["evaluate", f"{T}/notes.pt"], ["not a complete torch file"], write("notes.pt", "hello")),
    ("evaluate-truncated", ["evaluate", f"{T}/cut.pt"], ["not a complete torch file"], truncated),
    ("evaluate-pickled-object", ["evaluate", f"{T}/pickled.pt"], ["Python objects"], pickled),
    ("evaluate-factory-os-abort", ["evaluate", f"{T}/abort.pt"], ["os:abort", "--allow-module os"],
     crafted("abort.pt", architecture={"factory": "os:abort"})),
    ("evaluate-factory-other-allowed", ["evaluate", f"{T}/abort.pt", "--allow-module", "numpy"], ["os:abort"],
     crafted("abort.pt", architecture={"factory": "os:abort"})),
    ("evaluate-factory-submodule-allowed", ["evaluate", f"{T}/abort.pt", "--allow-module", "os.path"],
     ["os:abort"], crafted("abort.pt", architecture={"factory": "os:abort"})),
    ("evaluate-dataset-signal-pause", ["evaluate", f"{T}/pause.pt"], ["signal:pause", "--allow-module signal"],
     crafted("pause.pt", **{"config.dataset.name": "signal:pause"})),
    ("evaluate-dataset-this", ["evaluate", f"{T}/this.pt", "--json"], ["this:d", "--allow-module this"],
     crafted("this.pt", **{"config.dataset.name": "this:d"})),
    ("evaluate-newer-format", ["evaluate", f"{T}/new.pt"], ["newer"], crafted("new.pt", version=99)),
    ("evaluate-not-autoprune", ["evaluate", f"{T}/foreign.pt"], ["not an autoprune model file"],
     lambda tmp, run: torch.save({"weights": torch.zeros(3)}, tmp / "foreign.pt") or {}),
    ("evaluate-bad-config", ["evaluate", f"{T}/cfg.pt"], ["configuration stored in the file is invalid"],
     crafted("cfg.pt", **{"config.budget.batch_size": -4})),
    ("evaluate-unknown-layer", ["evaluate", f"{T}/layer.pt"], ["unknown layer type"],
     crafted("layer.pt", architecture=[{"name": "x", "type": "Exec", "kwargs": {}}])),
    ("evaluate-bad-shape", ["evaluate", f"{T}/shape.pt"], ["expects inputs"],
     crafted("shape.pt", input_shape=[1, 28, 28])),
]
# fmt: on


@pytest.mark.parametrize(("argv", "words", "setup"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_the_run_untouched(
    argv: list[str], words: list[str], setup: Setup | None, prepared_run: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(prepared_run, run, symlinks=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    values = {"run": str(run), "tmp": str(scratch), "port": str(_closed_port())}
    try:
        values.update((setup(scratch, run) if setup else None) or {})
        before = _sha(run)
        args = [a.format(**values) for a in argv]
        code, out, err = run_cli(args, capsys, monkeypatch)
    finally:
        while _held:
            _held.pop().close()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, f"exit 0 for {args}: {err}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err}"
    assert lines[0].startswith("autoprune: error: "), lines[0]
    assert "Traceback" not in err
    for word in words:
        assert word.format(**values) in lines[0], f"{word!r} not in: {lines[0]}"
    assert out == "", f"stdout: {out[:300]}"
    assert SECRET not in err
    assert _sha(run) == before, "the run directory changed"
    assert not Path("/nonexistent").exists()


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 90 and len({c[0] for c in CASES}) == len(CASES)
