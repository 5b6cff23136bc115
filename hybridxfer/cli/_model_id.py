"""Which model id ``layout from-hf`` writes when ``--model-id`` is not given.

Why not ``model_type``: it names the architecture family (``nemotron_h`` is every
Nemotron-H size), while the model id goes into the model digest that P and D compare, so
two different models would share an id. The id comes from something that names *this*
model — the config's ``_name_or_path``, a Hugging Face cache path
(``models--ORG--NAME/snapshots/…/config.json``), or a file name other than
``config.json`` — and the command says which it used; with none of them it refuses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["ModelIdError", "derive_model_id"]

_ID = re.compile(r"[A-Za-z0-9._-]+")


class ModelIdError(ValueError):
    """No model id can be derived: the user must pass ``--model-id`` (a usage error)."""


def _clean(name: str) -> str | None:
    name = name.strip().strip("/").rsplit("/", 1)[-1].lower()
    return name if name and _ID.fullmatch(name) else None


def derive_model_id(config_path: str | Path) -> tuple[str, str]:
    """``(model id, where it came from)``; raises :class:`ModelIdError` naming ``model_type``."""
    path = Path(config_path)
    model_type = "?"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        config = None  # the importer reports an unreadable file itself
    if isinstance(config, dict):
        model_type = str(config.get("model_type", "?"))
        name = config.get("_name_or_path")
        if isinstance(name, str) and (found := _clean(name)):
            return found, f"from _name_or_path {name!r}"
    for part in reversed(path.resolve().parts):
        if part.startswith("models--") and (found := _clean(part.split("--")[-1])):
            return found, f"from the Hugging Face cache path {part!r}"
    if path.stem != "config" and (found := _clean(path.stem)):
        return found, f"from the file name {path.name!r}"
    raise ModelIdError(f"cannot tell which model {path} describes: it has no _name_or_path and neither its "
                       f"path nor its name names the model; pass --model-id (model_type {model_type!r} names "
                       "the architecture family, not the model)")
