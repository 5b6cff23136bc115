"""``Completions``: the one book of finished requests the agent and the prefill connector keep."""

from __future__ import annotations

import anyio
import pytest

from hybridxfer.errors import ClosedTransportError, TransferTimeout
from hybridxfer.execute import Completions


def test_a_key_is_recorded_once_and_the_first_completion_of_a_request_is_kept() -> None:
    book: Completions[str] = Completions("book")
    assert book.add("r1", "from d0", key=("r1", "d0"))
    assert not book.add("r1", "again from d0", key=("r1", "d0"))
    assert book.add("r1", "from d1", key=("r1", "d1"))
    assert book.get("r1") == "from d0" and book.get("r2") is None
    assert book.add("r2", "x") and not book.add("r2", "y")


def test_memory_stays_bounded_oldest_forgotten_first() -> None:
    book: Completions[int] = Completions("book", remember=3)
    for i in range(5):
        assert book.add(f"r{i}", i)
    assert [book.get(f"r{i}") for i in range(5)] == [None, None, 2, 3, 4]
    assert book.add("r0", 10)  # forgotten, so it is new again


@pytest.mark.anyio
async def test_the_stream_yields_what_is_added_from_its_first_call_on() -> None:
    book: Completions[str] = Completions("book")
    book.add("before", "before")
    stream = book.stream()
    book.add("a", "a")
    book.add("a", "a-dup")
    book.add("b", "b")
    with anyio.fail_after(5):
        assert [await stream.__anext__(), await stream.__anext__()] == ["a", "b"]
    book.close()
    with pytest.raises(anyio.ClosedResourceError):
        await stream.__anext__()
    with pytest.raises(ClosedTransportError, match="book is closed"):
        book.stream()


@pytest.mark.anyio
async def test_waiters_are_woken_by_the_first_completion_time_out_or_see_closing() -> None:
    book: Completions[str] = Completions("book")
    got: list[str] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            async def wait() -> None:
                got.append(await book.wait("r", timeout=None, message="never"))

            tg.start_soon(wait)
            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            book.add("r", "done", key=("r", "d0"))
        assert got == ["done", "done"]
        assert await book.wait("r", timeout=0, message="-") == "done"  # already there: no waiting
        with pytest.raises(TransferTimeout, match="nothing came") as info:
            await book.wait("late", timeout=0.01, message="nothing came")
        assert info.value.request_id == "late" and isinstance(info.value, TimeoutError)
        closed: list[BaseException] = []
        async with anyio.create_task_group() as tg:
            async def wait_closed() -> None:
                try:
                    await book.wait("late", timeout=None, message="-")
                except ClosedTransportError as exc:
                    closed.append(exc)

            tg.start_soon(wait_closed)
            await anyio.wait_all_tasks_blocked()
            book.close()
        assert len(closed) == 1
