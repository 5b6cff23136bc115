"""Byte views of registered host memory and the row checks both sides apply."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["byte_view", "range_problem"]

I64Array = npt.NDArray[np.int64]


def byte_view(address: int, length: int) -> npt.NDArray[np.uint8]:
    """A writable ``uint8`` view of raw memory (no copy; the owner keeps it alive)."""
    if length == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.ctypeslib.as_array((ctypes.c_uint8 * length).from_address(address))


def range_problem(region: I64Array, offset: I64Array, length: I64Array, sizes: Sequence[int], side: str) -> str | None:
    """Why some row is outside its region (``None`` when all rows are inside).

    Never forms ``offset + length``, which hostile values could overflow.
    """
    if not len(length):
        return None
    if not (len(region) == len(offset) == len(length)):
        return "descriptor columns differ in length"
    n = len(sizes)
    bad = (region < 0) | (region >= n)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        return f"row {row}: {side} region {int(region[row])} not registered ({n} regions)"
    size = np.asarray(sizes, dtype=np.int64)[region]
    bad = (offset < 0) | (length < 0) | (length > size) | (offset > size - np.minimum(length, size))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        return (
            f"row {row}: [{int(offset[row])}, +{int(length[row])}) outside {side} region "
            f"{int(region[row])} of {int(size[row])} bytes"
        )
    return None
