"""One vLLM worker (a TP rank) in its own process, driven over stdin/stdout by the test.

It does what vLLM's CPU worker does around a KV connector: joins vLLM's TP process group
(gloo), allocates the KV cache with vLLM's allocator, creates the worker-side connector
through ``ensure_kv_transfer_initialized`` (vLLM's factory, so ``kv_connector_module_path``
is honoured), registers the caches, and each step runs vLLM's own connector lifecycle
(``KVConnectorModelRunnerMixin._get_kv_connector_output``) around a stand-in forward
pass that writes the scheduled tokens' KV and state (see ``vllm_engine.write_request``).

Protocol: length-prefixed pickles; every request gets exactly one reply.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

_LEN = struct.Struct("!Q")


def _read(stream: Any) -> Any:
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        raise SystemExit(0)
    (n,) = _LEN.unpack(head)
    return pickle.loads(stream.read(n))


def _write(stream: Any, value: Any) -> None:
    body = pickle.dumps(value)
    stream.write(_LEN.pack(len(body)) + body)
    stream.flush()


def main() -> None:
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # vLLM logs must not corrupt the protocol
    import logging

    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("hybridxfer").setLevel(logging.INFO)
    init = _read(inp)
    config, kv_config, rank, tp, port, seed = (init[k] for k in ("config", "kv_config", "rank", "tp", "port", "seed"))

    from vllm.config.vllm import set_current_vllm_config
    from vllm.distributed.kv_transfer import ensure_kv_transfer_initialized, get_kv_transfer_group
    from vllm.distributed.parallel_state import init_distributed_environment, initialize_model_parallel
    from vllm.forward_context import set_forward_context
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.worker.kv_connector_model_runner_mixin import KVConnectorModelRunnerMixin

    import vllm_engine

    with set_current_vllm_config(config):
        init_distributed_environment(world_size=tp, rank=rank, distributed_init_method=f"tcp://127.0.0.1:{port}",
                                     local_rank=rank, backend="gloo")
        initialize_model_parallel(tensor_model_parallel_size=tp)
        kv_caches = vllm_engine.allocate(config, kv_config)
        buf = vllm_engine.backing(kv_caches)
        buf[:] = vllm_engine.untouched_pattern(buf.size, seed)
        ensure_kv_transfer_initialized(config, kv_config)
        connector: Any = get_kv_transfer_group()
        connector.register_kv_caches(kv_caches)
        meta = connector.get_handshake_metadata()
    _write(out, {"handshake": {(0, rank): meta}, "nbytes": int(buf.size),
                 "transports": connector.worker.transport_names})

    while True:
        msg = _read(inp)
        op = msg["op"]
        if op == "step":
            so = msg["scheduler_output"]
            for w in msg.get("writes", ()):
                vllm_engine.write_request(kv_caches, config, tp=tp, rank=rank, **w)
            with set_current_vllm_config(config), set_forward_context(None, config), \
                    KVConnectorModelRunnerMixin._get_kv_connector_output(so) as kv_out:
                pass
            req_ids = list(so.num_scheduled_tokens)
            result = ModelRunnerOutput(req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)},
                                       sampled_token_ids=[[7] for _ in req_ids], logprobs=None,
                                       prompt_logprobs_dict={}, pooler_output=[None] * len(req_ids),
                                       kv_connector_output=kv_out)
            _write(out, {"output": result, "load_errors": connector.load_errors()})
        elif op == "dump":
            _write(out, {"bytes": buf.tobytes()})
        elif op == "exit":
            connector.shutdown()
            _write(out, {"ok": True})
            return


if __name__ == "__main__":
    main()
