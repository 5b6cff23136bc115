"""Turn :class:`~hybridxfer.descriptors.Descriptors` into NIXL's ``(address, length, device)`` descriptor arrays.

Why numpy all the way: NIXL accepts an ``N×3`` ``uint64`` array directly
(``get_xfer_descs``), which is ~30× cheaper than a list of tuples. Bounds are checked
here with :func:`hybridxfer.transport.check_bounds` against the region tables both sides
published, so an out-of-range row refuses the whole batch before any descriptor reaches
NIXL (one-sided READ and WRITE have no serving side that could refuse them later).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.errors import TransferError
from hybridxfer.transport import Descriptors, check_bounds

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
    """Local and remote ``N×3`` descriptor arrays for one READ or WRITE, plus their NIXL memory types."""

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
        raise TransferError(f"{side} regions of one transfer mix host and cuda memory")
    return "VRAM" if used_kinds == {"cuda"} else "DRAM"


def build_descriptors(batch: Descriptors, local: RegionTable, remote: RegionTable,
                      operation: Literal["READ", "WRITE"] = "READ") -> DescriptorPair:
    """Check every row against both tables and return NIXL descriptor arrays.

    A READ's source columns index the remote table and its destination ours; a WRITE's
    the other way round (our source, the peer's destination). One-sided transfers have
    no serving side that could refuse a row later, so the shared bounds check runs here,
    on both sides, before any descriptor reaches NIXL. Zero-length rows are dropped
    (NIXL rejects empty descriptors); they move nothing.
    """
    src_table, dst_table = (remote, local) if operation == "READ" else (local, remote)
    what = operation.lower()
    if len(src_table) == 0 or len(dst_table) == 0:
        side = "source" if len(src_table) == 0 else "destination"
        raise TransferError(f"{what} refused, no byte moved: the {side} side has no registered regions")
    check_bounds(batch, src_lengths=src_table.lengths, dst_lengths=dst_table.lengths, operation=what)
    keep = batch.length > 0
    d = batch if keep.all() else batch.take(keep)
    if operation == "READ":
        remote_region, remote_offset, local_region, local_offset = d.src_region, d.src_offset, d.dst_region, d.dst_offset
    else:
        local_region, local_offset, remote_region, remote_offset = d.src_region, d.src_offset, d.dst_region, d.dst_offset
    length = d.length
    rows = int(length.shape[0])
    local_descs = np.empty((rows, 3), dtype=np.uint64)
    local_descs[:, 0] = local.addresses[local_region] + local_offset
    local_descs[:, 1] = length
    local_descs[:, 2] = local.devices[local_region]
    remote_descs = np.empty((rows, 3), dtype=np.uint64)
    remote_descs[:, 0] = remote.addresses[remote_region] + remote_offset
    remote_descs[:, 1] = length
    remote_descs[:, 2] = remote.devices[remote_region]
    if rows == 0:
        return DescriptorPair(local_descs, remote_descs, "DRAM", "DRAM")
    return DescriptorPair(
        local_descs,
        remote_descs,
        _mem_type(local.kinds, local_region, "local"),
        _mem_type(remote.kinds, remote_region, "remote"),
    )
