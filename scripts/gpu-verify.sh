#!/usr/bin/env bash
# Everything a merge should be checked with on the GPU, in one device call, most important first (each part has its
# own time limit, so a call cut short still returns the first parts). First run whole in the eleventh session
# (2026-12-07, H100, 370 s; BENCHMARKS.md "The GPU check of main after the ninth and tenth sessions"); the cuDNN lines
# and the three-precision diffusers line were added after it and have run only as parts of a smaller call.
#
#   scripts/gpu-verify.sh pack   here: the GPU test bundle (gpu.sh pack), the static tvm (xz), BEFORE=old binary as
#                                .device/tvm-before.xz, the fixtures; name .device, .whl (diffusers and
#                                importlib_metadata wheels, see the device README) and .official (the official code,
#                                gpu-bench.sh's header) in the device tool's carry (about 60 MiB in all).
#   scripts/gpu-verify.sh run    on the device: reference-check (float32, bf16 errors, the VAE (float32 and bf16) and
#                                pickle fixtures), the CUDA test suite, issue 18.4's round trip, bench before/after (MODELS),
#                                tvm bench vae beside diffusers, the latent pipeline, tvm prepare's speed, then the
#                                official code eager and compiled on S/2 and B/2 (last: cut first); logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
F=${FIXTURES:-../shared/fixtures}
case "${1:-}" in
pack)
    scripts/gpu.sh pack || exit 1
    scripts/gpu-bench.sh pack > /dev/null || exit 1
    xz -T2 -c .device/tvm > .device/tvm.xz && rm .device/tvm
    mkdir -p .device/fixtures
    cp -r "$F/latent/vae_small" "$F/official/official_snapshot_small.pkl" "$F/official/official_snapshot_small_samples.safetensors" .device/fixtures/
    chmod -R u+w .device/fixtures
    du -sh .device
    ;;
run)
    export TVM_CUDA_LIB_DIRS=${TVM_CUDA_LIB_DIRS:-/usr/local/cuda/lib64} TVM_CUDA_CACHE_DIR=/tmp/tvm-kernel-cache
    # cuDNN (the VAE's convolutions) from the Python wheel nvidia-cudnn-cu13 where it is not on the linker's path; tvm
    # searches the usual site-packages itself, this names the one python3 imports.
    cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0] + "/lib")' 2>/dev/null)
    [ -z "${TVM_CUDNN_LIB:-}" ] && [ -n "$cudnn" ] && export TVM_CUDNN_LIB=$cudnn
    echo "cuDNN: ${TVM_CUDNN_LIB:-searched by tvm}"
    out=${OUT:-/tmp/gpu-verify}; mkdir -p "$out"
    xz -dc .device/tvm.xz > .device/tvm && chmod +x .device/tvm
    T=.device/tvm D=.device/fixtures
    nvidia-smi --query-gpu=name --format=csv,noheader
    echo "== reference-check on the GPU: float32, then bf16 (errors only), the VAE and the official pickle"
    timeout 40 $T reference-check .device/tvm_reference_small.safetensors --device cuda 2>&1 | tail -2
    timeout 40 $T reference-check .device/tvm_reference_small.safetensors --device cuda --bf16 --tolerance 1 2>&1 | tail -1
    for d in "$D/vae_small" "$D/official_snapshot_small.pkl"; do timeout 25 $T reference-check "$d" --device cuda 2>&1 | tail -2; done
    timeout 25 $T reference-check "$D/vae_small" --device cuda --bf16 --tolerance 1 2>&1 | tail -7   # the VAE's bf16 errors (issue 17.2)
    echo "== the CUDA test suite"
    SKIP_BENCH=1 SKIP_TORCH=1 OUT=$out/suite timeout 170 scripts/gpu.sh run 2>&1 | tail -8
    echo "== our checkpoint in the official sampler (issue 18.4)"
    DEVICES=cuda timeout 40 scripts/gpu-artifacts.sh run 2>&1 | tail -4
    echo "== training and sampling, before and after"
    MODELS=${MODELS:-"S/2:128 B/2:64"} SKIP_CHECK=1 OUT=$out/bench timeout 120 scripts/gpu-bench.sh run 2>&1 | grep -v "^==" | tail -8
    echo "== the SD-VAE's size: ours, then diffusers (issue 17.7)"
    for p in "" --tf32 --bf16; do timeout 30 $T bench vae --device cuda --batch 8 --steps 3 $p 2>&1 | tail -1; done
    TVM_CUDNN_FIND=1 timeout 30 $T bench vae --device cuda --batch 8 --steps 3 --bf16 2>&1 | tail -1   # timed cuDNN algorithms
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && PYTHONPATH=/tmp/site timeout 60 python3 scripts/bench_vae_diffusers.py --batch 8 --steps 3 --dtypes fp16,bf16,fp32 2>&1 | tail -3
    echo "== the latent pipeline (issue 17.6)"
    rm -rf .device/vae_small && cp -r "$D/vae_small" .device/vae_small
    OUT=$out/latents STEPS=40 timeout 50 scripts/gpu-latents.sh run 2>&1 | tail -6
    echo "== tvm prepare end to end at 256x256 with SD-VAE-sized weights (issue 17.7)"
    OUT=$out/latents IMAGES=256 timeout 90 scripts/gpu-latents.sh speed 2>&1 | tail -8
    echo "== the official code on the same models, eager and compiled (issue 19: ratios against the bench lines above)"
    for mode in eager reduce-overhead; do
        flag=""; [ $mode != eager ] && flag="--compile $mode"
        PYTHONUNBUFFERED=1 TVM_OFFICIAL=.official/tvm timeout 100 python3 .official/official_bench.py \
            --bench "S_2:384:12:6:128:32,B_2:768:12:12:64:32" $flag > "$out/official-$mode.log" 2>&1
        grep -E '^BENCH' "$out/official-$mode.log" | sed "s/^/$mode /"
    done
    ;;
*)
    echo "usage: scripts/gpu-verify.sh pack|run" >&2; exit 2 ;;
esac
