"""Per-architecture rules that turn a config into a :class:`Draft`, following vLLM 0.33.

Each rule mirrors how vLLM sizes the caches for that model class (``get_mamba_state_shape_
from_config``, ``get_num_kv_heads``, ``get_head_size``), because the layout must describe
the bytes vLLM actually holds, not what the config's names suggest (Nemotron-3-Nano's
``expand`` disagrees with its heads x head_dim; vLLM uses the latter).

The same rules serve Hugging Face transformers (``c.engine == "transformers"``): which
layer holds what, and every dimension, are the model's; only the arrangement differs, and
that is decided in the spec helpers below — K and V as separate ``[heads, tokens, dim]``
tensors, the conv state channel-major with all ``conv_kernel`` columns, the recurrent
state in float32 whatever the model dtype.
"""

from __future__ import annotations

from collections.abc import Callable

from hybridxfer.hf._config import HfConfig
from hybridxfer.hf._draft import Draft, Spec
from hybridxfer.hf._errors import UnsupportedModelError

__all__ = ["FAMILIES"]

#: vLLM's hybrid allocator on Hopper FLASH_ATTN: A = 16, page equalisation.
_HYBRID_BLOCK: tuple[tuple[str, int | str], ...] = (("logical", "equalise"), ("align", 16), ("kernel", "logical"))
#: Non-hybrid models: vLLM DEFAULT_BLOCK_SIZE = 16 (unused by pure state pages).
_PLAIN_BLOCK: tuple[tuple[str, int | str], ...] = (("logical", 16), ("kernel", "logical"), ("align", 16))
#: vLLM's NIXL connector asserts VLLM_SSM_CONV_STATE_LAYOUT=DS before moving conv state.
_CONV_LAYOUT = ("conv_layout", "DS", "VLLM_SSM_CONV_STATE_LAYOUT=DS (required by vLLM's NIXL transfer)")


#: transformers' DynamicCache: the arrangement fields of each kind.
_HF_KV = (("kv", "separate", "DynamicLayer: keys and values are separate tensors"),
          ("order", "HND", "[batch 1, kv heads, tokens, head_dim]"))
_HF_CONV_LAYOUT = ("conv_layout", "DS", "conv_states: [batch 1, channels, conv_kernel]")
_HF_SSM_DTYPE = ("ssm_dtype", "float32", "recurrent_states stay float32 in every model dtype")
#: A transformers cache holds one request as one block of its own length: ``for_rank``
#: is given ``logical_block_tokens=`` the request's token count.
_HF_BLOCK: tuple[tuple[str, int | str], ...] = (("logical", 16), ("kernel", "logical"), ("align", 1))


def _hf(c: HfConfig) -> bool:
    return c.engine == "transformers"


def _conv_fields(c: HfConfig, conv: int) -> tuple[tuple[str, int | str, str], ...]:
    if not _hf(c):
        return (_CONV_LAYOUT,)
    return (_HF_CONV_LAYOUT, ("conv_rows", conv, "update_conv_state keeps conv_kernel columns"))


def _attention(c: HfConfig, *head_dim_keys: str, kv_heads: int | None = None) -> Spec:
    dtype = c.model_dtype()
    arrangement = _HF_KV if _hf(c) else (("kv", "packed", "vLLM Gen-2: K||V per token per head"),)
    return Spec("attention", (
        ("kind", "attention", ""),
        ("num_kv_heads", c.kv_heads() if kv_heads is None else kv_heads, "num_key_value_heads"),
        ("head_dim", c.head_dim(*(head_dim_keys or ("head_dim",))), "head_dim (or hidden_size / num_attention_heads)"),
        ("dtype", dtype, "model dtype" if _hf(c) else "kv-cache-dtype auto = model dtype"),
        *arrangement,
    ))


def _mamba2(c: HfConfig, heads: int, head_dim: int, groups: int, d_state: int, conv: int, ssm_dtype: str,
            why: str) -> Spec:
    return Spec("mamba", (
        ("kind", "mamba2", ""),
        ("num_heads", heads, why),
        ("head_dim", head_dim, ""),
        ("n_groups", groups, ""),
        ("d_state", d_state, ""),
        ("conv_kernel", conv, ""),
        ("conv_dtype", c.model_dtype(), "model dtype" if _hf(c) else "mamba_cache_dtype auto = model dtype"),
        _HF_SSM_DTYPE if _hf(c) else ("ssm_dtype", ssm_dtype, "mamba_ssm_cache_dtype"),
        *_conv_fields(c, conv),
    ))


def _mamba1(c: HfConfig, d_inner: int, d_state: int, conv: int) -> Spec:
    dtype = c.model_dtype()
    return Spec("mamba", (
        ("kind", "mamba1", ""),
        ("d_inner", d_inner, "intermediate size"),
        ("d_state", d_state, ""),
        ("conv_kernel", conv, ""),
        ("conv_dtype", dtype, "model dtype" if _hf(c) else "mamba_cache_dtype auto = model dtype"),
        _HF_SSM_DTYPE if _hf(c) else ("ssm_dtype", dtype, "mamba_ssm_cache_dtype auto = conv dtype"),
        *_conv_fields(c, conv),
    ))


def _hybrid(c: HfConfig, pattern: str, legend: dict[str, tuple[str, ...]], specs: tuple[Spec, ...]) -> Draft:
    if _hf(c):
        return Draft(c.architecture, pattern, tuple(legend.items()), specs, "per-tensor", _HF_BLOCK)
    return Draft(c.architecture, pattern, tuple(legend.items()), specs, "hybrid-shared", _HYBRID_BLOCK)


def _plain(c: HfConfig, letter: str, spec: Spec) -> Draft:
    """A model whose every layer holds one kind of cache (dense, pure SSM)."""
    pattern = letter * c.get_int("num_hidden_layers")
    if _hf(c):
        return Draft(c.architecture, pattern, ((letter, (spec.name,)),), (spec,), "per-tensor", _HF_BLOCK)
    return Draft(c.architecture, pattern, ((letter, (spec.name,)),), (spec,), "per-layer", _PLAIN_BLOCK)


def _pattern_from_types(c: HfConfig, key: str, letters: dict[str, str]) -> str:
    """Pattern letters from a list of layer-type names (transformers 5 renames them on load)."""
    types = c.get_str_list(key)
    if any(t not in letters for t in types):
        raise UnsupportedModelError(f"{c.architecture}: unknown {key} entry in {sorted(set(types) - set(letters))}")
    if len(types) != c.get_int("num_hidden_layers", len(types)):
        raise UnsupportedModelError(f"{c.architecture}: {key} length != num_hidden_layers")
    return "".join(letters[t] for t in types)


def nemotron_h(c: HfConfig) -> Draft:
    if c.has("hybrid_override_pattern") or not c.has("layers_block_type"):
        pattern = c.get_str("hybrid_override_pattern")
        if len(pattern) != c.get_int("num_hidden_layers", len(pattern)):
            raise UnsupportedModelError(f"{c.architecture}: hybrid_override_pattern length != num_hidden_layers")
    else:  # transformers 5 keeps the pattern as layers_block_type
        pattern = _pattern_from_types(c, "layers_block_type", {
            "mamba": "M", "linear_attention": "M", "attention": "*", "full_attention": "*", "mlp": "-", "moe": "E"})
    heads, head_dim = c.get_int("mamba_num_heads"), c.get_int("mamba_head_dim")
    # NemotronHForCausalLMConfig: ssm cache 'auto' -> hf mamba_ssm_cache_dtype, default float32
    ssm = c.get_str("mamba_ssm_cache_dtype", "float32")
    mamba = _mamba2(c, heads, head_dim, c.get_int("n_groups"), c.get_int("ssm_state_size"), c.get_int("conv_kernel"), ssm,
                    "mamba_num_heads (d_inner = heads * head_dim, as vLLM nemotron_h)")
    return _hybrid(c, pattern, {"M": ("mamba",), "*": ("attention",), "-": (), "E": ()},
                   (_attention(c, "attention_head_dim", "head_dim"), mamba))


def jamba(c: HfConfig) -> Draft:
    period, offset = c.get_int("attn_layer_period"), c.get_int("attn_layer_offset")
    pattern = "".join("A" if i % period == offset else "M" for i in range(c.get_int("num_hidden_layers")))
    mamba = _mamba1(c, c.get_int("mamba_expand") * c.get_int("hidden_size"), c.get_int("mamba_d_state"), c.get_int("mamba_d_conv"))
    return _hybrid(c, pattern, {"M": ("mamba",), "A": ("attention",)}, (_attention(c), mamba))


def falcon_h1(c: HfConfig) -> Draft:
    d_ssm = c.get_int("mamba_d_ssm") if c.has("mamba_d_ssm") else c.get_int("mamba_expand") * c.get_int("hidden_size")
    heads = c.get_int("mamba_n_heads")
    head_dim = c.get_int("mamba_d_head", d_ssm // heads)
    if heads * head_dim != d_ssm:
        raise UnsupportedModelError(f"{c.architecture}: mamba_n_heads * mamba_d_head != mamba_d_ssm")
    mamba = _mamba2(c, heads, head_dim, c.get_int("mamba_n_groups"), c.get_int("mamba_d_state"), c.get_int("mamba_d_conv"),
                    c.model_dtype(), "mamba_n_heads (d_inner = mamba_d_ssm)")
    return _hybrid(c, "H" * c.get_int("num_hidden_layers"), {"H": ("attention", "mamba")}, (_attention(c), mamba))


def _granite_mamba(c: HfConfig) -> Spec:
    heads = c.get_int("mamba_n_heads")
    d_inner = c.get_int("mamba_expand") * c.get_int("hidden_size")
    return _mamba2(c, heads, c.get_int("mamba_d_head", d_inner // heads), c.get_int("mamba_n_groups"),
                   c.get_int("mamba_d_state"), c.get_int("mamba_d_conv"), c.model_dtype(), "mamba_n_heads")


_MAMBA_OR_ATTENTION = {"mamba": "M", "linear_attention": "M", "attention": "A", "full_attention": "A"}


def granite_hybrid(c: HfConfig) -> Draft:
    pattern = _pattern_from_types(c, "layer_types", _MAMBA_OR_ATTENTION)
    return _hybrid(c, pattern, {"M": ("mamba",), "A": ("attention",)}, (_attention(c), _granite_mamba(c)))


def bamba(c: HfConfig) -> Draft:
    if c.has("attn_layer_indices"):
        raw = c.raw.get("attn_layer_indices")
        if not isinstance(raw, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
            raise UnsupportedModelError(f"{c.architecture}: 'attn_layer_indices' must be a list of integers")
        attn = set(raw)
        pattern = "".join("A" if i in attn else "M" for i in range(c.get_int("num_hidden_layers")))
    else:
        pattern = _pattern_from_types(c, "layers_block_type", _MAMBA_OR_ATTENTION)
    return _hybrid(c, pattern, {"M": ("mamba",), "A": ("attention",)}, (_attention(c), _granite_mamba(c)))


def zamba2(c: HfConfig) -> Draft:
    """Zamba2: Mamba2 layers, and "hybrid" layers that add a shared attention block's own KV cache."""
    pattern = _pattern_from_types(c, "layers_block_type", {"mamba": "M", "linear_attention": "M", "hybrid": "H"})
    hidden, heads = c.get_int("hidden_size"), c.get_int("num_attention_heads")
    head_dim = c.get_int("attention_head_dim", 2 * hidden // heads)  # attends over [hidden | embeddings]
    # vLLM's Zamba2Attention has no GQA (KV heads = attention heads); transformers reads num_key_value_heads.
    attention = _attention(c, "attention_head_dim", kv_heads=c.kv_heads() if _hf(c) else heads)
    attention = Spec(attention.name, tuple((n, head_dim, "attention_head_dim (or 2 * hidden_size / heads)")
                                           if n == "head_dim" else (n, v, w) for n, v, w in attention.fields))
    m_heads = c.get_int("n_mamba_heads")
    d_inner = c.get_int("mamba_expand") * hidden
    mamba = _mamba2(c, m_heads, c.get_int("mamba_headdim", d_inner // m_heads), c.get_int("mamba_ngroups"),
                    c.get_int("mamba_d_state"), c.get_int("mamba_d_conv"), c.model_dtype(), "n_mamba_heads")
    return _hybrid(c, pattern, {"M": ("mamba",), "H": ("attention", "mamba")}, (attention, mamba))


def qwen3_next(c: HfConfig) -> Draft:
    if c.has("layer_types"):
        kinds = {"linear_attention": "L", "full_attention": "A"}
        types = c.get_str_list("layer_types")
        if any(t not in kinds for t in types):
            raise UnsupportedModelError(f"{c.architecture}: unknown layer_types entry in {sorted(set(types))}")
        pattern = "".join(kinds[t] for t in types)
    else:
        interval = c.get_int("full_attention_interval")
        pattern = "".join("A" if (i + 1) % interval == 0 else "L" for i in range(c.get_int("num_hidden_layers")))
    dtype = c.model_dtype()
    # Qwen3.5 configs carry mamba_ssm_dtype (float32), which vLLM copies; Qwen3-Next has none.
    ssm = c.get_str("mamba_ssm_dtype", dtype)
    conv = c.get_int("linear_conv_kernel_dim")
    gdn = Spec("gdn", (
        ("kind", "gdn", ""),
        ("k_heads", c.get_int("linear_num_key_heads"), "linear_num_key_heads"),
        ("k_dim", c.get_int("linear_key_head_dim"), "linear_key_head_dim"),
        ("v_heads", c.get_int("linear_num_value_heads"), "linear_num_value_heads"),
        ("v_dim", c.get_int("linear_value_head_dim"), "linear_value_head_dim"),
        ("conv_kernel", conv, "linear_conv_kernel_dim"),
        ("conv_dtype", dtype, "model dtype" if _hf(c) else "mamba_cache_dtype auto = model dtype"),
        _HF_SSM_DTYPE if _hf(c) else ("ssm_dtype", ssm, "mamba_ssm_dtype or model dtype"),
        *_conv_fields(c, conv),
        *((("state_order", "kv", "recurrent_states: [batch 1, v_heads, k_dim, v_dim]"),) if _hf(c) else ()),
    ))
    return _hybrid(c, pattern, {"L": ("gdn",), "A": ("attention",)}, (_attention(c, "head_dim"), gdn))


def mamba2(c: HfConfig) -> Draft:
    mamba = _mamba2(c, c.get_int("num_heads"), c.get_int("head_dim"), c.get_int("n_groups"), c.get_int("state_size"),
                    c.get_int("conv_kernel"), c.model_dtype(), "num_heads")
    return _plain(c, "M", mamba)


def mamba1(c: HfConfig) -> Draft:
    d_inner = c.get_int("intermediate_size") if c.has("intermediate_size") else c.get_int("expand") * c.get_int("hidden_size")
    mamba = _mamba1(c, d_inner, c.get_int("state_size"), c.get_int("conv_kernel"))
    return _plain(c, "M", mamba)


def dense(c: HfConfig) -> Draft:
    spec = _attention(c, "head_dim")
    window = c.raw.get("sliding_window")
    uses_window = c.raw.get("use_sliding_window", c.architecture == "MistralForCausalLM")
    if isinstance(window, int) and not isinstance(window, bool) and uses_window is True:
        if _hf(c):
            raise UnsupportedModelError(f"{c.architecture}: transformers keeps only the last sliding_window tokens "
                                        "in a cache of its own shape; the transformers engine layout has no rule for it")
        spec = Spec("attention", (("kind", "sliding_window", ""), *spec.fields[1:], ("window", window, "sliding_window")))
    return _plain(c, "A", spec)


def mla(c: HfConfig) -> Draft:
    if _hf(c):
        raise UnsupportedModelError(f"{c.architecture}: transformers caches MLA models as full per-head K/V, "
                                    "not the latent vLLM holds; the transformers engine layout has no rule for it")
    latent = c.get_int("kv_lora_rank") + c.get_int("qk_rope_head_dim")
    spec = Spec("mla", (
        ("kind", "mla", ""),
        ("latent_dim", latent, "kv_lora_rank + qk_rope_head_dim; not TP-sharded"),
        ("dtype", c.model_dtype(), "kv-cache-dtype auto = model dtype"),
    ))
    return Draft(c.architecture, "L" * c.get_int("num_hidden_layers"), (("L", ("mla",)),), (spec,),
                 "per-layer", _PLAIN_BLOCK)


FAMILIES: dict[str, Callable[[HfConfig], Draft]] = {
    "NemotronHForCausalLM": nemotron_h,
    "JambaForCausalLM": jamba,
    "FalconH1ForCausalLM": falcon_h1,
    "GraniteMoeHybridForCausalLM": granite_hybrid,
    "BambaForCausalLM": bamba,
    "Zamba2ForCausalLM": zamba2,
    "Qwen3NextForCausalLM": qwen3_next,
    "Qwen3_5ForCausalLM": qwen3_next,
    "Qwen3_5MoeForCausalLM": qwen3_next,
    "Mamba2ForCausalLM": mamba2,
    "MambaForCausalLM": mamba1,
    "FalconMambaForCausalLM": mamba1,
    "LlamaForCausalLM": dense,
    "MistralForCausalLM": dense,
    "Qwen2ForCausalLM": dense,
    "Qwen3ForCausalLM": dense,
    "DeepseekV2ForCausalLM": mla,
    "DeepseekV3ForCausalLM": mla,
}
