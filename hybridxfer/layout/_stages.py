"""Which model layers each pipeline-parallel (PP) stage runs.

Engines split a model's *hidden layers* — every decoder layer, cache-less MLP/MoE layers
included — into ``pp`` contiguous ranges, one per stage. The default is vLLM's rule: every
stage gets ``layers // pp`` layers and the remainder goes one layer each to the stages
just before the last, nearest the last first (the last stage also runs the LM head, so it
is kept lighter): 5 layers over PP 2 split 3 + 2, 10 over PP 4 split 2 + 3 + 3 + 2. An
explicit partition — layer counts per stage, the meaning of vLLM's
``VLLM_PP_LAYER_PARTITION="30,22"`` — replaces the rule; its counts must add up to the
model's layer count.

Why a module apart: the placement keeps only a stage's layers, the planner reads each
layer from the P stage that holds it, and both must use the very same split.
"""

from __future__ import annotations

from collections.abc import Sequence

from hybridxfer.errors import LayoutError, LayoutProblem

__all__ = ["stage_partition", "stage_range"]


def stage_partition(num_layers: int, pp: int, partition: Sequence[int] | None = None,
                    *, source: str | None = None) -> tuple[int, ...]:
    """Layer counts per stage for ``num_layers`` model layers over ``pp`` stages.

    Raises :class:`~hybridxfer.errors.LayoutError` for a PP size that is not a positive
    integer, more stages than layers, or a partition that does not fit.
    """
    if isinstance(pp, bool) or not isinstance(pp, int) or pp < 1:
        raise LayoutError([LayoutProblem(f"pp must be a positive integer, got {pp!r}", file=source)])
    if partition is not None:
        counts = tuple(partition)
        if len(counts) != pp:
            raise LayoutError([LayoutProblem(
                f"layer partition {list(counts)} names {len(counts)} stages but PP is {pp}", file=source)])
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
            raise LayoutError([LayoutProblem(
                f"layer partition {list(counts)}: every stage needs a positive number of layers", file=source)])
        if sum(counts) != num_layers:
            raise LayoutError([LayoutProblem(
                f"layer partition {list(counts)} adds up to {sum(counts)} layers but the model has {num_layers}",
                file=source)])
        return counts
    if pp > num_layers:
        raise LayoutError([LayoutProblem(
            f"PP={pp} needs at least {pp} model layers; the model has {num_layers}", file=source)])
    out = [num_layers // pp] * pp
    for k in range(num_layers % pp):
        out[pp - 2 - k] += 1
    return tuple(out)


def stage_range(num_layers: int, pp: int, stage: int, partition: Sequence[int] | None = None,
                *, source: str | None = None) -> range:
    """The model layer indices stage ``stage`` of ``pp`` runs."""
    counts = stage_partition(num_layers, pp, partition, source=source)
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < pp:
        raise LayoutError([LayoutProblem(f"stage {stage!r} is outside PP size {pp}", file=source)])
    start = sum(counts[:stage])
    return range(start, start + counts[stage])
