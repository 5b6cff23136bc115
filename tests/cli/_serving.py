"""A ``hybridxfer serve`` process for tests: started, its first lines read, stopped."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

from tests.cli.conftest import REPO, cli_argv


@attrs.frozen
class Served:
    """A running ``serve``: its metadata address, the lines it printed first, its stderr file."""

    address: str
    first_lines: tuple[str, ...]
    process: subprocess.Popen[str]
    stderr: Path

    def stderr_text(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")


@contextmanager
def serving(tmp: Path, *argv: str, verbose: bool = False, env: dict[str, str] | None = None) -> Iterator[Served]:
    """``serve ARGV --listen 127.0.0.1:0`` until its ``serving`` line; terminated on exit."""
    err = tmp / f"serve-{len(list(tmp.glob('serve-*')))}.err"
    with err.open("w", encoding="utf-8") as err_file:
        process = subprocess.Popen(cli_argv(*(["-v"] if verbose else []), "serve", *argv, "--listen", "127.0.0.1:0"),
                                   stdout=subprocess.PIPE, stderr=err_file, text=True, cwd=REPO, env=env)
    try:
        assert process.stdout is not None
        lines: list[str] = []
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("serving "):
                break
        assert lines and lines[-1].startswith("serving "), f"serve exited early: {lines} {err.read_text()}"
        assert lines[0].startswith("listening on ")
        yield Served(lines[0].removeprefix("listening on "), tuple(lines), process, err)
    finally:
        process.terminate()
        process.wait(timeout=60)
        if process.stdout is not None:
            process.stdout.close()
