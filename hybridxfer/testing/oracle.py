"""The reference executor: run a plan with plain slice copies.

It is what a transport must agree with byte for byte. The memory it copies between comes
from the byte oracle, :mod:`hybridxfer.synthetic` (P's filled images, D's expected ones),
which shares no code with the planner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from hybridxfer.plan import TransferPlan

__all__ = ["execute_memcpy"]

U8 = npt.NDArray[np.uint8]


def execute_memcpy(plan: object, src_mems: Sequence[Mapping[str, U8]], dst_mem: Mapping[str, U8]) -> None:
    """Run a :class:`~hybridxfer.plan.TransferPlan` with plain slice copies (the reference executor)."""
    assert isinstance(plan, TransferPlan)
    for read in plan.reads:
        mem = src_mems[read.source_rank]  # a pipeline stage holds only its stage's regions
        src = {i: mem[n] for i, n in enumerate(plan.src_region_names) if n in mem}
        dst = [dst_mem[n] for n in plan.dst_region_names]
        for sr, so, dr, do, ln in zip(read.src_region.tolist(), read.src_offset.tolist(),
                                      read.dst_region.tolist(), read.dst_offset.tolist(),
                                      read.length.tolist(), strict=True):
            dst[dr][do:do + ln] = src[sr][so:so + ln]
