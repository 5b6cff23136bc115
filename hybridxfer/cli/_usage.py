"""``UsageError``: a command-line mistake found after parsing.

In a module of its own because every command module raises it and the package's
``main`` catches it: the commands import it from here, not from the package that imports
them, so the command line has no import cycle.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A command-line mistake found after parsing (exit status 2, like argparse's own)."""
