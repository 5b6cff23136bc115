"""How many leading tokens of a failed request are intact on D: exact and conservative.

Why it is this strict: an engine that keeps ``K`` tokens and recomputes the rest decodes
from whatever sits in those blocks, so a token counts only if *every* byte the plan writes
for it — every layer, every KV group, every source rank — is known to have landed
(:class:`~hybridxfer.execute.LandedBytes`: reads that returned; a read that failed counts
for nothing, whatever it may have written).

Attention groups: logical block ``i`` of a group holds tokens ``[i*T, (i+1)*T)``; the group
is intact up to its first block that is missing any planned byte. A block the plan does
not write at all (D already held it: a prefix-cache hit) is intact. A ``-1`` block (fell
out of a sliding window) holds nothing, so it ends the prefix: recomputing from a later
token would need that window's keys.

State groups (Mamba/SSM conv and recurrent state) hold one state: the state *after the
last token*. It is all-or-nothing, and even a complete one is of no use to a partial
recompute: resuming at token ``K < N`` needs the state after token ``K``, which P never
sent, and every later layer's input depends on it. So for a model with a state group the
answer is ``N`` when every planned byte landed and ``0`` otherwise.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

from hybridxfer.execute import LandedBytes
from hybridxfer.layout import RankLayout
from hybridxfer.plan import TransferPlan

__all__ = ["intact_tokens"]

Ranges = Mapping[str, Sequence[tuple[int, int]]]


def intact_tokens(layout: RankLayout, plan: TransferPlan, landed: LandedBytes,
                  dst_blocks: Mapping[str, Sequence[int]], num_tokens: int) -> int:
    """Leading tokens of the request whose every planned byte landed in D's memory.

    ``layout`` is D's, ``plan`` the request's bound plan, ``dst_blocks`` D's block tables
    (per group, in token order from token 0), ``num_tokens`` the tokens the plan moves.
    """
    missing = landed.missing(plan)
    if not missing:
        return num_tokens
    token_groups = {p.group for p in layout.placements if p.piece.has_tokens}
    groups = [g for g in dst_blocks if any(p.group == g for p in layout.placements)]
    if any(g not in token_groups for g in groups):
        return 0  # a state group: see the module docstring
    index = {name: ([start for start, _ in runs], runs) for name, runs in missing.items()}
    empty: tuple[list[int], Sequence[tuple[int, int]]] = ([], ())
    intact = num_tokens
    for group in groups:
        pieces = [p for p in layout.placements if p.group == group]
        blocks = 0
        for block in (int(b) for b in dst_blocks[group]):
            if block < 0 or any(_overlaps(*index.get(p.region, empty), p.block_offset(block),
                                          p.block_offset(block) + layout.blocks_per_kernel * p.piece.nbytes)
                                for p in pieces):
                break
            blocks += 1
        intact = min(intact, blocks * layout.logical_block_tokens)
    return max(0, intact)


def _overlaps(starts: Sequence[int], runs: Sequence[tuple[int, int]], start: int, end: int) -> bool:
    """Whether any of the sorted, disjoint ``runs`` (``starts``: their first bytes) meets
    ``[start, end)``."""
    i = bisect.bisect_right(starts, start) - 1
    if i >= 0 and runs[i][1] > start:
        return True
    return i + 1 < len(runs) and runs[i + 1][0] < end
