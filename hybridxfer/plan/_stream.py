"""Layer-wise streaming: a request's plan handed out layer group by layer group, as P's
prefill makes each layer's bytes final.

P reports :class:`Readiness` — "these layers hold their final state for tokens
``[0, tokens_through)``" — after each layer (or chunk of a chunked prefill), and a
:class:`StreamSchedule` answers with the rows of the bound plan that have just become
safe to move. Two kinds of bytes become final differently:

* a **token row** (attention K/V, MLA latent) holds tokens of one chunk of
  ``gcd(kbs_P, kbs_D)`` tokens — a chunk never crosses a P or D block — and is final once
  its layer has computed every token of that chunk: ``tokens_through >= chunk end``. The
  request's last, partial chunk ends at ``num_tokens``;
* a **state row** (conv ``x|B|C`` slices, SSM, linear-attention state) holds a running
  state that every prefill chunk overwrites in place. It is final only once its layer
  has consumed the whole prompt (``tokens_through >= num_tokens``); moved earlier it
  would carry a partially updated state, so the schedule never hands it out before.

Rows are tagged once, when the plan is bound (:func:`~._bind.bind_tagged`), so each
:meth:`StreamSchedule.advance` is a few numpy masks over the request's uncoalesced rows;
the rows it returns are coalesced within the step and never merged across layer groups.
The union of every step is exactly the bulk plan (same destination bytes, each once).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import InvalidArgumentError
from hybridxfer.layout import Layout, is_token_spec
from hybridxfer.plan._bind import BlockTable, CompiledTemplate, bind_tagged
from hybridxfer.plan._plan import TransferPlan
from hybridxfer.plan._prefix import CachedTokens
from hybridxfer.plan._stream_rows import RowTable, coalesce_in_groups, tag_rows

__all__ = ["LayerGroup", "Readiness", "StreamSchedule", "StreamStep", "stream_schedule"]

Int64Array = npt.NDArray[np.int64]


@attrs.frozen
class Readiness:
    """``layers`` hold their final state for tokens ``[0, tokens_through)`` of the prompt.

    Layer names are the layout's (``Job.layer``). ``tokens_through`` counts from the
    prompt's first token, D's prefix hit included.
    """

    layers: frozenset[str]
    tokens_through: int


@attrs.frozen
class LayerGroup:
    """Consecutive layers (model order) whose rows are awaited together.

    ``name`` is the layer's own name for a one-layer group, else ``"first..last"``;
    ``state`` says the group holds a state layer, whose rows wait for the whole prompt.
    """

    name: str
    layers: tuple[str, ...]
    state: bool


@attrs.frozen(eq=False)
class StreamStep:
    """What one readiness made movable.

    ``rows`` (plan orientation: src = P regions, dst = D regions, every source rank) are
    coalesced within each group and listed group by group in :attr:`StreamSchedule.groups`
    order; ``group[i]`` is the index of row ``i``'s group. ``completed`` names the groups
    whose every row has now been handed out.
    """

    rows: Descriptors
    group: Int64Array
    completed: tuple[str, ...]


class StreamSchedule:
    """One request on one D rank: the bound plan, handed out as layers become final.

    Stateful: :meth:`advance` remembers what it handed out, so repeating a readiness
    hands out nothing new. Not thread-safe; one schedule per consumer (:meth:`fork`, or
    ``copy.deepcopy``, gives an independent one before or after advancing).
    """

    def __init__(self, plan: TransferPlan, groups: tuple[LayerGroup, ...], num_tokens: int, rows: RowTable,
                 model_layers: frozenset[str], coalesce: bool = True) -> None:
        self.plan = plan
        self._coalesce = coalesce
        self.groups = groups
        self.num_tokens = num_tokens
        self._rows = rows
        self._model_layers = model_layers
        self._layers = tuple(layer for g in groups for layer in g.layers)
        self._layer_index = {layer: i for i, layer in enumerate(self._layers)}
        self._group_index = {g.name: i for i, g in enumerate(groups)}
        self._group_of_layer = [i for i, g in enumerate(groups) for _ in g.layers]
        self._through = np.full(len(self._layers), -1, dtype=np.int64)
        self._handed = np.zeros(len(rows.rows), dtype=bool)

    # -- advancing ------------------------------------------------------------------------------

    def advance(self, readiness: Readiness) -> Descriptors:
        """Rows that ``readiness`` made movable and that were not handed out before."""
        return self.advance_step(readiness).rows

    def advance_step(self, readiness: Readiness) -> StreamStep:
        """:meth:`advance`, with each row's group and the groups now fully handed out.

        Raises :class:`~hybridxfer.errors.InvalidArgumentError`, changing nothing, for a
        layer the model does not have, a ``tokens_through`` outside ``[0, num_tokens]``,
        or one below what a layer reported before. Layers of the model this D rank holds no
        rows of (another pipeline stage) are ignored.
        """
        through = self._validate(readiness)
        mine = [self._layer_index[layer] for layer in readiness.layers if layer in self._layer_index]
        if not mine:
            return StreamStep(Descriptors.empty(), np.zeros(0, dtype=np.int64), ())
        self._through[mine] = through
        r = self._rows
        # only the reported layers' groups can gain rows: look at their slices of the table
        b = r.group_bounds
        spans = [(int(b[g]), int(b[g + 1])) for g in sorted({self._group_of_layer[i] for i in mine})]
        at = np.concatenate([np.arange(lo, hi, dtype=np.int64) for lo, hi in spans])
        picked = at[~self._handed[at] & (r.need[at] <= self._through[r.layer[at]])]
        if not picked.size:
            return StreamStep(Descriptors.empty(), np.zeros(0, dtype=np.int64), ())
        self._handed[picked] = True
        rows, group = r.rows.take(picked), r.group[picked]
        if self._coalesce:
            rows, group = coalesce_in_groups(rows, group)
        touched = np.unique(group)
        done = tuple(self.groups[g].name for g in touched.tolist()
                     if self._handed[r.group_bounds[g]:r.group_bounds[g + 1]].all())
        return StreamStep(rows, group, done)

    def _validate(self, readiness: Readiness) -> int:
        unknown = sorted(set(readiness.layers) - self._model_layers)
        if unknown:
            raise InvalidArgumentError(f"readiness names layer(s) {unknown} the model does not have "
                                       f"(the layout's layers are e.g. {sorted(self._model_layers)[:4]})")
        try:
            if isinstance(readiness.tokens_through, bool):
                raise TypeError
            through = operator.index(readiness.tokens_through)
        except TypeError:
            raise InvalidArgumentError(
                f"readiness of {sorted(readiness.layers)[:4]}: tokens_through must be an integer, "
                f"got {readiness.tokens_through!r}") from None
        if not 0 <= through <= self.num_tokens:
            raise InvalidArgumentError(
                f"readiness of {sorted(readiness.layers)[:4]}: tokens_through={through} is outside "
                f"[0, {self.num_tokens}] (the request's tokens)")
        for layer in sorted(readiness.layers):
            i = self._layer_index.get(layer)
            if i is not None and through < int(self._through[i]):
                raise InvalidArgumentError(
                    f"layer {layer!r}: readiness went backwards, tokens_through={through} after "
                    f"{int(self._through[i])}")
        return through

    # -- progress ---------------------------------------------------------------------------------

    def complete(self) -> bool:
        """Every row of the plan has been handed out."""
        return bool(self._handed.all())

    def pending_groups(self) -> tuple[str, ...]:
        """Groups with rows not handed out yet, in order."""
        b = self._rows.group_bounds
        return tuple(g.name for i, g in enumerate(self.groups) if not self._handed[b[i]:b[i + 1]].all())

    def pending_blocks(self) -> dict[str, tuple[int, ...]]:
        """Per D KV group, the D blocks that some row not yet handed out writes.

        A stream that stops now leaves exactly these blocks (and those of rows handed out
        but not landed, which only the executor knows) without their final bytes.
        """
        return self._blocks(~self._handed)

    def reported(self) -> dict[str, int]:
        """Per layer of this schedule, the highest ``tokens_through`` reported so far."""
        return {layer: int(t) for layer, t in zip(self._layers, self._through.tolist(), strict=True) if t >= 0}

    # -- groups -------------------------------------------------------------------------------------

    def group(self, name: str) -> LayerGroup:
        return self.groups[self._index_of(name)]

    def group_of_layer(self, layer: str) -> LayerGroup:
        """The group holding ``layer`` (an :class:`InvalidArgumentError` names one it lacks)."""
        for g in self.groups:
            if layer in g.layers:
                return g
        raise InvalidArgumentError(f"layer {layer!r} is not in this schedule (D rank {self.plan.dst_rank} "
                                   f"holds {self._layers[:1]}..{self._layers[-1:]})")

    def group_rows(self, name: str) -> Descriptors:
        """Every row of group ``name`` (handed out or not), coalesced unless the template is not."""
        i = self._index_of(name)
        b = self._rows.group_bounds
        rows = self._rows.rows.slice(int(b[i]), int(b[i + 1]))
        return rows.coalesce() if self._coalesce else rows

    def group_blocks(self, name: str) -> dict[str, tuple[int, ...]]:
        """Per D KV group, the D blocks group ``name`` writes."""
        i = self._index_of(name)
        mask = np.zeros(len(self._handed), dtype=bool)
        b = self._rows.group_bounds
        mask[int(b[i]):int(b[i + 1])] = True
        return self._blocks(mask)

    def _index_of(self, name: str) -> int:
        if name not in self._group_index:
            raise InvalidArgumentError(f"no layer group {name!r} in this schedule; groups are e.g. "
                                       f"{[g.name for g in self.groups[:3]]}")
        return self._group_index[name]

    def _blocks(self, mask: npt.NDArray[np.bool_]) -> dict[str, tuple[int, ...]]:
        r = self._rows
        if not mask.any():
            return {}
        groups, blocks = r.dst_group[mask], r.dst_block[mask]
        span = int(blocks.max()) + 1
        keys = np.unique(groups * span + blocks)
        out: dict[str, list[int]] = {}
        for g, blk in zip((keys // span).tolist(), (keys % span).tolist(), strict=True):
            out.setdefault(r.dst_groups[g], []).append(blk)
        return {g: tuple(v) for g, v in sorted(out.items())}

    # -- copies ---------------------------------------------------------------------------------

    def fork(self) -> StreamSchedule:
        """An independent schedule in the same state, sharing the immutable row tables."""
        other = StreamSchedule(self.plan, self.groups, self.num_tokens, self._rows, self._model_layers,
                               self._coalesce)
        other._through = self._through.copy()
        other._handed = self._handed.copy()
        return other

    def __deepcopy__(self, memo: dict[int, Any]) -> StreamSchedule:
        return self.fork()

    def __repr__(self) -> str:
        return (f"StreamSchedule({len(self.groups)} groups, {self.num_tokens} tokens, "
                f"{int(self._handed.sum())}/{len(self._handed)} rows handed out)")


def stream_schedule(
    template: CompiledTemplate,
    src_blocks: BlockTable,
    dst_blocks: BlockTable,
    *,
    num_tokens: int | None = None,
    dst_cached_tokens: CachedTokens | None = None,
    group_layers: int = 1,
) -> StreamSchedule:
    """Bind one request (as :func:`~hybridxfer.plan.bind` does) and split it for streaming.

    ``group_layers`` consecutive layers of D's rank (its pipeline stage) form one
    :class:`LayerGroup`. ``num_tokens`` defaults to what the token groups bridge; a model
    without token layers needs it (it says when the running states are final). Raises
    what :func:`~hybridxfer.plan.bind` raises, and
    :class:`~hybridxfer.errors.InvalidArgumentError` for a ``group_layers`` below 1, a
    missing ``num_tokens``, or block tables whose token positions the schedule cannot tell.
    """
    if isinstance(group_layers, bool) or not isinstance(group_layers, int) or group_layers < 1:
        raise InvalidArgumentError(f"group_layers must be an integer >= 1, got {group_layers!r}")
    _check_positions(template, src_blocks, dst_blocks, num_tokens, dst_cached_tokens)
    plan, parts, bridged = bind_tagged(template, src_blocks, dst_blocks, num_tokens=num_tokens,
                                       dst_cached_tokens=dst_cached_tokens)
    tokens = num_tokens if num_tokens is not None else bridged
    if tokens is None:
        raise InvalidArgumentError("stream_schedule: the model has no token layers, so num_tokens must say "
                                   "how many prompt tokens make its running states final")
    dst = template.dst
    held = {pp.layer for pp in dst.placements}
    layers = [lay.name for lay in dst.layout.layers if lay.name in held]
    groups = tuple(_group(dst.layout, layers[i:i + group_layers]) for i in range(0, len(layers), group_layers))
    rows = tag_rows(parts, [g.layers for g in groups], layers, [g.name for g in dst.layout.groups], tokens)
    return StreamSchedule(plan, groups, tokens, rows, frozenset(lay.name for lay in dst.layout.layers),
                          template.coalesce)


def _group(layout: Layout, layers: Sequence[str]) -> LayerGroup:
    name = layers[0] if len(layers) == 1 else f"{layers[0]}..{layers[-1]}"
    state = any(not is_token_spec(layout.layer_spec(layer).kind_name) for layer in layers)
    return LayerGroup(name, tuple(layers), state)


def _check_positions(template: CompiledTemplate, src_blocks: BlockTable, dst_blocks: BlockTable,
                     num_tokens: int | None, dst_cached_tokens: CachedTokens | None) -> None:
    """Without ``num_tokens``, equal block sizes and fewer D blocks make bind read D's blocks as
    P's *last* ones: token positions then do not start at the prompt's first token, and no
    ``tokens_through`` could be matched to them."""
    if num_tokens is not None or dst_cached_tokens is not None:
        return
    if template.src[0].logical_block_tokens != template.dst.logical_block_tokens:
        return
    for job in template.jobs:
        if job.has_tokens and job.src_group in src_blocks and job.dst_group in dst_blocks:
            if len(dst_blocks[job.dst_group]) < len(src_blocks[job.src_group]):
                raise InvalidArgumentError(
                    f"stream_schedule: D group {job.dst_group!r} lists {len(dst_blocks[job.dst_group])} blocks but "
                    f"P group {job.src_group!r} lists {len(src_blocks[job.src_group])}; pass num_tokens (and "
                    "dst_cached_tokens for D's prefix hit) so token positions count from the prompt's start")
