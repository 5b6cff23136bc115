"""Fixtures for the whole suite: where the repository and its layout files are."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = REPO / "layouts"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
