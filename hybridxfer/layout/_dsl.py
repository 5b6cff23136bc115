"""The layout DSL: TOML files in two forms that load to the same :class:`Layout`.

*Model form* (``[model]`` + ``[engine]``): layer pattern, model dimensions, a pooling rule
and a block policy — what a person writes. *Memory form* (``regions`` present): every
group, region and view spelled out — what ``hybridxfer layout expand`` prints. Both carry
``format = "hybridxfer.layout/1"``. Every problem in a file is reported at once, each with
file, line and key path.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import attrs

from hybridxfer.errors import LayoutError, LayoutProblem
from hybridxfer.layout._kinds import KINDS, LayerSpec, spec_from_fields
from hybridxfer.layout._layout import FORMAT, BlockPolicy, Group, Layer, Layout, Region, View
from hybridxfer.layout._locate import Locator

__all__ = ["dump_layout", "layout_from_dict", "load_layout", "loads_layout"]


class _Collector:
    """Accumulates problems with file and line; raises them all at the end."""

    def __init__(self, source: str, text: str | None) -> None:
        self.source = source
        self.locator = Locator(text) if text is not None else None
        self.problems: list[LayoutProblem] = []

    def add(self, path: str, message: str) -> None:
        line = self.locator.line_of(path) if self.locator else None
        self.problems.append(LayoutProblem(message, file=self.source, line=line, path=path))

    def adopt(self, problems: list[LayoutProblem], prefix_note: str = "") -> None:
        for p in problems:
            self.add(p.path or "", p.message + prefix_note)

    def raise_if_any(self) -> None:
        if self.problems:
            raise LayoutError(self.problems)


def load_layout(path: str | Path) -> Layout:
    """Load a layout file (either form). Raises :class:`LayoutError` naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LayoutError([LayoutProblem(f"cannot read layout file: {exc}", file=str(path))]) from exc
    return loads_layout(text, source=str(path))


def loads_layout(text: str, source: str = "<string>") -> Layout:
    """Load a layout from TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        found = re.search(r"\(at line (\d+), column \d+\)", msg)
        line = int(found.group(1)) if found else None
        raise LayoutError([LayoutProblem(f"invalid TOML: {msg}", file=source, line=line)]) from exc
    return _from_data(data, source, text)


def layout_from_dict(data: dict[str, Any], source: str = "<dict>") -> Layout:
    """Build a layout from already-parsed data (e.g. a peer's handshake)."""
    return _from_data(data, source, None)


def _from_data(data: dict[str, Any], source: str, text: str | None) -> Layout:
    col = _Collector(source, text)
    fmt = data.get("format")
    if fmt != FORMAT:
        col.add("format", f"expected format = {FORMAT!r}, got {fmt!r}")
        col.raise_if_any()
    if "regions" in data:
        layout = _memory_form(data, col)
        note = ""
    elif "model" in data and isinstance(data["model"], dict):
        from hybridxfer.layout._modelform import expand_model_form

        layout = expand_model_form(data, col)
        note = " (in the expanded memory form)"
    else:
        col.add("regions", "a layout needs either a [model] table (model form) or regions (memory form)")
        layout = None
    col.raise_if_any()
    assert layout is not None
    col.adopt(layout.problems(), note)
    col.raise_if_any()
    return attrs.evolve(layout, source=source)


# -- memory form ------------------------------------------------------------------------------

_TOP_KEYS = {"format", "model", "block", "specs", "layers", "groups", "regions"}


def _check_keys(col: _Collector, path: str, table: dict[str, Any], allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            col.add(f"{path}.{key}" if path else key, f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")


def _typed(col: _Collector, path: str, value: Any, kind: type | tuple[type, ...], what: str) -> bool:
    if isinstance(value, bool) and kind is int:
        col.add(path, f"must be {what}, got {value!r}")
        return False
    if not isinstance(value, kind):
        col.add(path, f"must be {what}, got {type(value).__name__} {value!r}")
        return False
    return True


def parse_specs(col: _Collector, raw: Any, path: str = "specs") -> dict[str, LayerSpec]:
    specs: dict[str, LayerSpec] = {}
    if not _typed(col, path, raw, dict, "a table of named layer specs"):
        return specs
    for name, fields in raw.items():
        p = f"{path}.{name}"
        if not _typed(col, p, fields, dict, "a table"):
            continue
        kind = fields.get("kind")
        if kind not in KINDS:
            col.add(f"{p}.kind", f"unknown kind {kind!r} (known: {', '.join(sorted(KINDS))})")
            continue
        cls = KINDS[kind]
        allowed = {f.name for f in attrs.fields(cls)} | {"kind"}
        if kind == "sliding_window":
            allowed = (allowed - {"sliding_window"}) | {"window"}
        extra = [k for k in fields if k not in allowed]
        for k in extra:
            col.add(f"{p}.{k}", f"unknown field {k!r} for kind {kind!r} (allowed: {', '.join(sorted(allowed))})")
        if extra:
            continue
        try:
            specs[name] = spec_from_fields(fields)
        except TypeError as exc:
            missing = [f.name for f in attrs.fields(cls)
                       if f.default is attrs.NOTHING and f.name not in fields
                       and not (kind == "sliding_window" and f.name == "sliding_window")]
            if kind == "sliding_window" and "window" not in fields:
                missing.append("window")
            col.add(p, f"missing field(s) {', '.join(missing)} for kind {kind!r}" if missing else str(exc))
        except ValueError as exc:
            if len(exc.args) >= 4 and isinstance(exc.args[1], attrs.Attribute):
                field, options, value = exc.args[1].name, exc.args[2], exc.args[3]
                col.add(f"{p}.{field}", f"must be one of {', '.join(map(repr, options))}, got {value!r}")
            else:
                field = str(exc).split(" ", 1)[0].rstrip(":")
                col.add(f"{p}.{field}" if field in fields else p, str(exc))
    return specs


def parse_block(col: _Collector, raw: Any, path: str = "block") -> BlockPolicy:
    if raw is None:
        return BlockPolicy()
    if not _typed(col, path, raw, dict, "a table"):
        return BlockPolicy()
    _check_keys(col, path, raw, {"logical", "kernel", "align", "uniform_page"})
    kwargs = {k: raw[k] for k in ("logical", "kernel", "align", "uniform_page") if k in raw}
    if "logical" in kwargs and kwargs["logical"] != "equalise":
        _typed(col, f"{path}.logical", kwargs["logical"], int, "a positive integer or 'equalise'")
    if "kernel" in kwargs and kwargs["kernel"] != "logical":
        _typed(col, f"{path}.kernel", kwargs["kernel"], int, "a positive integer or 'logical'")
    if "align" in kwargs:
        _typed(col, f"{path}.align", kwargs["align"], int, "a positive integer")
    if "uniform_page" in kwargs:
        _typed(col, f"{path}.uniform_page", kwargs["uniform_page"], bool, "true or false")
    return BlockPolicy(**kwargs)


def _memory_form(data: dict[str, Any], col: _Collector) -> Layout | None:
    _check_keys(col, "", data, _TOP_KEYS)
    model = data.get("model")
    _typed(col, "model", model, str, "the model id string")
    block = parse_block(col, data.get("block"))
    specs = parse_specs(col, data.get("specs", {}))
    layers: list[Layer] = []
    for i, item in enumerate(_list(col, "layers", data.get("layers"))):
        if _typed(col, f"layers[{i}]", item, dict, "a table {name, spec}"):
            _check_keys(col, f"layers[{i}]", item, {"name", "spec"})
            if _typed(col, f"layers[{i}].name", item.get("name"), str, "a string") and \
                    _typed(col, f"layers[{i}].spec", item.get("spec"), str, "a string"):
                layers.append(Layer(item["name"], item["spec"]))
    groups: list[Group] = []
    for i, item in enumerate(_list(col, "groups", data.get("groups"))):
        if _typed(col, f"groups[{i}]", item, dict, "a table {name, layers}"):
            _check_keys(col, f"groups[{i}]", item, {"name", "layers"})
            names = item.get("layers", [])
            if _typed(col, f"groups[{i}].name", item.get("name"), str, "a string") and \
                    _typed(col, f"groups[{i}].layers", names, list, "a list of layer names"):
                groups.append(Group(item["name"], tuple(str(n) for n in names)))
    regions: list[Region] = []
    for i, item in enumerate(_list(col, "regions", data.get("regions"))):
        p = f"regions[{i}]"
        if not _typed(col, p, item, dict, "a table {name, views}"):
            continue
        _check_keys(col, p, item, {"name", "views", "slabs"})
        views: list[View] = []
        for j, v in enumerate(_list(col, f"{p}.views", item.get("views"))):
            vp = f"{p}.views[{j}]"
            if not _typed(col, vp, v, dict, "a table {layer, pieces?, offset?, slab?}"):
                continue
            _check_keys(col, vp, v, {"layer", "pieces", "offset", "slab"})
            ok = _typed(col, f"{vp}.layer", v.get("layer"), str, "a layer name")
            ok &= _typed(col, f"{vp}.offset", v.get("offset", 0), int, "an integer")
            ok &= _typed(col, f"{vp}.slab", v.get("slab", 0), int, "an integer")
            ok &= _typed(col, f"{vp}.pieces", v.get("pieces", []), list, "a list of piece names")
            if ok:
                views.append(View(v["layer"], tuple(v.get("pieces", ())), v.get("offset", 0), v.get("slab", 0)))
        slabs = item.get("slabs", 1)
        if _typed(col, f"{p}.name", item.get("name"), str, "a string") and \
                _typed(col, f"{p}.slabs", slabs, int, "an integer"):
            regions.append(Region(item["name"], tuple(views), slabs))
    if col.problems or not isinstance(model, str):
        return None
    return Layout(model=model, specs=tuple(specs.items()), layers=tuple(layers),
                  groups=tuple(groups), regions=tuple(regions), block=block)


def _list(col: _Collector, path: str, value: Any) -> list[Any]:
    if value is None:
        col.add(path, "missing (a list is required)")
        return []
    if not isinstance(value, list):
        col.add(path, f"must be a list, got {type(value).__name__}")
        return []
    return value


# -- dumping ---------------------------------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)


def dump_layout(layout: Layout) -> str:
    """The explicit memory form as TOML text (loads back to an equal layout)."""
    d = layout.to_dict()
    out = [f"format = {_toml_value(d['format'])}", f"model = {_toml_value(d['model'])}"]
    out.append("layers = [")
    out.extend(f"  {_toml_value(item)}," for item in d["layers"])
    out.append("]")
    out.append("")
    out.append("[block]")
    out.extend(f"{k} = {_toml_value(v)}" for k, v in d["block"].items())
    for name, fields in d["specs"].items():
        out.append("")
        out.append(f"[specs.{_key(name)}]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in fields.items())
    for g in d["groups"]:
        out.append("")
        out.append("[[groups]]")
        out.append(f"name = {_toml_value(g['name'])}")
        out.append(f"layers = {_toml_value(g['layers'])}")
    for r in d["regions"]:
        out.append("")
        out.append("[[regions]]")
        out.append(f"name = {_toml_value(r['name'])}")
        if r["slabs"] != 1:
            out.append(f"slabs = {r['slabs']}")
        out.append("views = [")
        out.extend(f"  {_toml_value(v)}," for v in r["views"])
        out.append("]")
    return "\n".join(out) + "\n"
