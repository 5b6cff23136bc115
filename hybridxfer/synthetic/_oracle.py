"""An independent reference for what every byte of a rank's cache memory holds.

The oracle shares no code with the planner or with ``RankLayout``: from the declarative
layout (specs, groups, regions, views) it recomputes — with the engines' plain formulas —
which global heads, groups and channels each TP rank holds, how a page is laid out, and
writes the *logical* cache state of a request (a distinct value per element, a function of
global coordinates only) into each rank's region buffers. A correct plan executed on P's
buffers must make D's buffers equal :func:`expected_memory` byte for byte, including the
bytes that must stay untouched.

The reference executor that runs a plan against these images with plain slice copies is
:func:`hybridxfer.testing.oracle.execute_memcpy`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.layout import DTYPE_SIZES, Layout

__all__ = ["RankSpec", "Request", "blank_destination", "expected_memory", "fill_source_memory", "region_bytes"]

U8 = npt.NDArray[np.uint8]
_TOKEN_KINDS = ("attention", "sliding_window", "mla")


@attrs.frozen
class RankSpec:
    """Which rank, of which engine, with which block geometry (all plain numbers)."""

    tp: int
    rank: int
    num_blocks: int
    logical_block_tokens: int
    kernel_block_tokens: int
    #: pipeline parallelism: stage ``stage`` of ``pp``; ``partition`` = layer counts per stage
    pp: int = 1
    stage: int = 0
    partition: tuple[int, ...] | None = None


@attrs.frozen
class Request:
    """One request: block IDs per group on this rank, tokens P computed, tokens D gets.

    ``cached_tokens`` (D side only): per KV group, the leading tokens D's prefix cache
    already holds; the whole D blocks inside that count keep D's own bytes.
    """

    blocks: Mapping[str, Sequence[int]]
    tokens: int
    cached_tokens: Mapping[str, int] = attrs.field(factory=dict)


# -- values --------------------------------------------------------------------------------------

def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64: distinct coordinates -> well-spread values."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


_WIDTH = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _values(salt: int, coords: Sequence[npt.NDArray[np.int64]], itemsize: int) -> U8:
    """Bytes of each element (last axis = itemsize) from its global coordinates.

    The outer coordinates are hashed (splitmix64); the innermost one is added with an odd
    multiplier in the element's own width, so neighbours differ and the hash runs once
    per row rather than once per element.
    """
    *outer, inner = coords
    shape = np.broadcast_shapes(*(c.shape for c in coords))
    acc = np.full(np.broadcast_shapes(*(c.shape for c in outer)) if outer else (), salt, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in outer:  # an injective mix of bounded coordinates, then one avalanche
            acc = acc * np.uint64(0x100000001B3) + c.astype(np.uint64)
        acc = _mix(acc)
        width = _WIDTH[itemsize]
        step = width(0x9E3779B97F4A7C15 & (2 ** (8 * itemsize) - 1) | 1)
        vals = acc.astype(width) + inner.astype(width) * step
    full = np.ascontiguousarray(np.broadcast_to(vals, shape))
    return full.view(np.uint8).reshape(*shape, itemsize)


# -- sharding (the engines' rules, restated) --------------------------------------------------------

def _held(units: int, tp: int, rank: int) -> list[int]:
    if units % tp == 0:
        return list(range(rank * units // tp, (rank + 1) * units // tp))
    return [rank * units // tp]


def _channels(segments: Sequence[tuple[int, int]], tp: int, rank: int) -> npt.NDArray[np.int64]:
    """Global channel ids a rank holds, in local order, for segments (units, unit_width)."""
    out: list[int] = []
    base = 0
    for units, width in segments:
        for u in _held(units, tp, rank):
            out.extend(range(base + u * width, base + (u + 1) * width))
        base += units * width
    return np.array(out, dtype=np.int64)


# -- per-kind geometry -----------------------------------------------------------------------------

def _spec_info(spec: Any) -> dict[str, Any]:
    return {f.name: getattr(spec, f.name) for f in attrs.fields(type(spec))}


def _state_arrays(kind: str, s: dict[str, Any], tp: int, rank: int, layer_salt: int) -> list[tuple[str, U8]]:
    """Each state piece's bytes on this rank (C order of its memory layout)."""
    default_rows = int(s["conv_kernel"]) - 1 + int(s.get("num_spec", 0) or 0)
    rows = int(s.get("conv_rows") or default_rows)
    if kind == "mamba2":
        h, hd, g, ds = (int(s[k]) for k in ("num_heads", "head_dim", "n_groups", "d_state"))
        conv_ch = _channels([(h, hd), (g, ds), (g, ds)], tp, rank)
        heads = np.array(_held(h, tp, rank), dtype=np.int64)
        ssm_coords = np.ix_(heads, np.arange(hd), np.arange(ds))
    elif kind == "mamba1":
        di, ds = int(s["d_inner"]), int(s["d_state"])
        conv_ch = _channels([(di, 1)], tp, rank)
        ssm_coords = np.ix_(conv_ch, np.arange(ds))
    else:  # gdn
        kh, kd, vh, vd = (int(s[k]) for k in ("k_heads", "k_dim", "v_heads", "v_dim"))
        conv_ch = _channels([(kh, kd), (kh, kd), (vh, vd)], tp, rank)
        heads = np.array(_held(vh, tp, rank), dtype=np.int64)
        inner = (np.arange(vd), np.arange(kd)) if s.get("state_order", "vk") == "vk" else (np.arange(kd), np.arange(vd))
        ssm_coords = np.ix_(heads, *inner)
    c_size, s_size = DTYPE_SIZES[str(s["conv_dtype"])], DTYPE_SIZES[str(s["ssm_dtype"])]
    ch, rw = np.ix_(conv_ch, np.arange(rows) + (default_rows - rows))  # the newest rows line up
    conv = _values(layer_salt * 4 + 1, [ch, rw], c_size)  # (channel, row, bytes)
    if s["conv_layout"] == "SD":
        conv = conv.transpose(1, 0, 2)
    ssm = _values(layer_salt * 4 + 2, list(ssm_coords), s_size)
    return [("conv", conv.reshape(-1)), ("ssm", ssm.reshape(-1))]


def _token_block(kind: str, s: dict[str, Any], tp: int, rank: int, tokens: npt.NDArray[np.int64],
                 layer_salt: int) -> list[tuple[str, U8]]:
    """Bytes of each token piece for one kernel block whose slots hold global ``tokens``."""
    if kind == "mla":
        size = DTYPE_SIZES[str(s["dtype"])]
        t, d = np.ix_(tokens, np.arange(int(s["latent_dim"])))
        return [("latent", _values(layer_salt * 4 + 3, [t, d], size).reshape(-1))]
    k_heads, hd = int(s["num_kv_heads"]), int(s["head_dim"])
    size = DTYPE_SIZES[str(s["dtype"])]
    heads = np.array(_held(k_heads, tp, rank), dtype=np.int64)
    kv, h, t, d = np.ix_(np.arange(2), heads, tokens, np.arange(hd))
    vals = _values(layer_salt * 4 + 3, [kv, h, t, d], size)  # logical (kv, head, token, dim)
    order = {"HND": ("head", "token"), "NHD": ("token", "head")}[str(s["order"])]
    pos = {"kv": 0, "head": 1, "token": 2, "dim": 3}
    if s["kv"] == "separate":
        perm = [pos[a] for a in order] + [3]
        return [(name, vals[i].transpose(*[p - 1 for p in perm], 3).reshape(-1)) for i, name in enumerate(("k", "v"))]
    axes = ("kv", *order, "dim") if s["kv"] == "halves" else (*order, "kv", "dim")
    return [("kv", vals.transpose(*[pos[a] for a in axes], 4).reshape(-1))]


# -- pages -----------------------------------------------------------------------------------------

def _piece_sizes(layout: Layout, layer: str, rs: RankSpec) -> dict[str, int]:
    """Bytes of each piece per block (token pieces: per logical block), from the formulas."""
    spec = layout.layer_spec(layer)
    kind, s = spec.kind_name, _spec_info(spec)

    def n(key: str) -> int:
        return int(s[key])

    if kind in _TOKEN_KINDS:
        ratio = rs.logical_block_tokens // rs.kernel_block_tokens
        kbs = rs.kernel_block_tokens
        if kind == "mla":
            return {"latent": kbs * n("latent_dim") * DTYPE_SIZES[str(s["dtype"])] * ratio}
        half = len(_held(n("num_kv_heads"), rs.tp, rs.rank)) * kbs * n("head_dim") * DTYPE_SIZES[str(s["dtype"])]
        if s["kv"] == "separate":
            return {"k": half * ratio, "v": half * ratio}
        return {"kv": 2 * half * ratio}
    rows = int(s.get("conv_rows") or n("conv_kernel") - 1 + int(s.get("num_spec", 0) or 0))
    c, z = DTYPE_SIZES[str(s["conv_dtype"])], DTYPE_SIZES[str(s["ssm_dtype"])]
    if kind == "mamba2":
        ch = _channels([(n("num_heads"), n("head_dim")), (n("n_groups"), n("d_state")),
                        (n("n_groups"), n("d_state"))], rs.tp, rs.rank).size
        ssm = len(_held(n("num_heads"), rs.tp, rs.rank)) * n("head_dim") * n("d_state")
    elif kind == "mamba1":
        ch = _channels([(n("d_inner"), 1)], rs.tp, rs.rank).size
        ssm = ch * n("d_state")
    else:
        ch = _channels([(n("k_heads"), n("k_dim")), (n("k_heads"), n("k_dim")),
                        (n("v_heads"), n("v_dim"))], rs.tp, rs.rank).size
        ssm = len(_held(n("v_heads"), rs.tp, rs.rank)) * n("v_dim") * n("k_dim")
    return {"conv": ch * rows * c, "ssm": ssm * z}


@functools.lru_cache(maxsize=64)
def _placements(layout: Layout, rs: RankSpec) -> tuple[dict[str, int], dict[tuple[str, str], tuple[str, int]]]:
    """(region -> page bytes, (layer, piece) -> (region, byte offset of block 0))."""
    pages: dict[str, int] = {}
    local: dict[tuple[str, str], tuple[str, int, int]] = {}
    for region in layout.regions:
        end = 0
        for view in region.views:
            sizes = _piece_sizes(layout, view.layer, rs)
            pos = view.offset
            for name in view.pieces or tuple(sizes):
                local[(view.layer, name)] = (region.name, pos, view.slab)
                pos += sizes[name]
            end = max(end, pos)
        pages[region.name] = end
    if layout.block.uniform_page:
        top = max(pages.values())
        pages = {k: top for k in pages}
    held, slabs = _stage_slabs(layout, rs)
    out = {k: (reg, slabs[reg].index(slab) * rs.num_blocks * pages[reg] + pos)
           for k, (reg, pos, slab) in local.items() if k[0] in held}
    return pages, out


def region_bytes(layout: Layout, rs: RankSpec) -> dict[str, int]:
    """Size of every region of this rank."""
    pages, _ = _placements(layout, rs)
    _, slabs = _stage_slabs(layout, rs)
    return {r.name: pages[r.name] * rs.num_blocks * len(slabs[r.name]) for r in layout.regions if slabs[r.name]}


# -- pipeline stages (vLLM's split, restated) ---------------------------------------------------------

def _stage_layers(layout: Layout, rs: RankSpec) -> set[str]:
    """The cache layers this rank's stage runs.

    The model's hidden layers (cache-less ones counted: a layer's ``index``, else its
    position) split into ``pp`` contiguous runs; without an explicit partition each run
    has ``n // pp`` layers and the ``n % pp`` left over go to the stages before the last,
    the one nearest the last first.
    """
    index = [i if lay.index is None else lay.index for i, lay in enumerate(layout.layers)]
    n = layout.model_layers if layout.model_layers is not None else index[-1] + 1
    if rs.partition is not None:
        sizes = list(rs.partition)
    else:
        sizes = [n // rs.pp for _ in range(rs.pp)]
        for k in range(n % rs.pp):
            sizes[-2 - k] += 1
    first = sum(sizes[:rs.stage])
    return {lay.name for lay, i in zip(layout.layers, index, strict=True) if first <= i < first + sizes[rs.stage]}


def _stage_slabs(layout: Layout, rs: RankSpec) -> tuple[set[str], dict[str, list[int]]]:
    """(layers held, region -> the slabs this stage allocates, in order; none: not allocated)."""
    held = _stage_layers(layout, rs)
    if rs.pp == 1 and rs.partition is None:  # the whole model: every declared slab
        return held, {r.name: list(range(r.slabs)) for r in layout.regions}
    return held, {r.name: sorted({v.slab for v in r.views if v.layer in held}) for r in layout.regions}


def _background(layout: Layout, rs: RankSpec, seed: int) -> dict[str, U8]:
    rng = np.random.default_rng(seed)
    return {name: np.frombuffer(bytearray(rng.bytes(size)), dtype=np.uint8)
            for name, size in region_bytes(layout, rs).items()}


def _write(layout: Layout, rs: RankSpec, mem: dict[str, U8], req: Request, token_limit: int,
           token_start: dict[str, int]) -> None:
    """Write the request's logical state into ``mem``: tokens [start, limit), running states."""
    pages, where = _placements(layout, rs)
    group_of = layout.group_of()
    salts = {lay.name: i + 1 for i, lay in enumerate(layout.layers)}
    bs, kbs = rs.logical_block_tokens, rs.kernel_block_tokens
    held = _stage_layers(layout, rs)
    for lay in layout.layers:
        if lay.name not in held:
            continue
        spec = layout.layer_spec(lay.name)
        s, kind, blocks = _spec_info(spec), spec.kind_name, list(req.blocks[group_of[lay.name]])
        if kind in _TOKEN_KINDS:
            start = token_start.get(lay.name, 0)
            for li, block in enumerate(blocks):
                if block < 0:
                    continue
                for j in range(bs // kbs):
                    first = li * bs + j * kbs
                    if first >= token_limit or first + kbs <= start:
                        continue
                    toks = np.arange(first, first + kbs, dtype=np.int64)
                    keep = (toks >= start) & (toks < token_limit)
                    for name, arr in _token_block(kind, s, rs.tp, rs.rank, toks, salts[lay.name]):
                        region, base = where[(lay.name, name)]
                        off = base + block * pages[region] + j * arr.size
                        per_tok = arr.reshape(_token_shape(s, kind, name, rs, kbs))
                        cur = mem[region][off:off + arr.size].reshape(per_tok.shape)
                        tok_axis = _token_axis(s, kind)
                        moved_cur = np.moveaxis(cur, tok_axis, 0)
                        moved_cur[keep] = np.moveaxis(per_tok, tok_axis, 0)[keep]
        else:
            block = blocks[-1]
            for name, arr in _state_arrays(kind, s, rs.tp, rs.rank, salts[lay.name]):
                region, base = where[(lay.name, name)]
                off = base + block * pages[region]
                mem[region][off:off + arr.size] = arr


def _token_axis(s: dict[str, Any], kind: str) -> int:
    if kind == "mla":
        return 0
    order = ("head", "token") if s["order"] == "HND" else ("token", "head")
    if s["kv"] == "separate":
        return order.index("token")
    if s["kv"] == "halves":
        return 1 + order.index("token")
    return order.index("token")


def _token_shape(s: dict[str, Any], kind: str, name: str, rs: RankSpec, kbs: int) -> tuple[int, ...]:
    if kind == "mla":
        return (kbs, -1)
    heads = len(_held(int(s["num_kv_heads"]), rs.tp, rs.rank))
    order = (heads, kbs) if s["order"] == "HND" else (kbs, heads)
    if s["kv"] == "separate":
        return (*order, -1)
    if s["kv"] == "halves":
        return (2, *order, -1)
    return (*order, -1)


def _window_starts(layout: Layout, tokens: int, chunk: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for lay in layout.layers:
        window = getattr(layout.layer_spec(lay.name), "sliding_window", None)
        if window:
            out[lay.name] = max(0, tokens - window) // chunk * chunk
    return out


def _cached_starts(layout: Layout, rs: RankSpec, req: Request) -> dict[str, int]:
    """First token D receives per token layer: D keeps whole blocks of its own size only."""
    group_of = layout.group_of()
    bs = rs.logical_block_tokens
    return {lay.name: req.cached_tokens.get(group_of[lay.name], 0) // bs * bs for lay in layout.layers
            if layout.layer_spec(lay.name).kind_name in _TOKEN_KINDS}


def fill_source_memory(layout: Layout, rs: RankSpec, req: Request, *, seed: int = 1) -> dict[str, U8]:
    """P rank memory: background noise, with the request's full logical state in its blocks."""
    mem = _background(layout, rs, seed)
    _write(layout, rs, mem, req, token_limit=2**62, token_start={})
    return mem


def expected_memory(layout: Layout, rs: RankSpec, req: Request, *, chunk_tokens: int, seed: int = 2) -> dict[str, U8]:
    """What D rank memory must hold after the transfer (untouched bytes keep ``seed`` noise).

    D receives exactly tokens ``[0, req.tokens)`` — no unused slot of the last block;
    sliding-window layers from the start of the ``chunk_tokens``-token chunk (gcd of P's
    and D's kernel block sizes) holding token ``tokens - window``. With
    ``req.cached_tokens``, every D block wholly inside a group's cached prefix keeps its
    original bytes (a hit ending inside a block: that block receives all its tokens); the
    running states are written all the same.
    """
    mem = _background(layout, rs, seed)
    starts = _window_starts(layout, req.tokens, chunk_tokens)
    for layer, start in _cached_starts(layout, rs, req).items():
        starts[layer] = max(starts.get(layer, 0), start)
    _write(layout, rs, mem, req, token_limit=req.tokens, token_start=starts)
    return mem


def blank_destination(layout: Layout, rs: RankSpec, *, seed: int = 2) -> dict[str, U8]:
    """D rank memory before the transfer: the same noise :func:`expected_memory` starts from."""
    return _background(layout, rs, seed)
