"""Element types a cache can hold, by the names engines and torch use."""

from __future__ import annotations

__all__ = ["DTYPE_SIZES", "dtype_size"]

#: Bytes per element. hybridxfer never converts between dtypes: P and D must agree.
DTYPE_SIZES: dict[str, int] = {
    "float32": 4,
    "bfloat16": 2,
    "float16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "fp8": 1,
    "int8": 1,
    "uint8": 1,
}


def dtype_size(name: str) -> int:
    """Bytes per element of ``name``; ``KeyError`` for an unknown dtype (callers report it)."""
    return DTYPE_SIZES[name]
