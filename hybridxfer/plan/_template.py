"""Compile a plan template: the geometry of every descriptor, before block IDs are known.

``compile_plan(src_ranks, dst_rank)`` pairs every piece D holds with the P pieces that
hold the same logical elements, decides which P rank provides which units, and stores per
pairing the byte runs *relative to one block* (one token chunk for attention pieces).
Binding block IDs later is then pure numpy arithmetic. Templates are cached per layout
pair, so an engine pays compile once per peer set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.errors import IncompatibleLayoutsError
from hybridxfer.layout import TOKEN_AXIS, Piece, PlacedPiece, RankLayout, model_fields
from hybridxfer.plan._batch import Batch, make_batches
from hybridxfer.plan._bind import bind
from hybridxfer.plan._job import Job
from hybridxfer.plan._plan import TransferPlan
from hybridxfer.plan._prefix import CachedTokens
from hybridxfer.plan._runs import AxisSpan, Runs, box_runs, concat_runs
from hybridxfer.plan._sources import natural_sources, shard_intervals
from hybridxfer.plan._stream import StreamSchedule, stream_schedule

__all__ = ["Job", "PlanTemplate", "compile_plan", "piece_runs"]


@attrs.frozen(eq=False)
class PlanTemplate:
    """Everything about a (P ranks, D rank) pairing that does not depend on block IDs."""

    src: tuple[RankLayout, ...]
    dst: RankLayout
    coalesce: bool
    chunk_tokens: int
    jobs: tuple[Job, ...]
    notify_ranks: tuple[int, ...]
    #: dst group pairs whose pieces share bytes of some region (their block IDs must differ)
    aliasing_groups: tuple[tuple[str, str], ...]
    #: per dst state group: page padding bytes left untouched per request block
    state_padding: tuple[tuple[str, int], ...]
    #: the jobs stacked for binding (see :mod:`._batch`), and the layer kinds they index
    batches: tuple[Batch, ...]
    kinds: tuple[str, ...]

    def tail_runs(self, job: Job, tokens: int) -> Runs:
        """Runs of ``job`` for a last chunk holding only ``tokens`` (< chunk_tokens) tokens.

        Requests rarely end on a chunk boundary; moving exactly the request's tokens keeps
        unused token slots of the last block off the wire.
        """
        runs = piece_runs(job.src.piece, self.src_tp, job.dst.piece, self.dst.tp, self.dst.rank,
                          tokens, self.coalesce)
        local = job.src_rank % self.src_tp
        return runs[local] if local in runs else next(iter(runs.values()))

    @property
    def src_tp(self) -> int:
        return self.src[0].tp

    @property
    def src_pp(self) -> int:
        return self.src[0].pp

    @property
    def src_region_names(self) -> tuple[str, ...]:
        """Names the plan's source region indices refer to: every region of P's layout
        (a pipeline stage registers only those it holds)."""
        return _layout_region_names(self.src[0])

    @property
    def source_ranks(self) -> tuple[int, ...]:
        return tuple(sorted({j.src_rank for j in self.jobs}))

    def bind(
        self,
        src_blocks: Mapping[str, Sequence[int] | npt.NDArray[np.int64]],
        dst_blocks: Mapping[str, Sequence[int] | npt.NDArray[np.int64]],
        *,
        num_tokens: int | None = None,
        dst_cached_tokens: CachedTokens | None = None,
    ) -> TransferPlan:
        """Bind a request's block IDs: see :func:`hybridxfer.plan.bind`."""
        return bind(self, src_blocks, dst_blocks, num_tokens=num_tokens, dst_cached_tokens=dst_cached_tokens)

    def stream(
        self,
        src_blocks: Mapping[str, Sequence[int] | npt.NDArray[np.int64]],
        dst_blocks: Mapping[str, Sequence[int] | npt.NDArray[np.int64]],
        *,
        num_tokens: int | None = None,
        dst_cached_tokens: CachedTokens | None = None,
        group_layers: int = 1,
    ) -> StreamSchedule:
        """Bind a request for layer-wise streaming: see :func:`hybridxfer.plan.stream_schedule`."""
        return stream_schedule(self, src_blocks, dst_blocks, num_tokens=num_tokens,
                               dst_cached_tokens=dst_cached_tokens, group_layers=group_layers)


def compile_plan(src: Sequence[RankLayout], dst: RankLayout, *, coalesce: bool = True,
                 cache: bool = True) -> PlanTemplate:
    """Compile (cached) the template for D rank ``dst`` reading from P ranks ``src``.

    ``src`` lists every P rank's layout in global rank order, rank 0 first: with
    pipeline parallelism, TP rank ``t`` of stage ``s`` at ``s * P_TP + t``. Each layer D
    holds is read from the P stage that holds it. Raises
    :class:`~hybridxfer.errors.IncompatibleLayoutsError` before any byte moves when the
    layouts cannot be paired. ``cache=False`` compiles afresh (what the first request of
    a layout pair pays; the benchmarks measure it) and leaves the cache as it was.
    """
    return (_compile_cached if cache else _compile)(tuple(src), dst, coalesce)


def _compile(src: tuple[RankLayout, ...], dst: RankLayout, coalesce: bool) -> PlanTemplate:
    _check_pairing(src, dst)
    src_tp, dst_tp = src[0].tp, dst.tp
    chunk = math.gcd(src[0].kernel_block_tokens, dst.kernel_block_tokens)
    jobs: list[Job] = []
    by_tensor: list[dict[tuple[str, str], list[PlacedPiece]]] = []
    stage_of: dict[str, int] = {}  # layer -> the P stage that holds it
    for s_layout in src:
        index: dict[tuple[str, str], list[PlacedPiece]] = {}
        for pp in s_layout.placements:
            index.setdefault((pp.layer, pp.piece.tensor), []).append(pp)
            stage_of[pp.layer] = s_layout.stage
        by_tensor.append(index)
    region_of = {name: i for i, name in enumerate(_layout_region_names(src[0]))}
    for dst_pp in dst.placements:
        covered = 0
        stage = stage_of.get(dst_pp.layer, 0)
        for local in range(src_tp):
            rank, s_layout = stage * src_tp + local, src[stage * src_tp + local]
            for src_pp in by_tensor[rank].get((dst_pp.layer, dst_pp.piece.tensor), []):
                for p_rank, runs in _pair_runs(src_pp, src_tp, dst_pp, dst_tp, dst.rank, chunk, coalesce).items():
                    spread = _spread(src_pp, src_tp, dst_tp, dst.rank, local)
                    if (p_rank != local and spread is None) or not len(runs):
                        continue
                    if spread is None or spread[0] == 0:
                        covered += runs.nbytes
                    spec = dst.layout.layer_spec(dst_pp.layer)
                    jobs.append(Job(
                        src_rank=rank, layer=dst_pp.layer, kind=dst_pp.kind,
                        src_group=src_pp.group, dst_group=dst_pp.group,
                        src_region=region_of[src_pp.region],
                        dst_region=dst.region_index(dst_pp.region),
                        src=src_pp, dst=dst_pp, runs=runs, window=spec.sliding_window,
                        spread=spread or (0, 1),
                    ))
        piece = dst_pp.piece
        expected = piece.nbytes * chunk // dst.kernel_block_tokens if piece.has_tokens else piece.nbytes
        if covered != expected:
            raise IncompatibleLayoutsError(
                f"D rank {_rank_name(dst)} (TP={dst_tp}): piece {piece.name!r} of layer {dst_pp.layer!r} needs "
                f"{expected} bytes per block but P (TP={src_tp}) provides {covered}: the shards do not match")
    jobs.sort(key=lambda j: (j.src_rank, j.dst_region, j.dst.base))
    # every P stage holding a layer D reads hears from D's natural sources in that stage
    stages = sorted({stage_of.get(pp.layer, 0) for pp in dst.placements}) or [0]
    natural = [s * src_tp + r for s in stages for r in natural_sources(src_tp, dst_tp, dst.rank)]
    notify = tuple(sorted(set(natural) | {j.src_rank for j in jobs}))
    kinds = tuple(sorted({j.kind for j in jobs}))
    return PlanTemplate(
        src=src, dst=dst, coalesce=coalesce, chunk_tokens=chunk, jobs=tuple(jobs),
        notify_ranks=notify, aliasing_groups=_aliasing_groups(dst),
        state_padding=_state_padding(dst), batches=make_batches(jobs, kinds), kinds=kinds,
    )


_compile_cached = lru_cache(maxsize=256)(_compile)


def _check_pairing(src: tuple[RankLayout, ...], dst: RankLayout) -> None:
    if not src:
        raise IncompatibleLayoutsError("no source ranks given")
    src_tp, src_pp = src[0].tp, src[0].pp
    if src_pp == 1 and src[0].partition is None:
        src_tp = len(src)
        for i, s in enumerate(src):
            if s.tp != src_tp or s.rank != i or s.pp != 1:
                raise IncompatibleLayoutsError(
                    f"source layouts must be P ranks 0..{src_tp - 1} of one TP-{src_tp} engine; "
                    f"position {i} holds rank {s.rank} of TP {s.tp}" + (f" (stage {s.stage} of PP {s.pp})"
                                                                      if s.pp > 1 else ""))
    else:
        if len(src) != src_pp * src_tp:
            raise IncompatibleLayoutsError(
                f"source layouts must be all {src_pp * src_tp} ranks of one PP-{src_pp} x TP-{src_tp} engine "
                f"(global rank = stage * TP + TP rank); got {len(src)}")
        for i, s in enumerate(src):
            if (s.tp, s.pp, s.partition, s.global_rank) != (src_tp, src_pp, src[0].partition, i):
                raise IncompatibleLayoutsError(
                    f"source layouts must be the ranks of one PP-{src_pp} x TP-{src_tp} engine in global rank "
                    f"order (stage * TP + TP rank); position {i} holds {_rank_name(s)} of PP {s.pp} x TP {s.tp}")
    for i, s in enumerate(src):
        if s.layout.digest != src[0].layout.digest:
            raise IncompatibleLayoutsError(f"P rank {i} has a different layout than P rank 0")
    if src[0].model_digest != dst.model_digest:
        raise IncompatibleLayoutsError(_model_difference(src[0], dst))
    big, small = max(src_tp, dst.tp), min(src_tp, dst.tp)
    if big % small:
        raise IncompatibleLayoutsError(
            f"TP sizes P={src_tp} and D={dst.tp} are not divisible: one must divide the other")


def _rank_name(r: RankLayout) -> str:
    """``3``, or ``(stage 1, TP rank 1)`` for a pipelined rank."""
    return f"(stage {r.stage}, TP rank {r.rank})" if r.pp > 1 else str(r.rank)


def _layout_region_names(r: RankLayout) -> tuple[str, ...]:
    return r.region_names if r.pp == 1 and r.partition is None else tuple(x.name for x in r.layout.regions)


def _model_difference(a: RankLayout, b: RankLayout) -> str:
    if a.layout.model != b.layout.model:
        return f"different models: P serves {a.layout.model!r}, D expects {b.layout.model!r}"
    la = {lay.name: model_fields(a.layout.layer_spec(lay.name)) for lay in a.layout.layers}
    lb = {lay.name: model_fields(b.layout.layer_spec(lay.name)) for lay in b.layout.layers}
    if set(la) != set(lb):
        only = sorted(set(la) ^ set(lb))[:5]
        return f"model {a.layout.model!r}: P and D have different layers (e.g. {only})"
    for name in la:
        if la[name] != lb[name]:
            diff = {k: (la[name].get(k), lb[name].get(k)) for k in la[name] if la[name].get(k) != lb[name].get(k)}
            return f"model {a.layout.model!r}: layer {name!r} differs between P and D (P, D): {diff}"
    return f"model {a.layout.model!r}: P and D model digests differ"


def _pair_runs(
    src_pp: PlacedPiece, src_tp: int, dst_pp: PlacedPiece, dst_tp: int, dst_rank: int,
    chunk: int, coalesce: bool,
) -> dict[int, Runs]:
    """Per source rank: runs moving the elements D's piece takes from P's piece."""
    sp, dp = src_pp.piece, dst_pp.piece
    if set(sp.axes) != set(dp.axes) or sp.dtype != dp.dtype:
        raise IncompatibleLayoutsError(
            f"layer {dst_pp.layer!r}: P piece {sp.name!r} {sp.axes}/{sp.dtype} and D piece {dp.name!r} "
            f"{dp.axes}/{dp.dtype} do not describe the same tensor")
    return piece_runs(sp, src_tp, dp, dst_tp, dst_rank, chunk, coalesce)


@lru_cache(maxsize=4096)
def piece_runs(sp: Piece, src_tp: int, dp: Piece, dst_tp: int, dst_rank: int, chunk: int,
               coalesce: bool) -> dict[int, Runs]:
    """Runs for a (P piece, D piece) geometry; cached: every Mamba layer of a model shares it.

    The returned arrays are shared between callers and must not be modified.
    """
    s_str = dict(zip(sp.axes, sp.strides(), strict=True))
    d_str = dict(zip(dp.axes, dp.strides(), strict=True))
    spans: dict[str, AxisSpan] = {}
    for axis in dp.axes:
        if axis == sp.sharded_axis or axis == TOKEN_AXIS:
            continue
        lo = max(sp.start(axis), dp.start(axis))
        hi = min(sp.start(axis) + sp.extent(axis), dp.start(axis) + dp.extent(axis))
        if hi <= lo:
            return {}
        spans[axis] = AxisSpan(hi - lo, lo - sp.start(axis), lo - dp.start(axis))
    if TOKEN_AXIS in dp.axes:
        spans[TOKEN_AXIS] = AxisSpan(chunk, 0, 0)
    if sp.sharded_axis is None:
        rank = natural_sources(src_tp, dst_tp, dst_rank)[0]
        return {rank: box_runs(spans, s_str, d_str, dp.axes, dp.itemsize)}
    axis = sp.sharded_axis
    out: dict[int, Runs] = {}
    per_rank = shard_intervals(sp, src_tp, dp, dst_tp, dst_rank, merge_segments=coalesce)
    for rank, intervals in per_rank.items():
        parts = [box_runs({**spans, axis: AxisSpan(iv.count, iv.src_start, iv.dst_start)},
                          s_str, d_str, dp.axes, dp.itemsize) for iv in intervals]
        out[rank] = concat_runs(parts, coalesce)
    return out


def _spread(src_pp: PlacedPiece, src_tp: int, dst_tp: int, dst_rank: int, rank: int) -> tuple[int, int] | None:
    """Replicated token pieces (MLA latents) come from every natural source, in shares.

    When P has more ranks than D, the ``q`` P ranks that D rank ``d`` reads from all hold
    the same latent; reading the i-th contiguous share of the tokens from the i-th of them
    spreads one request over ``q`` sources (and keeps each share coalescable).
    """
    if src_pp.piece.sharded_axis is not None or not src_pp.piece.has_tokens:
        return None
    natural = natural_sources(src_tp, dst_tp, dst_rank)
    if len(natural) < 2 or rank not in natural:
        return None
    return (natural.index(rank), len(natural))


def _aliasing_groups(dst: RankLayout) -> tuple[tuple[str, str], ...]:
    spans: dict[str, list[tuple[int, int, str]]] = {}
    ratio = dst.blocks_per_kernel
    for pp in dst.placements:
        size = pp.piece.nbytes * (ratio if pp.piece.has_tokens else 1)
        spans.setdefault(pp.region, []).append((pp.base, pp.base + size, pp.group))
    pairs: set[tuple[str, str]] = set()
    for items in spans.values():
        for i, (s0, e0, g0) in enumerate(items):
            for s1, e1, g1 in items[i + 1:]:
                if g0 != g1 and s0 < e1 and s1 < e0:
                    pairs.add((min(g0, g1), max(g0, g1)))
    return tuple(sorted(pairs))


def _state_padding(dst: RankLayout) -> tuple[tuple[str, int], ...]:
    """Bytes of each state group's pages that hold no state (engine padding)."""
    used: dict[tuple[str, str, int], int] = {}
    for pp in dst.placements:
        if not pp.piece.has_tokens:
            slab = pp.base // max(pp.page_stride * dst.num_blocks, 1)
            key = (pp.group, pp.region, slab)
            used[key] = used.get(key, 0) + pp.piece.nbytes
    pad: dict[str, int] = {}
    for (group, region, _slab), nbytes in used.items():
        page = dst.region_page_bytes[dst.region_index(region)]
        pad[group] = pad.get(group, 0) + page - nbytes
    return tuple(sorted(pad.items()))
