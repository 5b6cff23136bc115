"""``HybridXferConnector``: vLLM 0.33's ``KVConnectorBase_V1`` + ``SupportsHMA`` on hybridxfer.

One class for both of vLLM's roles: the scheduler-side instance decides what loads and
what waits (:mod:`._scheduler`), the worker-side instance moves bytes (:mod:`._worker`).
Loading is asynchronous and layer-independent (whole request), so the per-layer hooks
are no-ops; saving is the prefill engine simply keeping its blocks until every decoder
has read them (pull mode).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorRole,
    KVConnectorTransferResults,
    SupportsHMA,
)

from hybridxfer_vllm._metadata import HybridXferMetadata
from hybridxfer_vllm._scheduler import SchedulerSide
from hybridxfer_vllm._settings import ConnectorSettings
from hybridxfer_vllm._worker import WorkerSide

if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch
    from vllm.config import VllmConfig
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorHandshakeMetadata
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

__all__ = ["HybridXferConnector"]


class HybridXferConnector(KVConnectorBase_V1, SupportsHMA):
    """Disaggregated prefill/decode for hybrid models over hybridxfer (pull mode)."""

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        assert vllm_config.kv_transfer_config is not None
        self.settings = ConnectorSettings.from_extra_config(vllm_config.kv_transfer_config.kv_connector_extra_config)
        self.scheduler: SchedulerSide | None = None
        self.worker: WorkerSide | None = None
        if role == KVConnectorRole.SCHEDULER:
            self.scheduler = SchedulerSide(vllm_config, kv_cache_config, self.settings)
        else:
            self.worker = WorkerSide(vllm_config, kv_cache_config, self.settings)

    # -- scheduler side ----------------------------------------------------------------------
    def _sched(self) -> SchedulerSide:
        assert self.scheduler is not None, "scheduler-side call on a worker-side connector"
        return self.scheduler

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        return self._sched().get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        self._sched().update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> HybridXferMetadata:
        return self._sched().build_connector_meta(scheduler_output)

    def on_new_request(self, request: Request) -> None:
        self._sched().on_new_request(request)

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        return self._sched().request_finished(request, (block_ids,))

    def request_finished_all_groups(self, request: Request,
                                    block_ids: tuple[list[int], ...]) -> tuple[bool, dict[str, Any] | None]:
        return self._sched().request_finished(request, block_ids)

    def get_loaded_kv_cache_group_ids(self, request: Request) -> tuple[int, ...]:
        """A pull restores every transferable group of the request, not only prefix-cacheable ones."""
        return tuple(self._kv_cache_config.transfer_group_ids)

    def set_xfer_handshake_metadata(self, metadata: Mapping[int, KVConnectorHandshakeMetadata]) -> None:
        self._sched().set_handshake_metadata(dict(metadata))

    # -- worker side -------------------------------------------------------------------------
    def _work(self) -> WorkerSide:
        assert self.worker is not None, "worker-side call on a scheduler-side connector"
        return self.worker

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._work().register_kv_caches(kv_caches)

    def get_handshake_metadata(self) -> KVConnectorHandshakeMetadata | None:
        return self._work().handshake_metadata()

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, HybridXferMetadata)
        self._work().start_load(meta)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return None  # whole requests load asynchronously; the scheduler waits for get_finished

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        return None  # pull mode: P keeps its blocks, decoders read them

    def wait_for_save(self) -> None:
        return None

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        sending, recving, _ = self._work().finished()
        return sending or None, recving or None

    def get_transfer_results(self, finished_req_ids: set[str]) -> KVConnectorTransferResults:
        sending, recving, failed = self._work().finished()
        return KVConnectorTransferResults(finished_sending=sending, finished_recving=recving, failed_recving=failed)

    def load_errors(self) -> dict[str, Mapping[str, tuple[int, ...]]]:
        """Failed loads since the last call: request id -> {group name: D block IDs}."""
        return self._work().load_errors()

    def get_block_ids_with_load_errors(self) -> set[int]:
        """Flat block IDs, only where vLLM accepts them (one KV-cache group); see :mod:`._worker`."""
        flat = self._work().flat_load_errors()
        return flat if len(self._kv_cache_config.kv_cache_groups) == 1 else set()

    def shutdown(self) -> None:
        if self.worker is not None:
            self.worker.shutdown()
        if self.scheduler is not None:
            self.scheduler.shutdown()
