"""hybridxfer for vLLM: ``HybridXferConnector``, a KV connector for hybrid attention + SSM models.

Switch a vLLM 0.33 deployment to it with one flag::

    --kv-transfer-config '{"kv_connector":"HybridXferConnector",
                           "kv_connector_module_path":"hybridxfer_vllm","kv_role":"kv_both"}'

The layout is derived from vLLM's own ``KVCacheConfig`` (:func:`derive_layout`); the
connector pulls (decode reads from prefill) over any hybridxfer transport.
"""

from __future__ import annotations

from hybridxfer_vllm._connector import HybridXferConnector
from hybridxfer_vllm._layout import REGION, DerivedLayout, derive_layout, group_names
from hybridxfer_vllm._metadata import HybridXferHandshake, HybridXferMetadata, RecvSpec, TransferParams
from hybridxfer_vllm._settings import ConnectorSettings

__all__ = [
    "ConnectorSettings",
    "DerivedLayout",
    "HybridXferConnector",
    "HybridXferHandshake",
    "HybridXferMetadata",
    "REGION",
    "RecvSpec",
    "TransferParams",
    "derive_layout",
    "group_names",
]
