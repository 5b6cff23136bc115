"""Keep NIXL's Python logger off stdout.

Why: nixl_cu12 configures its ``nixl`` logger to print INFO lines to *stdout*, which
belongs to the application — our own peer processes (and hybridxfer's conformance
peers) speak a line protocol there. We move NIXL's handlers to stderr and, unless the
user chose a level with ``NIXL_LOG_LEVEL``, raise the level to WARNING.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["quiet_nixl_logging"]


def quiet_nixl_logging() -> None:
    logger = logging.getLogger("nixl")
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)
    if not os.environ.get("NIXL_LOG_LEVEL"):
        logger.setLevel(logging.WARNING)
