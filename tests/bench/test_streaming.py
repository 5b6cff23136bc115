"""The streaming benchmark, vLLM's descriptor baseline and ``--memory cuda``: shapes, invariants
and exact bytes, never timings."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest

from hybridxfer.bench._cuda import CudaUnavailableError, require_cuda
from hybridxfer.bench._e2e import Group
from hybridxfer.bench._prefill import DEFAULT_FLOPS, MODEL_SHAPES, prefill_steps
from hybridxfer.bench._reference import canonical
from hybridxfer.bench._results import spread
from hybridxfer.bench._stream_report import stream_table
from hybridxfer.bench._stream_results import StreamCaseResult
from hybridxfer.bench._streaming import StreamGroup, run_stream_group
from hybridxfer.bench._vllm import uncoalesced_reads
from hybridxfer.descriptors import Descriptors
from hybridxfer.errors import InvalidArgumentError, UnsupportedOperationError
from hybridxfer.layout import load_layout
from hybridxfer.plan import TransferPlan, compile_plan, contiguous_block_tables
from hybridxfer.synthetic import blocks_for

LAYOUTS = Path(__file__).resolve().parents[2] / "layouts"
NEMOTRON = LAYOUTS / "nemotron-3-nano-30b-a3b.toml"
QWEN = LAYOUTS / "qwen3-next-80b-a3b.toml"
STREAM_FIELDS = {"transport", "layout", "src_tp", "dst_tp", "tokens", "bytes", "mode", "tail_s", "ttd_s",
                 "ttd_speedup"}


def test_simulated_prefill_follows_the_model_and_the_flop_model() -> None:
    layout = load_layout(NEMOTRON)
    steps = prefill_steps(layout, 4096)
    assert len(steps) == 52  # every model layer, MoE layers included
    assert [s.ready for s in steps if s.ready] == [layer.name for layer in layout.layers]
    # attention at index 5: projections + causal scores, written out from the docstring's formula
    h, qh, hd, kvh, t = 2688, 32, 128, 2, 4096
    want = (2 * t * (h * qh * hd + 2 * h * kvh * hd + qh * hd * h) + 2 * t * t * qh * hd) / DEFAULT_FLOPS
    assert steps[5].ready == "layers.5" and steps[5].seconds == pytest.approx(want, rel=1e-12)
    # doubling the prompt doubles a Mamba layer (linear) and more than doubles attention (quadratic)
    longer = prefill_steps(layout, 8192)
    assert longer[0].seconds == pytest.approx(2 * steps[0].seconds, rel=1e-12)
    assert longer[5].seconds > 2.2 * steps[5].seconds
    qwen = prefill_steps(load_layout(QWEN), 1024)
    assert len(qwen) == 96 and sum(s.ready is not None for s in qwen) == 48  # mixer + MoE per layer
    fixed = prefill_steps(layout, 4096, layer_ms=2.0)
    assert len(fixed) == 52 and all(s.seconds == 0.002 for s in fixed)
    assert set(MODEL_SHAPES) == {"nemotron-3-nano-30b-a3b", "qwen3-next-80b-a3b"}


def test_simulated_prefill_rejects_bad_input() -> None:
    layout = load_layout(NEMOTRON)
    with pytest.raises(InvalidArgumentError, match="tokens must be positive, got 0"):
        prefill_steps(layout, 0)
    with pytest.raises(InvalidArgumentError, match="--flops must be positive, got -1"):
        prefill_steps(layout, 16, flops_per_s=-1)
    with pytest.raises(InvalidArgumentError, match="--layer-ms must be >= 0, got -2"):
        prefill_steps(layout, 16, layer_ms=-2)


def test_stream_result_json_and_table() -> None:
    s, bulk = spread([0.2, 0.1, 0.3]), spread([0.4, 0.4])
    case = StreamCaseResult(transport="tcp", layout="m", src_tp=1, dst_tp=4, tokens=4096, bytes=10**8,
                            mode="pull-stream", prefill=s, tail=s, ttd=s, bulk_transfer=bulk,
                            last_group_bytes=10**6, bulk_ttd_s=0.5, verified=True)
    doc = case.to_json()
    assert STREAM_FIELDS <= set(doc)
    assert (doc["mode"], doc["tail_s"], doc["ttd_s"], doc["ttd_speedup"]) == ("pull-stream", 0.2, 0.2, 2.5)
    assert doc["last_group_s"] == pytest.approx(0.004)
    assert "pull-stream" in stream_table([case])


def _bulk_and_streams(transport: str, modes: tuple[str, ...]) -> list[dict[str, object]]:
    group = Group(transport=transport, layout_path=NEMOTRON, src_tp=1, cases=((1, 256),), repeats=1, verify=True)
    sg = StreamGroup(group=group, modes=modes, layer_ms=0.2)  # type: ignore[arg-type]
    return [r.to_json() for r in anyio.run(run_stream_group, sg)]


def test_streaming_bulk_mode_moves_every_byte_exactly() -> None:
    """A real P process runs the simulated prefill; D's memory is checked byte for byte
    (untouched bytes included) after the bulk transfer that follows it."""
    (doc,) = _bulk_and_streams("tcp", ("bulk",))
    assert STREAM_FIELDS <= set(doc)
    assert doc["mode"] == "bulk" and doc["ttd_speedup"] == 1.0 and doc["verified"] is True
    assert 0 < doc["tail_s"] < doc["ttd_s"]  # type: ignore[operator]
    assert doc["prefill_s"] >= 52 * 0.0002  # type: ignore[operator]


def test_streaming_pull_and_push_move_every_byte_exactly() -> None:
    """Needs the planner's streamed steps (hybridxfer.plan.stream_schedule) and the streamed executor."""
    docs = _bulk_and_streams("tcp", ("bulk", "pull-stream", "push-stream"))
    assert [d["mode"] for d in docs] == ["bulk", "pull-stream", "push-stream"]
    assert all(d["verified"] is True and STREAM_FIELDS <= set(d) for d in docs)
    assert all(d["tail_s"] < d["ttd_s"] for d in docs)  # type: ignore[operator]


@pytest.mark.parametrize(("src_tp", "dst_tp"), [(1, 4), (4, 2)])
def test_vllm_baseline_moves_the_plans_bytes_per_kernel_block(src_tp: int, dst_tp: int) -> None:
    layout = load_layout(NEMOTRON)
    tokens = 5000
    src = tuple(layout.for_rank(src_tp, r, num_blocks=blocks_for(layout, src_tp, tokens, rank=r))
                for r in range(src_tp))
    dst = layout.for_rank(dst_tp, 0, num_blocks=blocks_for(layout, dst_tp, tokens))
    tables = [(contiguous_block_tables(src[0], tokens), contiguous_block_tables(dst, tokens))]
    plan = compile_plan(src, dst).bind(*tables[0], num_tokens=tokens)
    assert isinstance(plan, TransferPlan)
    reads = uncoalesced_reads(src, dst, tables, tokens)
    assert [rd.source_rank for rd in reads] == list(plan.descriptors.source_ranks)

    def rows(d: Descriptors) -> np.ndarray:
        return np.stack([d.src_rank, d.src_region, d.src_offset, d.dst_region, d.dst_offset, d.length], axis=1)

    merged = Descriptors.concat(reads)
    assert np.array_equal(canonical(rows(merged)), canonical(rows(plan.descriptors)))  # same bytes, same places
    assert len(merged) == plan.statistics.descriptor_count_uncoalesced > 4 * len(plan.descriptors)
    # no row crosses a kernel block of any token piece: lengths never exceed one D kernel block's bytes
    biggest_page = max(pp.piece.nbytes for pp in dst.placements)
    assert int(merged.length.max()) <= biggest_page


def test_cuda_memory_fails_with_a_typed_error_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    from hybridxfer.bench import main

    with pytest.raises(CudaUnavailableError, match=r"torch .* sees no CUDA device") as info:
        require_cuda(["nixl"])
    assert isinstance(info.value, UnsupportedOperationError)
    with pytest.raises(CudaUnavailableError, match=r"transports \['tcp'\] move host memory only"):
        require_cuda(["tcp", "nixl"])
    assert main(["--memory", "cuda", "--transports", "nixl", "--no-planner"]) == 2
    err = capsys.readouterr().err
    assert "error: --memory cuda" in err and "no CUDA device" in err and "Traceback" not in err


def test_streaming_cli_json_has_every_mode_and_field(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from hybridxfer.bench import main

    assert main(["--streaming", "--transports", "tcp", "--layouts", "nemotron-3-nano-30b-a3b", "--pairs", "P1D2",
                 "--tokens", "256", "--layer-ms", "0.1",
                 "--repeats", "1", "--verify", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["layer_ms"] == 0.1
    assert [c["mode"] for c in doc["cases"]] == ["bulk", "pull-stream", "push-stream"]
    for case in doc["cases"]:
        assert STREAM_FIELDS <= set(case) and case["verified"] is True
        assert (case["src_tp"], case["dst_tp"], case["tokens"]) == (1, 2, 256)
    assert doc["cases"][0]["ttd_speedup"] == 1.0


def test_the_streaming_byte_check_catches_one_wrong_byte() -> None:
    """Negative control for the exact-byte verification the streaming cases run."""
    from hybridxfer.bench._streaming import check_destination
    from hybridxfer.synthetic import expected_destination

    layout = load_layout(NEMOTRON)
    dst = layout.for_rank(2, 0, num_blocks=blocks_for(layout, 2, 256))
    template = compile_plan(tuple(layout.for_rank(1, 0, num_blocks=blocks_for(layout, 1, 256)) for _ in (0,)), dst)
    want = expected_destination(dst, 256, template.chunk_tokens)
    memory = [want[name].copy() for name in dst.region_names]
    check_destination(memory, dst, 256, template.chunk_tokens, "exact")  # the oracle's own bytes pass
    memory[0][len(memory[0]) // 2] ^= 0xFF
    with pytest.raises(RuntimeError, match="one wrong byte: "):
        check_destination(memory, dst, 256, template.chunk_tokens, "one wrong byte")
