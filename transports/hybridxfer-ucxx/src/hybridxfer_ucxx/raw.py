"""The raw UCXX ceiling for ``hybridxfer bench``: the same byte ranges, with bare tag send/recv.

Why here and not in the core benchmark: it drives ucxx directly (worker addresses,
endpoints, tag messages), and only this distribution knows how to initialise ucxx
without retuning every other UCX user in the process (:mod:`._context`). The benchmark
finds it through the ``hybridxfer.bench.raw`` entry-point group, so the core never imports
this plugin. What is left between these figures and the plugin's is the plugin's
overhead: no framing, no notification, no descriptor checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from hybridxfer_ucxx._context import ucxx_module

__all__ = ["RawReceiver", "RawSender"]


class RawReceiver:
    """D side: posts tag receives straight into destination ranges."""

    def __init__(self) -> None:
        self._ucxx: Any = ucxx_module()

    @property
    def address(self) -> str:
        """This worker's address, hex, for :meth:`RawSender.connect` in the P process."""
        return bytes(self._ucxx.get_worker_address().tobytes()).hex()

    def post(self, views: Sequence[memoryview], tag: int) -> list[Awaitable[object]]:
        """Post one receive per range (before asking P to send); await them with :meth:`wait`."""
        return [self._ucxx.recv(v, tag=tag) for v in views]

    @staticmethod
    async def wait(posted: Sequence[Awaitable[object]]) -> None:
        await asyncio.gather(*posted)


class RawSender:
    """P side: one endpoint to the receiver's worker, sending ranges as tag messages."""

    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint

    @classmethod
    async def connect(cls, address: str, *, error_handling: bool) -> RawSender:
        ucxx = ucxx_module()
        endpoint = await ucxx.create_endpoint_from_worker_address(
            ucxx.get_ucx_address_from_buffer(bytes.fromhex(address)), endpoint_error_handling=error_handling)
        return cls(endpoint)

    async def send(self, views: Sequence[memoryview], tag: int) -> None:
        """Send every range, in order, under ``tag`` (all posted at once)."""
        await asyncio.gather(*(self._endpoint.send(v, tag=tag, force_tag=True) for v in views))

    def close(self) -> None:
        self._endpoint.abort()
