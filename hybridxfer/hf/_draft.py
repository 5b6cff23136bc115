"""What an importer derives from a config: the model-form DSL document, as a frozen value."""

from __future__ import annotations

import attrs

__all__ = ["Draft", "Field", "Spec"]

Field = tuple[str, "int | str"]


@attrs.frozen
class Spec:
    """One named layer spec; ``fields`` in DSL order, each with the config key it came from."""

    name: str
    fields: tuple[tuple[str, int | str, str], ...]  # (dsl field, value, source comment)


@attrs.frozen
class Draft:
    """A model-form layout: pattern letters, their legend, specs and the engine policy."""

    architecture: str
    pattern: str
    legend: tuple[tuple[str, tuple[str, ...]], ...]
    specs: tuple[Spec, ...]
    pooling: str
    block: tuple[tuple[str, int | str], ...]
    notes: tuple[str, ...] = ()
