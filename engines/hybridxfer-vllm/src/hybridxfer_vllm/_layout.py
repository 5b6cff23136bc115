"""Derive a hybridxfer layout from what vLLM decided: its ``KVCacheConfig`` and model config.

Why derive instead of loading a layout file: vLLM chooses the block size (hybrid page
equalisation), the KV-cache groups, the memory layout (``LBHNC`` …), the kernel block size,
the Mamba conv layout (``VLLM_SSM_CONV_STATE_LAYOUT``) and the page padding at start-up,
per TP size. A hand-written layout would drift from any of these; this module reads them
from vLLM's own objects, so the layout describes exactly the bytes vLLM allocated.

What comes from where:

- **Arrangement** (per rank): ``KVCacheConfig.kv_cache_tensors`` (one backing allocation;
  layer ``l`` of a tensor at ``offset + l * layer_stride``, block ``b`` at
  ``b * block_stride``), ``kv_cache_groups`` (one hybridxfer group each), the resolved
  ``kv_cache_layout`` (token order inside a page), the kernel block size (from the views
  vLLM hands ``register_kv_caches``).
- **Model dimensions** (what P and D must agree on, TP-independent): attention heads from
  ``ModelConfig.get_total_num_kv_heads()``; Mamba dimensions from the model class's own
  ``get_mamba_state_shape_from_config`` evaluated at TP 1 (so replicated B/C groups are
  told apart from sharded ones).

Every derived page, offset and shape is then checked against vLLM's per-rank numbers;
any disagreement is a :class:`~hybridxfer.errors.LayoutError` naming the layer.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

from hybridxfer.errors import LayoutError, LayoutProblem
from hybridxfer.layout import (
    AttentionSpec,
    GdnSpec,
    Group,
    Layer,
    LayerSpec,
    Layout,
    Mamba1Spec,
    Mamba2Spec,
    MlaSpec,
    RankLayout,
    Region,
    View,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.kv_cache_interface import KVCacheConfig, KVCacheSpec

__all__ = ["REGION", "DerivedLayout", "derive_layout", "group_names"]

#: The one region: vLLM places every KV-cache tensor in one backing allocation.
REGION = "kv_cache"

_SOURCE = "<vLLM KVCacheConfig>"


@attrs.frozen
class DerivedLayout:
    """A rank's layout plus the vLLM facts it was derived from (for checks and logs)."""

    rank_layout: RankLayout
    #: hybridxfer group name of each vLLM KV-cache group, in vLLM's group order.
    group_names: tuple[str, ...]
    #: byte offset of each layer's block 0 in the backing allocation
    layer_offsets: Mapping[str, int]
    #: vLLM's resolved memory layout name (``LBHNC`` …)
    memory_layout: str
    #: ``DS`` or ``SD`` when the model has conv state, else ``None``
    conv_layout: str | None
    #: True when any group holds SSM/conv state (vLLM's prefill back-off applies)
    has_state: bool


def _problem(path: str, message: str) -> LayoutProblem:
    return LayoutProblem(message, file=_SOURCE, path=path)


def _dtype_name(dtype: object) -> str:
    return str(dtype).removeprefix("torch.")


def _kind_of(spec: KVCacheSpec) -> str:
    from vllm.v1.kv_cache_interface import (
        FullAttentionSpec,
        MambaSpec,
        MLAAttentionSpec,
        SlidingWindowSpec,
    )

    if isinstance(spec, MLAAttentionSpec):
        return "mla"
    if isinstance(spec, SlidingWindowSpec):
        return "sliding_window"
    if isinstance(spec, FullAttentionSpec):
        return "attention"
    if isinstance(spec, MambaSpec):
        return _mamba_kind(spec)
    return type(spec).__name__


def _mamba_kind(spec: Any) -> str:
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum as M

    kinds = {M.MAMBA2: "mamba2", M.MAMBA1: "mamba1", M.GDN_ATTN: "gdn"}
    return kinds.get(spec.mamba_type, f"mamba:{getattr(spec.mamba_type, 'name', spec.mamba_type)}")


def group_names(kv_cache_config: KVCacheConfig) -> tuple[str, ...]:
    """hybridxfer group names of vLLM's KV-cache groups: ``<index>.<kind>``.

    The same model grouped by vLLM gives the same names on P and D whatever their TP
    sizes, and the scheduler side (which has no tensors) can name them too.
    """
    return tuple(f"{i}.{_kind_of(g.kv_cache_spec)}" for i, g in enumerate(kv_cache_config.kv_cache_groups))


def _conv_dim_first() -> bool:
    from vllm.model_executor.layers.mamba.mamba_utils import is_conv_state_dim_first

    return bool(is_conv_state_dim_first())


def _global_state_shapes(vllm_config: VllmConfig) -> tuple[tuple[int, ...], ...]:
    """The model's Mamba state shapes at TP 1, by the model class's own rule.

    At TP > 1 vLLM may replicate B/C groups (``n_groups < TP``), which the per-rank shape
    cannot tell apart from sharding; at TP 1 nothing is replicated.
    """
    from vllm.model_executor.models import ModelRegistry

    model_config = vllm_config.model_config
    model_cls: Any
    model_cls, _ = ModelRegistry.resolve_model_cls(model_config.architectures, model_config=model_config)
    one = copy.copy(vllm_config)
    parallel = copy.copy(vllm_config.parallel_config)
    parallel.tensor_parallel_size = 1
    object.__setattr__(one, "parallel_config", parallel)
    shapes = model_cls.get_mamba_state_shape_from_config(one)
    return tuple(tuple(int(d) for d in s) for s in shapes)


def _state_spec(kind: str, spec: Any, vllm_config: VllmConfig, path: str,
                problems: list[LayoutProblem]) -> LayerSpec | None:
    """A TP-independent hybridxfer spec for a vLLM MambaSpec (global dims from TP 1)."""
    if len(spec.shapes) != 2 or len(spec.dtypes) != 2:
        problems.append(_problem(path, f"{kind}: expected (conv, temporal) state shapes, got {spec.shapes}"))
        return None
    ds = _conv_dim_first()
    layout: Literal["DS", "SD"] = "DS" if ds else "SD"
    conv1, temporal1 = _global_state_shapes(vllm_config)
    channels, rows = (conv1[0], conv1[1]) if ds else (conv1[1], conv1[0])
    num_spec = int(spec.num_speculative_blocks)
    conv_dtype, ssm_dtype = _dtype_name(spec.dtypes[0]), _dtype_name(spec.dtypes[1])
    try:
        if kind == "mamba2":
            heads, head_dim, d_state = temporal1
            groups2 = channels - heads * head_dim
            if groups2 <= 0 or groups2 % (2 * d_state):
                problems.append(_problem(path, f"mamba2: conv channels {channels} are not heads*head_dim "
                                               f"({heads}*{head_dim}) + 2*n_groups*d_state ({d_state})"))
                return None
            return Mamba2Spec(num_heads=heads, head_dim=head_dim, n_groups=groups2 // (2 * d_state),
                              d_state=d_state, conv_kernel=rows + 1 - num_spec, conv_dtype=conv_dtype,
                              ssm_dtype=ssm_dtype, num_spec=num_spec, conv_layout=layout)
        if kind == "mamba1":
            d_inner, d_state = temporal1
            return Mamba1Spec(d_inner=d_inner, d_state=d_state, conv_kernel=rows + 1, conv_dtype=conv_dtype,
                              ssm_dtype=ssm_dtype, conv_layout=layout)
        if kind == "gdn":
            v_heads, v_dim, k_dim = temporal1
            keys2 = channels - v_heads * v_dim
            if keys2 <= 0 or keys2 % (2 * k_dim):
                problems.append(_problem(path, f"gdn: conv channels {channels} are not 2*k_heads*k_dim + "
                                               f"v_heads*v_dim ({v_heads}*{v_dim})"))
                return None
            return GdnSpec(k_heads=keys2 // (2 * k_dim), k_dim=k_dim, v_heads=v_heads, v_dim=v_dim,
                           conv_kernel=rows + 1 - num_spec, conv_dtype=conv_dtype, ssm_dtype=ssm_dtype,
                           num_spec=num_spec, conv_layout=layout)
    except (ValueError, KeyError) as exc:
        problems.append(_problem(path, f"{kind}: {exc}"))
        return None
    problems.append(_problem(path, f"state kind {kind!r} is not supported (supported: mamba1, mamba2, gdn)"))
    return None


def _token_spec(kind: str, spec: Any, vllm_config: VllmConfig, order: str, path: str,
                problems: list[LayoutProblem]) -> LayerSpec | None:
    from vllm.v1.kv_cache_interface import KVQuantMode

    if getattr(spec, "kv_quant_mode", KVQuantMode.NONE) != KVQuantMode.NONE:
        problems.append(_problem(path, f"quantized KV caches ({spec.kv_quant_mode.name}) are not supported"))
        return None
    if getattr(spec, "num_head_slots", None) is not None or getattr(spec, "state_content_bytes", None) is not None:
        problems.append(_problem(path, "packed head-slot KV caches are not supported"))
        return None
    if spec.tokens_per_state != 1:
        problems.append(_problem(path, f"compressed caches (tokens_per_state={spec.tokens_per_state}) are not supported"))
        return None
    dtype = _dtype_name(spec.dtype)
    try:
        if kind == "mla":
            return MlaSpec(latent_dim=int(spec.head_size), dtype=dtype)
        if spec.head_size_v != spec.head_size:
            problems.append(_problem(path, f"K and V head sizes differ ({spec.head_size} vs {spec.head_size_v})"))
            return None
        window = int(spec.sliding_window) if kind == "sliding_window" else None
        return AttentionSpec(num_kv_heads=int(vllm_config.model_config.get_total_num_kv_heads()),
                             head_dim=int(spec.head_size), dtype=dtype, kv="packed", order=order,  # type: ignore[arg-type]
                             sliding_window=window)
    except (ValueError, KeyError) as exc:
        problems.append(_problem(path, f"{kind}: {exc}"))
        return None


def _token_order(memory_layout: str) -> str | None:
    """Token order inside a page for vLLM's logical [L, B, H, N, C] layouts, if per-block."""
    # H, N, C innermost (head-major) or N, H, C (token-major); B or L outermost either way.
    return {"LBHNC": "HND", "BLHNC": "HND", "LBNHC": "NHD", "BLNHC": "NHD"}.get(memory_layout)


def derive_layout(
    vllm_config: VllmConfig,
    kv_cache_config: KVCacheConfig,
    *,
    tp: int,
    rank: int,
    kernel_block_tokens: int | None = None,
    memory_layout: str | None = None,
) -> DerivedLayout:
    """The layout of TP rank ``rank`` of a TP-``tp`` vLLM engine, derived and checked.

    ``kernel_block_tokens``: the attention kernel block (default: vLLM's logical block,
    i.e. no splitting); ``memory_layout``: vLLM's resolved layout name (default: the one
    recorded in ``kv_cache_config``, then the cache config's). Raises
    :class:`~hybridxfer.errors.LayoutError` listing every problem.
    """
    problems: list[LayoutProblem] = []
    memory_layout = memory_layout or kv_cache_config.kv_cache_layout or str(
        vllm_config.cache_config.get_resolved_kv_cache_layout().name)
    order = _token_order(memory_layout)
    names = group_names(kv_cache_config)
    num_blocks = int(kv_cache_config.num_blocks)

    specs: list[tuple[str, LayerSpec]] = []
    layer_spec: dict[str, str] = {}
    groups: list[Group] = []
    logical: set[int] = set()
    vllm_spec_of: dict[str, Any] = {}
    has_state = False
    for gid, (group, name) in enumerate(zip(kv_cache_config.kv_cache_groups, names, strict=True)):
        spec = group.kv_cache_spec
        kind = _kind_of(spec)
        path = f"kv_cache_groups[{gid}]"
        if not group.enable_kv_transfer:
            continue
        if kind in ("attention", "sliding_window", "mla"):
            if order is None:
                problems.append(_problem("kv_cache_layout", f"memory layout {memory_layout} interleaves blocks "
                                                            "inside a head; only LBHNC, BLHNC, LBNHC, BLNHC are supported"))
                break
            made = _token_spec(kind, spec, vllm_config, order, path, problems)
            logical.add(int(spec.block_size))
        elif kind.startswith(("mamba", "gdn")):
            made = _state_spec(kind, spec, vllm_config, path, problems)
            has_state = True
        else:
            problems.append(_problem(path, f"KV-cache spec {kind} is not supported"))
            made = None
        if made is None:
            continue
        specs.append((name, made))
        groups.append(Group(name, tuple(group.layer_names)))
        for layer in group.layer_names:
            layer_spec[layer] = name
            vllm_spec_of[layer] = spec
    if problems:
        raise LayoutError(problems)
    if len(logical) > 1:
        raise LayoutError([_problem("kv_cache_groups", f"attention groups use different block sizes {sorted(logical)}")])
    bs = logical.pop() if logical else 16

    # One backing allocation: page = block stride, layer-major slabs of num_blocks pages.
    tensors = [t for t in kv_cache_config.kv_cache_tensors if any(layer in layer_spec for layer in t.layers)]
    strides = {int(t.block_stride) for t in tensors}
    sizes = {int(t.size) for t in tensors}
    if len(strides) != 1 or len(sizes) != 1:
        raise LayoutError([_problem("kv_cache_tensors", f"tensors use different block strides {sorted(strides)} or "
                                                        f"backing sizes {sorted(sizes)}; one page size is required")])
    page, size = strides.pop(), sizes.pop()
    if size % (page * num_blocks):
        raise LayoutError([_problem("kv_cache_tensors", f"backing allocation of {size} bytes is not a whole number "
                                                        f"of {num_blocks} pages of {page} bytes")])
    slab_bytes = page * num_blocks
    views: list[View] = []
    offsets: dict[str, int] = {}
    for ti, tensor in enumerate(tensors):
        for li, layer in enumerate(tensor.layers):
            if layer not in layer_spec:
                continue
            base = int(tensor.offset) + li * int(tensor.layer_stride)
            offsets[layer] = base
            views.append(View(layer, offset=base % slab_bytes, slab=base // slab_bytes))
    missing = sorted(set(layer_spec) - set(offsets))
    if missing:
        raise LayoutError([_problem("kv_cache_tensors", f"layers {missing} have no KV-cache tensor")])
    views.sort(key=lambda v: (v.slab, v.offset, v.layer))
    layers = tuple(Layer(name, layer_spec[name]) for name in sorted(layer_spec, key=_layer_order))
    layout = Layout(model=_model_id(vllm_config), specs=tuple(specs), layers=layers, groups=tuple(groups),
                    regions=(Region(REGION, tuple(views), slabs=size // slab_bytes),), source=_SOURCE)
    rank_layout = layout.for_rank(tp, rank, num_blocks=num_blocks, logical_block_tokens=bs,
                                  kernel_block_tokens=kernel_block_tokens or bs)
    _check_against_vllm(rank_layout, vllm_spec_of, page, size, offsets)
    conv = next((getattr(s, "conv_layout") for _, s in specs if hasattr(s, "conv_layout")), None)
    return DerivedLayout(rank_layout=rank_layout, group_names=names, layer_offsets=offsets,
                         memory_layout=memory_layout, conv_layout=conv, has_state=has_state)


def _layer_order(name: str) -> tuple[int, str]:
    digits = [int(part) for part in name.split(".") if part.isdigit()]
    return (digits[0] if digits else 1 << 30, name)


def _model_id(vllm_config: VllmConfig) -> str:
    model_config = vllm_config.model_config
    name = str(getattr(model_config, "served_model_name", None) or model_config.model)
    return name.rstrip("/").rsplit("/", 1)[-1] or str(model_config.architecture)


def _check_against_vllm(rank_layout: RankLayout, vllm_spec_of: Mapping[str, Any], page: int, size: int,
                        offsets: Mapping[str, int]) -> None:
    """Every derived number must equal vLLM's own for this rank, or nothing is registered."""
    problems: list[LayoutProblem] = []
    if rank_layout.region_page_bytes[0] != page:
        problems.append(_problem("kv_cache_tensors", f"derived page is {rank_layout.region_page_bytes[0]} bytes, "
                                                     f"vLLM's block stride is {page}"))
    if rank_layout.region_sizes[0] != size:
        problems.append(_problem("kv_cache_tensors", f"derived region is {rank_layout.region_sizes[0]} bytes, "
                                                     f"vLLM allocated {size}"))
    ratio = rank_layout.blocks_per_kernel
    by_layer: dict[str, list[Any]] = {}
    for pp in rank_layout.placements:
        by_layer.setdefault(pp.layer, []).append(pp)
    for layer, placed in by_layer.items():
        spec = vllm_spec_of[layer]
        if placed[0].base != offsets[layer]:
            problems.append(_problem(layer, f"derived base {placed[0].base} != vLLM offset {offsets[layer]}"))
        if hasattr(spec, "shapes"):
            got = tuple(tuple(pp.piece.extents) for pp in placed)
            want = tuple(tuple(int(d) for d in s) for s in spec.shapes)
            if got != want:
                problems.append(_problem(layer, f"derived state shapes {got} != vLLM's {want} at TP "
                                                f"{rank_layout.tp}"))
            dtypes = tuple(pp.piece.dtype for pp in placed)
            if dtypes != tuple(_dtype_name(d) for d in spec.dtypes):
                problems.append(_problem(layer, f"derived state dtypes {dtypes} != vLLM's {spec.dtypes}"))
        else:
            got_bytes = sum(pp.piece.nbytes for pp in placed) * ratio
            if got_bytes != spec.real_page_size_bytes:
                problems.append(_problem(layer, f"derived attention page {got_bytes} bytes != vLLM's "
                                                f"{spec.real_page_size_bytes} (kv heads per rank {spec.num_kv_heads})"))
    if problems:
        raise LayoutError(problems)


def check_tensors(derived: DerivedLayout, kv_caches: Mapping[str, Any]) -> tuple[int, int, Any]:
    """Check vLLM's per-layer views against the layout; return (address, bytes, owner).

    All views must lie in one backing storage at the offsets the layout was derived from.
    """
    problems: list[LayoutProblem] = []
    storages = {}
    for layer, tensor in kv_caches.items():
        storage = tensor.untyped_storage()
        storages[int(storage.data_ptr())] = (storage, tensor)
    if len(storages) != 1:
        raise LayoutError([_problem("kv_caches", f"expected one backing allocation, got {len(storages)}")])
    base, (storage, owner) = next(iter(storages.items()))
    nbytes = int(storage.nbytes())
    need = derived.rank_layout.region_sizes[0]
    if nbytes < need:
        problems.append(_problem("kv_caches", f"backing allocation has {nbytes} bytes, the layout needs {need}"))
    for layer, offset in derived.layer_offsets.items():
        tensor = kv_caches.get(layer)
        if tensor is None:
            problems.append(_problem(f"kv_caches.{layer}", "vLLM registered no tensor for this layer"))
            continue
        got = int(tensor.data_ptr()) - base
        if got != offset:
            problems.append(_problem(f"kv_caches.{layer}", f"tensor starts at byte {got}, KVCacheConfig says {offset}"))
    if problems:
        raise LayoutError(problems)
    return base, nbytes, owner


def kernel_block_tokens_of(kv_cache_config: KVCacheConfig, kv_caches: Mapping[str, Any]) -> int | None:
    """The attention kernel block (tokens) vLLM chose, read off its views' ``N`` axis."""
    from vllm.v1.kv_cache_interface import AttentionSpec as VllmAttentionSpec

    found: set[int] = set()
    for group in kv_cache_config.kv_cache_groups:
        if not isinstance(group.kv_cache_spec, VllmAttentionSpec):
            continue
        for layer in group.layer_names:
            tensor = kv_caches.get(layer)
            if tensor is not None and tensor.dim() == 4:
                found.add(int(tensor.shape[2]))
    if len(found) > 1:
        raise LayoutError([_problem("kv_caches", f"attention views use different kernel block sizes {sorted(found)}")])
    return found.pop() if found else None
