"""Layer kinds: what one layer caches, and how TP shards it.

Each spec is a frozen value holding the model's dimensions (which P and D must agree on)
and the engine's arrangement choices (which may differ between P and D). ``pieces(tp,
kernel_block_tokens)`` turns it into per-rank :class:`Piece` geometry; the sharding rule of
each kind lives here, next to the kind.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Union

import attrs

from hybridxfer.layout._dtypes import DTYPE_SIZES, dtype_size
from hybridxfer.layout._limits import MAX_DIMENSION
from hybridxfer.layout._pieces import TOKEN_AXIS, Piece
from hybridxfer.layout._sharding import Segment, owned_units

__all__ = [
    "KINDS",
    "AttentionSpec",
    "GdnSpec",
    "LayerSpec",
    "Mamba1Spec",
    "Mamba2Spec",
    "MlaSpec",
    "spec_from_fields",
]

ConvLayout = Literal["DS", "SD"]


def _positive(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{attribute.name} must be a positive integer, got {value!r}")
    if value > MAX_DIMENSION:
        raise ValueError(f"{attribute.name} must be at most {MAX_DIMENSION:,}, got {value:,}")


def _count(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_DIMENSION:
        raise ValueError(f"{attribute.name} must be an integer in [0, {MAX_DIMENSION:,}], got {value!r}")


def _dtype(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in DTYPE_SIZES:
        known = ", ".join(sorted(DTYPE_SIZES))
        raise ValueError(f"{attribute.name}: unknown dtype {value!r} (known: {known})")


def _conv_axes(layout: str, channels: int, rows: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if layout == "DS":
        return ("channel", "row"), (channels, rows)
    return ("row", "channel"), (rows, channels)


def _conv_rows(default: int, conv_rows: int | None) -> tuple[int, int]:
    """Rows of conv history held, and where the first lies relative to the default rows.

    Engines keep the *newest* rows: one holding ``conv_kernel`` rows (transformers) holds
    one older row than one holding ``conv_kernel - 1`` (vLLM), so its first row starts at
    -1 and the newest rows of the two line up.
    """
    rows = default if conv_rows is None else conv_rows
    return rows, default - rows


def _row_starts(axes: tuple[str, ...], row_start: int) -> tuple[int, ...]:
    return tuple(row_start if a == "row" else 0 for a in axes)


def _local_extent(segments: tuple[Segment, ...], tp: int, rank: int = 0) -> int:
    return sum(len(owned_units(s, tp, rank)) * s.unit_extent for s in segments)


@attrs.frozen
class AttentionSpec:
    """Full (or sliding-window) attention: K and V per token, KV heads sharded by TP.

    ``kv``: ``halves`` = per block [K-half | V-half] (vLLM Gen-1), ``packed`` = K‖V per
    token per head (vLLM Gen-2), ``separate`` = K and V in different regions (pieces ``k``
    and ``v``). ``order``: ``HND`` (head-major, a head's tokens contiguous) or ``NHD``.
    """

    kind: ClassVar[str] = "attention"
    num_kv_heads: int = attrs.field(validator=_positive)
    head_dim: int = attrs.field(validator=_positive)
    dtype: str = attrs.field(validator=_dtype)
    kv: Literal["halves", "packed", "separate"] = attrs.field(
        default="packed", validator=attrs.validators.in_(("halves", "packed", "separate"))
    )
    order: Literal["HND", "NHD"] = attrs.field(
        default="HND", validator=attrs.validators.in_(("HND", "NHD"))
    )
    sliding_window: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )

    MODEL_FIELDS: ClassVar[tuple[str, ...]] = ("num_kv_heads", "head_dim", "dtype", "sliding_window")

    @property
    def kind_name(self) -> str:
        return "sliding_window" if self.sliding_window else "attention"

    def segments(self) -> tuple[Segment, ...]:
        return (Segment("kv_heads", self.num_kv_heads, 1, replicable=True),)

    def bytes_per_token(self, tp: int) -> int:
        heads = _local_extent(self.segments(), tp)
        return 2 * heads * self.head_dim * dtype_size(self.dtype)

    def pieces(self, tp: int, kernel_block_tokens: int) -> tuple[Piece, ...]:
        heads = _local_extent(self.segments(), tp)
        kbs, d = kernel_block_tokens, self.head_dim
        order = ("head", TOKEN_AXIS) if self.order == "HND" else (TOKEN_AXIS, "head")
        ext = {"head": heads, TOKEN_AXIS: kbs, "dim": d}
        common = dict(dtype=self.dtype, itemsize=dtype_size(self.dtype), sharded_axis="head",
                      segments=self.segments())
        if self.kv == "separate":
            axes = ("kv", *order, "dim")
            return tuple(
                Piece(name=n, tensor="kv", axes=axes, extents=(1, *(ext[a] for a in order), d),
                      starts=(i, 0, 0, 0), **common)  # type: ignore[arg-type]
                for i, n in enumerate(("k", "v"))
            )
        if self.kv == "halves":
            axes = ("kv", *order, "dim")
        else:
            axes = (*order, "kv", "dim")
        extents = tuple(2 if a == "kv" else ext[a] for a in axes)
        return (Piece(name="kv", tensor="kv", axes=axes, extents=extents,
                      starts=(0,) * len(axes), **common),)  # type: ignore[arg-type]


@attrs.frozen
class MlaSpec:
    """Multi-head latent attention: one latent vector per token, replicated on every rank."""

    kind: ClassVar[str] = "mla"
    kind_name: ClassVar[str] = "mla"
    latent_dim: int = attrs.field(validator=_positive)
    dtype: str = attrs.field(validator=_dtype)

    MODEL_FIELDS: ClassVar[tuple[str, ...]] = ("latent_dim", "dtype")
    sliding_window: ClassVar[None] = None

    def bytes_per_token(self, tp: int) -> int:
        return self.latent_dim * dtype_size(self.dtype)

    def pieces(self, tp: int, kernel_block_tokens: int) -> tuple[Piece, ...]:
        return (Piece(name="latent", tensor="latent", axes=(TOKEN_AXIS, "dim"),
                      extents=(kernel_block_tokens, self.latent_dim), starts=(0, 0),
                      dtype=self.dtype, itemsize=dtype_size(self.dtype)),)


@attrs.frozen
class Mamba2Spec:
    """Mamba2: conv state over [x | B | C] channels + SSM state (heads, head_dim, d_state).

    B/C groups are replicated when TP exceeds ``n_groups`` (each rank holds group
    ``rank * n_groups // tp``), which is how vLLM extends groups to follow head shards.
    """

    kind: ClassVar[str] = "mamba2"
    kind_name: ClassVar[str] = "mamba2"
    num_heads: int = attrs.field(validator=_positive)
    head_dim: int = attrs.field(validator=_positive)
    n_groups: int = attrs.field(validator=_positive)
    d_state: int = attrs.field(validator=_positive)
    conv_kernel: int = attrs.field(validator=_positive)
    conv_dtype: str = attrs.field(validator=_dtype)
    ssm_dtype: str = attrs.field(validator=_dtype)
    num_spec: int = attrs.field(default=0, validator=_count)
    conv_layout: ConvLayout = attrs.field(default="DS", validator=attrs.validators.in_(("DS", "SD")))
    conv_rows: int | None = attrs.field(default=None, validator=attrs.validators.optional(_positive))

    MODEL_FIELDS: ClassVar[tuple[str, ...]] = (
        "num_heads", "head_dim", "n_groups", "d_state", "conv_kernel", "conv_dtype",
        "ssm_dtype", "num_spec",
    )
    sliding_window: ClassVar[None] = None

    def conv_segments(self) -> tuple[Segment, ...]:
        return (
            Segment("x", self.num_heads, self.head_dim),
            Segment("B", self.n_groups, self.d_state, replicable=True),
            Segment("C", self.n_groups, self.d_state, replicable=True),
        )

    def pieces(self, tp: int, kernel_block_tokens: int) -> tuple[Piece, ...]:
        conv_segs = self.conv_segments()
        rows, row_start = _conv_rows(self.conv_kernel - 1 + self.num_spec, self.conv_rows)
        axes, ext = _conv_axes(self.conv_layout, _local_extent(conv_segs, tp), rows)
        ssm_seg = (Segment("heads", self.num_heads, 1),)
        return (
            Piece(name="conv", tensor="conv", axes=axes, extents=ext, starts=_row_starts(axes, row_start),
                  dtype=self.conv_dtype, itemsize=dtype_size(self.conv_dtype),
                  sharded_axis="channel", segments=conv_segs),
            Piece(name="ssm", tensor="ssm", axes=("head", "head_dim", "d_state"),
                  extents=(_local_extent(ssm_seg, tp), self.head_dim, self.d_state),
                  starts=(0, 0, 0), dtype=self.ssm_dtype, itemsize=dtype_size(self.ssm_dtype),
                  sharded_axis="head", segments=ssm_seg),
        )


@attrs.frozen
class Mamba1Spec:
    """Mamba1 (Jamba, Mamba): conv state over d_inner channels + SSM (d_inner, d_state)."""

    kind: ClassVar[str] = "mamba1"
    kind_name: ClassVar[str] = "mamba1"
    d_inner: int = attrs.field(validator=_positive)
    d_state: int = attrs.field(validator=_positive)
    conv_kernel: int = attrs.field(validator=_positive)
    conv_dtype: str = attrs.field(validator=_dtype)
    ssm_dtype: str = attrs.field(validator=_dtype)
    conv_layout: ConvLayout = attrs.field(default="SD", validator=attrs.validators.in_(("DS", "SD")))
    conv_rows: int | None = attrs.field(default=None, validator=attrs.validators.optional(_positive))

    MODEL_FIELDS: ClassVar[tuple[str, ...]] = ("d_inner", "d_state", "conv_kernel", "conv_dtype", "ssm_dtype")
    sliding_window: ClassVar[None] = None

    def pieces(self, tp: int, kernel_block_tokens: int) -> tuple[Piece, ...]:
        seg = (Segment("x", self.d_inner, 1),)
        rows, row_start = _conv_rows(self.conv_kernel - 1, self.conv_rows)
        axes, ext = _conv_axes(self.conv_layout, _local_extent(seg, tp), rows)
        return (
            Piece(name="conv", tensor="conv", axes=axes, extents=ext, starts=_row_starts(axes, row_start),
                  dtype=self.conv_dtype, itemsize=dtype_size(self.conv_dtype),
                  sharded_axis="channel", segments=seg),
            Piece(name="ssm", tensor="ssm", axes=("channel", "d_state"),
                  extents=(_local_extent(seg, tp), self.d_state), starts=(0, 0),
                  dtype=self.ssm_dtype, itemsize=dtype_size(self.ssm_dtype),
                  sharded_axis="channel", segments=seg),
        )


@attrs.frozen
class GdnSpec:
    """Gated DeltaNet (Qwen3-Next/3.5): conv over [Q | K | V] + recurrent (v_heads, v_dim, k_dim)."""

    kind: ClassVar[str] = "gdn"
    kind_name: ClassVar[str] = "gdn"
    k_heads: int = attrs.field(validator=_positive)
    k_dim: int = attrs.field(validator=_positive)
    v_heads: int = attrs.field(validator=_positive)
    v_dim: int = attrs.field(validator=_positive)
    conv_kernel: int = attrs.field(validator=_positive)
    conv_dtype: str = attrs.field(validator=_dtype)
    ssm_dtype: str = attrs.field(validator=_dtype)
    num_spec: int = attrs.field(default=0, validator=_count)
    conv_layout: ConvLayout = attrs.field(default="DS", validator=attrs.validators.in_(("DS", "SD")))
    conv_rows: int | None = attrs.field(default=None, validator=attrs.validators.optional(_positive))
    #: recurrent state per value head: ``vk`` = (v_dim, k_dim) as vLLM, ``kv`` = (k_dim, v_dim) as transformers
    state_order: Literal["vk", "kv"] = attrs.field(default="vk", validator=attrs.validators.in_(("vk", "kv")))

    MODEL_FIELDS: ClassVar[tuple[str, ...]] = (
        "k_heads", "k_dim", "v_heads", "v_dim", "conv_kernel", "conv_dtype", "ssm_dtype", "num_spec",
    )
    sliding_window: ClassVar[None] = None

    def pieces(self, tp: int, kernel_block_tokens: int) -> tuple[Piece, ...]:
        conv_segs = (
            Segment("q", self.k_heads, self.k_dim),
            Segment("k", self.k_heads, self.k_dim),
            Segment("v", self.v_heads, self.v_dim),
        )
        rows, row_start = _conv_rows(self.conv_kernel - 1 + self.num_spec, self.conv_rows)
        axes, ext = _conv_axes(self.conv_layout, _local_extent(conv_segs, tp), rows)
        rec = (Segment("v_heads", self.v_heads, 1),)
        return (
            Piece(name="conv", tensor="conv", axes=axes, extents=ext, starts=_row_starts(axes, row_start),
                  dtype=self.conv_dtype, itemsize=dtype_size(self.conv_dtype),
                  sharded_axis="channel", segments=conv_segs),
            Piece(name="ssm", tensor="ssm",
                  axes=("head", "v_dim", "k_dim") if self.state_order == "vk" else ("head", "k_dim", "v_dim"),
                  extents=(_local_extent(rec, tp), *((self.v_dim, self.k_dim) if self.state_order == "vk"
                                                     else (self.k_dim, self.v_dim))), starts=(0, 0, 0),
                  dtype=self.ssm_dtype, itemsize=dtype_size(self.ssm_dtype),
                  sharded_axis="head", segments=rec),
        )


LayerSpec = Union[AttentionSpec, MlaSpec, Mamba2Spec, Mamba1Spec, GdnSpec]

#: DSL kind name -> spec class. ``sliding_window`` is attention with a window.
KINDS: dict[str, type[Any]] = {
    "attention": AttentionSpec,
    "sliding_window": AttentionSpec,
    "mla": MlaSpec,
    "mamba2": Mamba2Spec,
    "mamba1": Mamba1Spec,
    "gdn": GdnSpec,
}


def spec_fields(spec: LayerSpec) -> dict[str, Any]:
    """The spec as DSL fields (kind first), omitting defaults that add nothing."""
    out: dict[str, Any] = {"kind": spec.kind_name}
    for f in attrs.fields(type(spec)):
        value = getattr(spec, f.name)
        if value is None:
            continue
        if spec.kind_name == "sliding_window" and f.name == "sliding_window":
            out["window"] = value
            continue
        out[f.name] = value
    return out


def model_fields(spec: LayerSpec) -> dict[str, Any]:
    """Only what P and D must agree on (dimensions and dtypes), for the model digest."""
    return {"kind": spec.kind_name, **{n: getattr(spec, n) for n in spec.MODEL_FIELDS}}


def spec_from_fields(fields: dict[str, Any]) -> LayerSpec:
    """Build a spec from DSL fields; raises ``KeyError``/``TypeError``/``ValueError`` to the loader."""
    fields = dict(fields)
    kind = fields.pop("kind")
    cls = KINDS[kind]
    if kind == "sliding_window":
        fields["sliding_window"] = fields.pop("window")
    spec: LayerSpec = cls(**fields)
    return spec
