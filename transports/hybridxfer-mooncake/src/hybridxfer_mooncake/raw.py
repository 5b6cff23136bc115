"""The raw Mooncake ceiling: the engine's own batch READ of the same bytes, nothing else.

What hybridxfer's benchmark puts beside the plugin's figure. A bare ``TransferEngine``
registers D's own arrays and reads each source rank's descriptors straight into them
with ``batch_transfer_sync_read``, in calls of at most :data:`MAX_BATCH_ENTRIES` entries
(the engine fails larger ones), from the *serving engine of the P process's transport* —
the same engine and the same buffers the plugin reads, so P needs no raw server. No
staging copy, no event loop, no bounds check, no deadline: what is left between this and
the plugin is the plugin's overhead (mostly the copy out of its staging slabs, the price
of never writing the caller's memory from a call that was abandoned). One thread per
source rank, as the plugin reads ranks in parallel.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from hybridxfer.transport import Descriptors

from hybridxfer_mooncake._envelope import decode
from hybridxfer_mooncake._native import check, new_engine, read_rows
from hybridxfer_mooncake._transport import MAX_BATCH_ENTRIES

__all__ = ["RawMooncakeReader"]

U8 = npt.NDArray[np.uint8]


class RawMooncakeReader:
    """Raw reads into ``memory`` (D's arrays, in D's region order) from P transports' engines."""

    def __init__(self, memory: Sequence[U8], *, host: str = "127.0.0.1") -> None:
        self._engine: Any = new_engine(host)
        self._bases = np.array([int(m.ctypes.data) for m in memory], dtype=np.int64)
        for m in memory:
            check("register_memory", self._engine.register_memory(int(m.ctypes.data), int(m.nbytes)), host)
        self._calls: list[list[tuple[str, list[int], list[int], list[int]]]] = []

    def prepare(self, peer_metadata: bytes, reads: Descriptors) -> None:
        """Build the engine calls for one source rank (``peer_metadata``: its transport's
        ``local_metadata()``) and open the engine's connection to it."""
        envelope = decode(peer_metadata)
        src_bases = np.array([r.address for r in envelope.regions], dtype=np.int64)
        keep = reads.length > 0
        remote = (src_bases[reads.src_region[keep]] + reads.src_offset[keep]).tolist()
        local = (self._bases[reads.dst_region[keep]] + reads.dst_offset[keep]).tolist()
        lengths = reads.length[keep].tolist()
        step = MAX_BATCH_ENTRIES
        calls = [(envelope.target, local[i:i + step], remote[i:i + step], lengths[i:i + step])
                 for i in range(0, len(lengths), step)]
        if calls:  # the first call to a peer performs the P2P handshake: not part of the ceiling
            target, lo, re, ln = calls[0]
            read_rows(self._engine, target, lo[:1], re[:1], ln[:1])
        self._calls.append(calls)

    def read_all(self) -> None:
        """Run every prepared call, one thread per source rank; raises on any failure."""
        errors: list[BaseException] = []

        def run(calls: list[tuple[str, list[int], list[int], list[int]]]) -> None:
            try:
                for target, local, remote, lengths in calls:
                    read_rows(self._engine, target, local, remote, lengths)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(calls,)) for calls in self._calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def release(self) -> None:
        """Forget the prepared calls (the engine stays, for the next case)."""
        self._calls.clear()

    def close(self) -> None:
        self._calls.clear()
        self._engine = None
