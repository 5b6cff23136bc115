"""hybridxfer: move hybrid KV-cache and SSM state between inference workers, any engine.

Layers import one way: :mod:`hybridxfer.layout` (address-free layouts) ->
:mod:`hybridxfer.plan` (the sans-IO planner) -> :mod:`hybridxfer.transport` and
:mod:`hybridxfer.execute` (bytes on a wire). Importing this package loads none of them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
