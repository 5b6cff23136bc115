"""The few Mooncake engine calls this plugin makes, and their return codes as exceptions.

Why a module: Mooncake's Python API answers with integers (0 success, negative failure)
and never raises or times out. Every call goes through here, so a failure always
becomes a :class:`MooncakeCallError` naming the call, the peer and the code, which the
transport then chains as ``__cause__`` of the hybridxfer error it raises.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["MooncakeCallError", "check", "new_engine", "notify_read", "read_rows"]


class MooncakeCallError(RuntimeError):
    """A Mooncake engine call returned a failure code."""

    def __init__(self, call: str, rc: int, where: str) -> None:
        self.call, self.rc, self.where = call, rc, where
        super().__init__(f"mooncake {call} ({where}) returned {rc}")


def check(call: str, rc: int, where: str) -> None:
    if rc != 0:
        raise MooncakeCallError(call, rc, where)


def new_engine(host: str) -> Any:
    """An initialised TCP engine with the P2P handshake (no metadata server).

    ``MC_TCP_BIND_ADDRESS`` defaults to ``host``, so the engine listens only where it
    says it can be reached (127.0.0.1 in tests), and ``MC_LOG_LEVEL`` to ``WARNING``
    (the engine logs every connection at INFO on stderr), unless the user chose otherwise.
    """
    from mooncake.engine import TransferEngine  # type: ignore[import-untyped]

    os.environ.setdefault("MC_TCP_BIND_ADDRESS", host)
    os.environ.setdefault("MC_LOG_LEVEL", "WARNING")
    engine = TransferEngine()
    check("initialize", engine.initialize(host, "P2PHANDSHAKE", "tcp", ""), host)
    return engine


def read_rows(engine: Any, target: str, local: list[int], remote: list[int], lengths: list[int]) -> None:
    """One engine batch of READs; blocks until the engine calls it done or failed."""
    check("batch_transfer_sync_read", engine.batch_transfer_sync_read(target, local, remote, lengths), target)


def notify_read(engine: Any, target: str, local: int, remote: int, length: int, sender: str, message: str) -> None:
    """A small READ carrying a Mooncake notification, which the target queues for ``get_notifies``."""
    from mooncake.engine import TransferNotify, TransferOpcode

    rc = engine.batch_transfer_sync(target, [local], [remote], [length], TransferOpcode.Read,
                                    TransferNotify(sender, message))
    check("batch_transfer_sync(notify)", rc, target)
