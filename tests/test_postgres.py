"""A search, a resume and a report against a real PostgreSQL server, with a password that breaks naive URL parsers.

The password (with an unencoded ``/``, ``#``, ``[`` and ``@``) must reach the server intact and appear nowhere a
user or another process could read it: stdout, stderr, run.json, any file of the run (Ray's folder included) and
Ray's own session logs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from _helpers import TINY_SPACE as SPACE
from _helpers import run_cli
from _postgres import PostgresServer, PostgresUnavailable, postgres_server

pytestmark = pytest.mark.ray

PASSWORD = "Xk9/q2#Lm[@zz7"
FORMS = {PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD, safe=" +"), quote_plus(PASSWORD)}


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("psycopg2 is not installed (the test extra installs it: setup.sh)")
    try:
        with postgres_server(PASSWORD) as pg:
            yield pg
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


@pytest.fixture
def ray_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private root for Ray's session folders (short: Ray's socket paths must fit in 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="aprt-"))
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _leaks(folder: Path) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if any(form.encode() in data for form in FORMS):
                found.append(str(path))
    return found


@pytest.mark.slow
def test_search_resume_report_on_postgres(no_shared_ray, server, ray_tmp, tmp_path, capsys, monkeypatch) -> None:
    import optuna

    url = server.url()  # unencoded: postgresql://autoprune_test:Xk9/q2#Lm[@zz7@127.0.0.1:PORT/postgres
    space, run_dir = tmp_path / "space.yaml", tmp_path / "run"
    space.write_text(SPACE)
    outputs = []

    args = ["search", str(space), "--run-dir", str(run_dir), "--trials", "2", "--concurrent", "1"]
    code, out, err = run_cli([*args, "--study-storage", url], capsys, monkeypatch)
    outputs += [out, err]
    assert code == 0, err
    info = (run_dir / "run.json").read_text()
    assert "autoprune_test:***@127.0.0.1" in info and not (run_dir / "study.db").exists()

    # Resume with the URL in the environment; Ray's processes must not inherit it.
    monkeypatch.setenv("AUTOPRUNE_STUDY_STORAGE", url)
    code, out, err = run_cli(["resume", str(run_dir), "--trials", "3"], capsys, monkeypatch)
    outputs += [out, err]
    assert code == 0, err
    monkeypatch.delenv("AUTOPRUNE_STUDY_STORAGE")

    code, out, err = run_cli(["report", str(run_dir), "--json", "--study-storage", url], capsys, monkeypatch)
    outputs += [out, err]
    assert code == 0, err
    assert '"failed": 0' in out and out.count('"trial":') >= 3

    # Without the password: one line that says how to give it, and no password.
    code, out, err = run_cli(["report", str(run_dir)], capsys, monkeypatch)
    outputs += [out, err]
    assert code == 1 and "--study-storage" in err and len(err.strip().splitlines()) == 1

    # The study is really in PostgreSQL, with every trial finished.
    storage = optuna.storages.RDBStorage(
        f"postgresql+psycopg2://{server.user}:{quote(PASSWORD, safe='')}@127.0.0.1:{server.port}/postgres"
    )
    (summary,) = [s for s in optuna.get_all_study_summaries(storage) if s.study_name in info]
    assert summary.n_trials == 3

    for text in outputs:
        assert not any(form in text for form in FORMS), text
    assert _leaks(run_dir) == [], "password written into the run directory"
    assert (run_dir / "ray").is_dir() and any((run_dir / "ray").iterdir())
    assert _leaks(ray_tmp) == [], "password written into Ray's session folder"
    assert any(ray_tmp.rglob("*.log")), "Ray's session logs were not where the test looked"
