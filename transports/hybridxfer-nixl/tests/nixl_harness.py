"""Drive a ``nixl_peer_proc.py`` child from the NIXL tests (unique module name on purpose:
every plugin's tests share one ``sys.path`` when pytest runs the whole repository)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PEER_SCRIPT = Path(__file__).with_name("nixl_peer_proc.py")


class PeerProcess:
    """A ``nixl_peer_proc.py`` child; line protocol on stdin/stdout (NIXL logs are skipped)."""

    def __init__(self, sizes: list[int]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER_SCRIPT), *map(str, sizes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(PEER_SCRIPT.parent)},
        )
        self.metadata = bytes.fromhex(self.expect("META")[1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, word: str) -> list[str]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"peer exited while we waited for {word}")
            parts = line.split()
            if parts and parts[0] == word:
                return parts

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("EXIT")
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


