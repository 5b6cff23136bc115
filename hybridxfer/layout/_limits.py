"""Upper bounds on the numbers a layout may contain, checked when it is loaded.

Why bounds at all: a layout is data from a file, and ``d_state = 100000000000000000000``
is a valid TOML integer. Unchecked, it passes ``layout check``, then the planner overflows
int64 offsets, or a command tries to fill terabytes. Every bound is far above any real
model or engine (docs/dsl.md lists them) and low enough that all derived byte offsets fit
comfortably in int64. The kinds check their own fields against these; the whole-layout
checks (a block's page, slabs, view offsets) are in :mod:`._validate`.
"""

from __future__ import annotations

__all__ = ["MAX_BLOCK_TOKENS", "MAX_DIMENSION", "MAX_PAGE_BYTES", "MAX_SLABS"]

#: Any model dimension or count in a kind (heads, head_dim, d_state, conv_kernel, window, ...).
MAX_DIMENSION = 1 << 20
#: ``block.logical``, ``block.kernel`` and ``block.align``, in tokens.
MAX_BLOCK_TOKENS = 1 << 20
#: One layer's bytes in one block's page (its state, or its K/V for a logical block), and a view's offset.
MAX_PAGE_BYTES = 1 << 32
#: Layer-major slabs of one region.
MAX_SLABS = 1 << 16
