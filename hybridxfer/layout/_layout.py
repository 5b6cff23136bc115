"""The layout: how one engine arranges a model's caches in memory, independent of TP.

A :class:`Layout` names the model's layers and their kinds (:mod:`._kinds`), the KV-cache
*groups* (layers that share one block table per request), and the *regions* (physical
buffers a rank registers) with the *views* that place each layer's pieces in them.
Several views may lie over the same bytes of a region when they belong to different
groups: that is how engines pool an attention layer and Mamba layers in one tensor (the
block manager never gives the same block ID to two groups at once).

A layout holds no addresses and no TP-specific numbers; :meth:`Layout.for_rank` makes a
:class:`~hybridxfer.layout.RankLayout` with every byte offset resolved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

from hybridxfer.errors import LayoutError, LayoutProblem
from hybridxfer.layout._kinds import LayerSpec, model_fields, spec_fields

if TYPE_CHECKING:
    from hybridxfer.layout._instance import RankLayout

__all__ = ["BlockPolicy", "FORMAT", "Group", "Layer", "Layout", "Region", "View"]

FORMAT = "hybridxfer.layout/1"


@attrs.frozen
class BlockPolicy:
    """How the engine chooses block sizes (tokens), per rank.

    ``logical``: tokens per block-manager block, an integer or ``"equalise"`` — vLLM's
    hybrid rule: the smallest multiple of ``align`` whose attention page holds the largest
    state page, so one page size fits both. ``kernel``: tokens per attention-kernel block, an
    integer dividing ``logical`` or ``"logical"`` (the same). ``uniform_page``: every region
    gets the largest page (engines that allocate one pool of equal pages).
    """

    logical: int | Literal["equalise"] = 16
    kernel: int | Literal["logical"] = "logical"
    align: int = 16
    uniform_page: bool = False


@attrs.frozen
class Layer:
    """One model layer that holds cache, and the name of its spec."""

    name: str
    spec: str


@attrs.frozen
class Group:
    """Layers that share one block table per request (a KV-cache group)."""

    name: str
    layers: tuple[str, ...]


@attrs.frozen
class View:
    """Where one layer's pieces lie in a region's page.

    The pieces (all of the layer's when ``pieces`` is empty) are packed back to back from
    ``offset`` bytes into each page; token pieces take ``logical / kernel`` kernel
    sub-pages each. ``slab`` selects a layer-major slab for engines that stack layers in
    one tensor (``[layers, blocks, ...]``, as SGLang's state pools do).
    """

    layer: str
    pieces: tuple[str, ...] = ()
    offset: int = 0
    slab: int = 0


@attrs.frozen
class Region:
    """One physical buffer of a rank: ``slabs × num_blocks`` pages of equal size."""

    name: str
    views: tuple[View, ...]
    slabs: int = 1


@attrs.frozen
class Layout:
    """A model's cache arrangement in one engine. Validate with :meth:`problems`."""

    model: str
    specs: tuple[tuple[str, LayerSpec], ...]
    layers: tuple[Layer, ...]
    groups: tuple[Group, ...]
    regions: tuple[Region, ...]
    block: BlockPolicy = BlockPolicy()
    #: the file it was loaded from, for error messages (not part of identity or digest)
    source: str | None = attrs.field(default=None, eq=False, repr=False)

    # -- lookups ---------------------------------------------------------------------------
    def spec_map(self) -> dict[str, LayerSpec]:
        return dict(self.specs)

    def layer_spec(self, layer: str) -> LayerSpec:
        specs = self.spec_map()
        for lay in self.layers:
            if lay.name == layer:
                return specs[lay.spec]
        raise KeyError(layer)

    def group_of(self) -> dict[str, str]:
        """Layer name -> group name."""
        return {layer: g.name for g in self.groups for layer in g.layers}

    # -- identity --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The explicit (memory) form, as plain data: what ``layout expand`` prints."""
        block: dict[str, Any] = {"logical": self.block.logical, "kernel": self.block.kernel,
                                 "align": self.block.align, "uniform_page": self.block.uniform_page}
        return {
            "format": FORMAT,
            "model": self.model,
            "block": block,
            "specs": {name: spec_fields(spec) for name, spec in self.specs},
            "layers": [{"name": lay.name, "spec": lay.spec} for lay in self.layers],
            "groups": [{"name": g.name, "layers": list(g.layers)} for g in self.groups],
            "regions": [
                {"name": r.name, "slabs": r.slabs,
                 "views": [_view_dict(v) for v in r.views]}
                for r in self.regions
            ],
        }

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
        from hybridxfer.layout._validate import structural_problems

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
    ) -> RankLayout:
        """Resolve every byte for one rank of a TP-``tp`` engine holding ``num_blocks`` blocks."""
        from hybridxfer.layout._instance import RankLayout

        return RankLayout.build(self, tp=tp, rank=rank, num_blocks=num_blocks,
                                logical_block_tokens=logical_block_tokens,
                                kernel_block_tokens=kernel_block_tokens)


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
