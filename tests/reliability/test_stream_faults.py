"""A streaming P rank that dies part-way, as a real process: the failure must be exact.

P (a child process) reports k of the request's L layer groups ready and is then
SIGKILLed. D's stream must fail within its deadline naming exactly the layers that did
not land and exactly the D blocks they write; every layer it reported landed must hold
P's bytes (the per-step oracle) and nothing else may have moved. Then D must close
promptly — no reader parked — in pull and push mode alike.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest

from hybridxfer._child import ChildLines, open_child
from hybridxfer.errors import StreamedTransferError
from hybridxfer.layout import load_layout
from hybridxfer.synthetic import blocks_for
from tests.execute._stream_support import OPTIONS, decode_rank, differing_regions, step_image, written_blocks

ROOT = Path(__file__).resolve().parents[2]
TOY_FILE = ROOT / "docs" / "examples" / "toy_hybrid.toml"
TOY = load_layout(TOY_FILE)
TOKENS = 100
#: The stream's deadline once P is dead (no readiness comes any more).
DEADLINE = 3.0
#: Seconds past the deadline tolerated for the error to surface (2-core CI, busy).
SLACK = 10.0


class _PeerExited(Exception):
    pass


async def _command(child: ChildLines, line: str) -> None:
    assert child.process.stdin is not None
    await child.process.stdin.send(line.encode() + b"\n")
    assert await child.line() == "MARKED"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("mode", ["pull", "push"])
@pytest.mark.parametrize("kind", ["tcp", "nixl", "ucxx"])
async def test_p_killed_after_k_of_l_groups_fails_exactly(anyio_backend: str, kind: str, mode: str) -> None:
    argv = [sys.executable, "-m", "hybridxfer.testing._stream_peer", "--layout", str(TOY_FILE), "--tp", "1",
            "--rank", "0", "--tokens", str(TOKENS), "--transport", kind, "--options", json.dumps(OPTIONS[kind])]
    with anyio.fail_after(60):
        async with open_child(argv, lambda status: _PeerExited(f"stream peer exited ({status})")) as child:
            line = await child.line()
            assert line.startswith("META ")
            src = TOY.for_rank(1, 0, num_blocks=blocks_for(TOY, 1, TOKENS))
            async with decode_rank(TOY, 1, 0, kind, TOKENS, [bytes.fromhex(line[5:])], src) as side:
                st = side.d.plan_stream(side.peers, request_id="req", src_blocks=side.src_blocks,
                                        dst_blocks=side.dst_blocks, num_tokens=TOKENS,
                                        mode="push" if mode == "push" else "pull", timeout=DEADLINE + 20)
                groups = st.schedule.groups
                k = len(groups) // 2
                assert 0 < k < len(groups)
                landed: list[str] = []
                for group in groups[:k]:
                    await _command(child, f"READY req {TOKENS} {','.join(group.layers)}")
                    for layer in group.layers:
                        await st.wait_for_layer(layer, timeout=20)
                    landed.extend(group.layers)
                    assert differing_regions(side.memory, step_image(side, landed)) == []
                child.kill()
                await child.process.wait()
                started = anyio.current_time()
                with pytest.raises(StreamedTransferError) as info:
                    await st.wait(timeout=DEADLINE)
                assert anyio.current_time() - started < DEADLINE + SLACK
                err = info.value
                rest = [layer for g in groups[k:] for layer in g.layers]
                assert err.request_id == "req" and err.timed_out
                assert set(err.landed_layers) == set(landed) and set(err.invalid_layers) == set(rest)
                assert err.invalid_blocks == written_blocks(side, rest) != {}
                assert st.landed_layers == frozenset(landed)
                # nothing reported landed that is not, and nothing else moved
                assert differing_regions(side.memory, step_image(side, landed)) == []
                with pytest.raises(StreamedTransferError):
                    await st.wait_for_layer(rest[0])
            # leaving D's agent was prompt (bounded by the fail_after): no reader parked
