"""Expand the compact *model form* of the DSL into an explicit :class:`Layout`.

The model form names the layers (a pattern string such as Nemotron-H's ``M-M*-…`` with a
legend, or an explicit list) and a pooling rule for the engine:

``hybrid-shared``
    vLLM's hybrid allocator: layers of one spec are split into KV-cache groups of
    ``group_size`` layers (the smaller layer count, unless the larger is under 1.5× it),
    and region *t* is shared by the *t*-th layer of every group. All pages equal.
``per-layer``
    One region per layer, one group per spec (dense and pure-SSM models, simple engines).
``state-pools``
    SGLang-style: attention layers in per-layer regions (K and V apart when the spec says
    ``kv = "separate"``), state pieces in one pool region per spec and piece, with one
    layer-major slab per layer.
"""

from __future__ import annotations

import math
from typing import Any

from hybridxfer.layout._kinds import LayerSpec
from hybridxfer.layout._layout import Layout
from hybridxfer.layout._parse import Collector, check_keys, parse_block, parse_specs, typed
from hybridxfer.layout._parts import BlockPolicy, Group, Layer, Region, View
from hybridxfer.layout._validate import is_token_spec

__all__ = ["POOLINGS", "expand_model_form"]

POOLINGS = ("hybrid-shared", "per-layer", "state-pools")


def expand_model_form(data: dict[str, Any], col: Collector) -> Layout | None:
    check_keys(col, "", data, {"format", "model", "specs", "engine"})
    model = data["model"]
    check_keys(col, "model", model, {"id", "pattern", "legend", "layers", "layer_name"})
    model_id = model.get("id")
    typed(col, "model.id", model_id, str, "the model id string")
    specs = parse_specs(col, data.get("specs", {}))
    engine = data.get("engine", {})
    if not typed(col, "engine", engine, dict, "a table"):
        engine = {}
    check_keys(col, "engine", engine, {"pooling", "block"})
    pooling = engine.get("pooling", "hybrid-shared")
    if pooling not in POOLINGS:
        col.add("engine.pooling", f"unknown pooling {pooling!r} (known: {', '.join(POOLINGS)})")
    block = parse_block(col, engine.get("block"), "engine.block")

    defined = set(data.get("specs", {})) if isinstance(data.get("specs"), dict) else set()
    per_layer = _layer_specs(model, specs, defined, col)
    name_fmt = model.get("layer_name", "layers.{i}")
    try:
        if not isinstance(name_fmt, str):
            raise TypeError
        name_fmt.format(i=0, spec="s")
    except (KeyError, IndexError, ValueError, TypeError, AttributeError):
        col.add("model.layer_name", f"must be a format string using only {{i}} (and {{spec}}), got {name_fmt!r}")
    if col.problems or per_layer is None:
        return None
    layers: list[Layer] = []
    for i, names in enumerate(per_layer):
        for spec_name in names:
            fmt = name_fmt if len(names) == 1 else name_fmt + ".{spec}"
            layers.append(Layer(fmt.format(i=i, spec=spec_name), spec_name, i))
    # model layer indices are spelled out only where they differ from layout positions
    # (cache-less layers, parallel hybrid blocks): what a pipeline split counts
    default_indices = len(layers) == len(per_layer) and all(lay.index == i for i, lay in enumerate(layers))
    model_layers: int | None = None if default_indices else len(per_layer)
    if default_indices:
        layers = [Layer(lay.name, lay.spec) for lay in layers]
    if pooling == "hybrid-shared":
        groups, regions = _hybrid_shared(layers, specs)
        block = BlockPolicy(block.logical, block.kernel, block.align, uniform_page=True)
    elif pooling == "per-layer":
        groups, regions = _per_layer(layers)
    else:
        groups, regions = _state_pools(layers, specs)
    return Layout(model=model_id, specs=tuple(specs.items()), layers=tuple(layers),
                  groups=tuple(groups), regions=tuple(regions), block=block, model_layers=model_layers)


def _layer_specs(
    model: dict[str, Any], specs: dict[str, LayerSpec], defined: set[str], col: Collector
) -> list[list[str]] | None:
    """Spec names held by each model layer (empty list: the layer has no cache)."""

    def as_names(value: Any, path: str) -> list[str] | None:
        if value in ("", None):
            return []
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            col.add(path, f"must be a spec name, a list of spec names, or \"\", got {value!r}")
            return None
        for v in items:
            if v not in defined:
                col.add(path, f"unknown spec {v!r} (defined: {', '.join(sorted(defined)) or 'none'})")
                return None
            if v not in specs:
                return None  # defined but invalid: already reported at specs.<name>
        return list(items)

    if "pattern" in model and "layers" in model:
        col.add("model.layers", "give either pattern (+ legend) or layers, not both")
        return None
    if "layers" in model:
        raw = model["layers"]
        if not isinstance(raw, list):
            col.add("model.layers", "must be a list with one entry per model layer")
            return None
        found = [as_names(v, f"model.layers[{i}]") for i, v in enumerate(raw)]
        names = [o for o in found if o is not None]
        return None if len(names) != len(found) else names
    pattern = model.get("pattern")
    legend = model.get("legend")
    if not isinstance(pattern, str) or not pattern:
        col.add("model.pattern", "a model needs a layer pattern string or a layers list")
        return None
    if not isinstance(legend, dict):
        col.add("model.legend", "a pattern needs a legend table mapping each letter to spec name(s)")
        return None
    meaning: dict[str, list[str]] = {}
    for letter, value in legend.items():
        spec_names = as_names(value, f"model.legend.{letter}")
        if spec_names is not None:
            meaning[letter] = spec_names
    out: list[list[str]] = []
    for i, letter in enumerate(pattern):
        if letter not in meaning:
            if letter not in legend:
                col.add("model.pattern", f"letter {letter!r} at position {i} is not in the legend "
                        f"(legend has {', '.join(repr(k) for k in legend)})")
            return None
        out.append(meaning[letter])
    return out


def _by_spec(layers: list[Layer], specs: dict[str, LayerSpec]) -> list[tuple[str, list[Layer]]]:
    """Layers grouped by spec name; attention-like specs first, each in first-seen order."""
    order: dict[str, list[Layer]] = {}
    for lay in layers:
        order.setdefault(lay.spec, []).append(lay)
    items = list(order.items())
    return sorted(items, key=lambda kv: not is_token_spec(specs[kv[0]].kind_name))


def _hybrid_shared(layers: list[Layer], specs: dict[str, LayerSpec]) -> tuple[list[Group], list[Region]]:
    by_spec = _by_spec(layers, specs)
    counts = [len(ls) for _, ls in by_spec]
    small, large = min(counts), max(counts)
    group_size = large if large < 1.5 * small else small
    groups: list[Group] = []
    for spec_name, ls in by_spec:
        for k in range(math.ceil(len(ls) / group_size)):
            chunk = ls[k * group_size:(k + 1) * group_size]
            groups.append(Group(f"{spec_name}.{k}", tuple(lay.name for lay in chunk)))
    regions = [
        Region(f"kv_cache.{t}", tuple(View(g.layers[t]) for g in groups if t < len(g.layers)))
        for t in range(group_size)
    ]
    return groups, regions


def _per_layer(layers: list[Layer]) -> tuple[list[Group], list[Region]]:
    order: dict[str, list[str]] = {}
    for lay in layers:
        order.setdefault(lay.spec, []).append(lay.name)
    groups = [Group(spec, tuple(names)) for spec, names in order.items()]
    regions = [Region(lay.name, (View(lay.name),)) for lay in layers]
    return groups, regions


def _state_pools(layers: list[Layer], specs: dict[str, LayerSpec]) -> tuple[list[Group], list[Region]]:
    groups: list[Group] = []
    regions: list[Region] = []
    for spec_name, ls in _by_spec(layers, specs):
        spec = specs[spec_name]
        groups.append(Group(spec_name, tuple(lay.name for lay in ls)))
        pieces = [p.name for p in spec.pieces(1, 1)]
        if is_token_spec(spec.kind_name):
            for lay in ls:
                if len(pieces) == 1:
                    regions.append(Region(lay.name, (View(lay.name),)))
                else:
                    regions.extend(Region(f"{lay.name}.{p}", (View(lay.name, (p,)),)) for p in pieces)
        else:
            for p in pieces:
                regions.append(Region(f"{spec_name}.{p}",
                                      tuple(View(lay.name, (p,), slab=j) for j, lay in enumerate(ls)),
                                      slabs=len(ls)))
    return groups, regions
