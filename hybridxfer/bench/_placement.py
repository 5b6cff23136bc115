"""Where one benchmark process keeps its cache regions: host numpy arrays or torch tensors on a device.

Why one value for this: P, D's transfer cases and the streaming cases allocate, fill,
verify and time in the same way whatever the memory is; only these few primitives differ
between host and device memory, so every other line of the harness is shared with the host
runs and covered by their tests. Tensors are registered as they are (``Agent.register``
takes a CUDA tensor's ``data_ptr`` as a ``"cuda"`` region; no host staging); the oracle's
host bytes reach the device through one host tensor copied over, and come back through
``.cpu()``. Device work is asynchronous, so every primitive that launches a copy ends with
:meth:`Placement.synchronize` before anyone reads a clock.

A region here is a 1-D ``uint8`` numpy array (host) or a 1-D ``torch.uint8`` tensor
(``device`` set). ``torch`` is imported only for a tensor placement.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.descriptors import Descriptors

if TYPE_CHECKING:
    import torch

__all__ = ["HOST", "Placement", "Region", "allocate_tensors", "cuda_placements", "default_cuda_device"]

U8 = npt.NDArray[np.uint8]
#: A numpy ``uint8`` array (host placement) or a 1-D ``torch.uint8`` tensor (tensor placement).
Region = Any


def allocate_tensors(sizes: Sequence[int], device: torch.device) -> list[torch.Tensor]:
    """One zeroed, contiguous 1-D ``uint8`` tensor of ``size`` bytes per region, on ``device``.

    Zeroed (not ``empty``) so every page is touched before anything is timed, as the host
    path's ``fill`` does.
    """
    import torch

    return [torch.zeros(int(size), dtype=torch.uint8, device=device) for size in sizes]


def default_cuda_device(environ: Mapping[str, str] = os.environ) -> int:
    """``LOCAL_RANK`` as launchers (torchrun, mpirun wrappers) set it; 0 without one."""
    value = environ.get("LOCAL_RANK", "0")
    try:
        device = int(value)
    except ValueError:
        raise ValueError(f"LOCAL_RANK={value!r} is not a device index") from None
    if device < 0:
        raise ValueError(f"LOCAL_RANK={value!r} is not a device index")
    return device


def cuda_placements(base: int, src_tp: int, device_count: int) -> tuple[Placement, tuple[Placement, ...]]:
    """(D's placement, each P rank's), starting at device ``base``.

    P rank ``r`` takes device ``base + r`` and D the next one (all modulo ``device_count``):
    on a multi-GPU box P and D then sit on distinct GPUs (NVLink / cuda_ipc between them);
    with one GPU everything shares device ``base``.
    """
    if device_count < 1:
        raise ValueError(f"no CUDA device to place on (device_count={device_count})")
    if not 0 <= base < device_count:
        raise ValueError(f"--cuda-device {base}: this machine has CUDA devices 0..{device_count - 1}")
    prefill = tuple(Placement(f"cuda:{(base + r) % device_count}") for r in range(src_tp))
    return Placement(f"cuda:{(base + src_tp) % device_count}"), prefill


@attrs.frozen
class Placement:
    """Host numpy memory (``device`` None) or torch tensors on ``device`` (``"cuda:0"``, ``"cpu"``)."""

    device: str | None = None

    @property
    def is_cuda(self) -> bool:
        return self.device is not None and self.device.startswith("cuda")

    @property
    def device_index(self) -> int:
        """The device id NIXL descriptors carry: the CUDA ordinal, 0 for host memory."""
        if self.device is None or not self.is_cuda:
            return 0
        _, _, index = self.device.partition(":")
        return int(index or 0)

    @property
    def nixl_memory(self) -> str:
        """NIXL's memory type for these regions."""
        return "VRAM" if self.is_cuda else "DRAM"

    def torch_device(self) -> torch.device:
        import torch

        if self.device is None:
            raise ValueError("a host placement holds numpy arrays, not tensors")
        return torch.device(self.device)

    def allocate(self, sizes: Sequence[int]) -> list[Region]:
        if self.device is None:
            return [np.zeros(int(size), dtype=np.uint8) for size in sizes]
        if self.is_cuda:
            import torch

            # the process's current device too: UCX's cuda transports work in the current context
            torch.cuda.set_device(self.torch_device())
        regions = allocate_tensors(sizes, self.torch_device())
        self.synchronize()
        return regions

    def adopt(self, host: Sequence[U8]) -> list[Region]:
        """Regions holding ``host``'s bytes: the arrays themselves, or device copies of them."""
        if self.device is None:
            return list(host)
        regions = self.allocate([h.nbytes for h in host])
        self.load(regions, host)
        return regions

    def load(self, regions: Sequence[Region], host: Sequence[U8]) -> None:
        """Overwrite every region with the matching host array (same sizes)."""
        if self.device is None:
            for region, h in zip(regions, host, strict=True):
                np.copyto(region, h)
            return
        import torch

        for region, h in zip(regions, host, strict=True):
            region.copy_(torch.from_numpy(np.ascontiguousarray(h)))
        self.synchronize()

    def fill(self, regions: Sequence[Region], values: Sequence[int]) -> None:
        for region, value in zip(regions, values, strict=True):
            if self.device is None:
                region.fill(value)
            else:
                region.fill_(value)
        self.synchronize()

    def to_host(self, regions: Sequence[Region]) -> list[U8]:
        """Host copies (tensors, through ``.cpu()``) or the arrays themselves (host)."""
        if self.device is None:
            return list(regions)
        self.synchronize()
        return [np.asarray(region.cpu().numpy(), dtype=np.uint8) for region in regions]

    def host_views(self, regions: Sequence[Region]) -> list[U8]:
        """numpy views of the same memory, for the raw host-only paths (socket, ucxx, mooncake)."""
        if self.is_cuda:
            raise ValueError(f"regions on {self.device} have no host view; raw host paths cannot read them")
        return [region if self.device is None else region.numpy() for region in regions]

    def address(self, region: Region) -> int:
        return int(region.ctypes.data) if self.device is None else int(region.data_ptr())

    def rows(self, regions: Sequence[Region]) -> npt.NDArray[np.uint64]:
        """NIXL registration rows: (address, length, device id) per region."""
        return np.array([[self.address(r), int(r.nbytes), self.device_index] for r in regions],
                        dtype=np.uint64).reshape(-1, 3)

    def scratch(self, nbytes: int) -> Region:
        """A contiguous source for the memcpy reference, in the same memory as the regions."""
        if self.device is None:
            return np.ones(nbytes, dtype=np.uint8)
        import torch

        out = torch.ones(nbytes, dtype=torch.uint8, device=self.torch_device())
        self.synchronize()
        return out

    def memcpy_once(self, scratch: Region, reads: Sequence[Descriptors], regions: Sequence[Region]) -> None:
        """Copy the destination ranges of ``reads`` from one contiguous source (device copies are waited for)."""
        pos = 0
        for rd in reads:
            for r, o, n in zip(rd.dst_region.tolist(), rd.dst_offset.tolist(), rd.length.tolist(), strict=True):
                if self.device is None:
                    np.copyto(regions[r][o:o + n], scratch[pos:pos + n])
                else:
                    regions[r][o:o + n].copy_(scratch[pos:pos + n])
                pos += n
        self.synchronize()

    def synchronize(self) -> None:
        """Wait for this device's queued work (a no-op off CUDA)."""
        if self.is_cuda:
            import torch

            torch.cuda.synchronize(self.torch_device())


#: numpy arrays in host memory: the default, and what every host run uses.
HOST = Placement()
