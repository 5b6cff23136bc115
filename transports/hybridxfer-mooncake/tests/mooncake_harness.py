"""Drive a ``mooncake_peer_proc.py`` child (a unique module name on purpose: every
plugin's tests share one ``sys.path`` when pytest runs the whole repository)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PEER_SCRIPT = Path(__file__).with_name("mooncake_peer_proc.py")


class PeerProcess:
    """A peer child; ``mode`` is ``plugin`` (MooncakeTransport) or ``raw`` (bare engine)."""

    def __init__(self, mode: str, size: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER_SCRIPT), mode, str(size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONPATH": str(PEER_SCRIPT.parent), "MC_TCP_BIND_ADDRESS": "127.0.0.1"},
        )
        words = self.expect("META" if mode == "plugin" else "RAW")
        self.metadata = bytes.fromhex(words[1]) if mode == "plugin" else b""
        self.target = words[1] if mode == "raw" else ""
        self.address = int(words[2]) if mode == "raw" else 0

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

    def holds(self, offset: int, length: int, seed: int) -> bool:
        """Whether the peer's memory at ``offset`` equals ``pattern(length, seed)``."""
        self.send(f"CHECK {offset} {length} {seed}")
        return self.expect("CHECK")[1] == "1"

    def stop(self) -> None:
        """SIGSTOP, and return only once every thread of the peer is stopped (the signal
        is delivered asynchronously; a thread still running could answer one more call)."""
        os.kill(self.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not self._all_threads_stopped():
            if time.monotonic() > deadline:
                raise RuntimeError(f"peer {self.pid} did not stop")
            time.sleep(0.005)

    def _all_threads_stopped(self) -> bool:
        states = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue  # the thread ended
            states.append(stat.rsplit(")", 1)[1].split()[0])
        return bool(states) and all(state in ("T", "t") for state in states)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.resume()
            try:
                self.send("EXIT")
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
