"""A throw-away PostgreSQL server for tests: Debian's ``postgresql`` binaries, a temp folder, 127.0.0.1 only.

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` system user that the Debian
package creates (else ``nobody``), through ``runuser``. The server listens on 127.0.0.1 on a free port, with
password (SCRAM) authentication for one user, and is stopped and deleted afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed (``apt-get install postgresql``)."""


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    log_file: Path

    def url(self, scheme: str = "postgresql") -> str:
        """The URL with the password as typed: not percent-encoded, whatever characters it holds."""
        return f"{scheme}://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PostgresUnavailable("no initdb: install Debian's postgresql package (setup.sh does)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix that runs the server unprivileged, and the uid/gid that must own its files."""
    if os.geteuid() != 0:
        return [], None, None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return ["runuser", "-u", name, "--"], entry.pw_uid, entry.pw_gid
    raise PostgresUnavailable("running as root and no unprivileged user (postgres, nobody) to run the server")


@contextlib.contextmanager
def postgres_server(password: str, *, user: str = "autoprune_test") -> Iterator[PostgresServer]:
    """Start a fresh server with ``user``/``password``; stop and delete it on exit."""
    bin_dir = _bin_dir()
    prefix, uid, gid = _as_user()
    # Not under pytest's tmp_path: its parents are private to root, and the server user must reach its folder.
    base = Path(tempfile.mkdtemp(prefix="autoprune-pg-"))
    data, log_file, pwfile = base / "data", base / "server.log", base / "pw"
    pwfile.write_text(password + "\n")
    os.chmod(pwfile, 0o600)
    if uid is not None:
        for path in (base, pwfile):
            os.chown(path, uid, gid)

    def run(*args: str) -> None:
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120, cwd=base)
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")

    port = _free_port()
    started = False
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile}", "-A", "scram-sha-256",
            "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        pwfile.unlink()
        options = f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log_file), "-o", options, "-w", "-t", "60", "start")
        started = True
        yield PostgresServer("127.0.0.1", port, user, password, "postgres", log_file)
    finally:
        if started:
            with contextlib.suppress(Exception):
                run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)
