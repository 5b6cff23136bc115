"""The install command is reproducible: every dependency is pinned, and the pins are what runs.

``requirements-dev.txt`` applies ``constraints.txt``; these tests fail when a dependency is
added to a ``pyproject.toml`` or to ``requirements-dev.txt`` without a pin (it would
float to whatever is newest on the day of the install), and when the environment the
suite runs in holds another version of a pinned package than the one pinned.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
#: The core distribution and every plugin distribution in the repository.
PYPROJECTS = [ROOT / "pyproject.toml",
              *sorted(p for d in ("transports", "engines") for p in (ROOT / d).glob("*/pyproject.toml"))]
_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _normal(name: str) -> str:
    """PEP 503 name normalisation: ``PyYAML``, ``pyyaml`` and ``py_yaml`` are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _lines(path: Path) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.split("#", 1)[0].strip()]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in _lines(CONSTRAINTS):
        match = _PIN.fullmatch(line)
        assert match, f"constraints.txt: {line!r} is not an exact pin name==version"
        name = _normal(match.group(1))
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = match.group(2)
    return pins


def _declared() -> dict[str, str]:
    """Every third-party requirement the repository declares, with where it is declared."""
    found: dict[str, str] = {}
    for path in PYPROJECTS:
        project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
        groups = {"dependencies": project.get("dependencies", []),
                  **{f"[{k}]": v for k, v in project.get("optional-dependencies", {}).items()}}
        for group, specs in groups.items():
            for spec in specs:
                match = _NAME.match(spec)
                assert match, f"{path}: unreadable requirement {spec!r}"
                found.setdefault(_normal(match.group(0)), f"{path.relative_to(ROOT)} {group}")
    for line in _lines(ROOT / "requirements-dev.txt"):
        if not line.startswith("-"):
            match = _NAME.match(line)
            assert match, f"requirements-dev.txt: unreadable requirement {line!r}"
            found.setdefault(_normal(match.group(0)), "requirements-dev.txt")
    # The repository's own distributions are installed from the checkout, never pinned.
    return {name: where for name, where in found.items() if not name.startswith("hybridxfer")}


def test_requirements_apply_the_constraints() -> None:
    assert "-c constraints.txt" in _lines(ROOT / "requirements-dev.txt")


def test_every_declared_dependency_is_pinned() -> None:
    pins = _pins()
    declared = _declared()
    assert {"numpy", "attrs", "anyio", "pytest", "pytest-asyncio", "hypothesis", "torch"} <= set(declared)
    missing = {name: where for name, where in declared.items() if name not in pins}
    assert missing == {}, f"add exact pins to constraints.txt for {missing}"
    assert pins["torch"] == "2.13.0"


def test_installed_versions_are_the_pinned_ones() -> None:
    """What the suite runs with is what was tested: reinstall with the README's first line if not."""
    pins = _pins()
    installed = {_normal(d.metadata["Name"]): d.version for d in metadata.distributions()}
    # The local label names the build (torch's ``+cpu``), not another release.
    differ = {name: (installed[name], pin) for name, pin in pins.items()
              if name in installed and installed[name].split("+")[0] != pin}
    assert differ == {}, f"installed versions differ from constraints.txt (installed, pinned): {differ}"
