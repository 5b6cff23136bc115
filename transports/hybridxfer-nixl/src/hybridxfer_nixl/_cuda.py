"""Whether this process can register CUDA memory with NIXL ('VRAM'), probed once.

Why ctypes and not torch: the plugin must not pull torch in; the driver API answers
the only question that matters — is there at least one usable CUDA device.
"""

from __future__ import annotations

import ctypes
import functools

__all__ = ["cuda_available"]


@functools.cache
def cuda_available() -> bool:
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0:
        return False
    if libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False
    return count.value > 0
