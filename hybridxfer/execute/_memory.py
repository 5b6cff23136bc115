"""Turn what an engine holds (numpy arrays, torch tensors, raw pointers) into regions.

Why here and not in the transports: transports see only ``(address, length, kind)``; the
agent owns the Python object and keeps it alive for as long as the region is
registered. torch is imported only when a tensor is actually given, so a CPU-only or
torch-free deployment never pays for it.
"""

from __future__ import annotations

import sys

import numpy as np

from hybridxfer.errors import RegistrationError
from hybridxfer.transport import MemoryRegion

__all__ = ["RawMemory", "to_region"]

#: A raw ``(pointer, length_in_bytes)`` pair; the caller guarantees its lifetime.
RawMemory = tuple[int, int]


def _is_torch_tensor(memory: object) -> bool:
    torch = sys.modules.get("torch")
    if torch is None and type(memory).__module__.split(".")[0] != "torch":
        return False
    import torch as torch_module

    return isinstance(memory, torch_module.Tensor)


def to_region(name: str, memory: object) -> MemoryRegion:
    """Describe ``memory`` as a region named ``name`` (no copy).

    Accepts a contiguous writable numpy array, a ``bytearray``, a contiguous torch tensor
    (CPU or CUDA), or a raw ``(pointer, length)`` pair. Raises
    :class:`~hybridxfer.errors.RegistrationError` for memory a transport could not address
    as one flat writable range (strided, read-only, on an unsupported device), and
    ``TypeError`` for an object that is not memory at all.
    """
    if isinstance(memory, bytearray):
        memory = np.frombuffer(memory, dtype=np.uint8)
    if isinstance(memory, np.ndarray):
        if not (memory.flags.c_contiguous or memory.flags.f_contiguous):
            raise RegistrationError(f"region {name!r}: numpy array is not contiguous")
        if not memory.flags.writeable:
            raise RegistrationError(f"region {name!r}: numpy array is read-only")
        return MemoryRegion(name, int(memory.ctypes.data), int(memory.nbytes))
    if isinstance(memory, tuple) and len(memory) == 2 and all(isinstance(v, int) for v in memory):
        address, length = memory
        return MemoryRegion(name, address, length)
    if _is_torch_tensor(memory):
        tensor = memory
        if not tensor.is_contiguous():  # type: ignore[attr-defined]
            raise RegistrationError(f"region {name!r}: tensor is not contiguous")
        length = int(tensor.numel() * tensor.element_size())  # type: ignore[attr-defined]
        address = int(tensor.data_ptr())  # type: ignore[attr-defined]
        device = tensor.device  # type: ignore[attr-defined]
        if device.type == "cuda":
            return MemoryRegion(name, address, length, kind="cuda", device=int(device.index or 0))
        if device.type != "cpu":
            raise RegistrationError(f"region {name!r}: tensors on {device.type} are not supported")
        return MemoryRegion(name, address, length)
    raise TypeError(
        f"region {name!r}: expected a numpy array, bytearray, torch tensor or (pointer, length), "
        f"got {type(memory).__name__}"
    )
