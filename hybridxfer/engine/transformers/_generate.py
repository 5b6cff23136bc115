"""Prefill on P and greedy decoding on D, with transformers 5.20's calling conventions.

Why a helper: resuming from a cache that another process filled needs what ``generate``
does implicitly. The cache goes in as ``past_key_values`` — ``cache_params`` for the pure
state-space models (Mamba, Mamba2), which also take no attention mask (a full mask
changes Mamba1's output) and no position ids; the others get ``position_ids`` and an
all-ones mask over cached plus new tokens. Prefill keeps only the last position's logits,
exactly as ``generate`` computes them, so P's first token is ``generate``'s.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, PreTrainedModel

__all__ = ["cache_argument", "greedy_continue", "prefill"]


def cache_argument(model: PreTrainedModel) -> str:
    """The keyword ``model.forward`` takes its cache under."""
    params = inspect.signature(model.forward).parameters
    return "cache_params" if "cache_params" in params else "past_key_values"


def prefill(model: PreTrainedModel, prompt: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
    """Run ``prompt`` (``[1, tokens]``): the filled cache and the last position's logits ``[vocab]``."""
    keyword = cache_argument(model)
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    cache = out[keyword]
    if not isinstance(cache, DynamicCache):
        raise TypeError(f"{type(model).__name__} returned a {type(cache).__name__}, not a DynamicCache")
    return cache, out.logits[0, -1]


def greedy_continue(model: PreTrainedModel, cache: DynamicCache, token: int, position: int,
                    steps: int) -> tuple[list[int], torch.Tensor]:
    """Decode ``steps`` tokens greedily after ``token`` at ``position`` (the cache holds ``position`` tokens).

    Returns the tokens chosen and the logits of every step (``[steps, vocab]``).
    """
    keyword = cache_argument(model)
    pure_state = keyword == "cache_params"
    params = inspect.signature(model.forward).parameters
    tokens: list[int] = []
    logits: list[torch.Tensor] = []
    current = torch.tensor([[token]])
    with torch.no_grad():
        for step in range(steps):
            kwargs: dict[str, object] = {keyword: cache, "use_cache": True}
            if not pure_state:
                kwargs["attention_mask"] = torch.ones(1, position + step + 1, dtype=torch.long)
                if "position_ids" in params:
                    kwargs["position_ids"] = torch.tensor([[position + step]])
            out = model(input_ids=current, **kwargs)
            step_logits = out.logits[0, -1]
            logits.append(step_logits)
            chosen = int(step_logits.argmax())
            tokens.append(chosen)
            current = torch.tensor([[chosen]])
    return tokens, torch.stack(logits)
