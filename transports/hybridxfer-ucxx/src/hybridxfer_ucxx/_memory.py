"""Byte views of registered host memory (bounds checks: :func:`hybridxfer.transport.check_bounds`)."""

from __future__ import annotations

import ctypes

import numpy as np
import numpy.typing as npt

__all__ = ["byte_view"]


def byte_view(address: int, length: int) -> npt.NDArray[np.uint8]:
    """A writable ``uint8`` view of raw memory (no copy; the owner keeps it alive)."""
    if length == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.ctypeslib.as_array((ctypes.c_uint8 * length).from_address(address))
