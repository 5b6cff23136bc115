"""``pull_streamed(mode="auto")``: stream long prompts, move short ones in bulk — same handle.

The choice is made per P rank's share of the prompt (``num_tokens / P TP`` against the
connector's threshold) and checked at its edges with the real default threshold, P TP 1
and 4, over tcp. Both paths are byte-exact against the oracle; the bulk path reads
exactly the bulk plan's rows, none before P reported the whole prompt final, and P sends
it a single readiness (the negative control shows the same probes do see a streaming pull
told and read early).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import attrs
import numpy as np
import pytest

from hybridxfer.descriptors import Descriptors
from hybridxfer.engine import STREAM_THRESHOLD_TOKENS, DecodeConnector, PrefillConnector
from hybridxfer.errors import InvalidArgumentError
from hybridxfer.layout import RankLayout, load_layout
from hybridxfer.plan import compile_plan, contiguous_block_tables
from hybridxfer.synthetic import blocks_for, destination_memory, expected_destination, source_memory
from hybridxfer.transport import DelegatingTransport, Notification, PeerHandle
from hybridxfer.transport.registry import open_transport
from tests.execute._stream_support import Side, differing_regions, step_image

TOY = load_layout(Path(__file__).resolve().parents[2] / "docs" / "examples" / "toy_hybrid.toml")
OPTIONS = {"secret": "stream-auto-tests"}


class Recorder(DelegatingTransport):
    """A real transport, with every read, every notification sent and every one received logged
    in order."""

    def __init__(self, inner: object) -> None:
        super().__init__(inner)  # type: ignore[arg-type]
        self.log: list[tuple[str, str, object]] = []

    async def read(self, peer: PeerHandle, batch: Descriptors) -> None:
        self.log.append(("read", peer.name, batch))
        await super().read(peer, batch)

    async def notify(self, peer: PeerHandle, message: bytes) -> None:
        self.log.append(("sent", peer.name, message))
        await super().notify(peer, message)

    async def next_notification(self) -> Notification:
        note = await super().next_notification()
        self.log.append(("note", note.peer_name, note.message))
        return note

    def reads(self) -> list[tuple[str, Descriptors]]:
        return [(peer, batch) for kind, peer, batch in self.log if kind == "read"]  # type: ignore[misc]

    def stream_notes(self, kind: str, stream: str) -> list[bytes]:
        """The stream messages of ``kind`` (``sent``/``note``) saying ``"<stream>"`` (e.g. ``ready``)."""
        tag = f'"kind":"{stream}"'.encode()
        return [m for k, _, m in self.log if k == kind and isinstance(m, bytes) and tag in m]


@attrs.define
class Engines:
    ranks: list[PrefillConnector]
    p_recorders: list[Recorder]
    d: DecodeConnector
    recorder: Recorder
    side: Side
    src_layout: RankLayout


@contextlib.asynccontextmanager
async def engines(src_tp: int, dst_tp: int, tokens: int, *,
                  threshold: int = STREAM_THRESHOLD_TOKENS) -> AsyncIterator[Engines]:
    async with contextlib.AsyncExitStack() as stack:
        ranks, p_recorders = [], []
        for r in range(src_tp):
            rl = TOY.for_rank(src_tp, r, num_blocks=blocks_for(TOY, src_tp, tokens))
            p_recorders.append(Recorder(open_transport("tcp", name=f"p{r}", **OPTIONS)))
            p = await stack.enter_async_context(PrefillConnector(rl, name=f"p{r}", transport=p_recorders[-1],
                                                                 decode_tp=dst_tp))
            await p.register_caches(source_memory(rl, tokens))
            p.expect("req", 1)  # one of D's TP ranks reads here
            ranks.append(p)
        dl = TOY.for_rank(dst_tp, 0, num_blocks=blocks_for(TOY, dst_tp, tokens, rank=0))
        recorder = Recorder(open_transport("tcp", name="d0", **OPTIONS))
        d = await stack.enter_async_context(DecodeConnector(dl, name="d0", transport=recorder,
                                                            stream_threshold_tokens=threshold))
        memory = destination_memory(dl)
        await d.register_caches(memory)
        await d.connect("P", [p.metadata() for p in ranks])
        chunk = compile_plan([p.layout for p in ranks], dl).chunk_tokens
        side = Side(d.agent, dl, memory, [], contiguous_block_tables(dl, tokens),
                    contiguous_block_tables(ranks[0].layout, tokens), destination_memory(dl),
                    expected_destination(dl, tokens, chunk))
        yield Engines(ranks, p_recorders, d, recorder, side, ranks[0].layout)


async def _subscribed(e: Engines, sources: Sequence[int]) -> None:
    """Until each source P rank has D's subscription (so it would pass readiness on)."""
    while not all(e.p_recorders[r].stream_notes("note", "subscribe") for r in sources):
        await anyio.sleep(0.01)


async def _settle() -> None:
    for _ in range(5):  # every chance for P to pass readiness on, and for D to read
        await anyio.sleep(0.02)


def _named(rows: Descriptors, src: Sequence[str], dst: Sequence[str]) -> list[tuple[str, int, str, int, int]]:
    return sorted(zip([src[i] for i in rows.src_region.tolist()], rows.src_offset.tolist(),
                      [dst[i] for i in rows.dst_region.tolist()], rows.dst_offset.tolist(), rows.length.tolist(),
                      strict=True))


@pytest.mark.anyio
@pytest.mark.parametrize(("src_tp", "dst_tp", "per_rank", "chosen"), [
    (1, 1, STREAM_THRESHOLD_TOKENS - 1, "bulk"), (1, 1, STREAM_THRESHOLD_TOKENS, "pull"),
    (4, 2, STREAM_THRESHOLD_TOKENS - 1, "bulk"), (4, 2, STREAM_THRESHOLD_TOKENS, "pull")])
async def test_auto_chooses_at_the_threshold_and_both_paths_are_byte_exact(src_tp: int, dst_tp: int, per_rank: int,
                                                                           chosen: str) -> None:
    tokens = per_rank * src_tp
    with anyio.fail_after(60):
        async with engines(src_tp, dst_tp, tokens) as e:
            side = e.side
            load = e.d.pull_streamed("req", engine="P", src_blocks=side.src_blocks, dst_blocks=side.dst_blocks,
                                     num_tokens=tokens, timeout=40)
            assert load.mode == chosen
            layers = list(side.layout.layers)
            if chosen == "pull":  # layer by layer, each step byte-exact
                for i, layer in enumerate(layers):
                    for p in e.ranks:
                        p.layers_ready("req", [layer], tokens)
                    await load.wait_for_layer_load(layer)
                    assert differing_regions(side.memory, step_image(side, layers[:i + 1])) == [], layer
            else:  # nothing moves until the last layer is final, then everything at once
                sources = load.stream.plan.source_ranks
                await _subscribed(e, sources)
                for p in e.ranks:
                    p.layers_ready("req", layers[:-1], tokens)
                await _settle()
                assert e.recorder.reads() == [] and load.landed_layers == frozenset()
                assert e.recorder.stream_notes("note", "ready") == []
                assert differing_regions(side.memory, side.background) == []
                for p in e.ranks:
                    p.layers_ready("req", layers[-1:], tokens)
                await load.wait_for_layer_load(layers[0])
                assert load.landed_layers == frozenset(layers)
                assert [len(e.p_recorders[r].stream_notes("sent", "ready")) for r in sources] == [1] * len(sources)
            result = await load.wait(timeout=20)
            assert differing_regions(side.memory, side.final) == []
            assert result.bytes == result.plan.total_bytes > 0
            assert result.notified_ranks == result.plan.notify_ranks
            for rank in result.notified_ranks:  # the P ranks this D rank reads from, told it is done
                assert (await e.ranks[rank].wait_request_finished("req", timeout=10)).readers == ("d0",)
            if chosen == "bulk":  # the reads are the bulk plan's rows, rank by rank
                plan = compile_plan([p.layout for p in e.ranks], side.layout).bind(
                    side.src_blocks, side.dst_blocks, num_tokens=tokens)
                peers = e.d.peers("P")
                assert result.plan.source_ranks == plan.source_ranks
                for rank in plan.source_ranks:
                    p = e.ranks[rank]
                    read = [b for who, b in e.recorder.reads() if who == p.name]
                    got = _named(Descriptors.concat(read), peers[rank].handle.region_names, e.d.agent.region_names)
                    mine = plan.descriptors.take(np.flatnonzero(plan.descriptors.src_rank == rank))
                    assert got == _named(mine, plan.src_region_names, plan.dst_region_names) != []


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "pull"])
async def test_a_short_prompt_in_auto_reads_nothing_before_the_final_readiness(mode: str) -> None:
    """The negative control: forced to stream, the same short prompt is read early."""
    tokens = 100
    with anyio.fail_after(30):
        async with engines(2, 1, tokens) as e:
            side = e.side
            load = e.d.pull_streamed("req", engine="P", src_blocks=side.src_blocks, dst_blocks=side.dst_blocks,
                                     num_tokens=tokens, timeout=20, mode=mode)  # type: ignore[arg-type]
            layers = list(side.layout.layers)
            await _subscribed(e, load.stream.plan.source_ranks)
            for p in e.ranks:
                p.layers_ready("req", layers[:-1], tokens)
            if mode == "pull":
                await load.wait_for_layer_load(layers[0])
            await _settle()
            early = (len(e.recorder.reads()), len(e.recorder.stream_notes("note", "ready")))
            for p in e.ranks:
                p.layers_ready("req", layers[-1:], tokens)
            await load.wait(timeout=20)
            assert differing_regions(side.memory, side.final) == []
            assert load.mode == ("bulk" if mode == "auto" else "pull")
            assert (early == (0, 0)) == (mode == "auto"), early


@pytest.mark.anyio
async def test_the_threshold_is_the_connectors_to_choose() -> None:
    with anyio.fail_after(30):
        async with engines(1, 1, 100, threshold=100) as e:
            side = e.side
            load = e.d.pull_streamed("req", engine="P", src_blocks=side.src_blocks, dst_blocks=side.dst_blocks,
                                     num_tokens=100, timeout=20)
            assert load.mode == "pull"
            for p in e.ranks:
                p.layers_ready("req", list(side.layout.layers), 100)
            await load.wait(timeout=20)
            assert differing_regions(side.memory, side.final) == []
    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidArgumentError, match="stream_threshold_tokens"):
            DecodeConnector(side.layout, name="x", transport="loopback",
                            stream_threshold_tokens=bad)  # type: ignore[arg-type]
