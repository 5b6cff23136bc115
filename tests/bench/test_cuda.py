"""``--memory cuda``: what can be checked without a GPU, on the very code a GPU run takes.

A CUDA run differs from a host run only in :class:`~hybridxfer.bench._placement.Placement`
(tensors on ``cuda:N`` instead of numpy arrays). Torch tensors on ``cpu`` go through the
same tensor primitives — allocate, adopt, load, fill, ``.cpu()`` read-back, registration
rows, memcpy with ``Tensor.copy_`` — and through ``Agent.register`` as tensors, in P and D
processes, so the end-to-end cases below run the CUDA path's code with only the device
changed. The CUDA device itself is exercised by ``benchmarks/cuda_check.sh`` on a GPU machine.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest
import torch

from hybridxfer.bench._cuda import CUDA_TRANSPORTS, CudaUnavailableError, require_cuda
from hybridxfer.bench._e2e import Group, run_group
from hybridxfer.bench._placement import HOST, Placement, allocate_tensors, cuda_placements, default_cuda_device
from hybridxfer.bench._streaming import StreamGroup, check_destination, run_stream_group
from hybridxfer.layout import load_layout
from hybridxfer.plan import TransferPlan, compile_plan, contiguous_block_tables
from hybridxfer.synthetic import blocks_for, expected_destination, source_memory

NEMOTRON = Path(__file__).resolve().parents[2] / "layouts" / "nemotron-3-nano-30b-a3b.toml"
TENSORS = Placement("cpu")


def test_allocation_asks_for_the_device_size_and_dtype() -> None:
    sizes = [3, 4096, 1 << 20]
    meta = allocate_tensors(sizes, torch.device("meta"))
    assert [(t.shape, t.dtype, t.device.type, t.is_contiguous()) for t in meta] == [
        (torch.Size([n]), torch.uint8, "meta", True) for n in sizes]
    cpu = allocate_tensors(sizes, torch.device("cpu"))
    assert [int(t.numel() * t.element_size()) for t in cpu] == sizes
    assert all(int(t.count_nonzero()) == 0 for t in cpu)  # zeroed: every page touched before timing
    assert len({t.data_ptr() for t in cpu}) == len(sizes)


def test_cuda_placement_names_the_device_nixl_sees() -> None:
    p = Placement("cuda:3")
    assert (p.is_cuda, p.device_index, p.nixl_memory) == (True, 3, "VRAM")
    assert p.torch_device() == torch.device("cuda", 3)  # what allocate() hands to allocate_tensors
    assert (HOST.is_cuda, HOST.device_index, HOST.nixl_memory) == (False, 0, "DRAM")
    assert (TENSORS.is_cuda, TENSORS.device_index, TENSORS.nixl_memory) == (False, 0, "DRAM")
    with pytest.raises(ValueError, match="cuda:3 have no host view"):
        p.host_views([])


def test_device_choice_spreads_ranks_over_the_gpus() -> None:
    def devices(base: int, src_tp: int, count: int) -> tuple[str | None, list[str | None]]:
        decode, prefill = cuda_placements(base, src_tp, count)
        return decode.device, [p.device for p in prefill]

    assert devices(0, 1, 1) == ("cuda:0", ["cuda:0"])  # one GPU: all share it
    assert devices(0, 4, 1) == ("cuda:0", ["cuda:0"] * 4)
    assert devices(0, 1, 8) == ("cuda:1", ["cuda:0"])  # P and D on distinct GPUs
    assert devices(2, 4, 8) == ("cuda:6", ["cuda:2", "cuda:3", "cuda:4", "cuda:5"])
    assert devices(3, 2, 4) == ("cuda:1", ["cuda:3", "cuda:0"])  # wraps around
    with pytest.raises(ValueError, match="--cuda-device 2: this machine has CUDA devices 0..1"):
        cuda_placements(2, 1, 2)
    with pytest.raises(ValueError, match="no CUDA device"):
        cuda_placements(0, 1, 0)
    assert default_cuda_device({}) == 0
    assert default_cuda_device({"LOCAL_RANK": "5"}) == 5
    for bad in ("x", "-1"):
        with pytest.raises(ValueError, match="is not a device index"):
            default_cuda_device({"LOCAL_RANK": bad})


def test_tensor_primitives_round_trip_the_oracles_bytes() -> None:
    layout = load_layout(NEMOTRON)
    rl = layout.for_rank(1, 0, num_blocks=blocks_for(layout, 1, 256))
    host = [a for a in source_memory(rl, 256).values()]
    regions = TENSORS.adopt(host)
    assert all(isinstance(r, torch.Tensor) for r in regions)
    assert all(r.data_ptr() != h.ctypes.data for r, h in zip(regions, host, strict=True))  # copies, not views
    assert all(np.array_equal(a, h) for a, h in zip(TENSORS.to_host(regions), host, strict=True))
    rows = TENSORS.rows(regions)
    assert rows.tolist() == [[r.data_ptr(), int(r.numel()), 0] for r in regions]
    TENSORS.fill(regions, list(range(1, len(regions) + 1)))
    assert [set(a.tolist()) for a in TENSORS.to_host(regions)] == [{i} for i in range(1, len(regions) + 1)]


def test_tensor_memcpy_writes_what_the_host_memcpy_writes() -> None:
    layout = load_layout(NEMOTRON)
    src = layout.for_rank(1, 0, num_blocks=blocks_for(layout, 1, 256))
    dst = layout.for_rank(2, 0, num_blocks=blocks_for(layout, 2, 256))
    plan = compile_plan((src,), dst).bind(contiguous_block_tables(src, 256), contiguous_block_tables(dst, 256),
                                          num_tokens=256)
    assert isinstance(plan, TransferPlan)
    reads = [plan.descriptors]
    nbytes = sum(r.total_bytes for r in reads)
    host, tensors = HOST.allocate(dst.region_sizes), TENSORS.allocate(dst.region_sizes)
    HOST.memcpy_once(HOST.scratch(nbytes), reads, host)
    TENSORS.memcpy_once(TENSORS.scratch(nbytes), reads, tensors)
    got = TENSORS.to_host(tensors)
    assert all(np.array_equal(a, b) for a, b in zip(got, host, strict=True))
    assert sum(int(a.sum()) for a in host) == nbytes  # ones land on exactly the plan's bytes


@pytest.mark.parametrize("transport", ["nixl", "tcp"])
def test_tensor_regions_move_every_byte_end_to_end(transport: str) -> None:
    """P and D hold torch tensors registered as they are (P: ``--device cpu``), the raw ceiling included."""
    group = Group(transport=transport, layout_path=NEMOTRON, src_tp=1, cases=((2, 256),), repeats=1, verify=True,
                  memory=TENSORS, prefill_memory=(TENSORS,))
    (result,) = anyio.run(run_group, group)
    assert result.verified and result.bytes > 0 and result.duplicate_bytes == 0
    if transport == "nixl":
        assert result.vllm_descriptors is not None and result.vllm_descriptor_count > 0  # raw NIXL read them too


def test_tensor_regions_stream_every_byte() -> None:
    group = Group(transport="tcp", layout_path=NEMOTRON, src_tp=1, cases=((1, 256),), repeats=1, verify=True,
                  memory=TENSORS, prefill_memory=(TENSORS,))
    results = anyio.run(run_stream_group, StreamGroup(group=group, modes=("bulk", "pull-stream"), layer_ms=0.2))
    assert [(r.mode, r.verified) for r in results] == [("bulk", True), ("pull-stream", True)]


def test_the_tensor_byte_check_catches_one_wrong_byte() -> None:
    """Negative control: the read-back through ``.cpu()`` is what gets checked."""
    layout = load_layout(NEMOTRON)
    dst = layout.for_rank(2, 0, num_blocks=blocks_for(layout, 2, 256))
    template = compile_plan((layout.for_rank(1, 0, num_blocks=blocks_for(layout, 1, 256)),), dst)
    want = expected_destination(dst, 256, template.chunk_tokens)
    regions = TENSORS.adopt([want[name] for name in dst.region_names])
    check_destination(regions, dst, 256, template.chunk_tokens, "exact", TENSORS)
    regions[0][len(regions[0]) // 2] ^= 0xFF
    with pytest.raises(RuntimeError, match="one wrong byte: "):
        check_destination(regions, dst, 256, template.chunk_tokens, "one wrong byte", TENSORS)


def test_each_host_only_transport_is_refused_by_name() -> None:
    assert CUDA_TRANSPORTS == frozenset({"nixl"})
    for transport in ("tcp", "ucxx", "mooncake"):
        with pytest.raises(CudaUnavailableError, match=rf"transports \['{transport}'\] move host memory only"):
            require_cuda([transport, "nixl"])
    with pytest.raises(CudaUnavailableError, match=r"transports \['tcp', 'ucxx'\]"):
        require_cuda(["ucxx", "nixl", "tcp"])


@pytest.mark.parametrize("argv, says", [
    (["--transports", "tcp"], "transports ['tcp'] move host memory only"),
    (["--transports", "nixl,ucxx"], "transports ['ucxx'] move host memory only"),
    (["--transports", "nixl", "--quick", "--verify", "--json"], "no CUDA device"),
    (["--transports", "nixl", "--streaming", "--quick"], "no CUDA device"),
    (["--transports", "nixl", "--cuda-device", "1"], "no CUDA device"),
])
def test_cli_memory_cuda_ends_with_a_typed_error_and_status_2(argv: list[str], says: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from hybridxfer.bench import main

    assert main(["--memory", "cuda", "--no-planner", *argv]) == 2
    err = capsys.readouterr().err
    assert "hybridxfer bench: error: --memory cuda: " in err and says in err and "Traceback" not in err


def test_cli_rejects_a_bad_local_rank(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from hybridxfer.bench import main

    monkeypatch.setenv("LOCAL_RANK", "two")
    with pytest.raises(SystemExit) as info:
        main(["--memory", "cuda", "--transports", "nixl", "--no-planner"])
    assert info.value.code == 2
    assert "LOCAL_RANK='two' is not a device index; pass --cuda-device N" in capsys.readouterr().err


def test_json_says_which_memory_was_measured(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from hybridxfer.bench import main

    assert main(["--no-e2e", "--no-planner", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"cases": [], "planner": [], "memory": "cpu"}
