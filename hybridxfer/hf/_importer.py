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
from hybridxfer.hf._tensors import draft_to_tensor_toml

__all__ = ["ENGINES", "SUPPORTED_ARCHITECTURES", "layout_from_hf_config", "write_layout_from_hf"]

#: Engines whose cache arrangement we can derive: vLLM 0.33 (pooled pages, the model
#: form) and Hugging Face transformers 5.20 (one tensor per layer and piece of its
#: ``DynamicCache``, the memory form).
ENGINES = ("vllm", "transformers")
_TRANSFORMERS_NOTE = "Hugging Face transformers 5.20's DynamicCache for this architecture"
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
    """Layout TOML for ``config`` as ``engine`` holds its caches.

    One set of family rules serves every engine: which layer holds what and every
    dimension come from the model; the engine decides dtypes and arrangement. vLLM's
    layouts are in the model form; transformers' in the memory form, one region per
    cache tensor. ``model_id`` defaults to the last part of ``_name_or_path``
    (lower-cased), else ``model_type``. Raises :class:`UnsupportedModelError` for an
    unknown engine or architecture (listing the supported ones), a config missing a
    needed field, or a cache the engine's rules do not cover.
    """
    if engine not in ENGINES:
        raise UnsupportedModelError(f"unsupported engine {engine!r} (supported engines: {', '.join(ENGINES)})")
    arch = _architecture(config)
    draft = FAMILIES[arch](HfConfig(config, arch, engine))
    mid = model_id if model_id is not None else _default_model_id(config, arch)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", mid):
        raise UnsupportedModelError(f"model id {mid!r} must be letters, digits, '.', '_' or '-'")
    if draft.pooling == "per-tensor":
        return draft_to_tensor_toml(draft, mid, source, _TRANSFORMERS_NOTE)
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
