"""``--memory cuda``: the precondition check for benchmarking torch CUDA tensors.

Why a check first: a CUDA run registers device tensors as they are (NIXL ``VRAM``, UCXX
device buffers); on a machine without CUDA that must fail at once with a typed error that
says why, not deep inside a P process or as a native abort.
"""

from __future__ import annotations

from collections.abc import Sequence

from hybridxfer.errors import UnsupportedOperationError

__all__ = ["CUDA_TRANSPORTS", "CudaUnavailableError", "require_cuda"]

#: Transports whose plugins register device memory.
CUDA_TRANSPORTS = frozenset({"nixl", "ucxx"})


class CudaUnavailableError(UnsupportedOperationError):
    """``--memory cuda`` was asked for where it cannot run (no CUDA device, or a host-only transport)."""


def require_cuda(transports: Sequence[str]) -> int:
    """The number of CUDA devices; raises :class:`CudaUnavailableError` naming what is missing."""
    host_only = sorted(set(transports) - CUDA_TRANSPORTS)
    if host_only:
        raise CudaUnavailableError(f"--memory cuda: transports {host_only} move host memory only; "
                                   f"use --transports with {sorted(CUDA_TRANSPORTS)}")
    import torch

    if not torch.cuda.is_available():
        raise CudaUnavailableError(f"--memory cuda: torch {torch.__version__} sees no CUDA device "
                                   f"(torch.cuda.is_available() is False); run it on a GPU machine")
    return int(torch.cuda.device_count())
