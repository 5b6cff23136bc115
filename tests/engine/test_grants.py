"""Grants through the engine adapter: P hands a request to its decode ranks, only they read it,
and the grant ends when the request is finished."""

from __future__ import annotations

import contextlib
from pathlib import Path

import anyio
import numpy as np
import pytest

from hybridxfer.engine import DecodeConnector, PrefillConnector, RequestFailed
from hybridxfer.errors import GrantRefusedError
from hybridxfer.layout import load_layout
from hybridxfer.plan import compile_plan
from hybridxfer.synthetic import blocks_for, destination_memory, expected_destination, mismatches, request_tables
from hybridxfer.synthetic import source_memory

ROOT = Path(__file__).resolve().parents[2]
TOY = load_layout(ROOT / "docs" / "examples" / "toy_hybrid.toml")
TOKENS = 100
OPTIONS = {"secret": "grant-engine-tests"}


def _refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, GrantRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@pytest.mark.anyio
async def test_only_the_decoders_a_request_was_handed_to_read_it() -> None:
    pl = TOY.for_rank(1, 0, num_blocks=blocks_for(TOY, 1, TOKENS, requests=2))
    with anyio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            p = await stack.enter_async_context(PrefillConnector(
                pl, name="p0", transport="tcp", transport_options={**OPTIONS, "require_grants": True}, decode_tp=2))
            await p.register_caches(source_memory(pl, TOKENS, requests=2))
            decoders = {}
            for name, rank in (("d0", 0), ("d1", 1), ("x", 0)):
                dl = TOY.for_rank(2, rank, num_blocks=blocks_for(TOY, 2, TOKENS, rank=rank))
                dc = await stack.enter_async_context(DecodeConnector(
                    dl, name=name, transport="tcp", transport_options=OPTIONS, default_timeout=20))
                memory = destination_memory(dl)
                await dc.register_caches(memory)
                await dc.connect("P", [p.metadata()])
                decoders[name] = (dc, dl, memory)

            granted = p.grant("req0", ["d0", "d1"], request_tables(pl, TOKENS, 0), lease=60)
            assert [g.enforced for g in granted] == [True, True] and granted[0].bytes > 0

            async def pull(name: str, request_id: str, index: int) -> None:
                dc, dl, _ = decoders[name]
                await dc.pull(request_id, engine="P", src_blocks=request_tables(pl, TOKENS, index),
                              dst_blocks=request_tables(dl, TOKENS, 0), num_tokens=TOKENS)

            # a decoder the request was not handed to, and a handed-to one asking for the neighbour
            for name, index in (("x", 0), ("d0", 1)):
                before = {k: v.copy() for k, v in decoders[name][2].items()}
                with pytest.raises(RequestFailed) as info:
                    await pull(name, f"{name}-{index}", index)
                assert _refused(info.value), info.value
                assert all(np.array_equal(before[k], v) for k, v in decoders[name][2].items())

            # the handed-to decoders read it byte-exact; P finishes it and revokes the grant
            await pull("d0", "req0", 0)
            await pull("d1", "req0", 0)
            for name in ("d0", "d1"):
                _, dl, memory = decoders[name]
                assert mismatches(memory, expected_destination(dl, TOKENS, compile_plan([pl], dl).chunk_tokens)) == []
            await p.wait_request_finished("req0", timeout=10)
            assert p.agent.transport.grants.grants() == ()  # type: ignore[attr-defined]
            with pytest.raises(RequestFailed) as info:
                await pull("d0", "req0-again", 0)
            assert _refused(info.value)
