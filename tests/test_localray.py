"""A local search's Ray listens on 127.0.0.1 only: GCS, raylet, agents and trial workers, checked while it runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _helpers import TINY_SPACE as SPACE
from _sockets import descendants, is_loopback, listening

ray = pytest.importorskip("ray")

from autoprune.api import search  # noqa: E402
from autoprune.raytune._localray import ray_start_environment  # noqa: E402

pytestmark = pytest.mark.ray


def test_local_search_listens_on_loopback_only(no_shared_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPRUNE_STUDY_STORAGE", "")  # present but empty: hidden from Ray, restored after
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    seen: dict[int, list[str]] = {}
    workers: list[int] = []

    def log(message: str) -> None:  # called on the driver while Ray runs: at the launch and after each trial
        for pid, addresses in listening(descendants(os.getpid())).items():
            seen.setdefault(pid, []).extend(addresses)
        workers.extend(pid for pid in descendants(os.getpid()) if _name(pid).startswith("ray::"))

    outcome = search(space, run_dir=tmp_path / "run", trials=2, concurrent=1, log=log)
    assert outcome.results.counted == 2
    assert workers, "no trial worker was seen while the search ran"
    assert any(_name(pid) == "gcs_server" for pid in seen) and any(_name(pid) == "raylet" for pid in seen)
    exposed = {f"{pid} {_name(pid)}": a for pid, addrs in seen.items() for a in addrs if not is_loopback(a)}
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"
    assert os.environ["AUTOPRUNE_STUDY_STORAGE"] == ""


_names: dict[int, str] = {}


def _name(pid: int) -> str:
    if pid not in _names:
        try:
            _names[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            _names[pid] = "?"
    return _names[pid]


def test_environment_is_restored_and_secrets_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPRUNE_STUDY_STORAGE", "postgresql://u:pw@h/d")
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    with ray_start_environment(local=True) as extra:
        assert extra == {"_node_ip_address": "127.0.0.1"}
        assert "AUTOPRUNE_STUDY_STORAGE" not in os.environ
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" and ray_constants.ENABLE_RAY_CLUSTER is False
    assert os.environ["AUTOPRUNE_STUDY_STORAGE"] == "postgresql://u:pw@h/d"
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ and ray_constants.ENABLE_RAY_CLUSTER == before
    with ray_start_environment(local=False) as extra:  # a cluster: only the secret is hidden
        assert extra == {} and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
        assert "AUTOPRUNE_STUDY_STORAGE" not in os.environ
