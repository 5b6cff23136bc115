#!/usr/bin/env bash
# The CUDA-memory benchmark on a GPU machine, as one prepared command (installs nothing).
#
# Needs: this checkout installed with a CUDA build of torch, nixl-cu12 and hybridxfer-nixl
# (`pip install -e . -e transports/hybridxfer-nixl` beside a CUDA torch), and >= 1 GPU.
# Runs, each bounded by `timeout`:
#   1. the precondition: torch sees CUDA, NIXL's plugin declares "cuda" memory;
#   2. `hybridxfer bench --memory cuda --quick --verify --transports nixl --json`: P and D keep
#      their regions as torch CUDA tensors (P rank r on device CUDA_DEVICE+r, D on the next),
#      registered as they are (NIXL VRAM); raw NIXL on the same VRAM is the ceiling; every byte
#      of the largest request is checked through .cpu();
#   3. a small streaming slice: bulk vs pull/push streaming, P1D1 and P1D2 at 512 tokens (1 ms
#      per simulated layer), every mode verified.
# Writes cuda-quick.json and cuda-streaming.json under $OUT (default $TMPDIR/hybridxfer-cuda-check) and
# prints one line per case. Bounded at 45 + 150 + 90 s; the same two runs on host memory take
# about 8 s and 4 s on a 2-core VM. Exit status: the first failing step's.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-${TMPDIR:-/tmp}/hybridxfer-cuda-check}"
DEVICE="${CUDA_DEVICE:-${LOCAL_RANK:-0}}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"

nvidia-smi -L || true
timeout 45 "$PY" - <<'PY'
import torch
from hybridxfer.transport.registry import open_transport
print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count())
kinds = sorted(open_transport("nixl").capabilities.memory_kinds)
print("nixl memory_kinds", kinds)
if not torch.cuda.is_available() or "cuda" not in kinds:
    raise SystemExit("cuda_check: this machine cannot run --memory cuda (see the two lines above)")
PY

timeout 150 "$PY" -m hybridxfer.bench --memory cuda --cuda-device "$DEVICE" --quick --verify \
    --transports nixl --json --out "$OUT/cuda-quick.json" > "$OUT/cuda-quick.stdout"
timeout 90 "$PY" -m hybridxfer.bench --streaming --memory cuda --cuda-device "$DEVICE" --quick \
    --transports nixl --layer-ms 1 --json --out "$OUT/cuda-streaming.json" > "$OUT/cuda-streaming.stdout"

"$PY" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
quick = json.load(open(f"{out}/cuda-quick.json"))
print("memory", quick["memory"], "first device", quick["cuda_device"], "of", quick["cuda_device_count"])
for c in quick["cases"]:
    print(f'{c["transport"]} P{c["src_tp"]}D{c["dst_tp"]} {c["tokens"]}x{c["requests"]} {c["bytes"]} B: '
          f'{c["gbps"]:.2f} GB/s, {c["ceiling"]} {c["ceiling_gbps"]:.2f}, ratio {c["ratio"]:.2f}, '
          f'memcpy {c["memcpy_gbps"]:.2f}, vllm {c["vllm_descriptors_gbps"]}, verified {c["verified"]}')
if not any(c["verified"] for c in quick["cases"]):
    raise SystemExit("cuda_check: no case was byte-verified")
stream = json.load(open(f"{out}/cuda-streaming.json"))
for c in stream["cases"]:
    print(f'stream {c["mode"]} P{c["src_tp"]}D{c["dst_tp"]} {c["tokens"]}: ttd {c["ttd_s"] * 1e3:.1f} ms, '
          f'tail {c["tail_s"] * 1e3:.1f} ms, verified {c["verified"]}')
if not all(c["verified"] for c in stream["cases"]):
    raise SystemExit("cuda_check: a streaming case was not byte-verified")
print("cuda_check: ok")
PY
