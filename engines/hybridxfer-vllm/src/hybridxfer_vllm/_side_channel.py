"""The prefill engine's metadata side channel: every P rank's agent blob, served over TCP.

Why a side channel: vLLM gathers each worker's handshake metadata in the engine core and
hands it to the scheduler-side connector (``set_xfer_handshake_metadata``); decoders need
it before their first pull. P serves it at the address it puts in kv_transfer_params; D
fetches it once per prefill engine. One framed JSON reply per connection, every wait
bounded.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
from collections.abc import Mapping

import anyio

from hybridxfer.errors import ConnectError

__all__ = ["MetadataServer", "fetch_metadata"]

_LEN = struct.Struct("!Q")
_MAX = 64 << 20


class MetadataServer:
    """Serve ``{engine_id, ranks: {tp_rank: blob}}`` until :meth:`close` (a daemon thread)."""

    def __init__(self, engine_id: str, blobs: Mapping[int, bytes], host: str, port: int) -> None:
        body = json.dumps({"engine_id": engine_id,
                           "ranks": {str(r): base64.b64encode(b).decode() for r, b in blobs.items()}}).encode()
        self._payload = _LEN.pack(len(body)) + body
        self._sock = socket.create_server((host, port), reuse_port=False)
        self._sock.settimeout(0.5)
        self.host, self.port = host, int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"hybridxfer-side-channel-{engine_id}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(5.0)
                    conn.sendall(self._payload)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)


async def fetch_metadata(host: str, port: int, *, engine_id: str, timeout: float) -> list[bytes]:
    """Every P rank's blob of ``engine_id``, rank order. Raises ConnectError (bounded by ``timeout``)."""
    try:
        with anyio.fail_after(timeout):
            async with await anyio.connect_tcp(host, port) as stream:
                data = b""
                while True:
                    try:
                        data += await stream.receive()
                    except anyio.EndOfStream:
                        break
                    if len(data) > _MAX:
                        raise ConnectError(f"side channel {host}:{port} sent more than {_MAX} bytes")
    except TimeoutError as exc:
        raise ConnectError(f"side channel {host}:{port} of engine {engine_id!r}: no metadata within {timeout}s") from exc
    except OSError as exc:
        raise ConnectError(f"side channel {host}:{port} of engine {engine_id!r} unreachable: {exc}") from exc
    if len(data) < _LEN.size or _LEN.unpack_from(data)[0] != len(data) - _LEN.size:
        raise ConnectError(f"side channel {host}:{port}: truncated reply ({len(data)} bytes)")
    reply = json.loads(data[_LEN.size:])
    if reply.get("engine_id") != engine_id:
        raise ConnectError(f"side channel {host}:{port} serves engine {reply.get('engine_id')!r}, not {engine_id!r}")
    ranks = {int(r): base64.b64decode(b) for r, b in reply["ranks"].items()}
    if sorted(ranks) != list(range(len(ranks))):
        raise ConnectError(f"engine {engine_id!r} published metadata for ranks {sorted(ranks)}, not 0..{len(ranks) - 1}")
    return [ranks[r] for r in range(len(ranks))]
