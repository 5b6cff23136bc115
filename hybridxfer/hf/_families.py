"""Per-architecture rules that turn a config into a :class:`Draft`, following vLLM 0.33.

Each rule mirrors how vLLM sizes the caches for that model class (``get_mamba_state_shape_
from_config``, ``get_num_kv_heads``, ``get_head_size``), because the layout must describe
the bytes vLLM actually holds, not what the config's names suggest (Nemotron-3-Nano's
``expand`` disagrees with its heads x head_dim; vLLM uses the latter).
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


def _attention(c: HfConfig, *head_dim_keys: str) -> Spec:
    dtype = c.model_dtype()
    return Spec("attention", (
        ("kind", "attention", ""),
        ("num_kv_heads", c.kv_heads(), "num_key_value_heads"),
        ("head_dim", c.head_dim(*(head_dim_keys or ("head_dim",))), "head_dim (or hidden_size / num_attention_heads)"),
        ("dtype", dtype, "kv-cache-dtype auto = model dtype"),
        ("kv", "packed", "vLLM Gen-2: K||V per token per head"),
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
        ("conv_dtype", c.model_dtype(), "mamba_cache_dtype auto = model dtype"),
        ("ssm_dtype", ssm_dtype, "mamba_ssm_cache_dtype"),
        _CONV_LAYOUT,
    ))


def _mamba1(c: HfConfig, d_inner: int, d_state: int, conv: int) -> Spec:
    dtype = c.model_dtype()
    return Spec("mamba", (
        ("kind", "mamba1", ""),
        ("d_inner", d_inner, "intermediate size"),
        ("d_state", d_state, ""),
        ("conv_kernel", conv, ""),
        ("conv_dtype", dtype, "mamba_cache_dtype auto = model dtype"),
        ("ssm_dtype", dtype, "mamba_ssm_cache_dtype auto = conv dtype"),
        _CONV_LAYOUT,
    ))


def _hybrid(c: HfConfig, pattern: str, legend: dict[str, tuple[str, ...]], specs: tuple[Spec, ...]) -> Draft:
    return Draft(c.architecture, pattern, tuple(legend.items()), specs, "hybrid-shared", _HYBRID_BLOCK)


def nemotron_h(c: HfConfig) -> Draft:
    pattern = c.get_str("hybrid_override_pattern")
    if len(pattern) != c.get_int("num_hidden_layers", len(pattern)):
        raise UnsupportedModelError(f"{c.architecture}: hybrid_override_pattern length != num_hidden_layers")
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


def granite_hybrid(c: HfConfig) -> Draft:
    letters = {"mamba": "M", "attention": "A"}
    types = c.get_str_list("layer_types")
    if any(t not in letters for t in types):
        raise UnsupportedModelError(f"{c.architecture}: unknown layer_types entry in {sorted(set(types))}")
    heads = c.get_int("mamba_n_heads")
    d_inner = c.get_int("mamba_expand") * c.get_int("hidden_size")
    mamba = _mamba2(c, heads, c.get_int("mamba_d_head", d_inner // heads), c.get_int("mamba_n_groups"),
                    c.get_int("mamba_d_state"), c.get_int("mamba_d_conv"), c.model_dtype(), "mamba_n_heads")
    return _hybrid(c, "".join(letters[t] for t in types), {"M": ("mamba",), "A": ("attention",)},
                   (_attention(c), mamba))


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
    gdn = Spec("gdn", (
        ("kind", "gdn", ""),
        ("k_heads", c.get_int("linear_num_key_heads"), "linear_num_key_heads"),
        ("k_dim", c.get_int("linear_key_head_dim"), "linear_key_head_dim"),
        ("v_heads", c.get_int("linear_num_value_heads"), "linear_num_value_heads"),
        ("v_dim", c.get_int("linear_value_head_dim"), "linear_value_head_dim"),
        ("conv_kernel", c.get_int("linear_conv_kernel_dim"), "linear_conv_kernel_dim"),
        ("conv_dtype", dtype, "mamba_cache_dtype auto = model dtype"),
        ("ssm_dtype", ssm, "mamba_ssm_dtype or model dtype"),
        _CONV_LAYOUT,
    ))
    return _hybrid(c, pattern, {"L": ("gdn",), "A": ("attention",)}, (_attention(c, "head_dim"), gdn))


def mamba2(c: HfConfig) -> Draft:
    mamba = _mamba2(c, c.get_int("num_heads"), c.get_int("head_dim"), c.get_int("n_groups"), c.get_int("state_size"),
                    c.get_int("conv_kernel"), c.model_dtype(), "num_heads")
    return Draft(c.architecture, "M" * c.get_int("num_hidden_layers"), (("M", ("mamba",)),), (mamba,),
                 "per-layer", _PLAIN_BLOCK)


def mamba1(c: HfConfig) -> Draft:
    d_inner = c.get_int("intermediate_size") if c.has("intermediate_size") else c.get_int("expand") * c.get_int("hidden_size")
    mamba = _mamba1(c, d_inner, c.get_int("state_size"), c.get_int("conv_kernel"))
    return Draft(c.architecture, "M" * c.get_int("num_hidden_layers"), (("M", ("mamba",)),), (mamba,),
                 "per-layer", _PLAIN_BLOCK)


def dense(c: HfConfig) -> Draft:
    spec = _attention(c, "head_dim")
    window = c.raw.get("sliding_window")
    uses_window = c.raw.get("use_sliding_window", c.architecture == "MistralForCausalLM")
    if isinstance(window, int) and not isinstance(window, bool) and uses_window is True:
        spec = Spec("attention", (("kind", "sliding_window", ""), *spec.fields[1:], ("window", window, "sliding_window")))
    return Draft(c.architecture, "A" * c.get_int("num_hidden_layers"), (("A", ("attention",)),), (spec,),
                 "per-layer", _PLAIN_BLOCK)


def mla(c: HfConfig) -> Draft:
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
