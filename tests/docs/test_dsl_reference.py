"""docs/dsl.md documents exactly the keys the loader accepts and the fields each kind has.

The code side is read from the code itself: every ``_check_keys(..., {allowed})`` call in
the DSL modules (by AST, so a new table forces a docs update), every kind's attrs fields,
and the pooling rules. The docs side is each table that follows a
``<!-- dsl-keys: NAME -->`` marker: the backticked names in its first column.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import attrs

from hybridxfer.layout import KINDS
from hybridxfer.layout import _memoryform, _modelform, _parse

ROOT = Path(__file__).resolve().parents[2]
DSL_MD = ROOT / "docs" / "dsl.md"

# (module, unparsed path argument of check_keys) -> the docs table that lists its keys
TABLES = {
    ("_memoryform", "''"): "memory",
    ("_parse", "path"): "block",
    ("_memoryform", "f'layers[{i}]'"): "layers",
    ("_memoryform", "f'groups[{i}]'"): "groups",
    ("_memoryform", "p"): "regions",
    ("_memoryform", "vp"): "views",
    ("_modelform", "''"): "model-form",
    ("_modelform", "'model'"): "model",
    ("_modelform", "'engine'"): "engine",
}


def _code_tables() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module in (_memoryform, _parse, _modelform):
        name = module.__name__.rsplit(".", 1)[1]
        tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "check_keys":
                key = (name, ast.unparse(node.args[1]))
                assert key in TABLES, f"new check_keys call {key}: document its keys in docs/dsl.md"
                allowed = node.args[3]
                keys = _memoryform._TOP_KEYS if isinstance(allowed, ast.Name) else ast.literal_eval(allowed)
                out[TABLES[key]] = set(keys)
    return out


def _kind_fields() -> dict[str, set[str]]:
    out = {}
    for kind, cls in KINDS.items():
        fields = {f.name for f in attrs.fields(cls)} | {"kind"}
        if kind == "sliding_window":
            fields = (fields - {"sliding_window"}) | {"window"}
        out[f"kind:{kind}"] = fields
    return out


def _doc_tables() -> dict[str, set[str]]:
    text = DSL_MD.read_text(encoding="utf-8")
    out = {}
    for m in re.finditer(r"<!-- dsl-keys: (?P<name>[\w:-]+) -->\n\n?(?P<table>(?:\|.*\n)+)", text):
        rows = m.group("table").splitlines()[2:]  # skip header and rule
        out[m.group("name")] = {re.findall(r"`([^`]+)`", row.split("|")[1])[0] for row in rows}
    return out


def test_every_dsl_key_is_documented_and_nothing_else() -> None:
    docs = _doc_tables()
    for table, keys in _code_tables().items():
        assert docs.get(table) == keys, f"docs/dsl.md table {table!r}: documented {docs.get(table)}, code {keys}"


def test_every_kind_field_is_documented_and_nothing_else() -> None:
    docs = _doc_tables()
    for table, fields in _kind_fields().items():
        assert docs.get(table) == fields, f"docs/dsl.md table {table!r}: documented {docs.get(table)}, code {fields}"


def test_every_pooling_rule_is_documented() -> None:
    assert _doc_tables().get("poolings") == set(_modelform.POOLINGS)


def test_no_stale_tables() -> None:
    known = set(TABLES.values()) | set(_kind_fields()) | {"poolings"}
    assert set(_doc_tables()) == known
