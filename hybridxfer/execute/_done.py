"""The *done* notification D sends every P rank once a request's bytes all landed.

Bulk transfers and streams end the same way: P frees a request's blocks only when each
D rank that reads it said so, so both call :func:`notify_done`. Failures are logged and
counted, never raised — the bytes are valid whatever happens to the notification, and
P's own ``wait_request_done`` deadline (or its lease) covers a lost one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import anyio

from hybridxfer.execute._info import ControlMessage, encode_control
from hybridxfer.execute._stats import StatisticsRecorder
from hybridxfer.plan import TransferPlan
from hybridxfer.transport import PeerHandle, Transport

__all__ = ["NOTIFY_TIMEOUT", "notify_done"]

log = logging.getLogger("hybridxfer.execute")

#: How long notifying P may take after the bytes landed (they are valid regardless).
NOTIFY_TIMEOUT = 10.0


async def notify_done(transport: Transport, plan: TransferPlan, request_id: str, peers: Mapping[int, PeerHandle],
                      seconds: float, stats: StatisticsRecorder, notified: list[int]) -> None:
    """Tell each rank in ``peers`` that ``request_id`` is done, appending each rank told to
    ``notified`` as it is told (so a cancelled caller still knows who was).

    Ranks are told concurrently — the slowest P rank's round trip, not their sum — and a
    single rank without a task group (its start and join would cost two loop passes).
    """
    served = plan.statistics.bytes_by_source

    async def one(rank: int, peer: PeerHandle) -> None:
        message = encode_control(ControlMessage("done", request_id, plan.dst_rank,
                                                bytes=served.get(rank, 0), seconds=seconds))
        try:
            await transport.notify(peer, message)
        except Exception as exc:
            stats.counts["notification_failures"] += 1
            log.warning("request %s: could not notify source rank %d (%s): %s", request_id, rank, peer.name, exc)
            return
        stats.counts["notifications_sent"] += 1
        notified.append(rank)

    with anyio.move_on_after(NOTIFY_TIMEOUT) as scope:
        if len(peers) == 1:
            await one(*next(iter(peers.items())))
        else:
            async with anyio.create_task_group() as tg:
                for rank, peer in sorted(peers.items()):
                    tg.start_soon(one, rank, peer)
    if scope.cancelled_caught:
        missing = sorted(set(peers) - set(notified))
        stats.counts["notification_failures"] += len(missing)
        log.warning("request %s: notifying ranks %s timed out", request_id, missing)
