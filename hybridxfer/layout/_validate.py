"""Structural checks of a :class:`Layout`: names, references, coverage. TP-independent.

Byte-level checks (pages that overlap within a group, shards that do not divide) need a
TP size and live in :mod:`._placement`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from hybridxfer.errors import LayoutProblem
from hybridxfer.layout._limits import MAX_BLOCK_TOKENS, MAX_PAGE_BYTES, MAX_SLABS
from hybridxfer.layout._parts import LayoutParts

__all__ = ["is_token_spec", "size_problems", "structural_problems"]


def is_token_spec(kind_name: str) -> bool:
    """Attention-like kinds grow with the sequence; state kinds hold one page per sequence."""
    return kind_name in ("attention", "sliding_window", "mla")


def _dupes(names: list[str]) -> list[str]:
    return sorted(n for n, c in Counter(names).items() if c > 1)


def _index_problems(layout: LayoutParts, bad: Callable[[str, str], None]) -> None:
    """Model layer indices run in layout order (a pipeline split is contiguous in them)."""
    last = -1
    for i, lay in enumerate(layout.layers):
        if lay.index is not None and (isinstance(lay.index, bool) or lay.index < max(last, 0)):
            bad(f"layers[{i}].index", f"model layer index {lay.index} is below the previous layer's ({last}); "
                "indices must be non-negative and never decrease in layer order")
        last = i if lay.index is None else lay.index
    if layout.model_layers is not None and layout.model_layers <= last:
        bad("model_layers", f"the model has {layout.model_layers} layers but a layer has index {last}")


def structural_problems(layout: LayoutParts) -> list[LayoutProblem]:
    out: list[LayoutProblem] = []

    def bad(path: str, message: str) -> None:
        out.append(LayoutProblem(message, path=path))

    if not layout.model:
        bad("model", "model id must not be empty")
    specs = layout.spec_map()
    for name in _dupes([n for n, _ in layout.specs]):
        bad(f"specs.{name}", "spec defined twice")
    for name in _dupes([lay.name for lay in layout.layers]):
        bad("layers", f"layer {name!r} listed twice")
    for i, lay in enumerate(layout.layers):
        if lay.spec not in specs:
            bad(f"layers[{i}].spec", f"unknown spec {lay.spec!r} (defined: {', '.join(sorted(specs)) or 'none'})")
    if not layout.layers:
        bad("layers", "a layout needs at least one layer with a cache")
    _index_problems(layout, bad)
    layer_spec = {lay.name: specs.get(lay.spec) for lay in layout.layers}

    # groups: every layer in exactly one group; one class of kind per group
    for name in _dupes([g.name for g in layout.groups]):
        bad("groups", f"group {name!r} defined twice")
    seen: dict[str, str] = {}
    for gi, g in enumerate(layout.groups):
        classes = set()
        for layer in g.layers:
            if layer not in layer_spec:
                bad(f"groups[{gi}].layers", f"unknown layer {layer!r}")
                continue
            if layer in seen:
                bad(f"groups[{gi}].layers", f"layer {layer!r} is already in group {seen[layer]!r}")
            seen[layer] = g.name
            spec = layer_spec[layer]
            if spec is not None:
                classes.add(is_token_spec(spec.kind_name))
        if len(classes) > 1:
            bad(f"groups[{gi}]", f"group {g.name!r} mixes attention-like and state layers")
        if not g.layers:
            bad(f"groups[{gi}].layers", f"group {g.name!r} has no layers")
    for lay in layout.layers:
        if lay.name not in seen:
            bad("groups", f"layer {lay.name!r} is in no group")

    # regions and views: every piece of every layer placed exactly once
    for name in _dupes([r.name for r in layout.regions]):
        bad("regions", f"region {name!r} defined twice")
    placed: Counter[tuple[str, str]] = Counter()
    for ri, region in enumerate(layout.regions):
        if region.slabs < 1:
            bad(f"regions[{ri}].slabs", f"slabs must be >= 1, got {region.slabs}")
        if not region.views:
            bad(f"regions[{ri}].views", f"region {region.name!r} has no views")
        for vi, view in enumerate(region.views):
            path = f"regions[{ri}].views[{vi}]"
            spec = layer_spec.get(view.layer)
            if view.layer not in layer_spec:
                bad(f"{path}.layer", f"unknown layer {view.layer!r}")
                continue
            if spec is None:
                continue
            names = [p.name for p in spec.pieces(1, 1)]
            for piece in view.pieces or tuple(names):
                if piece not in names:
                    bad(f"{path}.pieces", f"layer {view.layer!r} ({spec.kind_name}) has no piece {piece!r}; it has {names}")
                else:
                    placed[(view.layer, piece)] += 1
            if view.offset < 0:
                bad(f"{path}.offset", f"offset must be >= 0, got {view.offset}")
            if not 0 <= view.slab < max(region.slabs, 1):
                bad(f"{path}.slab", f"slab {view.slab} is outside the region's {region.slabs} slabs")
    for lay in layout.layers:
        spec = layer_spec.get(lay.name)
        if spec is None:
            continue
        for placed_piece in spec.pieces(1, 1):
            n = placed[(lay.name, placed_piece.name)]
            if n == 0:
                bad("regions", f"piece {placed_piece.name!r} of layer {lay.name!r} is in no region")
            elif n > 1:
                bad("regions", f"piece {placed_piece.name!r} of layer {lay.name!r} is placed {n} times")

    b = layout.block
    if b.logical != "equalise" and (not isinstance(b.logical, int) or b.logical < 1):
        bad("block.logical", f"must be a positive integer or 'equalise', got {b.logical!r}")
    if b.kernel != "logical" and (not isinstance(b.kernel, int) or b.kernel < 1):
        bad("block.kernel", f"must be a positive integer or 'logical', got {b.kernel!r}")
    if not isinstance(b.align, int) or b.align < 1:
        bad("block.align", f"must be a positive integer, got {b.align!r}")
    out.extend(size_problems(layout))
    return out


def size_problems(layout: LayoutParts) -> list[LayoutProblem]:
    """Every number of ``layout`` above its bound, each with its key path (TP-independent:
    TP 1 holds the most bytes per rank)."""
    out: list[LayoutProblem] = []
    b = layout.block
    for key in ("logical", "kernel", "align"):
        value = getattr(b, key)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_BLOCK_TOKENS:
            out.append(LayoutProblem(f"must be at most {MAX_BLOCK_TOKENS:,} tokens, got {value:,}", path=f"block.{key}"))
    # "equalise" gives an attention block at least `align` tokens
    fewest = b.logical if b.logical != "equalise" else b.align
    logical = fewest if isinstance(fewest, int) and 0 < fewest <= MAX_BLOCK_TOKENS else 1
    for name, spec in layout.specs:
        pieces = spec.pieces(1, 1)
        per_block = sum(p.nbytes for p in pieces) * (logical if any(p.has_tokens for p in pieces) else 1)
        if per_block > MAX_PAGE_BYTES:
            what = f"{logical} tokens of K/V" if any(p.has_tokens for p in pieces) else "its state"
            out.append(LayoutProblem(
                f"one block holds {per_block:,} bytes ({what} at TP 1); the most a page may hold is "
                f"{MAX_PAGE_BYTES:,}", path=f"specs.{name}"))
    for ri, region in enumerate(layout.regions):
        if region.slabs > MAX_SLABS:
            out.append(LayoutProblem(f"must be at most {MAX_SLABS:,}, got {region.slabs:,}", path=f"regions[{ri}].slabs"))
        for vi, view in enumerate(region.views):
            if view.offset > MAX_PAGE_BYTES:
                out.append(LayoutProblem(f"must be at most {MAX_PAGE_BYTES:,}, got {view.offset:,}",
                                         path=f"regions[{ri}].views[{vi}].offset"))
    return out
