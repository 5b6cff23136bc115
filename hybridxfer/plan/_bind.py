"""Bind a compiled template to one request's block IDs, producing a :class:`TransferPlan`.

Attention-like groups are bridged by token position: token ``t`` lives in P's logical
block ``t // bs_P``, kernel sub-block ``(t % bs_P) // kbs_P``, slot ``t % kbs_P`` — and
likewise on D with D's own sizes — so P and D may use different logical *and* kernel
block sizes. State groups carry one running-state block each. Everything is numpy over
chunks; no Python loop runs per descriptor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from hybridxfer.errors import BlockIdError
from hybridxfer.layout import RankLayout
from hybridxfer.plan._plan import PlanStatistics, SourceReads, TransferPlan
from hybridxfer.plan._runs import Runs, merge_starts
from hybridxfer.plan._template import Job, PlanTemplate

__all__ = ["bind"]

Int64Array = npt.NDArray[np.int64]
BlockTable = Mapping[str, Sequence[int] | Int64Array]


def bind(
    template: PlanTemplate,
    src_blocks: BlockTable,
    dst_blocks: BlockTable,
    *,
    num_tokens: int | None = None,
) -> TransferPlan:
    """Descriptors for one request.

    ``src_blocks`` / ``dst_blocks`` map each KV group name (of P's and D's layout) to the
    request's logical block IDs in that group. Attention groups: blocks in token order;
    IDs of blocks outside a sliding window may be ``-1``. State groups: the last ID is the
    running-state block. ``num_tokens``: tokens to move (default: what both sides cover;
    when both use the same logical block size and D lists fewer blocks, D's blocks are
    taken to hold P's *last* blocks — a partial prefix-cache hit).

    Raises :class:`~hybridxfer.errors.BlockIdError` before any byte moves when IDs are out
    of range, duplicated, missing, or the two sides' token counts cannot be bridged.
    """
    src0, dst = template.src[0], template.dst
    src_tab = _tables(src_blocks, src0, "P", _windowed(template, 0))
    dst_tab = _tables(dst_blocks, dst, "D", _windowed(template, 1))
    chunks: dict[tuple[str, str], tuple[Int64Array, ...]] = {}
    states: dict[tuple[str, str], tuple[int, int]] = {}
    used_dst: dict[str, set[int]] = {}
    rows: dict[int, list[tuple[Job, Runs, Int64Array, Int64Array]]] = {}
    for job in template.jobs:
        key = (job.src_group, job.dst_group)
        if job.has_tokens:
            if key not in chunks:
                chunks[key] = _token_chunks(template, src_tab, dst_tab, key, num_tokens, used_dst)
            tokens, s_blk, s_sub, s_tok, d_blk, d_sub, d_tok = chunks[key]
            if job.window is not None:
                first = int(max(0, int(tokens[0]) - job.window) // template.chunk_tokens)
                s_blk, s_sub, s_tok = s_blk[first:], s_sub[first:], s_tok[first:]
                d_blk, d_sub, d_tok = d_blk[first:], d_sub[first:], d_tok[first:]
            if job.spread[1] > 1:
                i, n = job.spread
                lo, hi = s_blk.shape[0] * i // n, s_blk.shape[0] * (i + 1) // n
                s_blk, s_sub, s_tok = s_blk[lo:hi], s_sub[lo:hi], s_tok[lo:hi]
                d_blk, d_sub, d_tok = d_blk[lo:hi], d_sub[lo:hi], d_tok[lo:hi]
            sp, dp = job.src, job.dst
            s_tok_stride = sp.piece.strides()[sp.piece.axes.index("token")]
            d_tok_stride = dp.piece.strides()[dp.piece.axes.index("token")]
            s_off = sp.base + s_blk * sp.page_stride + s_sub * sp.piece.nbytes + s_tok * s_tok_stride
            d_off = dp.base + d_blk * dp.page_stride + d_sub * dp.piece.nbytes + d_tok * d_tok_stride
            rem = int(tokens[0]) % template.chunk_tokens
            holds_last = job.spread[0] == job.spread[1] - 1
            if rem and holds_last and s_off.shape[0]:
                tail = template.tail_runs(job, rem)
                rows.setdefault(job.src_rank, []).append((job, job.runs, s_off[:-1], d_off[:-1]))
                rows[job.src_rank].append((job, tail, s_off[-1:], d_off[-1:]))
                continue
        else:
            if key not in states:
                states[key] = _state_blocks(src_tab, dst_tab, key, used_dst, src0, dst)
            sb, db = states[key]
            s_off = np.array([job.src.block_offset(sb)], dtype=np.int64)
            d_off = np.array([job.dst.block_offset(db)], dtype=np.int64)
        rows.setdefault(job.src_rank, []).append((job, job.runs, s_off, d_off))
    _check_aliasing(template, used_dst)
    return _assemble(template, rows, used_dst, dst_tab)


def _windowed(template: PlanTemplate, side: int) -> set[str]:
    """Groups (of P when ``side`` is 0, of D when 1) whose layers have a sliding window."""
    return {(j.src_group, j.dst_group)[side] for j in template.jobs if j.window is not None}


def _tables(blocks: BlockTable, layout: RankLayout, side: str, windowed: set[str]) -> dict[str, Int64Array]:
    """Every given ID is checked, used or not: a bad ID is a bug upstream worth surfacing.

    ``-1`` (a null block) is accepted only in sliding-window groups, for blocks that fell
    out of the window.
    """
    groups = {g.name for g in layout.layout.groups}
    unknown = sorted(set(blocks) - groups)
    if unknown:
        raise BlockIdError(f"{side}: unknown KV group(s) {unknown}; the layout has {sorted(groups)}")
    out: dict[str, Int64Array] = {}
    for name, ids in blocks.items():
        try:
            arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise BlockIdError(f"{side} group {name!r}: block IDs must be integers ({exc})") from None
        _check_ids(arr[arr != -1] if name in windowed else arr, layout, name, side)
        out[name] = arr
    return out


def _need(tab: dict[str, Int64Array], group: str, side: str) -> Int64Array:
    if group not in tab:
        raise BlockIdError(f"{side}: no block IDs given for KV group {group!r}")
    return tab[group]


def _check_ids(ids: Int64Array, layout: RankLayout, group: str, side: str) -> None:
    bad = ids[(ids < 0) | (ids >= layout.num_blocks)]
    if bad.size:
        raise BlockIdError(
            f"{side} group {group!r}: block ID {int(bad[0])} is out of range [0, {layout.num_blocks})")
    if np.unique(ids).size != ids.size:
        vals, counts = np.unique(ids, return_counts=True)
        raise BlockIdError(f"{side} group {group!r}: block ID {int(vals[counts > 1][0])} appears twice")


def _token_chunks(
    template: PlanTemplate,
    src_tab: dict[str, Int64Array],
    dst_tab: dict[str, Int64Array],
    key: tuple[str, str],
    num_tokens: int | None,
    used_dst: dict[str, set[int]],
) -> tuple[Int64Array, ...]:
    src0, dst = template.src[0], template.dst
    s_ids, d_ids = _need(src_tab, key[0], "P"), _need(dst_tab, key[1], "D")
    bs_s, bs_d = src0.logical_block_tokens, dst.logical_block_tokens
    cap_s, cap_d = s_ids.size * bs_s, d_ids.size * bs_d
    if num_tokens is None:
        if bs_s == bs_d and d_ids.size < s_ids.size:
            s_ids = s_ids[s_ids.size - d_ids.size:]
            cap_s = cap_d
        if abs(cap_s - cap_d) >= bs_s + bs_d:
            raise BlockIdError(
                f"groups P {key[0]!r} / D {key[1]!r}: P lists {s_ids.size} blocks ({cap_s} tokens) but D lists "
                f"{d_ids.size} blocks ({cap_d} tokens); pass num_tokens or matching block lists")
        tokens = min(cap_s, cap_d)
    else:
        if num_tokens < 0:
            raise BlockIdError(f"num_tokens must be >= 0, got {num_tokens}")
        for side, cap, n, bs in (("P", cap_s, s_ids.size, bs_s), ("D", cap_d, d_ids.size, bs_d)):
            if cap < num_tokens:
                raise BlockIdError(f"{side} group {key[0] if side == 'P' else key[1]!r}: {n} blocks of {bs} "
                                   f"tokens hold {cap} tokens, fewer than num_tokens={num_tokens}")
        tokens = num_tokens
    g = template.chunk_tokens
    t = np.arange(-(-tokens // g), dtype=np.int64) * g
    s_lb, d_lb = t // bs_s, t // bs_d
    used_s = np.unique(s_lb)
    used_d = np.unique(d_lb)
    window = _group_window(template, key)
    s_blk, d_blk = s_ids[s_lb], d_ids[d_lb]
    if window is None:
        _check_ids(s_ids[used_s], src0, key[0], "P")
        _check_ids(d_ids[used_d], dst, key[1], "D")
        used_dst.setdefault(key[1], set()).update(d_ids[used_d].tolist())
    else:
        first = max(0, tokens - window) // g * g
        keep_s, keep_d = np.unique(s_lb[t >= first]), np.unique(d_lb[t >= first])
        _check_ids(s_ids[keep_s], src0, key[0], "P")
        _check_ids(d_ids[keep_d], dst, key[1], "D")
        used_dst.setdefault(key[1], set()).update(d_ids[keep_d].tolist())
    s_in, d_in = t % bs_s, t % bs_d
    kb_s, kb_d = src0.kernel_block_tokens, dst.kernel_block_tokens
    return (np.array([tokens], dtype=np.int64),
            s_blk, s_in // kb_s, s_in % kb_s, d_blk, d_in // kb_d, d_in % kb_d)


def _group_window(template: PlanTemplate, key: tuple[str, str]) -> int | None:
    windows = [j.window for j in template.jobs if (j.src_group, j.dst_group) == key]
    known = [w for w in windows if w is not None]
    return max(known) if known and len(known) == len(windows) else None


def _state_blocks(
    src_tab: dict[str, Int64Array],
    dst_tab: dict[str, Int64Array],
    key: tuple[str, str],
    used_dst: dict[str, set[int]],
    src0: RankLayout,
    dst: RankLayout,
) -> tuple[int, int]:
    s_ids, d_ids = _need(src_tab, key[0], "P"), _need(dst_tab, key[1], "D")
    if not s_ids.size or not d_ids.size:
        side, group = ("P", key[0]) if not s_ids.size else ("D", key[1])
        raise BlockIdError(f"{side} state group {group!r}: no block given for the running state")
    if abs(s_ids.size - d_ids.size) > 1:
        raise BlockIdError(
            f"state groups P {key[0]!r} ({s_ids.size} blocks) / D {key[1]!r} ({d_ids.size} blocks): "
            "block counts differ by more than one slot")
    sb, db = s_ids[-1:], d_ids[-1:]
    _check_ids(sb, src0, key[0], "P")
    _check_ids(db, dst, key[1], "D")
    used_dst.setdefault(key[1], set()).add(int(db[0]))
    return int(sb[0]), int(db[0])


def _check_aliasing(template: PlanTemplate, used_dst: dict[str, set[int]]) -> None:
    """Groups sharing region bytes must not be given the same block in one request."""
    for a, b in template.aliasing_groups:
        clash = used_dst.get(a, set()) & used_dst.get(b, set())
        if clash:
            raise BlockIdError(
                f"D groups {a!r} and {b!r} share memory but both use block {min(clash)}: "
                "the transfer would overwrite one with the other")


def _assemble(
    template: PlanTemplate,
    rows: dict[int, list[tuple[Job, Runs, Int64Array, Int64Array]]],
    used_dst: dict[str, set[int]],
    dst_tab: dict[str, Int64Array],
) -> TransferPlan:
    reads: list[SourceReads] = []
    by_kind: dict[str, int] = {}
    total_raw = 0
    for rank in sorted(rows):
        cols: list[tuple[Int64Array, ...]] = []
        for job, r, s_off, d_off in rows[rank]:
            # template-major: consecutive chunks of one run are adjacent, so they merge
            src = (r.src[:, None] + s_off[None, :]).ravel()
            dst = (r.dst[:, None] + d_off[None, :]).ravel()
            length = np.repeat(r.length, s_off.shape[0])
            n = src.shape[0]
            cols.append((np.full(n, job.src_region, dtype=np.int64), src,
                         np.full(n, job.dst_region, dtype=np.int64), dst, length))
            by_kind[job.kind] = by_kind.get(job.kind, 0) + int(length.sum())
        sr, so, dr, do, ln = (np.concatenate([c[i] for c in cols]) for i in range(5))
        total_raw += ln.shape[0]
        if template.coalesce and ln.shape[0] > 1:
            starts = merge_starts(so, do, ln, sr, dr)
            ln = np.add.reduceat(ln, starts)
            sr, so, dr, do = sr[starts], so[starts], dr[starts], do[starts]
        reads.append(SourceReads(rank, sr, so, dr, do, ln))
    pad = dict(template.state_padding)
    padding = sum(pad.get(g, 0) * len(blocks) for g, blocks in used_dst.items())
    stats = PlanStatistics(
        bytes=sum(r.total_bytes for r in reads),
        bytes_by_kind=dict(sorted(by_kind.items())),
        padding_bytes_skipped=padding,
        descriptor_count=sum(len(r) for r in reads),
        descriptor_count_uncoalesced=total_raw,
        bytes_by_source={r.src_rank: r.total_bytes for r in reads},
        descriptors_by_source={r.src_rank: len(r) for r in reads},
    )
    return TransferPlan(
        src_tp=template.src_tp, dst_tp=template.dst.tp, dst_rank=template.dst.rank,
        reads=tuple(reads),
        src_region_names=template.src[0].region_names,
        dst_region_names=template.dst.region_names,
        notify_ranks=template.notify_ranks,
        dst_blocks={g: tuple(sorted(b)) for g, b in sorted(used_dst.items())},
        statistics=stats,
    )


def contiguous_block_tables(layout: RankLayout, num_tokens: int) -> dict[str, list[int]]:
    """Block IDs of one request of ``num_tokens`` allocated contiguously from block 0.

    Attention-like groups get ``ceil(num_tokens / logical_block_tokens)`` blocks, state
    groups one running-state block; groups take consecutive ranges in layout order, so
    groups that share pooled memory never collide (what ``--tokens N`` means in the CLI).
    """
    from hybridxfer.layout._validate import is_token_spec

    out: dict[str, list[int]] = {}
    nxt = 0
    per_tokens = -(-num_tokens // layout.logical_block_tokens)
    for group in layout.layout.groups:
        kind = layout.layout.layer_spec(group.layers[0]).kind_name
        n = per_tokens if is_token_spec(kind) else 1
        out[group.name] = list(range(nxt, nxt + n))
        nxt += n
    if nxt > layout.num_blocks:
        raise BlockIdError(
            f"a request of {num_tokens} tokens needs {nxt} blocks but rank {layout.rank} holds {layout.num_blocks}")
    return out
