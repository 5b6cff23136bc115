"""The layout, and the layout resolved for one rank.

A :class:`Layout` names the model's layers and their kinds (:mod:`._kinds`), the KV-cache
*groups* (layers that share one block table per request), and the *regions* (physical
buffers a rank registers) with the *views* that place each layer's pieces in them
(:mod:`._parts`). Several views may lie over the same bytes of a region when they belong
to different groups: that is how engines pool an attention layer and Mamba layers in one
tensor (the block manager never gives the same block ID to two groups at once).

A layout holds no addresses and no TP-specific numbers; :meth:`Layout.for_rank` makes a
:class:`RankLayout` with every byte offset resolved. The two classes live together
because each names the other: a rank layout keeps the layout it was resolved from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from hybridxfer.errors import LayoutError, LayoutProblem
from hybridxfer.layout._kinds import model_fields, spec_fields
from hybridxfer.layout._parts import Layer, LayoutParts, View
from hybridxfer.layout._placement import PlacedPiece, place
from hybridxfer.layout._stages import stage_range
from hybridxfer.layout._validate import structural_problems

__all__ = ["FORMAT", "Layout", "RankLayout"]

FORMAT = "hybridxfer.layout/1"


@attrs.frozen
class Layout(LayoutParts):
    """A model's cache arrangement in one engine. Validate with :meth:`problems`.

    Fields (from :class:`~hybridxfer.layout._parts.LayoutParts`): ``model``, ``specs``
    (name -> layer spec pairs), ``layers``, ``groups``, ``regions``, ``block`` and
    ``source`` (the file it came from; not part of identity).
    """

    # -- identity --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The explicit (memory) form, as plain data: what ``layout expand`` prints."""
        block: dict[str, Any] = {"logical": self.block.logical, "kernel": self.block.kernel,
                                 "align": self.block.align, "uniform_page": self.block.uniform_page}
        out: dict[str, Any] = {
            "format": FORMAT,
            "model": self.model,
            "block": block,
            "specs": {name: spec_fields(spec) for name, spec in self.specs},
            "layers": [_layer_dict(lay) for lay in self.layers],
            "groups": [{"name": g.name, "layers": list(g.layers)} for g in self.groups],
            "regions": [
                {"name": r.name, "slabs": r.slabs,
                 "views": [_view_dict(v) for v in r.views]}
                for r in self.regions
            ],
        }
        if self.model_layers is not None:
            out["model_layers"] = self.model_layers
        return out

    @property
    def digest(self) -> str:
        """Canonical digest of the whole layout (engine arrangement included)."""
        return _digest(self.to_dict())

    @property
    def model_digest(self) -> str:
        """Digest of what P and D must share: layers, kinds, dimensions, dtypes."""
        specs = self.spec_map()
        return _digest({"model": self.model,
                        "layers": [[lay.name, model_fields(specs[lay.spec])] for lay in self.layers]})

    # -- validation ------------------------------------------------------------------------
    def problems(self) -> list[LayoutProblem]:
        """Every structural problem at once, each with its key path."""
        return structural_problems(self)

    def validated(self) -> Layout:
        found = self.problems()
        if found:
            raise LayoutError(found)
        return self

    def for_rank(
        self,
        tp: int,
        rank: int = 0,
        *,
        num_blocks: int = 16,
        logical_block_tokens: int | None = None,
        kernel_block_tokens: int | None = None,
        pp: int = 1,
        stage: int = 0,
        partition: Sequence[int] | None = None,
    ) -> RankLayout:
        """Resolve every byte for one rank of a TP-``tp`` engine holding ``num_blocks`` blocks.

        ``pp``/``stage``: the rank is TP rank ``rank`` of pipeline stage ``stage`` of
        ``pp`` and holds only that stage's layers (split by vLLM's rule, or by
        ``partition``, layer counts per stage as in ``VLLM_PP_LAYER_PARTITION``).
        """
        return RankLayout.build(self, tp=tp, rank=rank, num_blocks=num_blocks,
                                logical_block_tokens=logical_block_tokens,
                                kernel_block_tokens=kernel_block_tokens,
                                pp=pp, stage=stage, partition=partition)

    def stage_layers(self, pp: int, stage: int, partition: Sequence[int] | None = None) -> tuple[str, ...]:
        """The cache layers stage ``stage`` of a PP-``pp`` engine holds, in layout order."""
        held = stage_range(self.num_model_layers(), pp, stage, partition, source=self.source)
        return tuple(name for name, index in self.layer_indices().items() if index in held)


@attrs.frozen
class RankLayout:
    """One rank's resolved layout. Build with :meth:`Layout.for_rank`.

    What a rank registers and what the planner compiles against; still address-free:
    offsets are bytes from each region's base.
    """

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
    #: pipeline parallelism: this rank is TP rank ``rank`` of stage ``stage`` of ``pp``
    pp: int = 1
    stage: int = 0
    #: explicit layer counts per stage (``None``: vLLM's split rule)
    partition: tuple[int, ...] | None = None

    @property
    def global_rank(self) -> int:
        """The rank in the whole engine: ``stage * tp + rank`` (vLLM's numbering)."""
        return self.stage * self.tp + self.rank

    @property
    def layers(self) -> tuple[str, ...]:
        """The cache layers this rank holds (its stage's), in layout order."""
        return tuple(dict.fromkeys(p.layer for p in self.placements))

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
        """Everything a peer needs to plan against this rank, as plain data (the handshake's
        layout; :func:`~hybridxfer.layout.rank_layout_from_dict` reads it back)."""
        return {
            "layout": self.layout.to_dict(),
            "tp": self.tp,
            "rank": self.rank,
            "num_blocks": self.num_blocks,
            "logical_block_tokens": self.logical_block_tokens,
            "kernel_block_tokens": self.kernel_block_tokens,
            # pipeline fields only when pipelined: a TP-only rank's handshake is unchanged
            **({"pp": self.pp, "stage": self.stage} if self.pp > 1 or self.partition else {}),
            **({"partition": list(self.partition)} if self.partition else {}),
        }

    def to_json(self) -> str:
        """:meth:`instance_dict` as JSON (:func:`~hybridxfer.layout.rank_layout_from_json`)."""
        return json.dumps(self.instance_dict(), sort_keys=True)

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
        pp: int = 1,
        stage: int = 0,
        partition: Sequence[int] | None = None,
    ) -> RankLayout:
        layout = layout.validated()
        split = tuple(partition) if partition is not None else None
        held = frozenset(layout.stage_layers(pp, stage, split)) if pp > 1 or split else None
        placed = place(layout, tp=tp, rank=rank, num_blocks=num_blocks,
                       logical_block_tokens=logical_block_tokens, kernel_block_tokens=kernel_block_tokens,
                       layers=held)
        return cls(
            layout=layout, tp=tp, rank=rank, num_blocks=num_blocks,
            logical_block_tokens=placed.logical_block_tokens,
            kernel_block_tokens=placed.kernel_block_tokens,
            region_names=placed.region_names,
            region_page_bytes=placed.region_page_bytes,
            region_sizes=placed.region_sizes,
            placements=placed.placements,
            pp=pp, stage=stage, partition=split,
        )


def _layer_dict(lay: Layer) -> dict[str, Any]:
    out: dict[str, Any] = {"name": lay.name, "spec": lay.spec}
    if lay.index is not None:
        out["index"] = lay.index
    return out


def _view_dict(v: View) -> dict[str, Any]:
    out: dict[str, Any] = {"layer": v.layer}
    if v.pieces:
        out["pieces"] = list(v.pieces)
    if v.offset:
        out["offset"] = v.offset
    if v.slab:
        out["slab"] = v.slab
    return out


def _digest(data: Mapping[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]
