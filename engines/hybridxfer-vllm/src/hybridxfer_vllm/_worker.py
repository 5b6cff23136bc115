"""Worker side: register vLLM's tensors, pull requests, report what finished or failed.

vLLM calls a worker-side connector synchronously from the model runner; hybridxfer is
async. So each worker runs one anyio event loop in a background thread (a blocking
portal) that owns the prefill and decode connectors for the worker's lifetime; vLLM's
calls only start tasks there and read their results, never block on the wire.

Failure policy: a pull that fails for any reason (P gone, timeout, refused plan) makes
the request *finished and failed* (``failed_recving``), never silently received; its D
blocks are listed per group by :meth:`WorkerSide.load_errors`. vLLM 0.33 rejects flat
``invalid_block_ids`` when a model has several KV-cache groups (block IDs are unique only
per group), so for hybrid models the flat set stays empty and the scheduler recomputes
(or fails, by ``kv_load_failure_policy``) from ``failed_recving``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread

from hybridxfer.engine import DecodeConnector, PrefillConnector, RequestFailed
from hybridxfer.errors import ClosedTransportError, HybridXferError
from hybridxfer_vllm._layout import REGION, DerivedLayout, check_tensors, derive_layout, kernel_block_tokens_of
from hybridxfer_vllm._metadata import HybridXferHandshake, HybridXferMetadata, RecvSpec
from hybridxfer_vllm._settings import ConnectorSettings
from hybridxfer_vllm._side_channel import fetch_metadata

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.kv_cache_interface import KVCacheConfig

__all__ = ["WorkerSide"]

log = logging.getLogger("hybridxfer.vllm")


def _tp_rank(vllm_config: VllmConfig) -> tuple[int, int]:
    """This worker's (rank, size) in its TP group, from vLLM's own process groups."""
    from vllm.distributed.parallel_state import get_tp_group, model_parallel_is_initialized

    size = int(vllm_config.parallel_config.tensor_parallel_size)
    if model_parallel_is_initialized():  # type: ignore[no-untyped-call]
        return int(get_tp_group().rank_in_group), size
    if size == 1:
        return 0, 1
    raise HybridXferError("HybridXferConnector needs vLLM's tensor-parallel group to know its TP rank")


class WorkerSide:
    def __init__(self, vllm_config: VllmConfig, kv_cache_config: KVCacheConfig, settings: ConnectorSettings) -> None:
        transfer = vllm_config.kv_transfer_config
        assert transfer is not None
        self._vllm_config = vllm_config
        self._kv_cache_config = kv_cache_config
        self._settings = settings
        self.engine_id = str(transfer.engine_id)
        self._serve = bool(transfer.is_kv_producer)
        self._pull = bool(transfer.is_kv_consumer)
        self.rank, self.tp = _tp_rank(vllm_config)
        self.derived: DerivedLayout | None = None
        self._portal_cm: contextlib.AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._stack = contextlib.ExitStack()
        self._prefill: PrefillConnector | None = None
        self._decode: DecodeConnector | None = None
        self._lock = threading.Lock()
        # D: request id -> future of its pull; finished and failed ones, reported once
        self._pulls: dict[str, concurrent.futures.Future[None]] = {}
        self._failed_blocks: dict[str, Mapping[str, tuple[int, ...]]] = {}
        self._reported_failures: dict[str, Mapping[str, tuple[int, ...]]] = {}
        self._flat_failures: set[int] = set()
        # P: request id -> lease expiry; requests every reader finished
        self._holding: dict[str, float] = {}
        self._read: set[str] = set()
        self._connected: dict[str, anyio.Lock] = {}

    # -- start-up --------------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: Mapping[str, Any]) -> None:
        kernel = kernel_block_tokens_of(self._kv_cache_config, kv_caches)
        self.derived = derive_layout(self._vllm_config, self._kv_cache_config, tp=self.tp, rank=self.rank,
                                     kernel_block_tokens=kernel)
        address, nbytes, owner = check_tensors(self.derived, kv_caches)
        self._owner = owner  # keep vLLM's backing storage alive while it is registered
        memory = {REGION: (address, nbytes)}
        layout = self.derived.rank_layout
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        name = f"{self.engine_id}-tp{self.rank}"
        options = dict(self._settings.transport_options)
        if self._serve:
            prefill = PrefillConnector(layout, name=f"{name}-p", transport=self._settings.transport,
                                       transport_options=options, decode_tp=self._settings.decode_tp)
            self._prefill = self._stack.enter_context(self._portal.wrap_async_context_manager(prefill))
            self._portal.call(self._prefill.register_caches, memory)
            self._portal.start_task_soon(self._collect_reads)
        if self._pull:
            decode = DecodeConnector(layout, name=f"{name}-d", transport=self._settings.transport,
                                     transport_options=options, default_timeout=self._settings.transfer_timeout)
            self._decode = self._stack.enter_context(self._portal.wrap_async_context_manager(decode))
            self._portal.call(self._decode.register_caches, memory)
        log.info("%s registered %d bytes as layout %s (block %d, kernel %d, %s, conv %s) over %s", name, nbytes,
                 layout.digest, layout.logical_block_tokens, layout.kernel_block_tokens,
                 self.derived.memory_layout, self.derived.conv_layout, "/".join(self.transport_names))

    @property
    def transport_names(self) -> tuple[str, ...]:
        """The transports this worker's agents opened (serving, then pulling)."""
        agents = [c.agent for c in (self._prefill, self._decode) if c is not None]
        return tuple(a.transport.name for a in agents)

    def handshake_metadata(self) -> HybridXferHandshake | None:
        if self._prefill is None or self._portal is None:
            return None
        return HybridXferHandshake(self.rank, self._prefill.metadata())

    # -- P -----------------------------------------------------------------------------------
    async def _collect_reads(self) -> None:
        assert self._prefill is not None
        try:
            async for done in self._prefill.finished_requests():
                with self._lock:
                    self._read.add(done.request_id)
        except (ClosedTransportError, anyio.ClosedResourceError, anyio.EndOfStream):
            return

    def _finished_sending(self) -> set[str]:
        now = time.time()
        out: set[str] = set()
        with self._lock:
            for request_id, expiry in list(self._holding.items()):
                if request_id in self._read:
                    out.add(request_id)
                    self._read.discard(request_id)
                elif now >= expiry:
                    log.warning("%s: lease of request %s ran out before every decoder read it; freeing",
                                self.engine_id, request_id)
                    out.add(request_id)
                else:
                    continue
                del self._holding[request_id]
        return out

    # -- D -----------------------------------------------------------------------------------
    def start_load(self, metadata: HybridXferMetadata) -> None:
        with self._lock:
            self._holding.update(metadata.reqs_to_send)
        if not metadata.reqs_to_recv:
            return
        if self._decode is None or self._portal is None:
            raise HybridXferError("this worker does not pull (kv_role is kv_producer), yet requests were scheduled to load")
        for request_id, spec in metadata.reqs_to_recv.items():
            self._pulls[request_id] = self._portal.start_task_soon(self._pull_one, spec)

    async def _ensure_connected(self, spec: RecvSpec) -> None:
        assert self._decode is not None
        engine = spec.params.engine_id
        lock = self._connected.setdefault(engine, anyio.Lock())
        async with lock:
            if engine in self._decode.engines():
                return
            blobs = await fetch_metadata(spec.params.host, spec.params.port, engine_id=engine,
                                         timeout=self._settings.transfer_timeout)
            await self._decode.connect(engine, blobs)

    async def _pull_one(self, spec: RecvSpec) -> None:
        assert self._decode is not None
        try:
            await self._ensure_connected(spec)
            await self._decode.pull(spec.params.request_id, engine=spec.params.engine_id,
                                    src_blocks=spec.params.block_ids, dst_blocks=spec.block_ids,
                                    num_tokens=spec.params.num_tokens)
        except RequestFailed as exc:
            log.warning("%s: request %s failed to load: %s", self.engine_id, spec.request_id, exc)
            self._failed_blocks[spec.request_id] = dict(spec.block_ids)
        except HybridXferError as exc:  # handshake or side channel
            log.warning("%s: request %s could not reach %s: %s", self.engine_id, spec.request_id,
                        spec.params.engine_id, exc)
            self._failed_blocks[spec.request_id] = dict(spec.block_ids)

    def finished(self) -> tuple[set[str], set[str], set[str]]:
        """(finished sending, finished receiving incl. failed, failed receiving), each once."""
        recving: set[str] = set()
        failed: set[str] = set()
        for request_id, future in list(self._pulls.items()):
            if not future.done():
                continue
            del self._pulls[request_id]
            recving.add(request_id)
            error = future.exception()
            if error is not None:
                log.warning("%s: pull of %s raised %r", self.engine_id, request_id, error)
            if error is not None or request_id in self._failed_blocks:
                failed.add(request_id)
                blocks = self._failed_blocks.pop(request_id, None)
                if blocks is not None:
                    self._reported_failures[request_id] = blocks
                    self._flat_failures.update(b for ids in blocks.values() for b in ids if b >= 0)
        return self._finished_sending(), recving, failed

    def load_errors(self) -> dict[str, Mapping[str, tuple[int, ...]]]:
        """Failed requests since the last call: D request id -> {group: D block IDs}."""
        out, self._reported_failures = self._reported_failures, {}
        return out

    def flat_load_errors(self) -> set[int]:
        """Block IDs of failed loads since the last call, all groups together."""
        out, self._flat_failures = self._flat_failures, set()
        return out

    def shutdown(self) -> None:
        for future in self._pulls.values():
            future.cancel()
        with contextlib.suppress(Exception):
            self._stack.close()
        if self._portal_cm is not None:
            self._portal_cm.__exit__(None, None, None)
            self._portal_cm = self._portal = None
