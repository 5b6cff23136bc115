"""How a failed command reports: one ``error:`` line for people, one JSON object for programs.

Why both from one place: ``--json`` callers parse stdout and must learn *why* a command
failed in the same machine-readable form as its success — ``{"error": {"type", "message",
...}}`` with the exit status unchanged — while a person reads the single stderr line.
"""

from __future__ import annotations

from typing import Any

from hybridxfer.cli._usage import UsageError
from hybridxfer.errors import HybridXferError, LayoutError, TransferError

__all__ = ["error_document", "error_line"]


def error_line(exc: BaseException) -> str:
    """The one line shown after ``error:``; a single-problem LayoutError as ``file:line: path: reason``."""
    if isinstance(exc, LayoutError) and len(exc.problems) == 1:
        return str(exc.problems[0])
    if isinstance(exc, (HybridXferError, UsageError)):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"unexpected {type(exc).__name__}: {exc} (run with -vv to log the traceback)"


def error_document(exc: BaseException, status: int) -> dict[str, Any]:
    """``{"error": {"type", "message", "exit_status", ...}}``: ``problems`` for a LayoutError,
    ``request_id``/``source_rank``/``invalid_blocks`` for a TransferError."""
    error: dict[str, Any] = {"type": type(exc).__name__, "message": error_line(exc), "exit_status": status}
    if isinstance(exc, LayoutError):
        error["problems"] = [{"file": p.file, "line": p.line, "path": p.path, "message": p.message}
                             for p in exc.problems]
    if isinstance(exc, TransferError):
        error["request_id"] = exc.request_id
        error["source_rank"] = exc.source_rank
        error["invalid_blocks"] = {g: list(b) for g, b in exc.invalid_blocks.items()}
    return {"error": error}
