"""The explicit *memory form* of the DSL: every group, region and view spelled out.

What ``hybridxfer layout expand`` prints and what a peer's handshake carries; the model
form (:mod:`._modelform`) expands to the same :class:`Layout`.
"""

from __future__ import annotations

from typing import Any

from hybridxfer.layout._layout import Layout
from hybridxfer.layout._parse import Collector, as_list, check_keys, parse_block, parse_specs, typed
from hybridxfer.layout._parts import Group, Layer, Region, View

__all__ = ["memory_form"]

_TOP_KEYS = {"format", "model", "model_layers", "block", "specs", "layers", "groups", "regions"}


def memory_form(data: dict[str, Any], col: Collector) -> Layout | None:
    check_keys(col, "", data, _TOP_KEYS)
    model = data.get("model")
    typed(col, "model", model, str, "the model id string")
    block = parse_block(col, data.get("block"))
    specs = parse_specs(col, data.get("specs", {}))
    layers: list[Layer] = []
    for i, item in enumerate(as_list(col, "layers", data.get("layers"))):
        if typed(col, f"layers[{i}]", item, dict, "a table {name, spec}"):
            check_keys(col, f"layers[{i}]", item, {"name", "spec", "index"})
            if typed(col, f"layers[{i}].name", item.get("name"), str, "a string") and \
                    typed(col, f"layers[{i}].spec", item.get("spec"), str, "a string") and \
                    typed(col, f"layers[{i}].index", item.get("index", 0), int, "a model layer index"):
                layers.append(Layer(item["name"], item["spec"], item.get("index")))
    groups: list[Group] = []
    for i, item in enumerate(as_list(col, "groups", data.get("groups"))):
        if typed(col, f"groups[{i}]", item, dict, "a table {name, layers}"):
            check_keys(col, f"groups[{i}]", item, {"name", "layers"})
            names = item.get("layers", [])
            if typed(col, f"groups[{i}].name", item.get("name"), str, "a string") and \
                    typed(col, f"groups[{i}].layers", names, list, "a list of layer names"):
                groups.append(Group(item["name"], tuple(str(n) for n in names)))
    regions: list[Region] = []
    for i, item in enumerate(as_list(col, "regions", data.get("regions"))):
        p = f"regions[{i}]"
        if not typed(col, p, item, dict, "a table {name, views}"):
            continue
        check_keys(col, p, item, {"name", "views", "slabs"})
        views: list[View] = []
        for j, v in enumerate(as_list(col, f"{p}.views", item.get("views"))):
            vp = f"{p}.views[{j}]"
            if not typed(col, vp, v, dict, "a table {layer, pieces?, offset?, slab?}"):
                continue
            check_keys(col, vp, v, {"layer", "pieces", "offset", "slab"})
            ok = typed(col, f"{vp}.layer", v.get("layer"), str, "a layer name")
            ok &= typed(col, f"{vp}.offset", v.get("offset", 0), int, "an integer")
            ok &= typed(col, f"{vp}.slab", v.get("slab", 0), int, "an integer")
            ok &= typed(col, f"{vp}.pieces", v.get("pieces", []), list, "a list of piece names")
            if ok:
                views.append(View(v["layer"], tuple(v.get("pieces", ())), v.get("offset", 0), v.get("slab", 0)))
        slabs = item.get("slabs", 1)
        if typed(col, f"{p}.name", item.get("name"), str, "a string") and \
                typed(col, f"{p}.slabs", slabs, int, "an integer"):
            regions.append(Region(item["name"], tuple(views), slabs))
    model_layers = data.get("model_layers")
    typed(col, "model_layers", model_layers if model_layers is not None else 1, int, "the model's layer count")
    if col.problems or not isinstance(model, str):
        return None
    return Layout(model=model, specs=tuple(specs.items()), layers=tuple(layers),
                  groups=tuple(groups), regions=tuple(regions), block=block, model_layers=model_layers)
