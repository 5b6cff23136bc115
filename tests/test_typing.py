"""The package, its plugins and the tests stay ``mypy --strict`` clean (the style's promise)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_strict_is_clean() -> None:
    targets = ["hybridxfer", "tests", "transports/hybridxfer-nixl/src", "transports/hybridxfer-ucxx/src",
               "transports/hybridxfer-mooncake/src"]
    result = subprocess.run([sys.executable, "-m", "mypy", *targets], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
