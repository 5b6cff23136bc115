"""A layout resolved for one rank: every page size, offset and piece shape in bytes.

``RankLayout`` is what a rank registers and what the planner compiles against. It is
still address-free: offsets are bytes from each region's base.
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs

from hybridxfer.errors import LayoutError, LayoutProblem
from hybridxfer.layout._kinds import LayerSpec
from hybridxfer.layout._layout import Layout, _digest
from hybridxfer.layout._pieces import Piece
from hybridxfer.layout._sharding import ShardingError
from hybridxfer.layout._validate import is_token_spec

__all__ = ["PlacedPiece", "RankLayout"]


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
class RankLayout:
    """One rank's resolved layout. Build with :meth:`Layout.for_rank`."""

    layout: Layout
    tp: int
    rank: int
    num_blocks: int
    logical_block_tokens: int
    kernel_block_tokens: int
    region_names: tuple[str, ...]
    region_page_bytes: tuple[int, ...]
    region_sizes: tuple[int, ...]
    placements: tuple[PlacedPiece, ...]

    @property
    def blocks_per_kernel(self) -> int:
        """Kernel blocks per logical block (vLLM's ``physical_blocks_per_logical``)."""
        return self.logical_block_tokens // self.kernel_block_tokens

    @property
    def model_digest(self) -> str:
        return self.layout.model_digest

    @property
    def digest(self) -> str:
        return _digest(self.instance_dict())

    def instance_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout.to_dict(),
            "tp": self.tp,
            "rank": self.rank,
            "num_blocks": self.num_blocks,
            "logical_block_tokens": self.logical_block_tokens,
            "kernel_block_tokens": self.kernel_block_tokens,
        }

    def to_json(self) -> str:
        """Everything a peer needs to plan against this rank (for the handshake)."""
        return json.dumps(self.instance_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RankLayout:
        from hybridxfer.layout._dsl import layout_from_dict

        data = json.loads(text)
        layout = layout_from_dict(data["layout"], source="<peer>")
        return layout.for_rank(
            data["tp"], data["rank"], num_blocks=data["num_blocks"],
            logical_block_tokens=data["logical_block_tokens"],
            kernel_block_tokens=data["kernel_block_tokens"],
        )

    def placement(self, layer: str, piece: str) -> PlacedPiece:
        for p in self.placements:
            if p.layer == layer and p.piece.name == piece:
                return p
        raise KeyError((layer, piece))

    def region_index(self, name: str) -> int:
        return self.region_names.index(name)

    @property
    def total_bytes(self) -> int:
        return sum(self.region_sizes)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        layout: Layout,
        *,
        tp: int,
        rank: int,
        num_blocks: int,
        logical_block_tokens: int | None,
        kernel_block_tokens: int | None,
    ) -> RankLayout:
        layout.validated()
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
        spans: list[list[tuple[int, int, int, str, str]]] = []  # per region: slab, start, end, group, layer
        staged: list[tuple[str, str, Piece, int, int]] = []  # layer, region, piece, in-page offset, slab
        for region in layout.regions:
            region_spans: list[tuple[int, int, int, str, str]] = []
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
        placements = tuple(
            PlacedPiece(
                layer=layer, group=group_of[layer], kind=layer_spec[layer].kind_name, piece=piece,
                region=region, base=slab * num_blocks * page_of[region] + offset,
                page_stride=page_of[region],
            )
            for layer, region, piece, offset, slab in staged
        )
        return cls(
            layout=layout, tp=tp, rank=rank, num_blocks=num_blocks,
            logical_block_tokens=bs, kernel_block_tokens=kbs,
            region_names=tuple(r.name for r in layout.regions),
            region_page_bytes=tuple(pages),
            region_sizes=tuple(pages[i] * num_blocks * r.slabs for i, r in enumerate(layout.regions)),
            placements=placements,
        )


def _block_sizes(
    layout: Layout,
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


def _overlaps(ri: int, region: str, spans: list[tuple[int, int, int, str, str]]) -> list[LayoutProblem]:
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


Span = tuple[int, int, int, str, str]


def _pairs(items: list[Span]) -> list[tuple[Span, Span]]:
    """Every pair of spans in the same slab that could overlap (sorted sweep)."""
    out: list[tuple[Span, Span]] = []
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            if b[0] != a[0] or b[1] >= a[2]:
                break
            out.append((a, b))
    return out
