"""``demo`` and ``layout check MODEL`` find the shipped layouts by model id, from anywhere.

Run from a directory that is not the checkout, so nothing can be found relative to the
working directory; the package data lookup (``hybridxfer.layout.builtin_layout_path``) is
what must find them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hybridxfer.cli._layouts import resolve_layout
from hybridxfer.errors import LayoutError
from hybridxfer.layout import builtin_layout_path, builtin_layouts

MODEL = "nemotron-3-nano-30b-a3b"


def _run(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hybridxfer.cli", *argv], capture_output=True, text=True,
                          timeout=240, cwd=cwd)


def test_layout_check_by_model_id_outside_the_checkout(tmp_path: Path) -> None:
    result = _run(tmp_path, "layout", "check", *builtin_layouts())
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{model}: ok" for model in builtin_layouts()]


def test_unknown_model_id_lists_the_shipped_ones(tmp_path: Path) -> None:
    result = _run(tmp_path, "layout", "check", "no-such-model")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no-such-model" in result.stderr and MODEL in result.stderr


def test_demo_default_layout_outside_the_checkout(tmp_path: Path) -> None:
    result = _run(tmp_path, "demo", "--tokens", "64", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verified"] is True and doc["model"] == MODEL
    assert doc["layout"] == str(builtin_layout_path(MODEL))


def test_an_existing_path_wins_over_a_model_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / MODEL).write_text("local file")
    assert resolve_layout(MODEL) == Path(MODEL)
    assert resolve_layout("elsewhere/x.toml") == Path("elsewhere/x.toml")  # a path, even if missing
    assert resolve_layout("qwen3-next-80b-a3b") == builtin_layout_path("qwen3-next-80b-a3b")
    with pytest.raises(LayoutError, match="no-such-model"):
        resolve_layout("no-such-model")
