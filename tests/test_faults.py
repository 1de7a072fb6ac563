"""Faults during a real search: a trial worker killed, a full disk, two drivers racing, the driver killed, and
resources no node has. Tiny budgets; every process a test starts is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers import TINY_SPACE as SPACE
from _helpers import run_cli
from _session import driver_env, session_processes, stop_session
from _sockets import descendants

ray = pytest.importorskip("ray")

from autoprune.raytune import resume_search  # noqa: E402
from autoprune.rundir import directory as rundir  # noqa: E402
from autoprune.rundir.ledger import load_results  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoprune.cli", *args]


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]


@pytest.mark.slow
def test_a_killed_worker_counts_as_failed_and_the_search_ends_with_what_was_asked(space: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    # 2,000 epochs of the tiny space are several seconds of training a trial, so the kill below lands mid-trial.
    cmd = _cli("search", str(space), "--run-dir", str(run_dir), "--trials", "2", "--concurrent", "1",
               "--set", "budget.train_epochs=2000")  # fmt: skip
    driver = subprocess.Popen(
        cmd, env=driver_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:

        def worker() -> int | None:
            names = {
                pid: name for pid, name in session_processes(driver.pid).items() if name.startswith("ray::ImplicitFu")
            }
            return next(iter(names), None)

        assert _wait_for(lambda: worker() is not None, 120), "no trial worker started"
        time.sleep(2)  # mid-trial: data loaded, training
        os.kill(worker(), signal.SIGKILL)  # what the OOM killer does
        _, err = driver.communicate(timeout=300)
    finally:
        stop_session(driver)
    err = err.decode()
    assert driver.returncode == 0, err
    assert "Traceback" not in err and "(raylet)" not in err and "ERROR" not in err, err
    crashed = [line for line in err.splitlines() if "crashed" in line]
    assert len(crashed) == 1 and "failed (crashed)" in crashed[0], err
    results = load_results(run_dir)
    assert results.counted == 2 == results.requested and len(results.trials) == 1
    assert [f["outcome"] for f in results.failures] == ["crashed"]


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_a_full_disk_stops_in_one_line_keeps_what_finished_and_resume_works(
    shared_ray, space: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "700k"):  # two of these models fit, the third does not
        pytest.skip("cannot mount a tmpfs here (needs root); the full-disk path is not exercised")
    try:  # the command line in this process, on the shared Ray
        shared_ray.ensure()
        run_dir = disk / "run"
        args = ["search", str(space), "--run-dir", str(run_dir), "--trials", "4", "--concurrent", "1"]
        code, out, err = run_cli(args, capsys, monkeypatch)
        assert code == 1, err
        assert "Traceback" not in err and out == ""
        (line,) = _error_lines(err)
        assert line.startswith("autoprune: error: stopped:") and f"autoprune resume {run_dir}" in line, line
        assert "no space" in line or "disk is full" in line, line
        kept = load_results(run_dir)
        assert kept.trials and all(Path(r["model_path"]).is_file() for r in kept.trials)
        before = {r["trial"]: Path(r["model_path"]).read_bytes() for r in kept.trials}

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True, timeout=30)  # space freed
        code, _, err = run_cli(["resume", str(run_dir)], capsys, monkeypatch)
        assert code == 0, err
        after = load_results(run_dir)
        assert after.counted == 4 == len(after.trials)
        assert {n: Path(r["model_path"]).read_bytes() for n, r in ((r["trial"], r) for r in after.trials)
                if n in before} == before  # fmt: skip
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


@pytest.mark.slow
def test_racing_drivers_one_wins_and_the_loser_deletes_nothing(space: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = _cli("search", str(space), "--run-dir", str(run_dir), "--trials", "2", "--concurrent", "1")
    drivers = [
        subprocess.Popen(cmd, env=driver_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        outputs = [d.communicate(timeout=300) for d in drivers]
    finally:
        for d in drivers:
            stop_session(d)
    codes = sorted(d.returncode for d in drivers)
    assert codes == [0, 1], [o[1].decode() for o in outputs]
    loser = outputs[[d.returncode for d in drivers].index(1)][1].decode()
    lines = [line for line in loser.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in loser, loser
    assert "another autoprune process" in lines[0] or "already holds a search" in lines[0], lines[0]
    assert "exists already in \n" not in loser  # no empty storage name
    con = sqlite3.connect(run_dir / "study.db")
    states = [s for (s,) in con.execute("select state from trials")]
    con.close()
    assert states == ["COMPLETE", "COMPLETE"]
    assert load_results(run_dir).counted == 2


@pytest.mark.slow
def test_a_killed_driver_leaves_no_ray_process_behind_and_resume_finishes(
    local_ray, space: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    # 800 epochs of the tiny space are seconds of training a trial (and resume runs the second), so the kill below,
    # as soon as the trial's worker process exists, lands mid-trial.
    cmd = _cli("search", str(space), "--run-dir", str(run_dir), "--trials", "2", "--concurrent", "1",
               "--set", "budget.train_epochs=800")  # fmt: skip
    driver = subprocess.Popen(cmd, env=driver_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert _wait_for(
            lambda: any(n.startswith("ray::ImplicitFu") for n in session_processes(driver.pid).values()), 120
        )
        ray_names = set(session_processes(driver.pid).values())
        assert {"gcs_server", "raylet"} <= ray_names
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone: Ray's processes are on their own now
        driver.wait(timeout=30)
        gone = _wait_for(lambda: not session_processes(driver.pid), 30)
        left = session_processes(driver.pid)
    finally:
        stop_session(driver)
    assert gone, f"Ray processes outlived the driver by 30 s: {left}"
    outcome = resume_search(run_dir, log=lambda _m: None)
    assert outcome.results.counted == 2 and not outcome.interrupted
    assert [f["outcome"] for f in outcome.results.failures] == ["interrupted"]


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [("--cpus-per-trial", "100000", "CPUs of this machine"), ("--gpus-per-trial", "1", "no node can run a trial")],
)
def test_resources_no_node_has_leave_nothing_behind(
    no_shared_ray, option, value, words, space, tmp_path, capsys, monkeypatch
) -> None:
    children = descendants(os.getpid())
    run_dir = tmp_path / "run"
    code, out, err = run_cli(["search", str(space), "--run-dir", str(run_dir), option, value], capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and out == "" and len(lines) == 1, err
    assert words in lines[0] and option in lines[0]  # CPUs: this machine's, before Ray starts
    assert not run_dir.exists()
    rundir.check_new_run_dir(run_dir)  # the corrected command is not refused
    assert _wait_for(lambda: descendants(os.getpid()) <= children, 30), "Ray processes left running"
    shutil.rmtree(run_dir, ignore_errors=True)
