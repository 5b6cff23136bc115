"""A simulated prefill: how long each model layer's forward pass takes, from a FLOP model.

Why simulate: streaming pays only when the transfer of early layers overlaps the compute
of later ones, so the benchmark needs P to *take time per layer* the way a GPU prefill
does, without a GPU. P sleeps through each layer's share (sleeping leaves the CPU to the
transfer, as a GPU's compute would) and reports each cache layer ready when its mixer ends.

FLOP model (forward pass, ``T`` prompt tokens, causal, one sequence; ``h`` = hidden size):

- attention: projections ``2·T·(h·qh·hd + 2·h·kvh·hd + qh·hd·h)`` plus scores and values
  ``2·T²·qh·hd`` (``4·T²·qh·hd`` halved by the causal mask);
- Mamba2: ``in_proj``/``out_proj`` ``2·T·(h·(2·d_inner + 2·n_groups·d_state + heads) + d_inner·h)``
  plus the scan ``6·T·d_inner·d_state`` (linear in T);
- gated delta-net: projections ``2·T·(h·(2·kh·kd + 2·vh·vd + 2·vh) + vh·vd·h)`` plus the
  recurrence ``6·T·vh·kd·vd``;
- MoE / MLP (no cache): ``2·T·active parameters``.

Head counts, head sizes and state sizes come from the layout; the hidden size, query heads
and active MoE parameters are not part of a cache layout, so :data:`MODEL_SHAPES` holds them
for the layouts shipped in ``layouts/`` (from each model's published ``config.json``). Seconds
= FLOPs / ``flops_per_s`` (default :data:`DEFAULT_FLOPS`: one H100-class GPU at ~40 % of its
dense bf16 peak), per P rank: the benchmark passes ``src_tp x`` that rate, since TP ranks split
each layer's FLOPs. ``layer_ms`` instead gives every model layer the same time.
"""

from __future__ import annotations

import attrs

from hybridxfer.errors import InvalidArgumentError
from hybridxfer.layout import AttentionSpec, GdnSpec, LayerSpec, Layout, Mamba2Spec

__all__ = ["DEFAULT_FLOPS", "MODEL_SHAPES", "ModelShape", "PrefillStep", "layer_flops", "prefill_steps"]

#: Effective FLOP/s of the simulated prefill: 400 TFLOP/s.
DEFAULT_FLOPS = 400e12


@attrs.frozen
class ModelShape:
    """Model dimensions a cache layout does not carry."""

    hidden: int
    q_heads: int
    moe_active_params: int  # per MoE/MLP block (routed top-k experts + shared expert)
    moe_in_mixer_layers: bool  # True: every layer is mixer + MoE (qwen3-next); False: separate E layers


MODEL_SHAPES: dict[str, ModelShape] = {
    # hidden_size 2688, 32 query heads; E layers: 6 of 128 relu² experts (2 x 2688 x 1856) + shared (2 x 2688 x 3712)
    "nemotron-3-nano-30b-a3b": ModelShape(2688, 32, 6 * 2 * 2688 * 1856 + 2 * 2688 * 3712, False),
    # hidden_size 2048, 16 query heads; each layer: 10 of 512 SwiGLU experts (3 x 2048 x 512) + shared (3 x 2048 x 512)
    "qwen3-next-80b-a3b": ModelShape(2048, 16, 11 * 3 * 2048 * 512, True),
}


@attrs.frozen
class PrefillStep:
    """``seconds`` of compute, after which ``ready`` (a cache layer name, or None) holds final state."""

    seconds: float
    ready: str | None


def layer_flops(spec: LayerSpec, shape: ModelShape, tokens: int) -> float:
    """The mixer's forward FLOPs for one cache layer of ``spec`` (see the module docstring)."""
    t, h = float(tokens), float(shape.hidden)
    if isinstance(spec, AttentionSpec):
        kvh, hd, qh = spec.num_kv_heads, spec.head_dim, shape.q_heads
        return 2 * t * (h * qh * hd + 2 * h * kvh * hd + qh * hd * h) + 2 * t * t * qh * hd
    if isinstance(spec, Mamba2Spec):
        inner, g, ds, heads = spec.num_heads * spec.head_dim, spec.n_groups, spec.d_state, spec.num_heads
        return 2 * t * (h * (2 * inner + 2 * g * ds + heads) + inner * h) + 6 * t * inner * ds
    if isinstance(spec, GdnSpec):
        kh, kd, vh, vd = spec.k_heads, spec.k_dim, spec.v_heads, spec.v_dim
        return 2 * t * (h * (2 * kh * kd + 2 * vh * vd + 2 * vh) + vh * vd * h) + 6 * t * vh * kd * vd
    raise InvalidArgumentError(f"simulated prefill: no FLOP model for layer spec {type(spec).__name__}; "
                               f"give --layer-ms")


def prefill_steps(layout: Layout, tokens: int, *, flops_per_s: float = DEFAULT_FLOPS,
                  layer_ms: float | None = None) -> tuple[PrefillStep, ...]:
    """Every model layer in order as compute steps; cache layers report ready when their mixer ends."""
    if tokens <= 0:
        raise InvalidArgumentError(f"simulated prefill: tokens must be positive, got {tokens}")
    by_name = {layer.name: layer for layer in layout.layers}
    cache = {index: by_name[name] for name, index in layout.layer_indices().items()}
    total = layout.num_model_layers()
    if layer_ms is not None:
        if layer_ms < 0:
            raise InvalidArgumentError(f"--layer-ms must be >= 0, got {layer_ms}")
        return tuple(PrefillStep(layer_ms / 1e3, cache[i].name if i in cache else None) for i in range(total))
    if flops_per_s <= 0:
        raise InvalidArgumentError(f"--flops must be positive, got {flops_per_s}")
    shape = MODEL_SHAPES.get(layout.model)
    if shape is None:
        raise InvalidArgumentError(f"simulated prefill: no model shape for {layout.model!r} (known: "
                                   f"{sorted(MODEL_SHAPES)}); give --layer-ms")
    specs = dict(layout.specs)
    moe = 2.0 * tokens * shape.moe_active_params / flops_per_s
    steps: list[PrefillStep] = []
    for i in range(total):
        layer = cache.get(i)
        if layer is None:
            steps.append(PrefillStep(moe, None))
            continue
        steps.append(PrefillStep(layer_flops(specs[layer.spec], shape, tokens) / flops_per_s, layer.name))
        if shape.moe_in_mixer_layers:
            steps.append(PrefillStep(moe, None))
    return tuple(steps)
