"""A vLLM engine as the tests run it: the real ``Scheduler`` here, each TP rank a process.

What the engine core and executor do is done here with vLLM's own pieces: the scheduler's
connector gets the workers' handshake metadata (``set_xfer_handshake_metadata_pp_aware``),
every scheduler output goes to every worker, and the workers' outputs are combined by
vLLM's ``KVOutputAggregator`` before ``update_from_output``.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import vllm_engine

WORKER = Path(__file__).with_name("vllm_worker_proc.py")
_LEN = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Worker:
    """One TP rank's process; ``call`` sends one message and waits for its reply."""

    def __init__(self, init: dict[str, Any], log: Path) -> None:
        self._log = log.open("wb")
        env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", PYTHONWARNINGS="ignore")  # inherits VLLM_* settings
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, env=env)
        self._send(init)

    def _send(self, value: Any) -> None:
        assert self.proc.stdin is not None
        body = pickle.dumps(value)
        self.proc.stdin.write(len(body).to_bytes(_LEN, "big") + body)
        self.proc.stdin.flush()

    def reply(self) -> Any:
        assert self.proc.stdout is not None
        head = self.proc.stdout.read(_LEN)
        if len(head) < _LEN:
            raise RuntimeError(f"worker exited ({self.proc.poll()}); see {self._log.name}")
        return pickle.loads(self.proc.stdout.read(int.from_bytes(head, "big")))

    def call(self, value: Any) -> Any:
        self._send(value)
        return self.reply()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL ends a stopped process too, without letting it run again
        self.proc.wait(timeout=30)

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        text = Path(self._log.name).read_text(errors="replace").splitlines()
        keep = [t for t in text if "hybridxfer" in t or "Error" in t or "Traceback" in t]
        return "\n".join(keep[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call({"op": "exit"})
            except (RuntimeError, BrokenPipeError, OSError):
                pass
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._log.close()


class Engine:
    """One vLLM engine: its Scheduler here, ``tp`` worker processes."""

    def __init__(self, model: Path, logs: Path, *, name: str, tp: int, extra: dict[str, Any],
                 block_size: int | None = None, seed: int = 0) -> None:
        from vllm.distributed.kv_transfer.kv_connector.utils import KVOutputAggregator
        from vllm.v1.core.kv_cache_utils import resolve_kv_cache_block_sizes
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.structured_output import StructuredOutputManager

        self.name, self.tp = name, tp
        self.config = vllm_engine.engine_config(model, tp=tp, engine_id=name, extra=extra, block_size=block_size)
        self.kv_config = vllm_engine.kv_cache_config(self.config)
        port = free_port()
        self.seeds = [seed * 10 + r for r in range(tp)]
        self.workers = [Worker({"config": self.config, "kv_config": self.kv_config, "rank": r, "tp": tp,
                                "port": port, "seed": self.seeds[r]}, logs / f"{name}-tp{r}.log") for r in range(tp)]
        replies = [w.reply() for w in self.workers]
        self.nbytes = replies[0]["nbytes"]
        #: per rank: the transports its serving and pulling agents opened
        self.transports = [r["transports"] for r in replies]
        self.config.cache_config.num_gpu_blocks = self.kv_config.num_blocks
        block_size, hash_block_size = resolve_kv_cache_block_sizes(self.kv_config, self.config)
        self.scheduler = Scheduler(vllm_config=self.config, kv_cache_config=self.kv_config, log_stats=True,
                                   structured_output_manager=StructuredOutputManager(self.config),
                                   block_size=block_size, hash_block_size=hash_block_size)
        assert self.scheduler.connector is not None
        metadata: dict[tuple[int, int], Any] = {}
        for r in replies:
            metadata.update(r["handshake"])
        self.scheduler.connector.set_xfer_handshake_metadata_pp_aware(metadata)
        self.aggregator = KVOutputAggregator(expected_finished_count=tp)
        self.load_errors: dict[str, Any] = {}
        self.outputs: list[Any] = []

    @property
    def block_size(self) -> int:
        return int(self.config.cache_config.block_size)

    def add(self, request_id: str, prompt: list[int], params: dict[str, Any], max_tokens: int = 1) -> Any:
        from vllm import SamplingParams
        from vllm.v1.request import Request

        sp = SamplingParams(max_tokens=max_tokens)
        sp.update_from_generation_config({}, 255)
        request = Request(request_id=request_id, prompt_token_ids=list(prompt), sampling_params=sp,
                          pooling_params=None)
        request.kv_transfer_params = params
        self.scheduler.add_request(request)
        return request

    def schedule(self) -> Any:
        return self.scheduler.schedule()

    def deliver(self, so: Any, ranks: list[int] | None = None,
                writes: Callable[[int], list[dict[str, Any]]] | None = None) -> list[Any]:
        """Send one scheduler output to some ranks; their raw ModelRunnerOutputs."""
        out = []
        for r in ranks if ranks is not None else range(self.tp):
            reply = self.workers[r].call({"op": "step", "scheduler_output": so, "writes": writes(r) if writes else []})
            self.load_errors.update(reply["load_errors"])
            out.append(reply["output"])
        return out

    def finish_step(self, so: Any, outputs: list[Any]) -> dict[int, Any]:
        """Aggregate the ranks' outputs (vLLM's aggregator) and update the scheduler."""
        combined = self.aggregator.aggregate(outputs)
        assert combined is not None
        result: dict[int, Any] = self.scheduler.update_from_output(so, combined)
        self.outputs.append(result)
        return result

    def step(self, writes: Callable[[int], list[dict[str, Any]]] | None = None) -> tuple[Any, dict[int, Any]]:
        so = self.schedule()
        return so, self.finish_step(so, self.deliver(so, writes=writes))

    def step_until(self, done: Callable[[], bool], *, what: str, deadline: float = 60.0) -> None:
        end = time.monotonic() + deadline
        while not done():
            if time.monotonic() > end:
                logs = "\n".join(f"--- {self.name} tp{r}:\n{w.log_tail()}" for r, w in enumerate(self.workers))
                raise AssertionError(f"{self.name}: {what} did not happen within {deadline}s\n{logs}")
            self.step()
            time.sleep(0.02)

    def dump(self, rank: int) -> np.ndarray:
        return np.frombuffer(self.workers[rank].call({"op": "dump"})["bytes"], dtype=np.uint8)

    def block_ids(self, request_id: str) -> tuple[list[int], ...]:
        return tuple(list(g) for g in self.scheduler.kv_cache_manager.get_block_ids(request_id))

    def holds(self, request_id: str) -> bool:
        """The scheduler still holds the request's blocks (not freed)."""
        return request_id in self.scheduler.requests and any(self.block_ids(request_id))

    def close(self) -> None:
        for w in self.workers:
            w.close()
        connector: Any = self.scheduler.connector
        if connector is not None:
            connector.shutdown()
