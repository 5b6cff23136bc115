"""D side of the raw ceilings: the same byte ranges as a plan, moved with each raw API.

Every function takes the plan's coalesced descriptors for one source rank and D's own
registered arrays, so the raw path writes exactly where hybridxfer writes. Raw paths
have no planning, no framing, no notification and no event-loop hops beyond what the
API itself needs: what is left between them and hybridxfer is hybridxfer's overhead.
A plugin brings its own raw path through the ``hybridxfer.bench.raw`` entry-point group
(:func:`raw_plugin`; hybridxfer-ucxx registers ``ucxx``), so this module never imports one.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridxfer.bench._placement import HOST, Placement
from hybridxfer.descriptors import Descriptors

__all__ = ["NixlInitiator", "dst_views", "memcpy_once", "raw_plugin", "socket_receive"]

#: Entry-point group of plugins' raw paths, keyed by transport name.
RAW_GROUP = "hybridxfer.bench.raw"

U8 = npt.NDArray[np.uint8]


def dst_views(reads: Descriptors, memory: Sequence[U8]) -> list[memoryview]:
    return [memory[int(r)][int(o):int(o) + int(n)].data
            for r, o, n in zip(reads.dst_region.tolist(), reads.dst_offset.tolist(), reads.length.tolist(),
                               strict=True)]


def memcpy_once(scratch: U8, reads: Sequence[Descriptors], memory: Sequence[U8]) -> None:
    """numpy copies of the same destination ranges from one contiguous source."""
    HOST.memcpy_once(scratch, reads, memory)


def socket_receive(sock: socket.socket, views: list[memoryview]) -> None:
    """Ask for one transfer (``G``) and ``recv_into`` every range in order (blocking)."""
    sock.sendall(b"G")
    for view in views:
        got, n = 0, view.nbytes
        while got < n:
            k = sock.recv_into(view[got:], n - got)
            if not k:
                raise ConnectionError("raw socket peer closed")
            got += k


def raw_plugin(transport: str) -> Any:
    """The raw-path module a plugin registered for ``transport`` (e.g. ``hybridxfer_ucxx.raw``)."""
    found = {ep.name: ep for ep in entry_points(group=RAW_GROUP)}
    if transport not in found:
        raise RuntimeError(f"no raw {transport} path is installed (entry-point group {RAW_GROUP!r} has "
                           f"{sorted(found) or 'none'}); install hybridxfer-{transport}")
    return found[transport].load()


class NixlInitiator:
    """A raw NIXL agent on D's arrays: one prepared READ per source rank, re-posted."""

    def __init__(self, memory: Sequence[Any], name: str, placement: Placement = HOST) -> None:
        """``memory``: D's regions as ``placement`` holds them (numpy arrays; tensors: NIXL ``VRAM``)."""
        from nixl_cu12._api import nixl_agent, nixl_agent_config, nixl_thread_sync_t

        # one thread drives this agent, as in the plugin: no internal locking needed
        config = nixl_agent_config(enable_prog_thread=False, backends=["UCX"],
                                   sync_mode=nixl_thread_sync_t.NIXL_THREAD_SYNC_NONE)
        self._agent: Any = nixl_agent(name, config)
        self._rows = placement.rows(memory)
        self._mem = placement.nixl_memory
        self._agent.register_memory(self._rows, self._mem)
        self._peers: dict[str, str] = {}
        self._handles: list[Any] = []

    def prepare(self, meta_hex: str, src_bases: Sequence[int], reads: Descriptors,
                src_devices: Sequence[int] = ()) -> None:
        """One READ of ``reads`` from the P agent ``meta_hex`` (its regions at ``src_bases``, on ``src_devices``)."""
        peer = self._peers.get(meta_hex)
        if peer is None:
            peer = self._agent.add_remote_agent(bytes.fromhex(meta_hex))
            self._peers[meta_hex] = peer
        n = len(reads)
        sbase = np.asarray(src_bases, dtype=np.int64)[reads.src_region]
        sdev = (np.asarray(src_devices, dtype=np.int64) if len(src_devices)
                else np.zeros(len(src_bases), dtype=np.int64))[reads.src_region]
        dbase = self._rows[:, 0].astype(np.int64)[reads.dst_region]
        ddev = self._rows[:, 2].astype(np.int64)[reads.dst_region]
        remote = np.stack([sbase + reads.src_offset, reads.length, sdev], 1).astype(np.uint64)
        local = np.stack([dbase + reads.dst_offset, reads.length, ddev], 1).astype(np.uint64)
        self._handles.append(self._agent.initialize_xfer(
            "READ", self._agent.get_xfer_descs(local, self._mem), self._agent.get_xfer_descs(remote, self._mem),
            peer))

    def read_all(self) -> None:
        """Post every prepared READ, then drive progress until all are DONE."""
        states = [self._agent.transfer(h) for h in self._handles]
        while any(s == "PROC" for s in states):
            time.sleep(0)  # hand the GIL over between polls (the event loop thread waits on us)
            states = [self._agent.check_xfer_state(h) if s == "PROC" else s
                      for h, s in zip(self._handles, states, strict=True)]
        if any(s != "DONE" for s in states):
            raise RuntimeError(f"raw NIXL READ failed: {states}")

    def release(self) -> None:
        for h in self._handles:
            self._agent.release_xfer_handle(h)
        self._handles.clear()
