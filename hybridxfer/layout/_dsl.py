"""The layout DSL: TOML files in two forms that load to the same :class:`Layout`.

*Model form* (``[model]`` + ``[engine]``, :mod:`._modelform`): layer pattern, model
dimensions, a pooling rule and a block policy — what a person writes. *Memory form*
(``regions`` present, :mod:`._memoryform`): every group, region and view spelled out —
what ``hybridxfer layout expand`` prints. Both carry ``format = "hybridxfer.layout/1"``.
Every problem in a file is reported at once, each with file, line and key path.

A rank layout travels to peers as plain data (:meth:`RankLayout.instance_dict`: the
memory form plus the rank's numbers); :func:`rank_layout_from_dict` reads it back
through the same checks, so a malformed peer layout is a :class:`LayoutError`.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from hybridxfer.errors import LayoutError, LayoutProblem
from hybridxfer.layout._layout import FORMAT, Layout, RankLayout
from hybridxfer.layout._memoryform import memory_form
from hybridxfer.layout._modelform import expand_model_form
from hybridxfer.layout._parse import Collector

__all__ = [
    "dump_layout",
    "layout_from_dict",
    "load_layout",
    "loads_layout",
    "rank_layout_from_dict",
    "rank_layout_from_json",
]

#: The numbers beside the layout in :meth:`RankLayout.instance_dict`.
_RANK_FIELDS = ("tp", "rank", "num_blocks", "logical_block_tokens", "kernel_block_tokens")


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
    col = Collector(source, text)
    fmt = data.get("format")
    if fmt != FORMAT:
        col.add("format", f"expected format = {FORMAT!r}, got {fmt!r}")
        col.raise_if_any()
    if "regions" in data:
        layout = memory_form(data, col)
        note = ""
    elif "model" in data and isinstance(data["model"], dict):
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


def rank_layout_from_dict(data: Mapping[str, Any], source: str = "<peer>") -> RankLayout:
    """Read back :meth:`RankLayout.instance_dict` (a peer's layout) and resolve it again.

    Raises :class:`LayoutError` naming every missing or mistyped field, or the layout's
    own problems; never a ``KeyError`` or ``TypeError``.
    """
    if not isinstance(data, Mapping):
        raise LayoutError([LayoutProblem(f"a rank layout must be a table, got {type(data).__name__}", file=source)])
    problems = [LayoutProblem(f"must be a non-negative integer, got {data.get(key)!r}", file=source, path=key)
                for key in _RANK_FIELDS
                if not isinstance(data.get(key), int) or isinstance(data.get(key), bool) or data[key] < 0]
    layout_data = data.get("layout")
    if not isinstance(layout_data, dict):
        problems.append(LayoutProblem(f"must be a layout table, got {type(layout_data).__name__}",
                                      file=source, path="layout"))
    if problems or not isinstance(layout_data, dict):
        raise LayoutError(problems)
    pp, stage, partition = data.get("pp", 1), data.get("stage", 0), data.get("partition")
    for key, value in (("pp", pp), ("stage", stage)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(LayoutProblem(f"must be a non-negative integer, got {value!r}", file=source, path=key))
    if partition is not None and not (isinstance(partition, list) and all(
            isinstance(c, int) and not isinstance(c, bool) for c in partition)):
        problems.append(LayoutProblem(f"must be a list of layer counts, got {partition!r}", file=source,
                                      path="partition"))
    if problems:
        raise LayoutError(problems)
    return layout_from_dict(layout_data, source=source).for_rank(
        data["tp"], data["rank"], num_blocks=data["num_blocks"],
        logical_block_tokens=data["logical_block_tokens"], kernel_block_tokens=data["kernel_block_tokens"],
        pp=pp, stage=stage, partition=partition)


def rank_layout_from_json(text: str | bytes, source: str = "<peer>") -> RankLayout:
    """:func:`rank_layout_from_dict` of :meth:`RankLayout.to_json` text."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LayoutError([LayoutProblem(f"rank layout is not JSON: {exc}", file=source)]) from exc
    return rank_layout_from_dict(data, source=source)


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
    if "model_layers" in d:
        out.append(f"model_layers = {d['model_layers']}")
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
