"""Layouts: address-free, declarative descriptions of how a rank holds its caches.

Write a layout once per model and engine (a TOML file, see ``docs/dsl.md``), load it
with :func:`load_layout`, and resolve it per rank with :meth:`Layout.for_rank`.
"""

from __future__ import annotations

from hybridxfer.layout._dsl import dump_layout, layout_from_dict, load_layout, loads_layout
from hybridxfer.layout._instance import PlacedPiece, RankLayout
from hybridxfer.layout._kinds import (
    KINDS,
    AttentionSpec,
    GdnSpec,
    LayerSpec,
    Mamba1Spec,
    Mamba2Spec,
    MlaSpec,
)
from hybridxfer.layout._layout import FORMAT, BlockPolicy, Group, Layer, Layout, Region, View
from hybridxfer.layout._pieces import TOKEN_AXIS, Piece
from hybridxfer.layout._sharding import Segment, owned_units

__all__ = [
    "AttentionSpec",
    "BlockPolicy",
    "FORMAT",
    "GdnSpec",
    "Group",
    "KINDS",
    "Layer",
    "LayerSpec",
    "Layout",
    "Mamba1Spec",
    "Mamba2Spec",
    "MlaSpec",
    "Piece",
    "PlacedPiece",
    "RankLayout",
    "Region",
    "Segment",
    "TOKEN_AXIS",
    "View",
    "dump_layout",
    "layout_from_dict",
    "load_layout",
    "loads_layout",
    "owned_units",
]
