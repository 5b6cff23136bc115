"""Checking an engine's cache tensors against the layout before anything is registered.

Why check here: a layout is address-free, so nothing downstream can tell that the engine
handed us a tensor that is too small, or named a region the layout does not have. A
transfer into such memory would be refused at best and silently wrong at worst. We report
every mismatch at once, as layout problems, before the first byte is registered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, Union, runtime_checkable

import numpy as np

from hybridxfer.errors import LayoutError, LayoutProblem
from hybridxfer.execute import RawMemory
from hybridxfer.layout import RankLayout

__all__ = ["CacheMemory", "cache_nbytes", "check_caches"]


@runtime_checkable
class _TensorLike(Protocol):
    """The part of ``torch.Tensor`` we need to size it (torch is never imported here)."""

    def numel(self) -> int: ...

    def element_size(self) -> int: ...

    def data_ptr(self) -> int: ...


#: What an engine may register per region: a numpy array, a bytearray, a torch tensor
#: (CPU or CUDA, contiguous) or a raw ``(pointer, length)`` pair it keeps alive.
CacheMemory = Union[np.ndarray, bytearray, _TensorLike, RawMemory]


def cache_nbytes(memory: object) -> int:
    """Bytes a cache object spans. Raises ``TypeError`` for anything we cannot register."""
    if isinstance(memory, np.ndarray):
        return int(memory.nbytes)
    if isinstance(memory, bytearray):
        return len(memory)
    if isinstance(memory, tuple) and len(memory) == 2 and all(isinstance(v, int) for v in memory):
        return int(memory[1])
    if isinstance(memory, _TensorLike):
        return int(memory.numel()) * int(memory.element_size())
    raise TypeError(f"expected a numpy array, bytearray, torch tensor or (pointer, length), "
                    f"got {type(memory).__name__}")


def check_caches(layout: RankLayout, caches: Mapping[str, object]) -> None:
    """Raise :class:`LayoutError` listing every region that is missing, unknown or too small."""
    problems: list[LayoutProblem] = []
    for name in caches:
        if name not in layout.region_names:
            problems.append(LayoutProblem(
                f"no region {name!r} in layout {layout.layout.model!r} "
                f"(regions: {', '.join(layout.region_names)})", path=f"caches.{name}"))
    for name, size in zip(layout.region_names, layout.region_sizes, strict=True):
        if name not in caches:
            problems.append(LayoutProblem(f"region {name!r} ({size} bytes) has no cache tensor",
                                          path=f"caches.{name}"))
            continue
        try:
            have = cache_nbytes(caches[name])
        except TypeError as exc:
            problems.append(LayoutProblem(str(exc), path=f"caches.{name}"))
            continue
        if have < size:
            problems.append(LayoutProblem(
                f"cache tensor has {have} bytes; the layout needs {size} "
                f"({layout.num_blocks} blocks at TP {layout.tp}, rank {layout.rank})", path=f"caches.{name}"))
    if problems:
        raise LayoutError(problems)
