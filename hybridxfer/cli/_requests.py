"""Several synthetic requests side by side in one rank's blocks (``--requests K``).

:mod:`hybridxfer.testing.synthetic` holds one request at the contiguous tables from
block 0. Request ``i`` here is the same request shifted by ``i`` times the blocks one
request needs, so the K requests never share a block; P's memory and D's expected memory
are the oracle's single-request images composed region by region. Composition is exact
because each request only writes its own blocks over the same seeded noise: wherever
request ``i``'s image differs from the bare noise, those bytes are request ``i``'s.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from hybridxfer.layout import RankLayout
from hybridxfer.plan import contiguous_block_tables
from hybridxfer.testing.oracle import RankSpec, Request, blank_destination, expected_memory, fill_source_memory

__all__ = ["expected_destination", "request_tables", "source_memory"]

U8 = npt.NDArray[np.uint8]


def request_tables(r: RankLayout, tokens: int, index: int) -> dict[str, list[int]]:
    """Block tables of request ``index`` (0-based) on rank layout ``r``."""
    base = contiguous_block_tables(r, tokens)
    per_request = sum(len(ids) for ids in base.values())
    return {group: [b + index * per_request for b in ids] for group, ids in base.items()}


def _spec(r: RankLayout) -> RankSpec:
    return RankSpec(r.tp, r.rank, r.num_blocks, r.logical_block_tokens, r.kernel_block_tokens)


def _compose(images: list[dict[str, U8]], noise: dict[str, U8]) -> dict[str, U8]:
    out = images[0]
    for image in images[1:]:
        for name, arr in image.items():
            changed = arr != noise[name]
            out[name][changed] = arr[changed]
    return out


def source_memory(r: RankLayout, tokens: int, requests: int = 1, *, seed: int = 1) -> dict[str, U8]:
    """P memory holding ``requests`` requests of ``tokens`` tokens (see module docstring)."""
    spec = _spec(r)
    images = [fill_source_memory(r.layout, spec, Request(request_tables(r, tokens, i), tokens), seed=seed)
              for i in range(requests)]
    if requests == 1:
        return images[0]
    return _compose(images, blank_destination(r.layout, spec, seed=seed))


def expected_destination(r: RankLayout, tokens: int, chunk_tokens: int, requests: int = 1, *,
                         seed: int = 2) -> dict[str, U8]:
    """What D memory must hold after receiving all ``requests`` requests."""
    spec = _spec(r)
    images = [expected_memory(r.layout, spec, Request(request_tables(r, tokens, i), tokens),
                              chunk_tokens=chunk_tokens, seed=seed) for i in range(requests)]
    if requests == 1:
        return images[0]
    return _compose(images, blank_destination(r.layout, spec, seed=seed))
