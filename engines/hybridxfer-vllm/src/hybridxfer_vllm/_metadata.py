"""What the scheduler side hands the workers each step, and what P sends D per request.

Why plain frozen values: vLLM pickles ``SchedulerOutput`` (and so this metadata) to every
worker process, and the kv_transfer_params travel as JSON through the user's proxy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorHandshakeMetadata,
    KVConnectorMetadata,
)

from hybridxfer.errors import HybridXferError

__all__ = ["HybridXferHandshake", "HybridXferMetadata", "RecvSpec", "TransferParams"]


class HybridXferHandshake(KVConnectorHandshakeMetadata):
    """One worker's hybridxfer agent metadata (layout, digests, transport address)."""

    def __init__(self, tp_rank: int, blob: bytes) -> None:
        self.tp_rank = tp_rank
        self.blob = blob


@attrs.frozen
class TransferParams:
    """The kv_transfer_params a prefill engine returns for a decoder to pull a request."""

    engine_id: str
    host: str
    port: int
    request_id: str
    #: P's block IDs per hybridxfer group name, in token order (state groups: one ID).
    block_ids: Mapping[str, tuple[int, ...]]
    num_tokens: int
    tp_size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "do_remote_prefill": True, "do_remote_decode": False,
            "remote_engine_id": self.engine_id, "remote_host": self.host, "remote_port": self.port,
            "remote_request_id": self.request_id,
            "remote_block_ids": {g: list(ids) for g, ids in self.block_ids.items()},
            "remote_num_tokens": self.num_tokens, "tp_size": self.tp_size,
        }

    @classmethod
    def from_json(cls, params: Mapping[str, Any]) -> TransferParams:
        """Parse a decode request's kv_transfer_params; a clear error names what is wrong."""
        try:
            blocks = params["remote_block_ids"]
            if not isinstance(blocks, Mapping):
                raise TypeError("remote_block_ids must map group names to block IDs")
            return cls(engine_id=str(params["remote_engine_id"]), host=str(params["remote_host"]),
                       port=int(params["remote_port"]), request_id=str(params["remote_request_id"]),
                       block_ids={str(g): tuple(int(b) for b in ids) for g, ids in blocks.items()},
                       num_tokens=int(params["remote_num_tokens"]), tp_size=int(params["tp_size"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise HybridXferError(f"kv_transfer_params are not a HybridXferConnector prefill's: {exc!r}") from exc


@attrs.frozen
class RecvSpec:
    """D side: pull ``params`` into D's blocks ``block_ids`` (per group) for request ``request_id``."""

    request_id: str
    params: TransferParams
    block_ids: Mapping[str, tuple[int, ...]]


class HybridXferMetadata(KVConnectorMetadata):
    """Scheduler -> worker, once per step."""

    def __init__(self, reqs_to_recv: dict[str, RecvSpec], reqs_to_send: dict[str, float]) -> None:
        #: D: requests whose blocks were just allocated and must be pulled.
        self.reqs_to_recv = reqs_to_recv
        #: P: requests whose blocks wait for decoders, with their lease expiry (``time.time()``).
        self.reqs_to_send = reqs_to_send
