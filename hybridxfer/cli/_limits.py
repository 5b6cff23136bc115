"""Bounds the CLI checks before it allocates: token counts, and memory against what is free.

Why before: ``serve``, ``pull`` and ``demo`` fill whole caches with synthetic data, and a
request size typed one digit too long used to be noticed by the kernel's OOM killer, not
by us. Every size a command is about to allocate is compared with the memory the machine
(or its cgroup) has available, and refused with both numbers if it does not fit.
"""

from __future__ import annotations

import os
from pathlib import Path

from hybridxfer.errors import HybridXferError

__all__ = ["InsufficientMemoryError", "MAX_DEMO_RANKS", "MAX_REQUESTS", "MAX_TOKENS", "MAX_TP",
           "available_memory", "check_memory", "check_tp", "format_bytes", "working_set"]

#: The largest request the CLI plans or fills (16 Mi tokens: beyond any shipped model's context).
MAX_TOKENS = 1 << 24
#: The most requests one ``serve``/``pull``/``demo`` holds at once.
MAX_REQUESTS = 4096
#: The largest TP size a command resolves (each rank is resolved and planned separately).
MAX_TP = 1024
#: The most P + D ranks ``demo`` starts (one process each, on this machine).
MAX_DEMO_RANKS = 64


class InsufficientMemoryError(HybridXferError):
    """A command would need more memory than this machine has available (nothing allocated)."""


def check_tp(**sizes: int) -> None:
    """Raise ``UsageError`` unless every TP size lies in [1, MAX_TP]; keywords name the options."""
    from hybridxfer.cli._usage import UsageError

    for name, tp in sizes.items():
        if not 1 <= tp <= MAX_TP:
            raise UsageError(f"--{name.replace('_', '-')} must lie in [1, {MAX_TP}], got {tp}")


def format_bytes(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,} B"


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 memory limit (containers), if one is set."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((base / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def available_memory() -> int:
    """Bytes this process can still allocate without swapping: the smaller of the machine's
    ``MemAvailable`` and the room under a cgroup limit."""
    found = [n for n in (_meminfo_available(), _cgroup_available()) if n is not None]
    if not found:
        try:
            found = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (OSError, ValueError):
            return 1 << 62  # unknown platform: do not refuse what we cannot measure
    return min(found)


def working_set(registered_bytes: int, requests: int) -> int:
    """What ``serve``/``pull`` hold for ``registered_bytes`` of cache: the registered memory,
    one synthetic image per request and one background image (the oracle's composition)."""
    return registered_bytes * (requests + 2)


def check_memory(need: int, what: str, *, available: int | None = None) -> None:
    """Raise :class:`InsufficientMemoryError` naming ``what``, the need and what is available."""
    free = available_memory() if available is None else available
    if need > free:
        raise InsufficientMemoryError(
            f"{what} needs about {format_bytes(need)} of memory; {format_bytes(free)} is available "
            "(use fewer --tokens or --requests)")
