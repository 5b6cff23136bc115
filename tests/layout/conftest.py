"""Shared fixtures for the layout tests: where the real-model reference numbers live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

#: Repository root (tests/layout/conftest.py -> parents[2]).
REPO_ROOT = Path(__file__).resolve().parents[2]
LAYOUTS_DIR = REPO_ROOT / "layouts"
#: Derived from the models' published configs and vLLM's sizing rules, independently of
#: hybridxfer; ``tests/data/README.md`` says where each number comes from.
MODELS_JSON = REPO_ROOT / "tests" / "data" / "hybrid-models.json"


@pytest.fixture(scope="session")
def hybrid_models() -> dict[str, dict[str, Any]]:
    """``hybrid-models.json`` entries by model id; fails (never skips) when the file is missing."""
    if not MODELS_JSON.is_file():
        pytest.fail(f"reference numbers not found: expected {MODELS_JSON}", pytrace=False)
    data = json.loads(MODELS_JSON.read_text(encoding="utf-8"))
    return {m["id"]: m for m in data["models"]}
