"""Layouts: address-free, declarative descriptions of how a rank holds its caches.

Write a layout once per model and engine (a TOML file, see ``docs/dsl.md``), load it
with :func:`load_layout`, and resolve it per rank with :meth:`Layout.for_rank`.
"""

from __future__ import annotations

from hybridxfer.layout._builtin import builtin_layout_path, builtin_layouts
from hybridxfer.layout._dsl import (
    dump_layout,
    layout_from_dict,
    load_layout,
    loads_layout,
    rank_layout_from_dict,
    rank_layout_from_json,
)
from hybridxfer.layout._dtypes import DTYPE_SIZES
from hybridxfer.layout._kinds import (
    KINDS,
    AttentionSpec,
    GdnSpec,
    LayerSpec,
    Mamba1Spec,
    Mamba2Spec,
    MlaSpec,
    model_fields,
)
from hybridxfer.layout._layout import FORMAT, Layout, RankLayout
from hybridxfer.layout._parts import BlockPolicy, Group, Layer, Region, View
from hybridxfer.layout._pieces import TOKEN_AXIS, Piece
from hybridxfer.layout._placement import PlacedPiece
from hybridxfer.layout._sharding import Segment, owned_units
from hybridxfer.layout._stages import stage_partition, stage_range
from hybridxfer.layout._validate import is_token_spec

__all__ = [
    "AttentionSpec",
    "BlockPolicy",
    "DTYPE_SIZES",
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
    "builtin_layout_path",
    "builtin_layouts",
    "dump_layout",
    "is_token_spec",
    "layout_from_dict",
    "load_layout",
    "loads_layout",
    "model_fields",
    "owned_units",
    "rank_layout_from_dict",
    "rank_layout_from_json",
    "stage_partition",
    "stage_range",
]
