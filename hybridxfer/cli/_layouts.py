"""How a LAYOUT argument names a layout: a file on disk, or the model id of a shipped one.

Why both: a user of an installed wheel has no ``layouts/`` directory beside them, yet
``hybridxfer demo`` and ``hybridxfer layout check nemotron-3-nano-30b-a3b`` must work; a
path that exists always wins, so a local file is never shadowed by a shipped layout.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_MODEL", "resolve_layout"]

#: The layout ``demo`` uses when none is given.
DEFAULT_MODEL = "nemotron-3-nano-30b-a3b"


def resolve_layout(argument: str | Path) -> Path:
    """The file for ``argument``: itself when it exists, else the shipped layout of that
    model id (a :class:`~hybridxfer.errors.LayoutError` listing the known ids if none)."""
    path = Path(argument)
    if path.exists() or path.suffix == ".toml" or len(path.parts) > 1:
        return path
    from hybridxfer.layout import builtin_layout_path

    return builtin_layout_path(str(argument))
