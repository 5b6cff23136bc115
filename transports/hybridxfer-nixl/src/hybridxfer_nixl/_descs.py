"""Turn a :class:`ReadBatch` into NIXL's ``(address, length, device)`` descriptor arrays.

Why numpy all the way: NIXL accepts an ``N×3`` ``uint64`` array directly
(``get_xfer_descs``), which is ~30× cheaper than a list of tuples. Bounds are checked
here, vectorised, against the region tables both sides published, so an out-of-range
row refuses the whole batch before any descriptor reaches NIXL (one-sided READ has no
serving side that could refuse it later).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.errors import TransferError
from hybridxfer.transport import ReadBatch

from hybridxfer_nixl._envelope import RegionEntry

__all__ = ["DescriptorPair", "RegionTable", "build_descriptors"]

U64Array = npt.NDArray[np.uint64]
I64Array = npt.NDArray[np.int64]


@attrs.frozen(eq=False)
class RegionTable:
    """Columnar view of a region list, so lookups by index are one numpy gather."""

    names: tuple[str, ...]
    addresses: I64Array
    lengths: I64Array
    devices: I64Array
    kinds: tuple[str, ...]

    @classmethod
    def from_entries(cls, entries: Sequence[RegionEntry]) -> RegionTable:
        return cls(
            names=tuple(e.name for e in entries),
            addresses=np.array([e.address for e in entries], dtype=np.int64),
            lengths=np.array([e.length for e in entries], dtype=np.int64),
            devices=np.array([e.device for e in entries], dtype=np.int64),
            kinds=tuple(e.kind for e in entries),
        )

    def __len__(self) -> int:
        return len(self.names)


@attrs.frozen(eq=False)
class DescriptorPair:
    """Local and remote ``N×3`` descriptor arrays for one READ, plus its NIXL memory types."""

    local: U64Array
    remote: U64Array
    local_mem: str
    remote_mem: str

    def __len__(self) -> int:
        return int(self.local.shape[0])


def _mem_type(kinds: tuple[str, ...], used: I64Array, side: str) -> str:
    used_kinds = {kinds[i] for i in np.unique(used).tolist()}
    if len(used_kinds) > 1:
        # One NIXL dlist has one memory type; the executor groups by region kind already.
        raise TransferError(f"{side} regions of one read mix host and cuda memory")
    return "VRAM" if used_kinds == {"cuda"} else "DRAM"


def _check(
    region: I64Array, offset: I64Array, length: I64Array, table: RegionTable, side: str
) -> None:
    if len(table) == 0:
        raise TransferError(f"read refused: the {side} side has no registered regions")
    bad_region = (region < 0) | (region >= len(table))
    if bad_region.any():
        row = int(np.flatnonzero(bad_region)[0])
        raise TransferError(
            f"read refused: row {row} names {side} region {int(region[row])}, "
            f"only {len(table)} registered; no byte moved"
        )
    sizes = table.lengths[region]
    # Never form offset + length: hostile values could overflow int64.
    bad = (offset < 0) | (length < 0) | (length > sizes) | (offset > sizes - np.minimum(length, sizes))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        name = table.names[int(region[row])]
        raise TransferError(
            f"read refused: row {row} [{int(offset[row])}, +{int(length[row])}) lies outside "
            f"{side} region {name!r} ({int(table.lengths[region[row]])} bytes); no byte moved"
        )


def build_descriptors(batch: ReadBatch, local: RegionTable, remote: RegionTable) -> DescriptorPair:
    """Check every row against both tables and return NIXL descriptor arrays.

    Zero-length rows are dropped (NIXL rejects empty descriptors); they move nothing.
    """
    cols = [
        np.asarray(c, dtype=np.int64)
        for c in (batch.src_region, batch.src_offset, batch.dst_region, batch.dst_offset, batch.length)
    ]
    n = cols[4].shape[0]
    if any(c.shape != (n,) for c in cols):
        raise TransferError("read refused: ReadBatch columns differ in length")
    src_region, src_offset, dst_region, dst_offset, length = cols
    _check(src_region, src_offset, length, remote, "source")
    _check(dst_region, dst_offset, length, local, "destination")
    keep = length > 0
    if not keep.all():
        src_region, src_offset = src_region[keep], src_offset[keep]
        dst_region, dst_offset, length = dst_region[keep], dst_offset[keep], length[keep]
    rows = int(length.shape[0])
    local_descs = np.empty((rows, 3), dtype=np.uint64)
    local_descs[:, 0] = local.addresses[dst_region] + dst_offset
    local_descs[:, 1] = length
    local_descs[:, 2] = local.devices[dst_region]
    remote_descs = np.empty((rows, 3), dtype=np.uint64)
    remote_descs[:, 0] = remote.addresses[src_region] + src_offset
    remote_descs[:, 1] = length
    remote_descs[:, 2] = remote.devices[src_region]
    if rows == 0:
        return DescriptorPair(local_descs, remote_descs, "DRAM", "DRAM")
    return DescriptorPair(
        local_descs,
        remote_descs,
        _mem_type(local.kinds, dst_region, "destination"),
        _mem_type(remote.kinds, src_region, "source"),
    )
