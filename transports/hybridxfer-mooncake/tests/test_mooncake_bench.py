"""``hybridxfer bench --transport mooncake`` end to end: the plugin beside the raw engine.

The CI smoke run of the benchmark (tiny sizes, separate P processes, every byte of the
largest request verified), restricted to this transport. It asserts what was moved and
against which ceiling, never how fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess


def test_bench_quick_row_beside_the_raw_engine() -> None:
    exe = shutil.which("hybridxfer")
    assert exe is not None, "the hybridxfer console script is not installed"
    result = subprocess.run([exe, "bench", "--quick", "--transports", "mooncake", "--no-planner", "--json"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MC_TCP_BIND_ADDRESS": "127.0.0.1"})
    assert result.returncode == 0, result.stderr[-3000:]
    cases = json.loads(result.stdout)["cases"]
    assert cases and {c["transport"] for c in cases} == {"mooncake"}
    assert {c["ceiling"] for c in cases} == {"raw-mooncake"}
    assert any(c["verified"] for c in cases)
    assert all(c["duplicate_bytes"] == 0 and c["bytes"] > 0 for c in cases)
