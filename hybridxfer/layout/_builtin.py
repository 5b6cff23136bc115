"""The layout files shipped with hybridxfer, found by model id.

Why package data and not a path into a checkout: ``hybridxfer demo`` and
``hybridxfer layout check <model-id>`` must work from a wheel, where there is no
checkout. The repository keeps one copy of each file, in its top-level ``layouts/``
directory; the build maps that directory into the package as ``hybridxfer.layouts``
(``pyproject.toml`` and ``setup.py``), and an editable install maps it the same way, so
there is one lookup for both kinds of install.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from hybridxfer.errors import LayoutError

__all__ = ["builtin_layout_path", "builtin_layouts"]

_PACKAGE = "hybridxfer.layouts"


def _directory() -> Path:
    try:
        root = resources.files(_PACKAGE)
    except ModuleNotFoundError as exc:
        raise LayoutError(
            f"the shipped layouts ({_PACKAGE}) are not installed: reinstall hybridxfer "
            "(from a checkout: pip install -e .)"
        ) from exc
    if not isinstance(root, Path):
        # A zipped install: load_layout needs a file on disk.
        raise LayoutError(f"the shipped layouts ({_PACKAGE}) are not files on disk: install hybridxfer unzipped")
    return root


def builtin_layouts() -> tuple[str, ...]:
    """Model ids with a shipped layout file, sorted (``layouts/<model-id>.toml``)."""
    return tuple(sorted(p.stem for p in _directory().glob("*.toml")))


def builtin_layout_path(model_id: str) -> Path:
    """The shipped layout file for ``model_id``.

    Raises :class:`~hybridxfer.errors.LayoutError` naming the id and every shipped one
    when there is no such file (only listed ids are looked up, so no path escapes).
    """
    known = builtin_layouts()
    if model_id not in known:
        raise LayoutError(
            f"no shipped layout for model {model_id!r}: shipped are {', '.join(known)} "
            "(or give the path of a layout file)"
        )
    return _directory() / f"{model_id}.toml"
