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
#   scripts/gpu-verify.sh run    on the device, `check` then `compare` (about 600 s: more than one call may run; run the
#                                two parts as two calls back to back while the machine is warm); logs under $OUT.
#   scripts/gpu-verify.sh check  reference-check (float32, bf16 errors, the VAE (float32 and bf16) and pickle fixtures),
#                                the CUDA test suite, issue 18.4's round trip, tvm bench vae beside diffusers (and the
#                                BEFORE binary), the latent pipeline, tvm prepare's speed, then the kernel profiles
#                                (TVM_CUDA_PROFILE) of a training step, the VAE and attention beside PyTorch's SDPA.
#   scripts/gpu-verify.sh compare  bench before/after (MODELS), then the official code eager and compiled on S/2 and
#                                B/2 in the same call (issue 19's ratios count only within one call).
#   scripts/gpu-verify.sh flash  the flash tests, the plain-forward variants (VARIANTS) against float64 and timed by
#                                `tvm bench attention` beside BEFORE; then time training with the fastest as a BINARIES side
#                                (a script that sets TVM_CUDA_FLASH_VARIANT and runs .device/tvm) in `kernels`.
#   scripts/gpu-verify.sh kernels  a kernel change in one call of about 7 minutes (the sixteenth session's calls 1 and
#                                2 in one): the CUDA tests it touches (ONLY, default the training step, scaled sums,
#                                norms, attention and products), reference-check in float32 and bf16, BEFORE and after
#                                on MODELS (default "S/2:128 B/2:64") beside the compiled official code, and the S/2
#                                step's kernel profile by grid. Carry .device and .official. Run whole in the
#                                seventeenth session (389 s; the official B/2 did not finish in the bench's 330 s, now
#                                420 s).
set -uo pipefail
cd "$(dirname "$0")/.."
F=${FIXTURES:-../shared/fixtures}
# On the device: CUDA's libraries, one kernel cache for every binary and test bundle of the call, filled first with the
# images `pack` compiled here.
device_setup() {
    export TVM_CUDA_LIB_DIRS=${TVM_CUDA_LIB_DIRS:-/usr/local/cuda/lib64} TVM_CUDA_CACHE_DIR=/tmp/tvm-kernel-cache
    if [ -f .device/kernel-cache.tar.xz ]; then mkdir -p /tmp/tvm-kernel-cache && tar -C /tmp/tvm-kernel-cache -xJf .device/kernel-cache.tar.xz; fi
    out=${OUT:-/tmp/gpu-verify}; mkdir -p "$out"
    xz -dc .device/tvm.xz > .device/tvm && chmod +x .device/tvm
}
case "${1:-}" in
pack)
    scripts/gpu.sh pack || exit 1
    # The kernels compiled here for the device's NVRTC (13.0 on the H100/H200 machines) and sm_90, under the keys the
    # binaries look for: a fresh machine then loads them instead of compiling for about a minute. Another NVRTC
    # version there only makes them unused. NVRTC from its pip wheel; skipped where pip cannot fetch it.
    nvrtc=${NVRTC_DIR:-/opt/cuda-nvrtc13}
    [ -d "$nvrtc" ] || python3 -m pip install -q --target "$nvrtc" "nvidia-cuda-nvrtc==13.0.*" || true
    lib=$(dirname "$(find "$nvrtc" -name 'libnvrtc.so.13' 2>/dev/null | head -1)")
    if [ -n "$lib" ] && [ "$lib" != . ]; then
        rm -rf /tmp/tvm-kernel-fill && mkdir -p /tmp/tvm-kernel-fill
        TVM_CUDA_LIB_DIRS=$lib TVM_CUDA_FILL_CACHE=/tmp/tvm-kernel-fill "${SCRATCH:-/tmp/cuda-build}/release/TerminalVelocityPackageTests.xctest" \
            CUDABackendTests.CUDAOpTests/testKernelSourceCompiles > /dev/null 2>&1 \
            && tar -C /tmp/tvm-kernel-fill -cJf .device/kernel-cache.tar.xz . || echo "kernel cache: not made"
    fi
    scripts/gpu-bench.sh pack > /dev/null || exit 1
    xz -T2 -c .device/tvm > .device/tvm.xz && rm .device/tvm
    mkdir -p .device/fixtures
    cp -r "$F/latent/vae_small" "$F/official/official_snapshot_small.pkl" "$F/official/official_snapshot_small_samples.safetensors" .device/fixtures/
    chmod -R u+w .device/fixtures
    du -sh .device
    ;;
run)
    "$0" check; "$0" compare ;;
check|compare)
    device_setup
    # cuDNN (the VAE's convolutions) from the Python wheel nvidia-cudnn-cu13 where it is not on the linker's path; tvm
    # searches the usual site-packages itself, this names the one python3 imports.
    cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0] + "/lib")' 2>/dev/null)
    [ -z "${TVM_CUDNN_LIB:-}" ] && [ -n "$cudnn" ] && export TVM_CUDNN_LIB=$cudnn
    echo "cuDNN: ${TVM_CUDNN_LIB:-searched by tvm}"
    T=.device/tvm D=.device/fixtures
    nvidia-smi --query-gpu=name --format=csv,noheader
    if [ "$1" = compare ]; then
    echo "== training and sampling, before and after"
    MODELS=${MODELS:-"S/2:128 B/2:64"} SKIP_CHECK=1 OUT=$out/bench timeout 150 scripts/gpu-bench.sh run 2>&1 | grep -v "^==" | tail -8
    echo "== the official code on the same models, eager and compiled (issue 19: ratios against the bench lines above)"
    for mode in eager reduce-overhead; do
        flag=""; [ $mode != eager ] && flag="--compile $mode"
        PYTHONUNBUFFERED=1 TVM_OFFICIAL=.official/tvm timeout 200 python3 .official/official_bench.py \
            --bench "S_2:384:12:6:128:32,B_2:768:12:12:64:32" $flag > "$out/official-$mode.log" 2>&1
        grep -E '^BENCH' "$out/official-$mode.log" | sed "s/^/$mode /"
    done
    exit 0
    fi
    echo "== reference-check on the GPU: float32, then bf16 (errors only), the VAE and the official pickle"
    timeout 40 $T reference-check .device/tvm_reference_small.safetensors --device cuda 2>&1 | tail -2
    timeout 40 $T reference-check .device/tvm_reference_small.safetensors --device cuda --bf16 --tolerance 1 2>&1 | tail -1
    for d in "$D/vae_small" "$D/official_snapshot_small.pkl"; do timeout 25 $T reference-check "$d" --device cuda 2>&1 | tail -2; done
    timeout 25 $T reference-check "$D/vae_small" --device cuda --bf16 --tolerance 1 2>&1 | tail -7   # the VAE's bf16 errors (issue 17.2)
    echo "== the CUDA test suite"
    SKIP_BENCH=1 SKIP_TORCH=1 OUT=$out/suite timeout 170 scripts/gpu.sh run 2>&1 | tail -8
    echo "== our checkpoint in the official sampler (issue 18.4)"
    DEVICES=cuda timeout 40 scripts/gpu-artifacts.sh run 2>&1 | tail -4
    echo "== the SD-VAE's size: ours, then diffusers (issue 17.7)"
    for p in "" --tf32 --bf16; do timeout 30 $T bench vae --device cuda --batch 8 --steps 3 $p 2>&1 | tail -1; done
    TVM_CUDNN_FIND=1 timeout 30 $T bench vae --device cuda --batch 8 --steps 3 --bf16 2>&1 | tail -1   # timed cuDNN algorithms
    TVM_CUDA_NO_BF16_ACTIVATIONS=1 timeout 30 $T bench vae --device cuda --batch 8 --steps 3 --bf16 2>&1 | tail -1   # float32 activations (before)
    if [ -f .device/tvm-before.xz ]; then   # the binary before the change (BEFORE= at pack), same call
        xz -dc .device/tvm-before.xz > /tmp/tvm-before && chmod +x /tmp/tvm-before
        timeout 30 /tmp/tvm-before bench vae --device cuda --batch 8 --steps 3 --bf16 2>&1 | tail -1 | sed 's/^/before: /'
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && PYTHONPATH=/tmp/site timeout 60 python3 scripts/bench_vae_diffusers.py --batch 8 --steps 3 --dtypes fp16,bf16,fp32 2>&1 | grep "img/s"
    echo "== the latent pipeline (issue 17.6)"
    rm -rf .device/vae_small && cp -r "$D/vae_small" .device/vae_small
    OUT=$out/latents STEPS=40 timeout 50 scripts/gpu-latents.sh run 2>&1 | tail -6
    echo "== tvm prepare end to end at 256x256 with SD-VAE-sized weights (issue 17.7)"
    OUT=$out/latents IMAGES=256 timeout 90 scripts/gpu-latents.sh speed 2>&1 | tail -8
    echo "== kernel profiles: a training step (S/2, 128, bf16), the VAE (bf16), attention beside PyTorch"
    TVM_CUDA_PROFILE=1 timeout 60 $T bench train --device cuda --model S/2 --res 32 --channels 4 --classes 1000 --batch 128 \
        --steps 5 --warmup 2 --bf16 > "$out/profile-train.txt" 2>&1; head -45 "$out/profile-train.txt"
    TVM_CUDA_PROFILE=1 timeout 40 $T bench vae --device cuda --batch 8 --steps 2 --bf16 > "$out/profile-vae.txt" 2>&1; head -60 "$out/profile-vae.txt"
    timeout 40 $T bench attention --device cuda --bf16 2>&1 | tail -6
    TORCH_ATTENTION_ONLY=1 SKIP_TESTS=1 SKIP_BENCH=1 OUT=$out/torch timeout 60 scripts/gpu.sh run 2>&1 | grep 'TORCH attention B=64 H=12 S=256 D=64'
    ;;
kernels)
    device_setup
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    echo "== CUDA tests"
    ONLY=${ONLY:-"CUDABackendTests.CUDATrainingStepTests CUDABackendTests.CUDAOpTests/testScaledSumAndRowSums CUDABackendTests.CUDAOpTests/testRMSNormScaled CUDABackendTests.CUDAOpTests/testRMSNormScaledJVPAndBackward CUDABackendTests.CUDAOpTests/testRMSNormReadsAndWritesBF16Alone CUDABackendTests.CUDAFlashAttentionTests CUDABackendTests.CUDAMatmulTests"} \
        SKIP_BENCH=1 SKIP_TORCH=1 OUT=$out/suite timeout 280 scripts/gpu.sh run 2>&1 | grep -vE '^ERRMAX' | tail -14
    echo "== reference-check on the GPU: float32, then bf16 (errors only)"
    timeout 60 .device/tvm reference-check .device/tvm_reference_small.safetensors --device cuda 2>&1 | tail -1
    timeout 40 .device/tvm reference-check .device/tvm_reference_small.safetensors --device cuda --bf16 --tolerance 1 2>&1 | tail -1
    echo "== before, after and the official code compiled, one call"
    OFFICIAL=1 OFFICIAL_MODES=reduce-overhead SKIP_CHECK=1 MODELS=${MODELS:-"S/2:128 B/2:64"} OUT=$out/bench timeout 420 \
        scripts/gpu-bench.sh run 2>&1 | tail -9
    echo "== the S/2 step's kernels"
    TVM_CUDA_PROFILE=grid timeout 40 .device/tvm bench train --device cuda --model S/2 --res 32 --channels 4 --classes 1000 \
        --batch 128 --steps 3 --warmup 2 --bf16 > "$out/profile-train.txt" 2>&1; head -30 "$out/profile-train.txt"
    ;;
flash)
    # The nineteenth session's flash changes (not yet run on a GPU): the row-tile forward and its plain-forward variants,
    # the split key-side backward (TVM_CUDA_FLASH_VARIANT), the backward's statistics from the saved forward
    # (flash_row_stats). About 6 minutes; the variants' float64 checks come last (a call cut short keeps the timings).
    device_setup
    [ -f .device/tvm-before.xz ] && xz -dc .device/tvm-before.xz > /tmp/tvm-before && chmod +x /tmp/tvm-before
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    echo "== CUDA tests"
    ONLY=${ONLY:-"CUDABackendTests.CUDAFlashAttentionTests CUDABackendTests.CUDATrainingStepTests CUDABackendTests.CUDAAttentionTests"} \
        SKIP_BENCH=1 SKIP_TORCH=1 OUT=$out/suite timeout 280 scripts/gpu.sh run 2>&1 | grep -vE '^ERRMAX' | tail -8
    variants=${VARIANTS:-"c4 r2 r2w2 r2i32 i128 r2c3 wgp split"}
    echo "== tvm bench attention --bf16 (B=64 at S=256, B=16 at S=1024, H=12, D=64): before, after, after's variants"
    for s in 256 1024; do
        b=64; [ $s = 1024 ] && b=16
        [ -x /tmp/tvm-before ] && echo "before $(timeout 90 /tmp/tvm-before bench attention --device cuda --bf16 --b $b --s $s 2>&1 | tail -1)"
        echo "after $(timeout 90 .device/tvm bench attention --device cuda --bf16 --b $b --s $s 2>&1 | tail -1)"
        echo "after, pre-pass $(TVM_CUDA_NO_SAVED_STATS=1 timeout 90 .device/tvm bench attention --device cuda --bf16 --b $b --s $s 2>&1 | tail -1)"
        for v in $variants; do
            echo "$v $(TVM_CUDA_FLASH_VARIANT=$v timeout 60 .device/tvm bench attention --device cuda --bf16 --b $b --s $s 2>&1 | tail -1)"
        done
    done | tee "$out/attention.log"
    echo "== ncu: the plain forward (default, then wgp) and the statistics pass at S=1024"
    for v in "" wgp; do
        TVM_CUDA_FLASH_VARIANT=$v timeout 90 ncu --kernel-name regex:"flash_(fwd_p64|fwd_pipelined|row_stats)" --launch-skip 2 \
            --launch-count 2 --section SpeedOfLight --section WarpStateStats --section Occupancy .device/tvm bench attention \
            --device cuda --bf16 --b 16 --s 1024 --steps 2 --warmup 1 > "$out/ncu-${v:-default}.txt" 2>&1
        grep -E "flash_|Duration|Compute \(SM\) Throughput|Warp Cycles Per Issued|Achieved Active Warps" "$out/ncu-${v:-default}.txt" | head -24
    done
    echo "== variants against float64 (split: the backward's)"
    for v in $variants; do
        tests=testForwardAndTangentAgainstCPU; [ $v = split ] && tests=testBackwardAgainstCPU
        TVM_CUDA_FLASH_VARIANT=$v timeout 120 env LD_LIBRARY_PATH=/tmp/tvm-gpu/lib /tmp/tvm-gpu/tests.xctest \
            "CUDABackendTests.CUDAFlashAttentionTests/$tests,CUDABackendTests.CUDAFlashAttentionTests/testLargeAgainstWarpKernelsInFloat64" \
            > "$out/variant-$v.log" 2>&1
        echo "$v: $(grep -E 'Executed .* test' "$out/variant-$v.log" | tail -1)"
    done
    ;;
*)
    echo "usage: scripts/gpu-verify.sh pack|run|check|compare|kernels|flash" >&2; exit 2 ;;
esac
