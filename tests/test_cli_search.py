"""Bad input to the search commands: one line on stderr, a non-zero exit, nothing written. No Ray is started."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from _helpers import TINY_SPACE as SPACE
from _helpers import run_cli, write_run_json

import autoprune
from autoprune.errors import SearchError
from autoprune.rundir.ledger import redact_url


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("autoprune: error: ")
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:  # bound then released: nothing listens there afterwards
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_search_into_a_run_directory_points_to_resume(tmp_path, space_file, capsys, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text('{"study_name": "x"}')
    before = snapshot(run_dir)
    code, out, err = run_cli(["search", str(space_file), "--run-dir", str(run_dir)], capsys, monkeypatch)
    line = one_error_line(err)
    assert code == 1 and out == ""
    assert "already holds a search" in line and f"autoprune resume {run_dir}" in line
    assert snapshot(run_dir) == before


def test_search_refuses_a_directory_with_a_stray_study(tmp_path, space_file, capsys, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "study.db").write_bytes(b"not touched")
    code, _, err = run_cli(["search", str(space_file), "--run-dir", str(run_dir)], capsys, monkeypatch)
    assert code == 1 and "study.db" in one_error_line(err)
    assert snapshot(run_dir) == {"study.db": b"not touched"}


@pytest.mark.parametrize("command", ["resume", "report", "pick"])
def test_commands_on_a_directory_without_a_search(command, tmp_path, capsys, monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    extra = ["--knee", "--out", str(tmp_path / "m.pt")] if command == "pick" else []
    code, out, err = run_cli([command, str(empty), *extra], capsys, monkeypatch)
    line = one_error_line(err)
    assert code == 1 and out == ""
    assert "holds no search" in line and "autoprune search" in line
    assert list(empty.iterdir()) == [] and not (tmp_path / "m.pt").exists()
    code, _, err = run_cli([command, str(tmp_path / "missing"), *extra], capsys, monkeypatch)
    assert code == 1 and "does not exist" in one_error_line(err)
    assert not (tmp_path / "missing").exists()


def test_unreachable_address_fails_fast_and_writes_nothing(tmp_path, space_file, closed_port, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    args = ["search", str(space_file), "--run-dir", str(run_dir), "--address", f"127.0.0.1:{closed_port}"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    line = one_error_line(err)
    assert code == 1 and f"cannot reach a Ray cluster at 127.0.0.1:{closed_port}" in line
    assert not run_dir.exists()
    code, _, err = run_cli(
        ["search", str(space_file), "--run-dir", str(run_dir), "--address", "nonsense"], capsys, monkeypatch
    )
    assert code == 1 and "expected auto or host:port" in one_error_line(err)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://alice:s3cr3t-pw@127.0.0.1:{port}/studies",
        "nosuchdb://alice:s3cr3t-pw@localhost/studies",
        "sqlite:////nonexistent-folder/deeper/study.db",
    ],
)
def test_storage_that_cannot_be_opened(url, tmp_path, space_file, closed_port, capsys, monkeypatch) -> None:
    url = url.format(port=closed_port)
    run_dir = tmp_path / "run"
    args = ["search", str(space_file), "--run-dir", str(run_dir), "--study-storage", url]
    code, out, err = run_cli(args, capsys, monkeypatch)
    line = one_error_line(err)
    assert code == 1 and out == ""
    assert "cannot open study storage" in line and redact_url(url) in line
    assert "s3cr3t" not in err
    assert not run_dir.exists()


def test_journal_storage_in_a_missing_folder(tmp_path, space_file, capsys, monkeypatch) -> None:
    args = [
        "search",
        str(space_file),
        "--run-dir",
        str(tmp_path / "run"),
        "--study-storage",
        str(tmp_path / "nowhere" / "journal.log"),
    ]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 1 and "does not exist" in one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("postgresql://bob:pa%40ss@db.example:5432/x?sslmode=require") == (
        "postgresql://bob:***@db.example:5432/x?sslmode=require"
    )
    assert redact_url("postgresql://bob@db/x") == "postgresql://bob@db/x"
    assert redact_url("sqlite:///runs/study.db") == "sqlite:///runs/study.db"


def test_report_asks_for_the_password_that_run_json_does_not_keep(tmp_path, capsys, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_run_json(
        run_dir,
        "0" * 64,
        trials=4,
        study_name="autoprune-run-abc",
        storage={"kind": "rdb", "url": "postgresql://bob:***@db.example/x"},
        resources={"concurrent": None, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0},
    )
    monkeypatch.delenv("AUTOPRUNE_STUDY_STORAGE", raising=False)
    code, _, err = run_cli(["report", str(run_dir)], capsys, monkeypatch)
    line = one_error_line(err)
    assert code == 1 and "--study-storage" in line and "postgresql://bob:***@db.example/x" in line
    code, _, err = run_cli(
        ["report", str(run_dir), "--study-storage", "postgresql://eve:pw@other/x"], capsys, monkeypatch
    )
    line = one_error_line(err)
    assert code == 1 and "is not the storage of this run" in line and ":pw@" not in err


def test_bad_search_options(tmp_path, space_file, capsys, monkeypatch) -> None:
    base = ["search", str(space_file), "--run-dir", str(tmp_path / "run")]
    for extra, expected in (
        (["--trials", "0"], "--trials must be a positive integer"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
        (["--gpus-per-trial", "1.5"], "--gpus-per-trial above 1 must be a whole number"),
        (["--concurrent", "0"], "--concurrent must be a positive integer"),
    ):
        code, _, err = run_cli([*base, *extra], capsys, monkeypatch)
        assert code == 1 and expected in one_error_line(err), extra
    # A value outside a fixed set is a usage error that lists the set; the Python API says the same in one line.
    code, _, err = run_cli([*base, "--sampler", "grid"], capsys, monkeypatch)
    text = " ".join(err.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())  # without the error box
    assert code == 2 and "'grid' is not one of 'tpe', 'nsga2', 'random'" in text
    with pytest.raises(SearchError, match="--sampler must be one of tpe, nsga2, random, got 'grid'"):
        autoprune.search(space_file, run_dir=tmp_path / "run", sampler="grid")
    assert not (tmp_path / "run").exists()


def _saved_model(path: Path) -> Path:
    import torch

    from autoprune.config import TrialConfig
    from autoprune.io.export import save_model
    from autoprune.io.models import build_model

    torch.manual_seed(0)  # unseeded, an initial weight is exactly 0.0 now and then and the count is one short
    model = build_model("lenet-300-100", (1, 8, 8), 10)
    cfg = TrialConfig.from_dict({"dataset": {"name": "digits", "limit": 300}})
    return save_model(
        path,
        model,
        masks={},
        config=cfg.to_dict(),
        metrics={"params_total": 50610},
        input_shape=(1, 8, 8),
        num_classes=10,
    )


def test_evaluate_refuses_foreign_and_truncated_files(tmp_path, capsys, monkeypatch) -> None:
    good = _saved_model(tmp_path / "model.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "notes.pt"
    foreign.write_text("just some text")
    for path in (truncated, foreign, tmp_path / "absent.pt"):
        code, out, err = run_cli(["evaluate", str(path)], capsys, monkeypatch)
        assert code == 1 and out == "" and str(path) in one_error_line(err)


def test_evaluate_measures_a_saved_model(tmp_path, capsys, monkeypatch) -> None:
    from autoprune.config import DatasetConfig
    from autoprune.io.data import load_datasets
    from autoprune.io.export import load_model
    from autoprune.pipeline.train import evaluate

    good = _saved_model(tmp_path / "model.pt")
    code, out, _ = run_cli(["evaluate", str(good), "--json"], capsys, monkeypatch)
    assert code == 0
    doc = json.loads(out)
    data = load_datasets(DatasetConfig(name="digits", limit=300), seed=0)
    assert doc["test_accuracy"] == evaluate(load_model(good).model, data.test_x, data.test_y)
    assert doc["params_nonzero"] == doc["params_total"] == 50610


def test_pick_needs_exactly_one_rule(tmp_path, capsys, monkeypatch) -> None:
    code, _, err = run_cli(["pick", str(tmp_path), "--out", str(tmp_path / "m.pt")], capsys, monkeypatch)
    assert code == 1 and "exactly one of" in one_error_line(err)
    code, _, err = run_cli(
        ["pick", str(tmp_path), "--knee", "--max-params", "10", "--out", str(tmp_path / "m.pt")], capsys, monkeypatch
    )
    assert code == 1 and "exactly one of" in one_error_line(err)
    assert not (tmp_path / "m.pt").exists()


def test_resume_on_an_unreachable_cluster_leaves_the_study_alone(tmp_path, closed_port, capsys, monkeypatch) -> None:
    import optuna
    import yaml

    from autoprune.searching.space import parse_space

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "space.yaml").write_text(SPACE)
    study = optuna.create_study(
        study_name="autoprune", storage=f"sqlite:///{run_dir / 'study.db'}", directions=["maximize", "minimize"]
    )
    study.ask()  # a trial the lost driver left RUNNING
    write_run_json(
        run_dir,
        parse_space(yaml.safe_load(SPACE)).digest,
        trials=3,
        resources={"concurrent": None, "cpus_per_trial": 1.0, "gpus_per_trial": 0.0},
        address=f"127.0.0.1:{closed_port}",
    )
    before = snapshot(run_dir)
    code, _, err = run_cli(["resume", str(run_dir)], capsys, monkeypatch)
    line = one_error_line(err)
    assert code == 1 and "cannot reach a Ray cluster" in line and "--address local" in line
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING]
    assert snapshot(run_dir) == {**before, ".lock": b""}
