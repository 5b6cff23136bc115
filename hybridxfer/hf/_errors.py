"""Errors of the Hugging Face importer."""

from __future__ import annotations

from collections.abc import Iterable

from hybridxfer.errors import HybridXferError

__all__ = ["UnsupportedModelError"]


class UnsupportedModelError(HybridXferError):
    """A ``config.json`` names an architecture (or lacks a field) we cannot derive a layout for.

    Raised instead of guessing: a layout with one wrong dimension moves wrong bytes silently.
    """

    def __init__(self, message: str, *, supported: Iterable[str] = ()) -> None:
        self.supported: tuple[str, ...] = tuple(sorted(supported))
        if self.supported:
            message += f" (supported architectures: {', '.join(self.supported)})"
        super().__init__(message)
