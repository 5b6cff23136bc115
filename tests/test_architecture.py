"""The promises of the architecture, checked: imports point one way, the planner is sans-IO,
public modules declare a sorted ``__all__``."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import pytest

import hybridxfer

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
