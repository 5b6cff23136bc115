"""Scheduler side: which requests load from a prefill engine, which wait for decoders.

Pull mode, as vLLM's own NIXL connector: P runs the prefill and keeps the blocks; its
``request_finished_all_groups`` returns the kv_transfer_params D needs; D's scheduler
reports the prompt as loadable asynchronously, allocates blocks, and its workers pull.

Why the back-off: with SSM state, P stops one prompt token short (vLLM's "prefill
back-off") and D computes that token itself; recomputing a token whose effect is already
in the state would apply it twice.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from hybridxfer_vllm._layout import group_names
from hybridxfer_vllm._metadata import HybridXferHandshake, HybridXferMetadata, RecvSpec, TransferParams
from hybridxfer_vllm._settings import ConnectorSettings
from hybridxfer_vllm._side_channel import MetadataServer

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

__all__ = ["SchedulerSide"]

log = logging.getLogger("hybridxfer.vllm")


def _is_state_group(name: str) -> bool:
    return name.split(".", 1)[1].startswith(("mamba", "gdn"))


class SchedulerSide:
    def __init__(self, vllm_config: VllmConfig, kv_cache_config: KVCacheConfig, settings: ConnectorSettings) -> None:
        self._settings = settings
        self._groups = group_names(kv_cache_config)
        self._transfer_groups = tuple(kv_cache_config.transfer_group_ids)
        transfer = vllm_config.kv_transfer_config
        assert transfer is not None
        self.engine_id = str(transfer.engine_id)
        self._tp = int(vllm_config.parallel_config.tensor_parallel_size)
        self._backoff = 1 if any(_is_state_group(g) for g in self._groups) else 0
        self._server: MetadataServer | None = None
        self._recv: dict[str, RecvSpec] = {}
        self._send: dict[str, float] = {}

    # -- P: serve metadata, return params, hold blocks --------------------------------------
    def set_handshake_metadata(self, metadata: dict[int, Any]) -> None:
        blobs = {}
        for rank, meta in metadata.items():
            if not isinstance(meta, HybridXferHandshake):
                raise TypeError(f"worker {rank} sent {type(meta).__name__}, not HybridXferHandshake")
            blobs[int(rank)] = meta.blob
        if self._server is not None:
            self._server.close()
        self._server = MetadataServer(self.engine_id, blobs, self._settings.side_channel_host,
                                      self._settings.side_channel_port)
        log.info("engine %s serves metadata of %d rank(s) on %s:%d", self.engine_id, len(blobs),
                 self._server.host, self._server.port)

    def on_new_request(self, request: Request) -> None:
        params = request.kv_transfer_params
        if not (self._backoff and params and params.get("do_remote_decode")) or params.get("_hybridxfer_truncated"):
            return
        if request.num_prompt_tokens <= self._backoff or request.prompt_token_ids is None:
            return
        del request.prompt_token_ids[-self._backoff:]
        del request._all_token_ids[-self._backoff:]
        request.num_prompt_tokens -= self._backoff
        request.max_tokens = 1
        params["_hybridxfer_truncated"] = True

    def request_finished(self, request: Request, block_ids: tuple[list[int], ...]) -> tuple[bool, dict[str, Any] | None]:
        from vllm.v1.request import RequestStatus

        params = request.kv_transfer_params
        if not params or not params.get("do_remote_decode") or request.status != RequestStatus.FINISHED_LENGTH_CAPPED:
            return False, None
        if self._server is None:
            log.warning("engine %s has no metadata side channel; request %s is not handed off", self.engine_id,
                        request.request_id)
            return False, None
        tables: dict[str, tuple[int, ...]] = {}
        for gid in self._transfer_groups:
            name, ids = self._groups[gid], block_ids[gid]
            if _is_state_group(name):
                real = [b for b in ids if b != 0]  # 0 is vLLM's null block
                tables[name] = (real[-1],) if real else ()
            else:
                # blocks that left a sliding window arrive as the null block
                tables[name] = tuple(-1 if b == 0 else b for b in ids)
        self._send[request.request_id] = time.time() + self._settings.lease_seconds
        out = TransferParams(engine_id=self.engine_id, host=self._server.host, port=self._server.port,
                             request_id=request.request_id, block_ids=tables,
                             num_tokens=int(request.num_computed_tokens), tp_size=self._tp)
        return True, out.to_json()

    # -- D: load asynchronously into the blocks the scheduler allocates ---------------------
    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        params = request.kv_transfer_params
        if not params or not params.get("do_remote_prefill"):
            return 0, False
        remote = TransferParams.from_json(params)
        count = min(remote.num_tokens, request.num_prompt_tokens - self._backoff) - num_computed_tokens
        return (count, True) if count > 0 else (0, False)

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        params = request.kv_transfer_params
        if not params or not params.get("do_remote_prefill"):
            return
        params["do_remote_prefill"] = False  # one load per request
        if num_external_tokens <= 0:
            return
        remote = TransferParams.from_json(params)
        mine: dict[str, tuple[int, ...]] = {}
        for gid, ids in enumerate(blocks.get_block_ids()):
            if gid in self._transfer_groups:
                name = self._groups[gid]
                real = [b for b in ids if b != 0]
                mine[name] = (real[-1],) if _is_state_group(name) and real else tuple(-1 if b == 0 else b for b in ids)
        self._recv[request.request_id] = RecvSpec(request.request_id,
                                                  TransferParams(remote.engine_id, remote.host, remote.port,
                                                                 remote.request_id, remote.block_ids,
                                                                 num_external_tokens, remote.tp_size), mine)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> HybridXferMetadata:
        meta = HybridXferMetadata(self._recv, self._send)
        self._recv, self._send = {}, {}
        return meta

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
