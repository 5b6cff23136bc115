"""The plugin and its tests stay ``mypy --strict`` clean, like the core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[1]


def test_mypy_strict_is_clean() -> None:
    # run from the repository root so the editable core resolves as installed
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", str(PLUGIN / "src"), str(PLUGIN / "tests")],
                            cwd=PLUGIN.parents[1], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
