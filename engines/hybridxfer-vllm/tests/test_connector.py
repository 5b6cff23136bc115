"""HybridXferConnector driven by vLLM's real Scheduler and worker-side calls, P and D apart.

Each engine's ``Scheduler`` runs in this process; each TP rank is its own process holding
CPU tensors that vLLM's allocator shaped for a hybrid model (HMA on: one Mamba2 group
and one attention group over shared tensors). P runs a stand-in prefill that writes the
request's KV and SSM state where vLLM puts them; D pulls; every byte of every D rank is
then compared with the same writer applied to D's own blocks, and everything else must
still hold D's fill pattern. Negative controls: the check itself rejects swapped blocks,
and a deliberately wrong block mapping sent through the real system is caught.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import vllm_engine
from hybridxfer_vllm import group_names
from vllm_cluster import Engine

PROMPT = 300  # tokens; P computes 299 (the Mamba back-off), D loads them and computes the last
#: P TP 2 -> D TP 1 runs over NIXL (the other tests over tcp): the transport is chosen
#: in kv_connector_extra_config like any other setting.
TRANSPORT = "nixl"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return vllm_engine.write_model(tmp_path / "model")


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.close()


def _prompt(seed: int) -> list[int]:
    return [(seed * 37 + i) % 200 + 1 for i in range(PROMPT)]


def _prefill(p: Engine, request_id: str, seed: int) -> dict[str, Any]:
    """Run the prefill on P with vLLM's scheduler; return the kv_transfer_params it emits."""
    p.add(request_id, _prompt(seed), {"do_remote_decode": True})
    so = p.schedule()
    (new,) = so.scheduled_new_reqs
    attention, state = _tables(p, new.block_ids)
    tokens = so.num_scheduled_tokens[request_id]
    assert tokens == PROMPT - 1  # vLLM's prefill back-off for SSM models

    def writes(rank: int) -> list[dict[str, Any]]:
        return [dict(seed=seed, num_tokens=tokens, attention_blocks=attention, state_block=state)]

    result = p.finish_step(so, p.deliver(so, writes=writes))
    (finished,) = [o for outs in result.values() for o in outs.outputs if o.request_id == request_id]
    assert finished.finish_reason is not None and finished.kv_transfer_params is not None
    assert p.holds(request_id), "P must keep the blocks until every decoder has read them"
    return dict(finished.kv_transfer_params)


def _tables(engine: Engine, block_ids: tuple[list[int], ...]) -> tuple[list[int], int]:
    """(attention blocks in token order, Mamba running-state block) from vLLM's per-group lists."""
    names = group_names(engine.kv_config)
    by_kind = {name.split(".", 1)[1]: list(ids) for name, ids in zip(names, block_ids, strict=True)}
    return by_kind["attention"], [b for b in by_kind["mamba2"] if b][-1]


def _expected(d: Engine, rank: int, loads: list[tuple[int, list[int], int]]) -> np.ndarray:
    """D rank ``rank``'s whole buffer as it must be: fill pattern + each load where vLLM puts it."""
    ref = vllm_engine.allocate(d.config, d.kv_config)
    buf = vllm_engine.backing(ref)
    buf[:] = vllm_engine.untouched_pattern(buf.size, d.seeds[rank])
    for seed, attention, state in loads:
        vllm_engine.write_request(ref, d.config, seed=seed, tp=d.tp, rank=rank, num_tokens=PROMPT - 1,
                                  attention_blocks=attention, state_block=state)
    return buf.copy()


def _decode(d: Engine, request_id: str, seed: int, params: dict[str, Any]) -> tuple[list[int], int, Any]:
    d.add(request_id, _prompt(seed), params, max_tokens=16)
    so = d.schedule()
    assert not so.scheduled_new_reqs, "the prompt loads asynchronously: nothing is computed yet"
    attention, state = _tables(d, d.block_ids(request_id))
    return attention, state, so


def _received(d: Engine, request_id: str) -> bool:
    """D's scheduler took the loaded prompt and runs the request (never via a failure)."""
    request = d.scheduler.requests[request_id]
    assert request_id not in d.load_errors, f"{request_id} failed to load"
    return request.status.name == "RUNNING" and request.num_computed_tokens >= PROMPT - 1


def _mismatches(got: np.ndarray, want: np.ndarray) -> int:
    return int(np.count_nonzero(got != want))


def test_p_tp1_to_d_tp2_every_byte_p_waits_for_both_readers_and_p_killed_mid_transfer(
        model: Path, tmp_path: Path, engines: list[Engine]) -> None:
    p = Engine(model, tmp_path, name="prefill", tp=1, extra={"decode_tp": 2}, seed=1)
    engines.append(p)
    d = Engine(model, tmp_path, name="decode", tp=2, extra={}, seed=2)
    engines.append(d)
    params = _prefill(p, "req-a", seed=11)
    attention, state, so = _decode(d, "req-a", 11, params)

    # Only D rank 0 gets the step: its pull completes, rank 1 has not read yet.
    held = [(so, d.deliver(so, ranks=[0]))]
    while not any(out.kv_connector_output and out.kv_connector_output.finished_recving
                  for _, (out,) in held):
        nxt = d.schedule()
        held.append((nxt, d.deliver(nxt, ranks=[0])))
        assert len(held) < 3000, "D rank 0 never finished its pull"
        p.step()
        assert p.holds("req-a"), "P freed its blocks while D rank 1 had not read them"
    for _ in range(3):
        p.step()
        assert p.holds("req-a"), "P freed its blocks while D rank 1 had not read them"

    # Now rank 1 sees the same steps, in order; outputs are combined as vLLM's executor does.
    for step_output, (out0,) in held:
        (out1,) = d.deliver(step_output, ranks=[1])
        d.finish_step(step_output, [out0, out1])
    d.step_until(lambda: _received(d, "req-a"), what="req-a received")
    p.step_until(lambda: not p.holds("req-a"), what="P freeing req-a")

    for rank in range(2):
        want = _expected(d, rank, [(11, attention, state)])
        got = d.dump(rank)
        assert _mismatches(got, want) == 0, f"D rank {rank}: {_mismatches(got, want)} bytes differ"
    # negative control: the same check with two attention blocks swapped must fail
    swapped = [attention[1], attention[0], *attention[2:]]
    assert _mismatches(d.dump(0), _expected(d, 0, [(11, swapped, state)])) > 0

    # P dies in the middle of the next request's transfer
    _kill_p_mid_transfer(p, d, "req-e", 32, intact=[(11, attention, state)])


def _bad_blocks(d: Engine, got: np.ndarray, want: np.ndarray) -> set[int]:
    """D block IDs (in any layer's slab) holding a byte that differs."""
    page = d.kv_config.kv_cache_tensors[0].block_stride
    return {int(i) // page % d.kv_config.num_blocks for i in np.flatnonzero(got != want)}


@pytest.fixture
def ds_conv_layout(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """VLLM_SSM_CONV_STATE_LAYOUT=DS for this process and the worker processes it starts."""
    import vllm.envs
    from vllm.model_executor.layers.mamba.mamba_utils import get_conv_state_layout

    monkeypatch.setenv("VLLM_SSM_CONV_STATE_LAYOUT", "DS")
    vllm.envs.disable_envs_cache()
    get_conv_state_layout.cache_clear()
    yield
    get_conv_state_layout.cache_clear()


def test_p_tp2_to_d_tp1_other_block_size_and_wrong_mapping_is_caught(
        model: Path, tmp_path: Path, engines: list[Engine], ds_conv_layout: None) -> None:
    """Over NIXL, conv state in DS layout (the other test uses vLLM's default SD)."""
    p = Engine(model, tmp_path, name="prefill", tp=2, extra={"decode_tp": 1, "transport": TRANSPORT}, seed=3)
    engines.append(p)
    d = Engine(model, tmp_path, name="decode", tp=1, extra={"transport": TRANSPORT}, block_size=256, seed=4)
    engines.append(d)
    assert (p.block_size, d.block_size) == (128, 256)  # bridged by token position
    assert {t for e in (p, d) for ranks in e.transports for t in ranks} == {TRANSPORT}
    assert d.kv_config.kv_cache_groups[0].kv_cache_spec.shapes[0] == (64, 3)  # DS: (channels, rows)

    good = _prefill(p, "req-b", seed=21)
    bad = _prefill(p, "req-c", seed=22)
    # A deliberately wrong block mapping: P's attention blocks of req-c listed in reverse.
    attn = next(n for n in bad["remote_block_ids"] if n.endswith("attention"))
    bad["remote_block_ids"][attn] = list(reversed(bad["remote_block_ids"][attn]))

    att_b, st_b, so_b = _decode(d, "req-b", 21, good)
    d.finish_step(so_b, d.deliver(so_b))
    att_c, st_c, so_c = _decode(d, "req-c", 22, bad)
    d.finish_step(so_c, d.deliver(so_c))
    d.step_until(lambda: _received(d, "req-b") and _received(d, "req-c"), what="both requests received")
    p.step_until(lambda: not p.holds("req-b") and not p.holds("req-c"), what="P freeing both")

    got = d.dump(0)
    right = _expected(d, 0, [(21, att_b, st_b), (22, att_c, st_c)])
    bad_blocks = _bad_blocks(d, got, right)
    # the wrong mapping is caught, exactly in req-c's attention blocks; req-b and req-c's
    # state, and every byte no request owns, are exact
    assert bad_blocks and bad_blocks <= set(att_c), (bad_blocks, att_c)
    assert not _bad_blocks(d, got, _expected(d, 0, [(21, att_b, st_b)])) - set(att_c) - {st_c}


def _kill_p_mid_transfer(p: Engine, d: Engine, request_id: str, seed: int,
                         intact: list[tuple[int, list[int], int]]) -> None:
    """P freezes before D reads ``request_id`` and dies while the pull waits on it."""
    params = _prefill(p, request_id, seed=seed)
    for worker in p.workers:
        os.kill(worker.proc.pid, signal.SIGSTOP)
    attention, state, so = _decode(d, request_id, seed, params)
    want = {name: (tuple(attention) if name.endswith("attention") else (state,)) for name in group_names(d.kv_config)}
    d.finish_step(so, d.deliver(so))  # every D rank's pull is now in flight ...
    for worker in p.workers:
        worker.kill()  # ... and P dies under it

    request = d.scheduler.requests[request_id]
    d.step_until(lambda: request.status.name == "RUNNING", what=f"{request_id} failed and rescheduled")
    # reported as a load error with exactly the request's D blocks, per KV-cache group
    assert {g: tuple(ids) for g, ids in d.load_errors[request_id].items()} == want
    # vLLM's scheduler recomputed it locally (kv_load_failure_policy = recompute), from token 0
    assert request.num_computed_tokens == PROMPT
    # P's scheduler never heard that it was read: it still holds the blocks (lease 30 s)
    assert p.holds(request_id)
    # on every D rank the earlier requests are intact; only this request's blocks may differ
    for rank in range(d.tp):
        assert _bad_blocks(d, d.dump(rank), _expected(d, rank, intact)) <= set(attention) | {state}
