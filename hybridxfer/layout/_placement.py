"""Byte placement for one rank: block sizes, page sizes and where every piece lies.

Why apart from :class:`~hybridxfer.layout.RankLayout`: this is the arithmetic (shard each
spec, size each page, place each view, reject overlaps within a group); the rank layout
is the value it produces. The placement reads only a layout's parts, so it sits below
the ``Layout`` class that offers it as ``for_rank()``.
"""

from __future__ import annotations

import math

import attrs

from hybridxfer.errors import LayoutError, LayoutProblem
from hybridxfer.layout._kinds import LayerSpec
from hybridxfer.layout._parts import LayoutParts
from hybridxfer.layout._pieces import Piece
from hybridxfer.layout._sharding import ShardingError
from hybridxfer.layout._validate import is_token_spec

__all__ = ["PlacedPiece", "Placement", "place"]


@attrs.frozen
class PlacedPiece:
    """Where one piece of one layer lives on this rank.

    Block ``b`` of the piece starts at ``base + b * page_stride`` in region ``region``; a
    token piece's kernel sub-block ``j`` inside a logical block adds ``j * piece.nbytes``.
    """

    layer: str
    group: str
    kind: str
    piece: Piece
    region: str
    base: int
    page_stride: int

    def block_offset(self, block: int) -> int:
        return self.base + block * self.page_stride


@attrs.frozen
class Placement:
    """Everything :func:`place` resolves for one rank."""

    logical_block_tokens: int
    kernel_block_tokens: int
    region_names: tuple[str, ...]
    region_page_bytes: tuple[int, ...]
    region_sizes: tuple[int, ...]
    placements: tuple[PlacedPiece, ...]


def place(
    layout: LayoutParts,
    *,
    tp: int,
    rank: int,
    num_blocks: int,
    logical_block_tokens: int | None,
    kernel_block_tokens: int | None,
    layers: frozenset[str] | None = None,
) -> Placement:
    """Resolve every byte of a structurally valid layout for rank ``rank`` of TP ``tp``.

    ``layers``: the layers this rank holds (a pipeline stage's), default all. Block and
    page sizes stay the whole model's (every stage shares one block table, so one page
    geometry), but the rank holds only the regions with a view of its layers, and of a
    layer-major region only its layers' slabs, renumbered in order.

    Raises :class:`~hybridxfer.errors.LayoutError` with every problem this TP size shows:
    heads that do not shard, block sizes that do not divide, views of one group that overlap.
    """
    problems: list[LayoutProblem] = []
    src = layout.source
    if not isinstance(tp, int) or tp < 1:
        raise LayoutError([LayoutProblem(f"tp must be a positive integer, got {tp!r}", file=src)])
    if not 0 <= rank < tp:
        raise LayoutError([LayoutProblem(f"rank {rank} is outside TP size {tp}", file=src)])
    if num_blocks < 1:
        raise LayoutError([LayoutProblem(f"num_blocks must be >= 1, got {num_blocks}", file=src)])
    specs = layout.spec_map()
    layer_spec: dict[str, LayerSpec] = {lay.name: specs[lay.spec] for lay in layout.layers}

    # Shard every spec once: this is where "heads not divisible by TP" shows up.
    for name, spec in layout.specs:
        try:
            spec.pieces(tp, 1)
        except ShardingError as exc:
            problems.append(LayoutProblem(f"TP={tp}: {exc}", file=src, path=f"specs.{name}"))
    if problems:
        raise LayoutError(problems)

    bs, kbs = _block_sizes(layout, layer_spec, tp, logical_block_tokens, kernel_block_tokens)
    ratio = bs // kbs
    group_of = layout.group_of()

    # Place pieces page by page; page = the furthest byte any view reaches.
    spans: list[list[Span]] = []  # per region: slab, start, end, group, layer
    staged: list[tuple[str, str, Piece, int, int]] = []  # layer, region, piece, in-page offset, slab
    for region in layout.regions:
        region_spans: list[Span] = []
        for view in region.views:
            spec = layer_spec[view.layer]
            pieces = {p.name: p for p in spec.pieces(tp, kbs)}
            pos = view.offset
            for name in view.pieces or tuple(pieces):
                piece = pieces[name]
                size = piece.nbytes * (ratio if piece.has_tokens else 1)
                staged.append((view.layer, region.name, piece, pos, view.slab))
                region_spans.append((view.slab, pos, pos + size, group_of[view.layer], view.layer))
                pos += size
        spans.append(region_spans)
    pages = [max((end for _, _, end, _, _ in s), default=0) for s in spans]
    if layout.block.uniform_page and pages:
        pages = [max(pages)] * len(pages)

    for ri, region in enumerate(layout.regions):
        problems.extend(attrs.evolve(p, file=src) for p in _overlaps(ri, region.name, spans[ri]))
    if problems:
        raise LayoutError(problems)

    page_of = {r.name: pages[i] for i, r in enumerate(layout.regions)}
    slab_of: dict[tuple[str, int], int] = {}  # a stage's slabs, renumbered
    if layers is None:
        held = [(r.name, pages[i], r.slabs) for i, r in enumerate(layout.regions)]
    else:
        staged = [item for item in staged if item[0] in layers]
        held = []
        for i, r in enumerate(layout.regions):
            slabs = sorted({v.slab for v in r.views if v.layer in layers})
            slab_of.update({(r.name, k): j for j, k in enumerate(slabs)})
            if slabs:
                held.append((r.name, pages[i], len(slabs)))
    placements = tuple(
        PlacedPiece(
            layer=layer, group=group_of[layer], kind=layer_spec[layer].kind_name, piece=piece,
            region=region, base=slab_of.get((region, slab), slab) * num_blocks * page_of[region] + offset,
            page_stride=page_of[region],
        )
        for layer, region, piece, offset, slab in staged
    )
    return Placement(
        logical_block_tokens=bs, kernel_block_tokens=kbs,
        region_names=tuple(name for name, _, _ in held),
        region_page_bytes=tuple(page for _, page, _ in held),
        region_sizes=tuple(page * num_blocks * slabs for _, page, slabs in held),
        placements=placements,
    )


def _block_sizes(
    layout: LayoutParts,
    layer_spec: dict[str, LayerSpec],
    tp: int,
    logical: int | None,
    kernel: int | None,
) -> tuple[int, int]:
    """Logical and kernel block sizes in tokens for this TP (explicit values win)."""
    policy = layout.block
    token_specs = [s for s in layer_spec.values() if is_token_spec(s.kind_name)]
    state_specs = [s for s in layer_spec.values() if not is_token_spec(s.kind_name)]
    if logical is None:
        if policy.logical == "equalise" and token_specs and state_specs:
            per_token = max(s.bytes_per_token(tp) for s in token_specs)  # type: ignore[union-attr]
            state_page = max(sum(p.nbytes for p in s.pieces(tp, 1)) for s in state_specs)
            logical = policy.align * math.ceil(state_page / (policy.align * per_token))
        elif policy.logical == "equalise":
            logical = policy.align
        else:
            logical = policy.logical
    if kernel is None:
        kernel = logical if policy.kernel == "logical" else policy.kernel
    if logical < 1 or kernel < 1:
        raise LayoutError([LayoutProblem(f"block sizes must be positive (logical={logical}, kernel={kernel})",
                                         file=layout.source)])
    if token_specs and logical % kernel:
        raise LayoutError(
            [LayoutProblem(f"kernel block size {kernel} does not divide logical block size {logical} (TP={tp})",
                           file=layout.source, path="block.kernel")]
        )
    return logical, kernel


#: One view's byte span in a region's page: slab, start, end, group, layer.
Span = tuple[int, int, int, str, str]


def _overlaps(ri: int, region: str, spans: list[Span]) -> list[LayoutProblem]:
    """Views of one group must not overlap (different groups may: they alias by design)."""
    out: list[LayoutProblem] = []
    reported: set[tuple[str, str]] = set()
    for (sl0, s0, e0, g0, l0), (sl1, s1, e1, g1, l1) in _pairs(sorted(spans)):
        pair = (min(l0, l1), max(l0, l1))
        if sl0 == sl1 and s1 < e0 and g0 == g1 and e1 > s1 and e0 > s0 and pair not in reported:
            reported.add(pair)
            l0, l1 = pair
            out.append(LayoutProblem(
                f"views of layers {l0!r} and {l1!r} overlap in bytes [{s1}, {min(e0, e1)}) of region "
                f"{region!r} but are both in group {g0!r}; only views of different groups may share bytes",
                path=f"regions[{ri}].views"))
    return out


def _pairs(items: list[Span]) -> list[tuple[Span, Span]]:
    """Every pair of spans in the same slab that could overlap (sorted sweep)."""
    out: list[tuple[Span, Span]] = []
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            if b[0] != a[0] or b[1] >= a[2]:
                break
            out.append((a, b))
    return out
