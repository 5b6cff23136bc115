"""Helpers for CLI tests: run ``hybridxfer`` in-process (fast) or as a process (serve/pull/demo)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hybridxfer.cli import main

REPO = Path(__file__).resolve().parents[2]
NEMOTRON = str(REPO / "layouts" / "nemotron-3-nano-30b-a3b.toml")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` in this process: (exit status, stdout, stderr)."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_argv(*argv: str) -> list[str]:
    return [sys.executable, "-m", "hybridxfer.cli", *argv]


def run_process(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_argv(*argv), capture_output=True, text=True, timeout=timeout, cwd=REPO)
