"""What a layout is made of: layers, KV-cache groups, regions and their views.

These values, and :class:`LayoutParts` — a layout's fields with their lookups — sit below
:class:`~hybridxfer.layout.Layout` because the structural checks (:mod:`._validate`) and
the per-rank byte placement (:mod:`._placement`) read them, while ``Layout`` offers both
as methods (``problems()``, ``for_rank()``): the checks and the placement depend on the
parts, the class on the checks and the placement, and nothing depends back.
"""

from __future__ import annotations

from typing import Literal

import attrs

from hybridxfer.layout._kinds import LayerSpec

__all__ = ["BlockPolicy", "Group", "Layer", "LayoutParts", "Region", "View"]


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
    """One model layer that holds cache, and the name of its spec.

    ``index`` is the layer's position among *all* the model's hidden layers (cache-less
    MLP/MoE layers count; two cache layers of one parallel-hybrid block share it), which
    is what a pipeline-parallel split counts; ``None`` means its position in the layout.
    """

    name: str
    spec: str
    index: int | None = None


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
class LayoutParts:
    """A layout's fields and the lookups over them; :class:`~hybridxfer.layout.Layout` is
    the class to build and use."""

    model: str
    specs: tuple[tuple[str, LayerSpec], ...]
    layers: tuple[Layer, ...]
    groups: tuple[Group, ...]
    regions: tuple[Region, ...]
    block: BlockPolicy = BlockPolicy()
    #: the model's hidden-layer count (cache-less layers included); ``None``: one per layer
    model_layers: int | None = None
    #: the file it was loaded from, for error messages (not part of identity or digest)
    source: str | None = attrs.field(default=None, eq=False, repr=False)

    def spec_map(self) -> dict[str, LayerSpec]:
        return dict(self.specs)

    def layer_spec(self, layer: str) -> LayerSpec:
        specs = self.spec_map()
        for lay in self.layers:
            if lay.name == layer:
                return specs[lay.spec]
        raise KeyError(layer)

    def layer_indices(self) -> dict[str, int]:
        """Layer name -> model layer index (what a pipeline-parallel split counts)."""
        return {lay.name: i if lay.index is None else lay.index for i, lay in enumerate(self.layers)}

    def num_model_layers(self) -> int:
        """Hidden layers of the model, cache-less ones included."""
        if self.model_layers is not None:
            return self.model_layers
        return max(self.layer_indices().values(), default=-1) + 1

    def group_of(self) -> dict[str, str]:
        """Layer name -> group name."""
        return {layer: g.name for g in self.groups for layer in g.layers}
