"""Keep stdout for the command's output: native libraries' writes to fd 1 go to stderr.

Why at the file-descriptor level: UCX (inside NIXL and UCXX) prints its log lines with C
stdio to file descriptor 1, and NIXL's Python logger is configured, when it is imported,
with a handler on ``sys.stdout``. Both would land in ``hybridxfer pull --json`` output or
in the ``EV`` line protocol ``demo`` reads from its children. So the ``hybridxfer``
process moves its real stdout to a private descriptor, which ``sys.stdout`` writes to,
and points descriptor 1 at stderr; and it loads the transports a command names with
``sys.stdout`` pointing at stderr, so their import-time handlers bind to stderr too.
Only the process entry point does this (``main()`` without arguments); a caller of
``main(argv)`` in its own process keeps its streams.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable

__all__ = ["preload_transports", "route_native_output_to_stderr"]


def route_native_output_to_stderr() -> None:
    """Descriptor 1 becomes a copy of 2; ``sys.stdout`` keeps writing to the original stdout."""
    try:
        sys.stdout.flush()
        real = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no real descriptors (embedded, closed): leave as is
        return
    try:
        os.dup2(2, 1)
    except OSError:  # no stderr to send native output to: keep descriptor 1 as it was
        os.close(real)
        return
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    errors = getattr(sys.stdout, "errors", None) or "strict"
    sys.stdout = os.fdopen(real, "w", buffering=1, encoding=encoding, errors=errors)


def preload_transports(names: Iterable[str]) -> None:
    """Import the named transports' plugins while ``sys.stdout`` is stderr (unknown names are
    left for the command to report)."""
    from hybridxfer.errors import HybridXferError
    from hybridxfer.transport.registry import available_transports, get_transport_factory

    known = set(available_transports())
    for name in names:
        if name in known and name not in ("tcp", "loopback"):
            with contextlib.redirect_stdout(sys.stderr):
                try:
                    get_transport_factory(name)
                except (HybridXferError, ImportError):
                    pass  # the command itself raises it, as one error line
