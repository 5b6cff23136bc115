"""Derive a layout file from a Hugging Face ``config.json``."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from hybridxfer.hf._config import HfConfig
from hybridxfer.hf._emit import draft_to_toml
from hybridxfer.hf._errors import UnsupportedModelError
from hybridxfer.hf._families import FAMILIES

__all__ = ["ENGINES", "SUPPORTED_ARCHITECTURES", "layout_from_hf_config", "write_layout_from_hf"]

#: Engines whose cache arrangement we can derive. Only vLLM's for now.
ENGINES = ("vllm",)
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(sorted(FAMILIES))


def _architecture(config: Mapping[str, object]) -> str:
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise UnsupportedModelError("config.json has no 'architectures' list", supported=SUPPORTED_ARCHITECTURES)
    for arch in archs:
        if arch in FAMILIES:
            return str(arch)
    raise UnsupportedModelError(f"unsupported architecture {', '.join(map(str, archs))}",
                                supported=SUPPORTED_ARCHITECTURES)


def _default_model_id(config: Mapping[str, object], architecture: str) -> str:
    name = config.get("_name_or_path")
    if isinstance(name, str) and name.strip("/"):
        return name.strip("/").rsplit("/", 1)[-1].lower()
    model_type = config.get("model_type")
    return model_type if isinstance(model_type, str) and model_type else architecture.lower()


def layout_from_hf_config(
    config: Mapping[str, object],
    *,
    engine: str = "vllm",
    model_id: str | None = None,
    source: str = "config.json",
) -> str:
    """Model-form layout TOML for ``config`` as ``engine`` holds its caches.

    ``model_id`` defaults to the last part of ``_name_or_path`` (lower-cased), else
    ``model_type``. Raises :class:`UnsupportedModelError` for an unknown engine or
    architecture (listing the supported ones) or a config missing a needed field.
    """
    if engine not in ENGINES:
        raise UnsupportedModelError(f"unsupported engine {engine!r} (supported engines: {', '.join(ENGINES)})")
    arch = _architecture(config)
    draft = FAMILIES[arch](HfConfig(config, arch))
    mid = model_id if model_id is not None else _default_model_id(config, arch)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", mid):
        raise UnsupportedModelError(f"model id {mid!r} must be letters, digits, '.', '_' or '-'")
    return draft_to_toml(draft, mid, source)


def write_layout_from_hf(
    config_path: str | Path,
    output: str | Path | None = None,
    *,
    engine: str = "vllm",
    model_id: str | None = None,
) -> str:
    """Read ``config_path``, derive its layout, write it to ``output`` (if given); return the text."""
    path = Path(config_path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedModelError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"{path}: config.json must hold a JSON object")
    text = layout_from_hf_config(config, engine=engine, model_id=model_id, source=path.name)
    if output is not None:
        Path(output).write_text(text, encoding="utf-8")
    return text
