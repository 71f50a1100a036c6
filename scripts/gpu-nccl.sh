#!/usr/bin/env bash
# Data-parallel training on a GPU machine (issue 6), in two halves like gpu-bench.sh.
#   scripts/gpu-nccl.sh pack   here: builds the static tvm binary into .device/ (git-ignored; name it in carry)
#   scripts/gpu-nccl.sh run    on the GPU machine, from the repository root: where NCCL is, then tvm dist-check with
#                              one rank through NCCL, two ranks sharing the GPU(s) through NCCL and through sockets,
#                              then short trainings (1 process; 1 rank via NCCL; 2 ranks; 2 ranks resumed on 1)
#                              whose losses must agree; prints a summary last. $OUT (or /tmp/gpu-nccl) gets the logs.
# NVLink multicast stays off: tvm sets NCCL_NVLS_ENABLE=0 (and the PyTorch/NVSHMEM switches) in every process.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
pack)
    scripts/gpu-bench.sh pack
    ;;
run)
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    export TVM_CUDA_LIB_DIRS=${TVM_CUDA_LIB_DIRS:-/usr/local/cuda/lib64} TVM_CUDA_CACHE_DIR=/tmp/tvm-kernel-cache
    out=${OUT:-/tmp/gpu-nccl}
    mkdir -p "$out"
    log=$out/nccl.log
    : > "$log"
    say() { echo "$*" | tee -a "$log"; }
    # A rank that waits forever (two ranks time-sharing one GPU through NCCL, say) must not take the lease along.
    step() { say "== $*"; timeout "${STEP_TIMEOUT:-240}" "$@" >> "$log" 2>&1; local rc=$?; say "exit $rc"; return $rc; }
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$log"
    say "libnccl found: $(find /opt /usr -name 'libnccl.so*' 2>/dev/null | tr '\n' ' ')"
    step .device/tvm dist-check --gpus 1
    step .device/tvm dist-check --gpus 2
    step .device/tvm dist-check --gpus 2 --comm socket
    work=/tmp/gpu-nccl-runs
    rm -rf "$work" && mkdir -p "$work"
    python3 - "$work" <<'PY'
import sys, numpy as np
d = sys.argv[1]
rng = np.random.default_rng(0)
np.save(d + "/x.npy", rng.uniform(-1, 1, (256, 1, 16, 16)).astype(np.float32))
np.save(d + "/y.npy", (np.arange(256) % 4).astype(np.float32))
PY
    base=(--data "$work/x.npy" --labels "$work/y.npy" --hidden 64 --depth 2 --heads 2 --patch 2 --batch 32 --every 10)
    step .device/tvm train --device cuda "${base[@]}" --steps 20 --out "$work/one"
    step .device/tvm train --gpus 1 "${base[@]}" --steps 20 --out "$work/nccl1"
    step .device/tvm train --gpus 2 --comm socket "${base[@]}" --steps 20 --out "$work/socket2"
    step .device/tvm train --gpus 2 "${base[@]}" --steps 20 --out "$work/nccl2"
    step .device/tvm train --gpus 2 --comm socket "${base[@]}" --steps 10 --out "$work/resumed"
    step .device/tvm train --gpus 1 "${base[@]}" --steps 20 --out "$work/resumed" --resume
    python3 - "$work" <<'PY' | tee -a "$log"
import json, os, sys
d = sys.argv[1]
def losses(name):
    p = f"{d}/{name}/metrics.jsonl"
    return [json.loads(l)["loss"] for l in open(p)] if os.path.exists(p) else None
ref = losses("one")
for name in ["nccl1", "socket2", "nccl2", "resumed"]:
    l = losses(name)
    if not ref or not l or len(l) != len(ref):
        print(f"losses {name}: missing or {0 if not l else len(l)} of {0 if not ref else len(ref)} steps")
        continue
    worst = max(abs(a - b) / max(abs(b), 1e-3) for a, b in zip(l, ref))
    print(f"losses {name} vs one process: largest relative difference {worst:.2e} over {len(l)} steps")
PY
    echo
    echo "summary:"
    grep -E "^(== |exit |losses |gradients of|replicas identical on [0-9]+ ranks at step 2:|error:|note:|dist-check:)" "$log" | sed "s/^/  /"
    ;;
*)
    echo "usage: scripts/gpu-nccl.sh pack|run" >&2; exit 2 ;;
esac
