"""docs/reliability.md stays true: every test it cites exists, every reliability test is cited.

Why a test: a proof table that drifts from the tests proves nothing. Ids are checked by
importing the cited module and looking up the class and function (and, for
parametrised ids, that the parameter id is one pytest would generate for it).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"
HERE = Path(__file__).resolve().parent
ID = re.compile(r"`((?:tests|transports)/[\w./-]+\.py)(?:::([\w:]+)(?:\[([^\]]+)\])?)?`")


def _cited() -> list[tuple[str, str | None, str | None]]:
    return [(m.group(1), m.group(2), m.group(3)) for m in ID.finditer(DOC.read_text(encoding="utf-8"))]


def _load(path: str) -> ModuleType:
    file = REPO / path
    name = "_reliability_doc_" + re.sub(r"\W", "_", path)
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(file.parent))  # plugin test modules import their siblings
    try:
        spec = importlib.util.spec_from_file_location(name, file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(file.parent))
    return module


def _param_ids(func: object) -> set[str] | None:
    """The ids pytest generates from the function's parametrize marks (None: not parametrised)."""
    marks = [m for m in getattr(func, "pytestmark", []) if m.name == "parametrize"]
    if not marks:
        return None
    ids = [""]
    for mark in marks:  # the decorator nearest the function is listed, and named, first
        values = mark.args[1]
        parts = [str(v) if not isinstance(v, tuple) else "-".join(str(x) for x in v) for v in values]
        ids = [f"{i}-{p}" if i else p for i in ids for p in parts]
    return set(ids)


def test_every_cited_test_exists() -> None:
    cited = _cited()
    assert len(cited) > 40
    missing = []
    for path, qualname, param in cited:
        if not (REPO / path).is_file():
            missing.append(path)
            continue
        if qualname is None:
            continue
        obj: object = _load(path)
        for part in qualname.split("::"):
            obj = getattr(obj, part, None)
            if obj is None:
                missing.append(f"{path}::{qualname}")
                break
        else:
            if param is not None:
                ids = _param_ids(obj)
                if ids is None or param not in ids:
                    missing.append(f"{path}::{qualname}[{param}] (ids: {sorted(ids or [])})")
    assert not missing, missing


def test_every_reliability_test_is_cited() -> None:
    cited = {(path, qualname) for path, qualname, _ in _cited()}
    cited_params = {(path, qualname, param) for path, qualname, param in _cited()}
    uncited = []
    for file in sorted(HERE.glob("test_*.py")):
        path = file.relative_to(REPO).as_posix()
        module = _load(path)
        for name, func in inspect.getmembers(module, inspect.isfunction):
            if not name.startswith("test_") or func.__module__ != module.__name__:
                continue
            if (path, name) not in cited:
                uncited.append(f"{path}::{name}")
                continue
            for param in sorted(_param_ids(func) or []):
                if (path, name, param) not in cited_params:
                    uncited.append(f"{path}::{name}[{param}]")
    uncited = [u for u in uncited if "test_reliability_table.py" not in u]
    assert not uncited, f"tests missing from docs/reliability.md: {uncited}"
