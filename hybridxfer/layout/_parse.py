"""The DSL's parsing toolkit, shared by the memory form and the model form.

A :class:`Collector` gathers every problem of a document with its file, line and key
path, so a file with five mistakes reports five; the helpers below check one value each
and report rather than raise.
"""

from __future__ import annotations

from typing import Any

import attrs

from hybridxfer.errors import LayoutError, LayoutProblem
from hybridxfer.layout._kinds import KINDS, LayerSpec, spec_from_fields
from hybridxfer.layout._locate import Locator
from hybridxfer.layout._parts import BlockPolicy

__all__ = ["Collector", "as_list", "check_keys", "parse_block", "parse_specs", "typed"]


class Collector:
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


def check_keys(col: Collector, path: str, table: dict[str, Any], allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            col.add(f"{path}.{key}" if path else key, f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")


def typed(col: Collector, path: str, value: Any, kind: type | tuple[type, ...], what: str) -> bool:
    if isinstance(value, bool) and kind is int:
        col.add(path, f"must be {what}, got {value!r}")
        return False
    if not isinstance(value, kind):
        col.add(path, f"must be {what}, got {type(value).__name__} {value!r}")
        return False
    return True


def as_list(col: Collector, path: str, value: Any) -> list[Any]:
    if value is None:
        col.add(path, "missing (a list is required)")
        return []
    if not isinstance(value, list):
        col.add(path, f"must be a list, got {type(value).__name__}")
        return []
    return value


def parse_specs(col: Collector, raw: Any, path: str = "specs") -> dict[str, LayerSpec]:
    specs: dict[str, LayerSpec] = {}
    if not typed(col, path, raw, dict, "a table of named layer specs"):
        return specs
    for name, fields in raw.items():
        p = f"{path}.{name}"
        if not typed(col, p, fields, dict, "a table"):
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


def parse_block(col: Collector, raw: Any, path: str = "block") -> BlockPolicy:
    if raw is None:
        return BlockPolicy()
    if not typed(col, path, raw, dict, "a table"):
        return BlockPolicy()
    check_keys(col, path, raw, {"logical", "kernel", "align", "uniform_page"})
    kwargs = {k: raw[k] for k in ("logical", "kernel", "align", "uniform_page") if k in raw}
    if "logical" in kwargs and kwargs["logical"] != "equalise":
        typed(col, f"{path}.logical", kwargs["logical"], int, "a positive integer or 'equalise'")
    if "kernel" in kwargs and kwargs["kernel"] != "logical":
        typed(col, f"{path}.kernel", kwargs["kernel"], int, "a positive integer or 'logical'")
    if "align" in kwargs:
        typed(col, f"{path}.align", kwargs["align"], int, "a positive integer")
    if "uniform_page" in kwargs:
        typed(col, f"{path}.uniform_page", kwargs["uniform_page"], bool, "true or false")
    return BlockPolicy(**kwargs)
