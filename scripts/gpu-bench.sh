#!/usr/bin/env bash
# GPU parity checks and benchmarks of the `tvm` binary, in two halves.
#   scripts/gpu-bench.sh pack   here: builds the static tvm binary and copies it and the reference fixture into
#                               .device/ (git-ignored; name it in the device tool's carry)
#   scripts/gpu-bench.sh run    on the GPU machine, from the repository root: reference-check in float32 on the
#                               GPU (and in PRECISION, errors only: $OUT/reference-check.log), then the
#                               benchmarks of issue 4; prints a short table last. MODELS overrides the list of
#                               "model:batch" pairs; STEPS the timed steps per model (default 15); PRECISION the
#                               precision switch (default --tf32; --bf16, or "" for float32).
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
pack)
    swift build -c release --static-swift-stdlib --product tvm --scratch-path "${SCRATCH:-/tmp/static-build}" || exit 1
    mkdir -p .device
    cp "${SCRATCH:-/tmp/static-build}/release/tvm" .device/tvm
    cp ../shared/fixtures/tvm_reference_small.safetensors .device/ 2>/dev/null || true
    ls -la .device
    ;;
run)
    export TVM_CUDA_LIB_DIRS=${TVM_CUDA_LIB_DIRS:-/usr/local/cuda/lib64} TVM_CUDA_CACHE_DIR=/tmp/tvm-kernel-cache
    out=${OUT:-/tmp/gpu-bench}
    mkdir -p "$out"
    log=$out/bench.log
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$log"
    echo "== reference-check (float32 on the GPU)" | tee -a "$log"
    [ -z "${SKIP_CHECK:-}" ] && .device/tvm reference-check .device/tvm_reference_small.safetensors --device cuda 2>&1 | tail -4 | tee -a "$log"
    if [ -z "${SKIP_CHECK:-}" ] && [ -n "${PRECISION---tf32}" ]; then
        echo "== reference-check ${PRECISION---tf32} (errors reported against the float32 references)" | tee -a "$log"
        .device/tvm reference-check .device/tvm_reference_small.safetensors --device cuda ${PRECISION---tf32} --tolerance 1 > "$out/reference-check.log" 2>&1
        tail -4 "$out/reference-check.log" | tee -a "$log"
    fi
    steps=${STEPS:-15}
    for pair in ${MODELS:-S/2:128 B/2:64 XL/2-18:32}; do
        model=${pair%%:*}; batch=${pair##*:}
        echo "== train $model batch $batch" | tee -a "$log"
        .device/tvm bench train --device cuda --model "$model" --res 32 --channels 4 --classes 1000 --batch "$batch" \
            --steps "$steps" --warmup 3 ${PRECISION---tf32} 2>&1 | tail -1 | tee -a "$log"
        [ -n "${SKIP_SAMPLE:-}" ] && continue
        echo "== sample $model batch 256" | tee -a "$log"
        .device/tvm bench sample --device cuda --model "$model" --res 32 --channels 4 --classes 1000 --batch 256 \
            --steps 5 --warmup 2 ${PRECISION---tf32} 2>&1 | tail -1 | tee -a "$log"
    done
    echo "== attention" | tee -a "$log"
    [ -z "${SKIP_ATTENTION:-}" ] && .device/tvm bench attention --device cuda --b 64 --h 12 --s 256 --d 64 ${PRECISION---tf32} 2>&1 | tail -1 | tee -a "$log"
    echo
    echo "summary:"
    grep -E "^(TVM train|1-NFE|attention|[0-9]+ tensors compared|.*Fatal error)" "$log" | sed "s/^/  /"
    ;;
*)
    echo "usage: scripts/gpu-bench.sh pack|run" >&2; exit 2 ;;
esac
