"""A child process whose stdout we read line by line (peers, ranks, benchmark workers).

Why one small class: the CLI demo, the conformance suite and the hybrid check all start
helper processes that announce themselves (``META …``, ``listening on …``) and report
progress as lines; reading them must not lose bytes between lines and must turn an early
exit into the caller's own error type.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence

import anyio
import anyio.abc

__all__ = ["ChildLines", "open_child"]


class ChildLines:
    """``process`` plus a buffered reader of its stdout lines."""

    def __init__(self, process: anyio.abc.Process, exited: Callable[[int | None], Exception]) -> None:
        self.process = process
        self._exited = exited
        self._buffer = b""

    async def line(self) -> str:
        """The next line (without its newline); raises ``exited(status)`` at end of output."""
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            try:
                self._buffer += await self.process.stdout.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                raise self._exited(self.process.returncode) from None
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def kill(self) -> None:
        """SIGKILL (no cleanup in the child), if it still runs."""
        if self.process.returncode is None:
            self.process.kill()


@contextlib.asynccontextmanager
async def open_child(argv: Sequence[str], exited: Callable[[int | None], Exception]) -> AsyncIterator[ChildLines]:
    """Start ``argv`` with piped stdin/stdout; on exit kill it (if needed) and reap it."""
    process = await anyio.open_process(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
    try:
        yield ChildLines(process, exited)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()
