"""DecodeConnector API contract: a pull repeated after success is refused and never listed as
failed; per-request progress; the prefill connector's not-started and closed states."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from hybridxfer.engine import DecodeConnector, PrefillConnector, RequestFailed
from hybridxfer.errors import ClosedTransportError, NotStartedError, TransferError
from hybridxfer.execute import TransferProgress
from hybridxfer.layout import load_layout
from hybridxfer.plan import contiguous_block_tables
from hybridxfer.synthetic import blocks_for, destination_memory, source_memory

TOY = load_layout(Path(__file__).resolve().parents[2] / "docs" / "examples" / "toy_hybrid.toml")
TOKENS = 100


@pytest.mark.anyio
async def test_pulling_a_succeeded_request_again_is_refused_and_never_listed_as_failed() -> None:
    pl = TOY.for_rank(1, 0, num_blocks=blocks_for(TOY, 1, TOKENS))
    dl = TOY.for_rank(2, 1, num_blocks=blocks_for(TOY, 2, TOKENS, rank=1))
    src, dst = contiguous_block_tables(pl, TOKENS), contiguous_block_tables(dl, TOKENS)
    seen: list[TransferProgress] = []
    with anyio.fail_after(30):
        async with PrefillConnector(pl, name="p0", transport="loopback", decode_tp=2) as p, \
                DecodeConnector(dl, name="d1", transport="loopback") as dc:
            await p.register_caches(source_memory(pl, TOKENS))
            await dc.register_caches(destination_memory(dl))
            await dc.connect("P", [p.metadata()])
            result = await dc.pull("req", engine="P", src_blocks=src, dst_blocks=dst, num_tokens=TOKENS,
                                   on_progress=seen.append, progress_step_bytes=1)
            assert seen and seen[-1].bytes_done == seen[-1].bytes_total == result.bytes > 0
            assert [s.bytes_done for s in seen] == sorted({s.bytes_done for s in seen})  # strictly growing
            with pytest.raises(TransferError, match="'req' was already pulled") as info:
                await dc.pull("req", engine="P", src_blocks=src, dst_blocks=dst, num_tokens=TOKENS)
            assert not isinstance(info.value, RequestFailed) and info.value.request_id == "req"
            assert dc.failed_requests() == ()
            stats = dc.statistics()
            assert (stats.requests_received, stats.requests_failed, stats.requests_in_flight) == (1, 0, 0)
            # Negative control: a request that really fails is listed, exactly once.
            with pytest.raises(RequestFailed):
                await dc.pull("other", engine="nowhere", src_blocks=src, dst_blocks=dst, num_tokens=TOKENS)
            assert [f.request_id for f in dc.failed_requests()] == ["other"] and dc.failed_requests() == ()


@pytest.mark.anyio
async def test_prefill_connector_not_started_and_closed() -> None:
    pl = TOY.for_rank(1, 0, num_blocks=blocks_for(TOY, 1, TOKENS))
    p = PrefillConnector(pl, name="p0", transport="loopback")
    with pytest.raises(NotStartedError, match="'p0' is not started"):
        p.finished_requests()
    with pytest.raises(NotStartedError):
        await p.wait_request_finished("r", timeout=1)
    with anyio.fail_after(10):
        async with p:
            stream = p.finished_requests()
            with anyio.move_on_after(0.05):
                await p.wait_request_finished("r", timeout=None)
        with pytest.raises(ClosedTransportError, match="'p0' is closed"):
            p.finished_requests()
        with pytest.raises(ClosedTransportError):
            await p.wait_request_finished("r", timeout=1)
        with pytest.raises(anyio.ClosedResourceError):
            await stream.__anext__()


@pytest.mark.anyio
async def test_arguments_out_of_their_domain_are_typed_errors() -> None:
    from hybridxfer.errors import InvalidArgumentError

    pl = TOY.for_rank(1, 0, num_blocks=blocks_for(TOY, 1, TOKENS))
    dl = TOY.for_rank(1, 0, num_blocks=blocks_for(TOY, 1, TOKENS))
    src, dst = contiguous_block_tables(pl, TOKENS), contiguous_block_tables(dl, TOKENS)
    with anyio.fail_after(30):
        async with PrefillConnector(pl, name="p0", transport="loopback") as p, \
                DecodeConnector(dl, name="d0", transport="loopback") as dc:
            with pytest.raises(NotStartedError, match="register_caches"):
                p.metadata()
            with pytest.raises(InvalidArgumentError, match="consumers must be >= 1, got 0"):
                p.expect("r", 0)
            await p.register_caches(source_memory(pl, TOKENS))
            await dc.register_caches(destination_memory(dl))
            await dc.connect("P", [p.metadata()])
            with pytest.raises(InvalidArgumentError, match="on_failure must be 'fail' or 'recompute'"):
                await dc.pull("r", engine="P", src_blocks=src, dst_blocks=dst, num_tokens=TOKENS,
                              on_failure="retry")  # type: ignore[arg-type]
            assert dc.failed_requests() == ()
