"""The promises of the architecture, checked: imports point one way (a layer matrix over
every pair of packages, no import cycles), nobody reaches into another module's private
names, the planner is sans-IO, public modules declare a sorted ``__all__``.

The import graph is read from the source (every ``import`` statement, at module level,
inside functions and under ``TYPE_CHECKING`` alike), so an import moved into a function
to dodge a cycle is still a cycle here.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import json
import pkgutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs
import pytest

import hybridxfer

ROOT = Path(__file__).resolve().parents[1]


def _plugins(kind: str) -> dict[str, Path]:
    """The distributions under ``transports/`` or ``engines/``: package name -> its source."""
    return {init.parent.name: init.parent for init in sorted((ROOT / kind).glob("*/src/*/__init__.py"))}


TRANSPORT_PLUGINS = _plugins("transports")
ENGINE_PLUGINS = _plugins("engines")
SOURCES = {"hybridxfer": ROOT / "hybridxfer", **TRANSPORT_PLUGINS, **ENGINE_PLUGINS}
PLUGINS = tuple(sorted([*TRANSPORT_PLUGINS, *ENGINE_PLUGINS]))

#: Layer -> the layers it may import directly. Closed under "imports what it imports", so
#: the direct check below also bounds what a layer loads indirectly (checked too).
LOWER: Mapping[str, frozenset[str]] = {
    "hybridxfer": frozenset(),
    "hybridxfer.errors": frozenset(),
    "hybridxfer._child": frozenset(),
    "hybridxfer.descriptors": frozenset({"hybridxfer.errors"}),
    "hybridxfer.layout": frozenset({"hybridxfer.errors"}),
    "hybridxfer.plan": frozenset({"hybridxfer.errors", "hybridxfer.descriptors", "hybridxfer.layout"}),
    "hybridxfer.transport": frozenset({"hybridxfer.errors", "hybridxfer.descriptors"}),
    "hybridxfer.render": frozenset({"hybridxfer.errors", "hybridxfer.descriptors", "hybridxfer.layout",
                                    "hybridxfer.plan"}),
    "hybridxfer.hf": frozenset({"hybridxfer.errors", "hybridxfer.layout"}),
    "hybridxfer.synthetic": frozenset({"hybridxfer.errors", "hybridxfer.descriptors", "hybridxfer.layout",
                                       "hybridxfer.plan"}),
    "hybridxfer.execute": frozenset({"hybridxfer.errors", "hybridxfer.descriptors", "hybridxfer.layout",
                                     "hybridxfer.plan", "hybridxfer.transport"}),
    "hybridxfer.discovery": frozenset({"hybridxfer.errors"}),
    "hybridxfer.engine": frozenset({"hybridxfer.errors", "hybridxfer.descriptors", "hybridxfer.layout",
                                    "hybridxfer.plan", "hybridxfer.transport", "hybridxfer.execute",
                                    "hybridxfer.hf"}),
    # A transport plugin builds on the transport contract; an engine plugin on the engine adapter.
    **{name: frozenset({"hybridxfer", "hybridxfer.errors", "hybridxfer.descriptors", "hybridxfer.transport"})
       for name in TRANSPORT_PLUGINS},
    **{name: frozenset({"hybridxfer", "hybridxfer.errors", "hybridxfer.descriptors", "hybridxfer.layout",
                        "hybridxfer.plan", "hybridxfer.transport", "hybridxfer.execute", "hybridxfer.engine",
                        "hybridxfer.hf"})
       for name in ENGINE_PLUGINS},
    "hybridxfer.testing": frozenset({"hybridxfer.errors", "hybridxfer._child", "hybridxfer.descriptors",
                                     "hybridxfer.layout", "hybridxfer.plan", "hybridxfer.transport",
                                     "hybridxfer.execute", "hybridxfer.engine", "hybridxfer.hf",
                                     "hybridxfer.synthetic"}),
    "hybridxfer.bench": frozenset({"hybridxfer.errors", "hybridxfer._child", "hybridxfer.descriptors",
                                   "hybridxfer.layout", "hybridxfer.plan", "hybridxfer.transport",
                                   "hybridxfer.execute", "hybridxfer.synthetic"}),
    "hybridxfer.cli": frozenset({"hybridxfer", "hybridxfer.errors", "hybridxfer._child", "hybridxfer.descriptors",
                                 "hybridxfer.layout", "hybridxfer.plan", "hybridxfer.transport",
                                 "hybridxfer.execute", "hybridxfer.engine", "hybridxfer.render", "hybridxfer.hf",
                                 "hybridxfer.synthetic", "hybridxfer.discovery", "hybridxfer.bench"}),
}


@attrs.frozen
class Edge:
    """``importer`` imports ``imported`` (both dotted module names) at ``line``; ``names``:
    the names a ``from`` import takes."""

    importer: str
    imported: str
    line: int
    names: tuple[str, ...] = ()


def _module_files() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for top, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = (top, *path.relative_to(folder).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _module_files()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _known(dotted: str) -> str | None:
    """The deepest known module that ``dotted`` names (``a.b.C`` -> ``a.b``)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in MODULES:
            return name
    return None


def _edges_of(module: str) -> Iterator[Edge]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name)
                if target is not None:
                    yield Edge(module, target, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # ``from pkg import sub`` imports the submodule; ``from pkg import name``, pkg itself.
                target = _known(f"{base}.{alias.name}") or _known(base)
                if target is not None:
                    yield Edge(module, target, node.lineno, (alias.name,))


EDGES = [e for m in MODULES for e in _edges_of(m) if e.imported != m]


def _layer(module: str) -> str:
    """The layer a module belongs to: the longest ``LOWER`` key that prefixes it."""
    keys = [k for k in LOWER if module == k or module.startswith(k + ".")]
    if not keys:
        raise AssertionError(f"module {module} belongs to no layer: give its package a row in LOWER")
    return max(keys, key=len)


def _cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in edges:
        graph[e.importer].add(e.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = itertools.count()
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = next(counter)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = next(counter)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def _describe(cycles: list[list[str]], edges: list[Edge]) -> str:
    lines = []
    for members in cycles:
        inside = set(members)
        lines.append("cycle: " + ", ".join(members))
        lines.extend(f"  {e.importer}:{e.line} -> {e.imported} {list(e.names)}"
                     for e in edges if e.importer in inside and e.imported in inside)
    return "\n".join(lines)


# -- the import graph ------------------------------------------------------------------------------

def test_the_scan_sees_function_level_and_type_checking_imports() -> None:
    found = {(e.importer, e.imported) for e in EDGES}
    assert ("hybridxfer.layout._dsl", "hybridxfer.layout._layout") in found
    assert ("hybridxfer.layout", "hybridxfer.layout._dsl") in found  # ``from pkg._mod import name``
    assert len(MODULES) > 100 and len(EDGES) > 300


def test_cycle_detection_finds_a_cycle_held_open_by_a_function_level_import() -> None:
    """Negative control: the detector reports a loop closed only inside a function body."""
    planted = [*EDGES, Edge("hybridxfer.layout._parts", "hybridxfer.layout._dsl", 1, ("load_layout",))]
    before = _cycles(EDGES)
    cycles = [c for c in _cycles(planted) if c not in before]
    assert len(cycles) == 1
    assert {"hybridxfer.layout._parts", "hybridxfer.layout._dsl", "hybridxfer.layout._layout"} <= set(cycles[0])
    assert "hybridxfer.layout._parts:1 -> hybridxfer.layout._dsl ['load_layout']" in _describe(cycles, planted)


def test_no_import_cycles() -> None:
    cycles = _cycles(EDGES)
    assert cycles == [], _describe(cycles, EDGES)


def test_the_layer_matrix_is_closed() -> None:
    """If A may import B and B may import C, A may import C: then the direct check bounds
    every indirect import too."""
    missing = sorted((a, c) for a, below in LOWER.items() for b in below for c in LOWER[b] if c not in below)
    assert missing == []


def test_every_module_has_a_layer() -> None:
    assert sorted(m for m in MODULES if not any(m == k or m.startswith(k + ".") for k in LOWER)) == []


PAIRS = sorted((a, b) for a in LOWER for b in LOWER if a != b)


@pytest.mark.parametrize(("importer", "imported"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_layer_pair(importer: str, imported: str) -> None:
    """Every ordered pair of layers: either ``importer`` may import ``imported``, or no
    module of it does, not even inside a function."""
    assert _layer_violations(EDGES, importer, imported) == []


def _layer_violations(edges: list[Edge], importer: str, imported: str) -> list[str]:
    if imported in LOWER[importer]:
        return []
    return [f"{e.importer}:{e.line} imports {e.imported}" for e in edges
            if _layer(e.importer) == importer and _layer(e.imported) == imported]


def test_the_layer_check_flags_a_forbidden_import_even_inside_a_function() -> None:
    """Negative control: planted edges that break promises are reported; allowed ones are not."""
    planted = [Edge("hybridxfer.cli._pull", "hybridxfer.testing.faults", 7),
               Edge("hybridxfer.plan._bind", "hybridxfer.transport", 3),
               Edge("hybridxfer.transport.loopback", "hybridxfer_ucxx", 9)]
    assert _layer_violations(planted, "hybridxfer.cli", "hybridxfer.testing") == [
        "hybridxfer.cli._pull:7 imports hybridxfer.testing.faults"]
    assert _layer_violations(planted, "hybridxfer.plan", "hybridxfer.transport") == [
        "hybridxfer.plan._bind:3 imports hybridxfer.transport"]
    assert _layer_violations(planted, "hybridxfer.transport", "hybridxfer_ucxx") == [
        "hybridxfer.transport.loopback:9 imports hybridxfer_ucxx"]
    assert _layer_violations(planted, "hybridxfer.cli", "hybridxfer.plan") == []


@pytest.mark.parametrize(("layer", "forbidden"), [
    ("hybridxfer.cli", "hybridxfer.testing"),
    ("hybridxfer.plan", "hybridxfer.transport"),
    ("hybridxfer.plan", "hybridxfer.execute"),
    ("hybridxfer.layout", "hybridxfer.plan"),
    *[(core, plugin) for core in LOWER if core.startswith("hybridxfer.") for plugin in PLUGINS],
])
def test_named_promises(layer: str, forbidden: str) -> None:
    """The promises the docs make, spelled out (the matrix implies them; this keeps them
    from being edited away)."""
    assert forbidden not in LOWER[layer]


def _private_names(edges: list[Edge]) -> list[str]:
    return [f"{e.importer}:{e.line} takes {name} from {e.imported}" for e in edges for name in e.names
            if name.startswith("_") and not name.startswith("__") and not e.imported.endswith("." + name)]


def test_the_private_name_check_flags_a_planted_reach_in() -> None:
    planted = [Edge("hybridxfer.layout._modelform", "hybridxfer.layout._parse", 5, ("_check_keys",)),
               Edge("hybridxfer.bench._e2e", "hybridxfer.bench._raw", 6, ("_raw",))]  # a module, not a name
    assert _private_names(planted) == ["hybridxfer.layout._modelform:5 takes _check_keys from hybridxfer.layout._parse"]


def test_no_reach_into_another_modules_private_names() -> None:
    """``from a._b import _c`` from outside ``a._b``, or ``x._y`` of a module in another
    package: a private name is the owner's to change."""
    bad = _private_names(EDGES)
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "__wrapped__":
                bad.append(f"{module}:{node.lineno} unwraps a cached function (__wrapped__)")
    assert bad == []


def test_private_modules_are_used_only_inside_their_package() -> None:
    """``pkg._mod`` is imported by ``pkg`` and its modules only; others use ``pkg``'s names."""
    def owner(module: str) -> str:
        parts = module.split(".")
        private = next((i for i, p in enumerate(parts) if p.startswith("_") and not p.startswith("__")), None)
        return module if private is None else ".".join(parts[:private])

    bad = [f"{e.importer}:{e.line} imports {e.imported}" for e in EDGES
           if owner(e.imported) != e.imported and not (e.importer + ".").startswith(owner(e.imported) + ".")]
    assert bad == []


# -- what importing loads ----------------------------------------------------------------------------

FORBIDDEN_IN_PLANNER = ("anyio", "socket", "asyncio", "trio", "torch", "nixl_cu12", "ucxx", "hybridxfer.transport",
                        "hybridxfer.execute")


def _modules_after_import(module: str) -> set[str]:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", ["hybridxfer.plan", "hybridxfer.layout"])
def test_planner_and_layouts_touch_no_io(module: str) -> None:
    loaded = _modules_after_import(module)
    bad = sorted(m for m in loaded for f in FORBIDDEN_IN_PLANNER if m == f or m.startswith(f + "."))
    assert bad == []


def test_importing_the_package_loads_nothing_heavy() -> None:
    loaded = _modules_after_import("hybridxfer")
    assert not {"torch", "anyio", "numpy"} & loaded


def test_the_cli_loads_no_testing_module() -> None:
    """Every command module of the CLI imported at once (they import their commands lazily)."""
    commands = sorted(m for m in MODULES if m.startswith("hybridxfer.cli.") and m != "hybridxfer.cli.__main__")
    loaded = _modules_after_import(", ".join(["hybridxfer.cli", *commands]))
    assert len(commands) > 10
    assert sorted(m for m in loaded if m == "hybridxfer.testing" or m.startswith("hybridxfer.testing.")) == []


def _public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(hybridxfer.__path__, "hybridxfer."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _public_modules())
def test_public_modules_have_sorted_all(name: str) -> None:
    if name.endswith("__main__"):
        return
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.__all__ names missing {symbol!r}"
