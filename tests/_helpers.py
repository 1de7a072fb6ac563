"""Shared test helpers."""

from __future__ import annotations

import sys

import pytest

from autoprune import cli


def run_cli(args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """Run ``autoprune ARGS`` in this process through ``cli.main``: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["autoprune", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err
