"""Deterministic synthetic caches for a rank layout: what ``serve``, ``pull``, ``demo``,
the benchmarks and the conformance suite's hybrid check move and verify.

A P rank holds ``requests`` requests of ``tokens`` tokens side by side: request ``i``
sits at the contiguous block tables from block 0
(:func:`~hybridxfer.plan.contiguous_block_tables`) shifted by ``i`` times the blocks one
request needs, so no two requests share a block. The oracle's logical values fill the
requests' blocks, noise everything else; a D rank starts from other noise and, after the
transfer, must equal :func:`expected_destination` byte for byte — including bytes that
must stay untouched. Both sides derive everything from the layout and the token count,
so a pull on another host can verify without a copy of the data.

Several requests compose exactly: each writes only its own blocks over the same seeded
noise, so wherever request ``i``'s image differs from the bare noise, the bytes are its.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from hybridxfer.layout import Layout, RankLayout, is_token_spec
from hybridxfer.plan import contiguous_block_tables
from hybridxfer.synthetic._oracle import RankSpec, Request, blank_destination, expected_memory, fill_source_memory

__all__ = [
    "blocks_for",
    "destination_memory",
    "expected_destination",
    "mismatches",
    "request_tables",
    "source_memory",
]

U8 = npt.NDArray[np.uint8]


def _spec(r: RankLayout) -> RankSpec:
    return RankSpec(r.tp, r.rank, r.num_blocks, r.logical_block_tokens, r.kernel_block_tokens)


def blocks_for(layout: Layout, tp: int, tokens: int, *, requests: int = 1, rank: int = 0,
               logical_block_tokens: int | None = None, kernel_block_tokens: int | None = None) -> int:
    """Blocks a rank needs to hold ``requests`` requests of ``tokens`` tokens each."""
    probe = layout.for_rank(tp, rank, num_blocks=1, logical_block_tokens=logical_block_tokens,
                            kernel_block_tokens=kernel_block_tokens)
    per = math.ceil(tokens / probe.logical_block_tokens)
    return requests * sum(per if is_token_spec(layout.layer_spec(g.layers[0]).kind_name) else 1
                          for g in layout.groups)


def request_tables(r: RankLayout, tokens: int, index: int = 0) -> dict[str, list[int]]:
    """Block tables of request ``index`` (0-based) on rank layout ``r``."""
    base = contiguous_block_tables(r, tokens)
    per_request = sum(len(ids) for ids in base.values())
    return {group: [b + index * per_request for b in ids] for group, ids in base.items()}


def _compose(images: list[dict[str, U8]], noise: dict[str, U8]) -> dict[str, U8]:
    out = images[0]
    for image in images[1:]:
        for name, arr in image.items():
            changed = arr != noise[name]
            out[name][changed] = arr[changed]
    return out


def source_memory(r: RankLayout, tokens: int, requests: int = 1, *, seed: int = 1) -> dict[str, U8]:
    """P rank memory holding ``requests`` requests of ``tokens`` tokens (module docstring)."""
    spec = _spec(r)
    images = [fill_source_memory(r.layout, spec, Request(request_tables(r, tokens, i), tokens), seed=seed)
              for i in range(requests)]
    if requests == 1:
        return images[0]
    return _compose(images, blank_destination(r.layout, spec, seed=seed))


def destination_memory(r: RankLayout, *, seed: int = 2) -> dict[str, U8]:
    """D rank memory before a transfer (noise that :func:`expected_destination` keeps)."""
    return blank_destination(r.layout, _spec(r), seed=seed)


def expected_destination(r: RankLayout, tokens: int, chunk_tokens: int, requests: int = 1, *,
                         seed: int = 2) -> dict[str, U8]:
    """What D's memory must hold after receiving all ``requests`` requests."""
    spec = _spec(r)
    images = [expected_memory(r.layout, spec, Request(request_tables(r, tokens, i), tokens),
                              chunk_tokens=chunk_tokens, seed=seed) for i in range(requests)]
    if requests == 1:
        return images[0]
    return _compose(images, blank_destination(r.layout, spec, seed=seed))


def mismatches(got: dict[str, U8], want: dict[str, U8]) -> list[str]:
    """Human-readable differences, one per region that differs (empty: byte-exact)."""
    out = []
    for name, expected in want.items():
        actual = got[name]
        if not np.array_equal(actual, expected):
            bad = np.flatnonzero(actual != expected)
            out.append(f"region {name!r}: {bad.size} of {expected.size} bytes differ (first at offset {int(bad[0])})")
    return out
