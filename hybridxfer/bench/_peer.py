"""A P rank for the benchmark, in its own process: hybridxfer agent plus raw servers.

Run as ``python -m hybridxfer.bench._peer --layout FILE --tp P --rank R --blocks N
--tokens T --transport NAME [--options JSON] [--verify] [--device cuda:N]``. It allocates
its regions once (host numpy arrays, or with ``--device`` torch tensors there; see
:mod:`hybridxfer.bench._placement`) and serves them both through a hybridxfer ``Agent`` and,
on request, through the raw API of the same transport — so the raw ceiling reads *the same
buffers*. It prints ``META <hex>`` and ``REGIONS <json>`` (name -> [address, size, device
id]), then obeys stdin lines:

- ``RAW socket <descfile>``: serve one TCP connection; each ``G`` byte received sends
  the descriptor ranges with ``sendmsg`` (<= 1024 iovecs per call). Replies ``RAWREADY <port>``.
- ``RAW nixl``: a second, raw NIXL agent registers the same arrays (``VRAM`` for tensors on a
  CUDA device). ``RAWREADY <meta hex>``.
- ``RAW ucxx <descfile> <worker address hex> <tag> <error handling 0|1>``: a worker-address
  endpoint to D; each ``GO`` line sends the ranges as tag messages. ``RAWREADY``.
- ``PREFILL <request id> <tokens> <stepsfile> <mark 0|1>``: simulate a prefill (see
  :mod:`hybridxfer.bench._prefill`): sleep through each step until its absolute deadline and,
  with ``mark`` 1, call ``Agent.mark_ready`` as each cache layer's mixer ends. Replies
  ``PREFILLED <start> <end>`` (``time.monotonic()``: one clock for every process of the machine).
- ``STOP``: end the current raw server.  EOF: exit.

``descfile`` is an ``.npy`` (n, 3) int64 array of (region index, offset, length).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt

from hybridxfer.bench._placement import HOST, Placement, Region
from hybridxfer.bench._raw import raw_plugin
from hybridxfer.execute import Agent
from hybridxfer.layout import load_layout
from hybridxfer.synthetic import source_memory

__all__ = ["main"]

U8 = npt.NDArray[np.uint8]


def _ranges(memory: list[U8], descfile: str) -> list[memoryview]:
    desc = np.load(descfile)
    return [memory[int(r)][int(o):int(o) + int(n)].data for r, o, n in desc.tolist()]


def _send_ranges(conn: socket.socket, views: list[memoryview]) -> None:
    """sendmsg scatter-gather over the ranges (the fastest raw send measured here)."""
    pending = list(views)
    i = 0
    while i < len(pending):
        sent = conn.sendmsg(pending[i:i + 1024])
        while sent and i < len(pending) and sent >= pending[i].nbytes:
            sent -= pending[i].nbytes
            i += 1
        if sent:
            pending[i] = pending[i][sent:]


def _serve_socket(views: list[memoryview], listener: socket.socket, stop: threading.Event) -> None:
    conn, _ = listener.accept()
    listener.close()
    with conn:
        while not stop.is_set():
            if conn.recv(1) != b"G":
                return
            _send_ranges(conn, views)


def _nixl_target(memory: list[Region], placement: Placement, stop: threading.Event) -> str:
    from nixl_cu12._api import nixl_agent, nixl_agent_config

    agent = nixl_agent(f"raw-P-{time.monotonic_ns()}", nixl_agent_config(enable_prog_thread=False))
    agent.register_memory(placement.rows(memory), placement.nixl_memory)

    def progress() -> None:  # the initiator's cma READ needs no target work; wire-up does
        while not stop.is_set():
            agent.get_new_notifs()
            time.sleep(0.002)

    threading.Thread(target=progress, daemon=True).start()
    return bytes(agent.get_agent_metadata()).hex()


async def _serve(args: argparse.Namespace) -> None:
    layout = load_layout(args.layout)
    rl = layout.for_rank(args.tp, args.rank, num_blocks=args.blocks)
    placement = Placement(args.device) if args.device else HOST
    if args.verify:
        filled = source_memory(rl, args.tokens)
        memory = placement.adopt([filled[n] for n in rl.region_names])
    else:
        memory = placement.allocate(rl.region_sizes)
        # touch every page before anything is timed
        placement.fill(memory, [args.rank * 16 + i + 1 for i in range(len(memory))])
    async with Agent(f"bench-p{args.rank}", transport=args.transport, transport_options=json.loads(args.options),
                     role="prefill", rank=args.rank, tp_size=args.tp, layout=rl) as agent:
        for name, m in zip(rl.region_names, memory, strict=True):
            await agent.register(name, m)
        print("META", agent.metadata().hex(), flush=True)
        rows = placement.rows(memory).tolist()
        print("REGIONS", json.dumps(dict(zip(rl.region_names, rows, strict=True))), flush=True)
        async with anyio.create_task_group() as tg:

            async def drain() -> None:
                async for _ in agent.completed_requests():
                    pass

            tg.start_soon(drain)
            await _commands(agent, memory, placement)
            tg.cancel_scope.cancel()


async def _prefill(agent: Agent, request_id: str, tokens: int, stepsfile: str, mark: bool) -> None:
    steps = json.loads(open(stepsfile).read())
    readiness: Any = None
    if mark:
        from hybridxfer.plan import Readiness

        readiness = Readiness
    start = time.monotonic()
    deadline = start
    for seconds, ready in steps:
        deadline += seconds
        await anyio.sleep(max(0.0, deadline - time.monotonic()))
        if ready is not None and readiness is not None:
            agent.mark_ready(request_id, readiness(layers=frozenset({ready}), tokens_through=tokens))
    print("PREFILLED", start, time.monotonic(), flush=True)


async def _commands(agent: Agent, memory: list[Region], placement: Placement) -> None:
    stop = threading.Event()
    ucxx_views: list[memoryview] = []
    ucxx_sender: Any = None  # the plugin's RawSender
    tag = 0
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line:
            stop.set()
            return
        cmd = line.split()
        if cmd[:2] == ["RAW", "socket"]:
            stop = threading.Event()
            listener = socket.create_server(("127.0.0.1", 0))
            threading.Thread(target=_serve_socket, args=(_ranges(placement.host_views(memory), cmd[2]), listener, stop),
                             daemon=True).start()
            print("RAWREADY", listener.getsockname()[1], flush=True)
        elif cmd[:2] == ["RAW", "nixl"]:
            stop = threading.Event()
            print("RAWREADY", _nixl_target(memory, placement, stop), flush=True)
        elif cmd[:2] == ["RAW", "ucxx"]:
            ucxx_views = _ranges(placement.host_views(memory), cmd[2])
            tag = int(cmd[4])
            ucxx_sender = await raw_plugin("ucxx").RawSender.connect(cmd[3], error_handling=cmd[5] == "1")
            print("RAWREADY", flush=True)
        elif cmd == ["GO"] and ucxx_sender is not None:
            await ucxx_sender.send(ucxx_views, tag)
        elif cmd[:1] == ["PREFILL"]:
            await _prefill(agent, cmd[1], int(cmd[2]), cmd[3], cmd[4] == "1")
        elif cmd == ["STOP"]:
            stop.set()
            if ucxx_sender is not None:
                ucxx_sender.close()
                ucxx_sender = None
            print("STOPPED", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hybridxfer.bench._peer")
    parser.add_argument("--layout", required=True)
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--blocks", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--transport", default="tcp")
    parser.add_argument("--options", default="{}")
    parser.add_argument("--verify", action="store_true")
    parser.add_argument("--device", help="keep the regions as torch tensors on this device (e.g. cuda:1)")
    args = parser.parse_args(argv)
    anyio.run(_serve, args)


if __name__ == "__main__":
    main()
