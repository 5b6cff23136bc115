"""The layout of a transformers model's cache, derived from its config, and its regions.

Why derived and not written per family: ``hybridxfer layout from-hf --engine
transformers`` and this module run the same importer rules, so the layout a user prints
is the layout P and D register. Each region is one tensor of the model's
``DynamicCache`` — ``layers.{i}.k``/``.v`` (``[1, kv_heads, tokens, head_dim]``),
``layers.{i}.conv`` (``[1, channels, conv_kernel]``), ``layers.{i}.ssm`` (the recurrent
state) — where ``i`` is the index of the cache layer that holds it. A request is one
block of its own length: every token piece spans the whole sequence.
"""

from __future__ import annotations

import math
import re

import attrs
from transformers import PretrainedConfig, PreTrainedModel

from hybridxfer.errors import LayoutError, LayoutProblem
from hybridxfer.hf import layout_from_hf_config
from hybridxfer.layout import Layout, PlacedPiece, RankLayout, loads_layout

__all__ = ["RegionTensor", "block_tables", "cache_layout", "rank_layout", "region_tensors"]

_LAYER_INDEX = re.compile(r"layers\.(\d+)(?:\.|$)")


def cache_layout(model: PreTrainedModel, *, model_id: str | None = None) -> Layout:
    """The layout of ``model``'s ``DynamicCache``, from its config and the dtype it runs in.

    Raises :class:`~hybridxfer.hf.UnsupportedModelError` for an architecture (or a
    cache, such as a sliding window) the importer has no rule for.
    """
    config: PretrainedConfig = model.config
    data = config.to_dict()
    data["architectures"] = [type(model).__name__]
    data.pop("torch_dtype", None)
    data["dtype"] = str(model.dtype).removeprefix("torch.")
    name = model_id or str(data.get("model_type") or type(model).__name__.lower())
    text = layout_from_hf_config(data, engine="transformers", model_id=name, source="config")
    return loads_layout(text, source=f"<{type(model).__name__} config>")


def rank_layout(layout: Layout, num_tokens: int, *, tp: int = 1, rank: int = 0) -> RankLayout:
    """What TP rank ``rank`` of ``tp`` holds for one request of ``num_tokens`` tokens."""
    if not isinstance(num_tokens, int) or num_tokens < 1:
        raise LayoutError([LayoutProblem(f"a request needs at least one token, got {num_tokens!r}",
                                         file=layout.source)])
    return layout.for_rank(tp, rank, num_blocks=1, logical_block_tokens=num_tokens, kernel_block_tokens=num_tokens)


def block_tables(layout: RankLayout) -> dict[str, list[int]]:
    """The request's block table on either side: block 0 of every group (one block each)."""
    return {group.name: [0] for group in layout.layout.groups}


@attrs.frozen
class RegionTensor:
    """Which cache tensor a region is: cache layer ``layer``'s ``piece``, of this shape."""

    region: str
    layer: int
    piece: str  # k, v, conv or ssm
    shape: tuple[int, ...]
    dtype: str
    placement: PlacedPiece


def region_tensors(layout: RankLayout) -> tuple[RegionTensor, ...]:
    """Every region of a transformers rank layout, as the cache tensor it must be.

    Raises :class:`LayoutError` when ``layout`` is not one of a transformers cache (more
    than one block, a view that is not a whole tensor, a layer name without an index).
    """
    problems: list[LayoutProblem] = []
    src = layout.layout.source
    if layout.num_blocks != 1 or layout.logical_block_tokens != layout.kernel_block_tokens:
        problems.append(LayoutProblem(
            f"a transformers cache holds a request as one block of its length; this rank layout has "
            f"{layout.num_blocks} blocks of {layout.logical_block_tokens} tokens (use rank_layout())", file=src))
    by_region: dict[str, list[PlacedPiece]] = {}
    for placed in layout.placements:
        by_region.setdefault(placed.region, []).append(placed)
    out: list[RegionTensor] = []
    for i, name in enumerate(layout.region_names):
        placed_here = by_region.get(name, [])
        found = _LAYER_INDEX.match(placed_here[0].layer) if len(placed_here) == 1 else None
        if found is None or placed_here[0].base != 0:
            problems.append(LayoutProblem(f"region {name!r} is not one cache tensor of one layer 'layers.<i>'",
                                          file=src, path=f"regions[{i}]"))
            continue
        placed = placed_here[0]
        piece = placed.piece
        # K/V pieces begin with their kv axis (extent 1), which stands where the batch is.
        shape = tuple(piece.extents) if piece.axes[0] == "kv" else (1, *piece.extents)
        if math.prod(shape) * piece.itemsize != layout.region_sizes[i]:
            problems.append(LayoutProblem(f"region {name!r} holds padding beyond its tensor", file=src,
                                          path=f"regions[{i}]"))
            continue
        out.append(RegionTensor(name, int(found.group(1)), piece.name, shape, piece.dtype, placed))
    if problems:
        raise LayoutError(problems)
    return tuple(out)
