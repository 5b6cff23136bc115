"""Deterministic synthetic caches for a layout: what ``serve``, ``pull``, ``demo`` and the
conformance suite's hybrid check move and verify.

A P rank holds one request of ``tokens`` tokens, allocated contiguously from block 0
(:func:`~hybridxfer.plan.contiguous_block_tables`), with the oracle's logical values in
it and noise everywhere else; a D rank starts from other noise and, after the transfer,
must equal :func:`expected_destination` byte for byte — including bytes that must stay
untouched. Both sides derive everything from the layout and the token count, so a pull
on another host can verify without a copy of the data.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from hybridxfer.layout import Layout, RankLayout
from hybridxfer.layout._validate import is_token_spec
from hybridxfer.plan import contiguous_block_tables
from hybridxfer.testing.oracle import (
    RankSpec,
    Request,
    blank_destination,
    expected_memory,
    fill_source_memory,
)

__all__ = [
    "blocks_for",
    "destination_memory",
    "expected_destination",
    "mismatches",
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


def source_memory(r: RankLayout, tokens: int, *, seed: int = 1) -> dict[str, U8]:
    """P rank memory holding one request at the contiguous block tables."""
    return fill_source_memory(r.layout, _spec(r), Request(contiguous_block_tables(r, tokens), tokens), seed=seed)


def destination_memory(r: RankLayout, *, seed: int = 2) -> dict[str, U8]:
    """D rank memory before a transfer (noise that :func:`expected_destination` keeps)."""
    return blank_destination(r.layout, _spec(r), seed=seed)


def expected_destination(r: RankLayout, tokens: int, chunk_tokens: int, *, seed: int = 2) -> dict[str, U8]:
    """What D's memory must hold after receiving the request at its contiguous tables."""
    req = Request(contiguous_block_tables(r, tokens), tokens)
    return expected_memory(r.layout, _spec(r), req, chunk_tokens=chunk_tokens, seed=seed)


def mismatches(got: dict[str, U8], want: dict[str, U8]) -> list[str]:
    """Human-readable differences, one per region that differs (empty: byte-exact)."""
    out = []
    for name, expected in want.items():
        actual = got[name]
        if not np.array_equal(actual, expected):
            bad = np.flatnonzero(actual != expected)
            out.append(f"region {name!r}: {bad.size} of {expected.size} bytes differ (first at offset {int(bad[0])})")
    return out
