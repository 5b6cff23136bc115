"""A prefill in progress, restated from the byte oracle, and a D rank that receives a stream.

P's memory mid-prefill is modelled per layer from :mod:`hybridxfer.synthetic` alone: a
token layer that has computed ``t`` tokens holds the oracle's bytes for tokens ``[0, t)``
and noise after them; a state layer that has not consumed the whole prompt holds a
*partial* state (the final state with every byte changed, as an in-place update leaves
it), and the final state once it has. Where each layer's pieces lie comes from the
oracle's own page arithmetic, never from the planner or ``RankLayout``.

The D side applies each step's rows with plain copies and checks, after every step, that
every byte written holds the oracle's final value, every other byte D's original noise,
and that the D blocks holding a wrong byte are exactly the schedule's pending blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from hybridxfer.descriptors import Descriptors
from hybridxfer.layout import Layout, RankLayout, is_token_spec
from hybridxfer.plan import StreamSchedule
from hybridxfer.synthetic import RankSpec, Request, blank_destination, expected_memory
from hybridxfer.synthetic._oracle import _piece_sizes, _placements, _stage_layers

U8 = npt.NDArray[np.uint8]
Memory = dict[str, U8]
#: (region, start, stop) byte ranges
Ranges = list[tuple[str, int, int]]


def rank_spec(r: RankLayout) -> RankSpec:
    return RankSpec(r.tp, r.rank, r.num_blocks, r.logical_block_tokens, r.kernel_block_tokens,
                    pp=r.pp, stage=r.stage, partition=r.partition)


def layer_ranges(layout: Layout, rs: RankSpec, layer: str, blocks: Sequence[int]) -> Ranges:
    """The bytes of ``layer``'s pieces in ``blocks`` on a rank (state layers: the last block)."""
    pages, where = _placements(layout, rs)
    spec = layout.layer_spec(layer)
    used = list(blocks) if is_token_spec(spec.kind_name) else list(blocks)[-1:]
    out: Ranges = []
    for piece, size in _piece_sizes(layout, layer, rs).items():
        region, base = where[(layer, piece)]
        out.extend((region, base + b * pages[region], base + b * pages[region] + size) for b in used if b >= 0)
    return out


class Prefill:
    """P rank memory while prefill runs, layer by layer (``report`` = the layer got that far)."""

    def __init__(self, layout: Layout, rs: RankSpec, blocks: Mapping[str, Sequence[int]], tokens: int,
                 chunk_tokens: int) -> None:
        self.layout, self.rs, self.tokens, self.chunk = layout, rs, tokens, chunk_tokens
        group_of = layout.group_of()
        self.ranges = {lay.name: layer_ranges(layout, rs, lay.name, blocks[group_of[lay.name]])
                       for lay in layout.layers if lay.name in _stage_layers(layout, rs)}
        self.blocks = blocks
        self._by_tokens: dict[int, Memory] = {}
        self.mem = {k: v.copy() for k, v in self._at(0).items()}
        for layer in self.ranges:
            self._partial_state(layer, 0)

    def _at(self, t: int) -> Memory:
        """The oracle's P bytes with tokens [0, t) written (states final), on P's noise."""
        if t not in self._by_tokens:
            self._by_tokens[t] = expected_memory(self.layout, self.rs, Request(self.blocks, t),
                                                 chunk_tokens=self.chunk, seed=1)
        return self._by_tokens[t]

    def _is_state(self, layer: str) -> bool:
        return not is_token_spec(self.layout.layer_spec(layer).kind_name)

    def _partial_state(self, layer: str, t: int) -> None:
        if not self._is_state(layer):
            return
        final = self._at(self.tokens)
        for region, a, b in self.ranges[layer]:
            self.mem[region][a:b] = final[region][a:b] ^ np.uint8(0x5A ^ (t & 0x3F) | 1)

    def report(self, layer: str, t: int) -> None:
        """``layer`` now holds its state after consuming tokens [0, t)."""
        if layer not in self.ranges:
            return
        if self._is_state(layer) and t < self.tokens:
            self._partial_state(layer, t)
            return
        src = self._at(t)
        for region, a, b in self.ranges[layer]:
            self.mem[region][a:b] = src[region][a:b]


class Receiver:
    """D rank memory receiving a stream; :meth:`check` compares it with the oracle."""

    def __init__(self, layout: Layout, dst: RankLayout, blocks: Mapping[str, Sequence[int]], tokens: int,
                 chunk_tokens: int, cached: Mapping[str, int] | None = None) -> None:
        self.rs = rank_spec(dst)
        self.region_names = dst.region_names
        self.blank = blank_destination(layout, self.rs)
        self.mem = {k: v.copy() for k, v in self.blank.items()}
        self.covered = {k: np.zeros(v.shape[0], dtype=bool) for k, v in self.blank.items()}
        self.final = expected_memory(layout, self.rs, Request(blocks, tokens, dict(cached or {})),
                                     chunk_tokens=chunk_tokens)
        group_of = layout.group_of()
        held = _stage_layers(layout, self.rs)
        self.block_ranges: dict[tuple[str, int], Ranges] = {}
        for lay in layout.layers:
            if lay.name not in held:
                continue
            group = group_of[lay.name]
            ids = list(blocks[group])
            used = ids if is_token_spec(layout.layer_spec(lay.name).kind_name) else ids[-1:]
            for b in used:
                if b >= 0:
                    self.block_ranges.setdefault((group, b), []).extend(layer_ranges(layout, self.rs, lay.name, [b]))

    def apply(self, rows: Descriptors, src_mems: Sequence[Mapping[str, U8]], src_region_names: Sequence[str]) -> None:
        for rank, sr, so, dr, do, n in zip(rows.src_rank.tolist(), rows.src_region.tolist(),
                                           rows.src_offset.tolist(), rows.dst_region.tolist(),
                                           rows.dst_offset.tolist(), rows.length.tolist(), strict=True):
            name = self.region_names[dr]
            self.mem[name][do:do + n] = src_mems[rank][src_region_names[sr]][so:so + n]
            self.covered[name][do:do + n] = True

    def problems(self) -> list[str]:
        """Written bytes that are not final, unwritten bytes that are not D's own."""
        out = []
        for name, got in self.mem.items():
            cov = self.covered[name]
            wrong = np.flatnonzero(cov & (got != self.final[name]))
            stray = np.flatnonzero(~cov & (got != self.blank[name]))
            if wrong.size:
                out.append(f"{name}: {wrong.size} written bytes are not final (first at {wrong[0]})")
            if stray.size:
                out.append(f"{name}: {stray.size} bytes changed without a row (first at {stray[0]})")
        return out

    def wrong_blocks(self) -> dict[str, tuple[int, ...]]:
        """Per D group, the blocks holding some byte that differs from the oracle's final memory."""
        out: dict[str, list[int]] = {}
        for (group, block), ranges in sorted(self.block_ranges.items()):
            if any(not np.array_equal(self.mem[r][a:b], self.final[r][a:b]) for r, a, b in ranges):
                out.setdefault(group, []).append(block)
        return {g: tuple(b) for g, b in out.items()}

    def matches_final(self) -> bool:
        return all(np.array_equal(self.mem[n], self.final[n]) for n in self.mem)


def check_step(schedule: StreamSchedule, receiver: Receiver) -> None:
    problems = receiver.problems()
    assert not problems, problems
    assert schedule.pending_blocks() == receiver.wrong_blocks()
