"""What each TP rank of a tensor-parallel engine holds of a transformers cache, from the model.

This is the test's own reading of the model definitions (transformers' modeling files and
the TP rules of a sharded engine), written apart from the library: it shares no code with
``hybridxfer.layout`` or ``hybridxfer.engine.transformers``. P ranks hold ``split(...)``;
D's pulled shards go back together with ``join(...)``. ``join`` can be told to do one
thing wrong (``mistake``) so a negative control shows that the comparison notices.

Per cache layer, as transformers 5.20 holds it (batch 1):
- keys / values ``[1, kv_heads, tokens, head_dim]``: heads split on dim 1; with fewer
  heads than ranks, rank r holds head ``r * heads // tp`` (ranks share it).
- Mamba2-style conv ``[1, x | B | C, conv_kernel]``: x is heads x head_dim, B and C are
  groups x d_state each; every rank holds its part of each section, ``[x_r | B_r | C_r]``;
  with fewer groups than ranks, rank r holds group ``r * groups // tp``.
- gated delta net conv ``[1, q | k | v, conv_kernel]``: q and k by key heads, v by value heads.
- Mamba1 conv ``[1, d_inner, conv_kernel]`` and every recurrent state: dim 1 split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from transformers import PretrainedConfig

Key = tuple[int, str]  # (cache layer index, "k" | "v" | "conv" | "ssm")
Mistake = Literal["none", "swap_bc", "ssm_rank_order", "kv_rank_order"]

def conv_sections(model_type: str, c: PretrainedConfig) -> list[tuple[int, int]]:
    """The conv channels' sections as (units, channels per unit), from the family's config."""
    if model_type == "nemotron_h":
        heads, head_dim, groups, state = c.mamba_num_heads, c.mamba_head_dim, c.n_groups, c.ssm_state_size
    elif model_type in ("bamba", "granitemoehybrid", "falcon_h1"):
        heads, groups, state = c.mamba_n_heads, c.mamba_n_groups, c.mamba_d_state
        head_dim = c.mamba_d_head if model_type != "falcon_h1" else c.mamba_d_ssm // c.mamba_n_heads
    elif model_type == "zamba2":
        heads, head_dim, groups, state = c.n_mamba_heads, c.mamba_headdim, c.mamba_ngroups, c.mamba_d_state
    elif model_type == "mamba2":
        heads, head_dim, groups, state = c.num_heads, c.head_dim, c.n_groups, c.state_size
    elif model_type == "qwen3_next":
        return [(c.linear_num_key_heads, c.linear_key_head_dim), (c.linear_num_key_heads, c.linear_key_head_dim),
                (c.linear_num_value_heads, c.linear_value_head_dim)]
    elif model_type == "mamba":
        return [(c.intermediate_size, 1)]
    elif model_type == "jamba":
        return [(c.mamba_expand * c.hidden_size, 1)]
    else:
        raise KeyError(model_type)
    return [(heads, head_dim), (groups, state), (groups, state)]


def held(units: int, tp: int, rank: int) -> range:
    """Units TP rank ``rank`` holds: a contiguous share, or one shared unit when units < tp."""
    if units >= tp:
        assert units % tp == 0, (units, tp)
        per = units // tp
        return range(rank * per, (rank + 1) * per)
    assert tp % units == 0, (units, tp)
    unit = rank * units // tp
    return range(unit, unit + 1)


def _cut(tensor: torch.Tensor, sections: list[tuple[int, int]], tp: int, rank: int) -> torch.Tensor:
    parts, at = [], 0
    for units, width in sections:
        mine = held(units, tp, rank)
        parts.append(tensor[:, at + mine.start * width: at + mine.stop * width])
        at += units * width
    return torch.cat(parts, dim=1).contiguous()


def split(model_type: str, config: PretrainedConfig, whole: Mapping[Key, torch.Tensor],
          tp: int, rank: int) -> dict[Key, torch.Tensor]:
    """The tensors TP rank ``rank`` of ``tp`` holds, cut from the whole cache."""
    out: dict[Key, torch.Tensor] = {}
    for (layer, piece), tensor in whole.items():
        if piece == "conv":
            out[layer, piece] = _cut(tensor, conv_sections(model_type, config), tp, rank)
        else:  # K/V heads, recurrent-state heads or channels: one section on dim 1
            out[layer, piece] = _cut(tensor, [(tensor.shape[1], 1)], tp, rank)
    return out


def _paste(shards: Sequence[torch.Tensor], sections: list[tuple[int, int]], order: Sequence[int]) -> torch.Tensor:
    """Rebuild one tensor: for each section, every unit from the first rank (in ``order``) holding it."""
    tp = len(shards)
    pieces: list[torch.Tensor] = []
    for s, (units, width) in enumerate(sections):
        got: dict[int, torch.Tensor] = {}
        for rank in order:
            offset = sum(len(held(u, tp, rank)) * w for u, w in sections[:s])
            mine = held(units, tp, rank)
            for j, unit in enumerate(mine):
                piece = shards[rank][:, offset + j * width: offset + (j + 1) * width]
                if unit in got:
                    assert torch.equal(got[unit], piece), f"replicas of unit {unit} differ"
                got.setdefault(unit, piece)
        assert sorted(got) == list(range(units)), f"units missing: {sorted(set(range(units)) - set(got))}"
        pieces.extend(got[u] for u in range(units))
    return torch.cat(pieces, dim=1).contiguous()


def join(model_type: str, config: PretrainedConfig, shards: Sequence[Mapping[Key, torch.Tensor]],
         mistake: Mistake = "none") -> dict[Key, torch.Tensor]:
    """The whole cache from every rank's shards (rank 0 first): the inverse of ``split``.

    ``mistake`` rebuilds it wrongly on purpose: B and C sections swapped, recurrent-state
    (or KV) heads taken from the ranks in reverse order.
    """
    tp = len(shards)
    out: dict[Key, torch.Tensor] = {}
    for key in shards[0]:
        _, piece = key
        parts = [s[key] for s in shards]
        if piece == "conv":
            sections = conv_sections(model_type, config)
            whole = _paste(parts, sections, range(tp))
            if mistake == "swap_bc" and len(sections) == 3:
                x = sections[0][0] * sections[0][1]
                bc = sections[1][0] * sections[1][1]
                whole = torch.cat([whole[:, :x], whole[:, x + bc:], whole[:, x:x + bc]], dim=1)
        else:
            reverse = (mistake == "ssm_rank_order" and piece == "ssm") or \
                      (mistake == "kv_rank_order" and piece in ("k", "v"))
            if reverse:
                parts = parts[::-1]
            whole = _paste(parts, [(_units(config, model_type, piece), 1)], range(tp))
        out[key] = whole
    return out


def _units(config: PretrainedConfig, model_type: str, piece: str) -> int:
    """Heads (or channels) on dim 1 of the whole tensor, from the config."""
    if piece in ("k", "v"):
        return int(config.num_key_value_heads)
    sections = conv_sections(model_type, config)
    if model_type in ("mamba", "jamba"):
        return sections[0][0]
    if model_type == "qwen3_next":
        return sections[2][0]
    return sections[0][0]  # Mamba2-style: SSM heads = x heads
