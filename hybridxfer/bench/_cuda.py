"""``--memory cuda``: the precondition check for benchmarking torch CUDA tensors.

Why a check first: a CUDA run registers device tensors as they are (NIXL ``VRAM``); on a
machine without CUDA, with a host-only transport, or with a device index the machine does
not have, that must fail at once with a typed error that says why, not deep inside a P
process or as a native abort. The allocation, fill and verification primitives live in
:mod:`hybridxfer.bench._placement`.
"""

from __future__ import annotations

from collections.abc import Sequence

from hybridxfer.errors import UnsupportedOperationError

__all__ = ["CUDA_TRANSPORTS", "CudaUnavailableError", "require_cuda"]

#: Transports whose plugins register device memory (``"cuda"`` in ``capabilities.memory_kinds``
#: where libcuda works). tcp sends from host memory through sockets; hybridxfer-ucxx declares
#: host memory only (ucxx's Python API has no RMA to read device memory one-sidedly).
CUDA_TRANSPORTS = frozenset({"nixl"})


class CudaUnavailableError(UnsupportedOperationError):
    """``--memory cuda`` was asked for where it cannot run (no CUDA device, or a host-only transport)."""


def _declared_kinds(transport: str) -> frozenset[str]:
    from hybridxfer.transport.registry import open_transport

    return frozenset(open_transport(transport).capabilities.memory_kinds)


def require_cuda(transports: Sequence[str], device: int = 0) -> int:
    """The number of CUDA devices; raises :class:`CudaUnavailableError` naming what is missing.

    Checked in this order: every transport is one that can register device memory, torch
    sees CUDA, ``device`` exists, and each transport's plugin declares ``"cuda"`` here.
    """
    host_only = sorted(set(transports) - CUDA_TRANSPORTS)
    if host_only:
        raise CudaUnavailableError(f"--memory cuda: transports {host_only} move host memory only "
                                   f"(no 'cuda' in their capabilities.memory_kinds); "
                                   f"use --transports with {sorted(CUDA_TRANSPORTS)}")
    import torch

    if not torch.cuda.is_available():
        raise CudaUnavailableError(f"--memory cuda: torch {torch.__version__} sees no CUDA device "
                                   f"(torch.cuda.is_available() is False); run it on a GPU machine")
    count = int(torch.cuda.device_count())
    if not 0 <= device < count:
        raise CudaUnavailableError(f"--memory cuda: --cuda-device {device} (or LOCAL_RANK) is not one of "
                                   f"this machine's CUDA devices 0..{count - 1}")
    for transport in transports:
        kinds = _declared_kinds(transport)
        if "cuda" not in kinds:
            raise CudaUnavailableError(f"--memory cuda: transport {transport!r} declares memory_kinds "
                                       f"{sorted(kinds)} on this machine (its plugin found no usable libcuda)")
    return count
