"""Commands over NIXL exit with their own status, and native logs stay off stdout.

The ``nixl-cu12`` wheel's bundled ``libnl-route`` crashes in its exit-time destructor
(see :mod:`hybridxfer.cli._exit`); ``bench --transports nixl ... --json`` wrote its JSON and
then exited 139. These run real processes over the real NIXL plugin.
"""

from __future__ import annotations

import json
import os
import subprocess

from tests.cli._serving import serving
from tests.cli.conftest import REPO, cli_argv, run_process

MODEL = "nemotron-3-nano-30b-a3b"
LOUD = {"UCX_LOG_LEVEL": "info", "NIXL_LOG_LEVEL": "INFO"}


def test_bench_over_nixl_exits_zero() -> None:
    """Was: the JSON, then a segfault (exit 139)."""
    result = run_process("bench", "--transports", "nixl", "--layouts", MODEL, "--pairs", "P1D1", "--tokens", "512",
                         "--repeats", "1", "--json", "--no-planner", "--concurrent", "none", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    [case] = json.loads(result.stdout)["cases"]
    assert case["transport"] == "nixl" and case["bytes"] > 0


def test_serve_and_pull_over_nixl_exit_zero_with_native_logs_on_stderr(tmp_path: object) -> None:
    """Both processes exit 0; with UCX and NIXL logging at INFO, their lines go to stderr and
    stdout holds only the commands' own output."""
    from pathlib import Path

    env = {**os.environ, **LOUD}
    with serving(Path(str(tmp_path)), MODEL, "--tp", "1", "--tokens", "128", "--transport", "nixl",
                 "--max-pulls", "1", env=env) as s:
        pull = subprocess.run(cli_argv("pull", MODEL, "--src-tp", "1", "--dst-tp", "2", "--rank", "0",
                                       "--connect", s.address, "--transport", "nixl", "--json"),
                              capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
        assert s.process.stdout is not None
        rest = s.process.stdout.read()  # --max-pulls 1: serve ends by itself
        serve_status = s.process.wait(timeout=60)
    assert pull.returncode == 0, pull.stderr[-2000:]
    assert serve_status == 0, s.stderr_text()[-2000:]
    [line] = pull.stdout.splitlines()
    assert json.loads(line)["verified"] is True
    assert [ln.split()[0] for ln in (*s.first_lines, *rest.splitlines())] == ["listening", "serving", "done"]
    for stderr in (pull.stderr, s.stderr_text()):  # the logs were there, on stderr
        assert "UCX  INFO" in stderr and "NIXL" in stderr
