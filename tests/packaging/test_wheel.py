"""A wheel built from the repository works on its own: the demo and a layout check by model id.

Why a real build and a fresh environment: the editable install the suite runs in sees
the whole checkout, so a layout file left out of the package data, or code that finds
files relative to the checkout, passes every other test and fails only for someone who
installs the wheel. The build uses the environment's setuptools (no build isolation, no
download); the fresh environment gets the wheel and its three dependencies at the pinned
versions (pip's cache or index), no torch and no plugins, and every command runs from a
directory outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
#: What a build needs; copied so that the build leaves nothing (build/, egg-info) in the checkout.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "hybridxfer", "layouts")
MODEL = "nemotron-3-nano-30b-a3b"


def _run(argv: list[str | Path], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh virtualenv holding only the wheel and its dependencies: (bin dir, environment)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    _ok(_run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
              "-w", base / "dist", src], base, env, 180))
    (wheel,) = (base / "dist").glob("hybridxfer-*.whl")

    venv = base / "venv"
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", venv], base, env, 120))
    _ok(_run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-input",
              "-c", ROOT / "constraints.txt", wheel], base, env, 300))
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv / "bin", env


def test_the_wheel_is_what_runs(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """Negative control for the rest: the commands below run the wheel, not the checkout."""
    bin_dir, env = installed
    probe = ("import importlib.util, hybridxfer.layout as l; "
             "print(l.__file__); print(l.builtin_layout_path('" + MODEL + "')); "
             "print(importlib.util.find_spec('torch') is None)")
    out = _ok(_run([bin_dir / "python", "-c", probe], tmp_path, env, 60)).splitlines()
    venv = bin_dir.parent.resolve()
    assert Path(out[0]).resolve().is_relative_to(venv), out
    shipped = Path(out[1]).resolve()
    assert shipped.is_relative_to(venv), out
    assert shipped.read_bytes() == (ROOT / "layouts" / f"{MODEL}.toml").read_bytes()
    assert out[2] == "True", "torch must not be needed (nor installed) for the demo"


def test_shipped_files_equal_the_repository_files(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    bin_dir, env = installed
    probe = "import hybridxfer.layout as l, pathlib; print(pathlib.Path(l.builtin_layout_path('" + MODEL + "')).parent)"
    shipped = Path(_ok(_run([bin_dir / "python", "-c", probe], tmp_path, env, 60)).strip())
    repo = sorted(p.relative_to(ROOT / "layouts") for p in (ROOT / "layouts").rglob("*.toml"))
    assert sorted(p.relative_to(shipped) for p in shipped.rglob("*.toml")) == repo
    for rel in repo:
        assert (shipped / rel).read_bytes() == (ROOT / "layouts" / rel).read_bytes(), rel


def test_demo_runs_from_the_wheel(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    bin_dir, env = installed
    out = _ok(_run([bin_dir / "hybridxfer", "demo", "--timeout", "120"], tmp_path, env, 180))
    assert "verified: every byte on every D rank matches the expected state" in out


def test_layout_check_by_model_id(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    bin_dir, env = installed
    out = _ok(_run([bin_dir / "hybridxfer", "layout", "check", MODEL], tmp_path, env, 60))
    assert out.splitlines() == [f"{MODEL}: ok"]
    bad = _run([bin_dir / "hybridxfer", "layout", "check", "no-such-model"], tmp_path, env, 60)
    assert bad.returncode == 1, bad
    assert "no shipped layout for model 'no-such-model'" in bad.stderr
    assert MODEL in bad.stderr and "Traceback" not in bad.stderr
