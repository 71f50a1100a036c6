#!/usr/bin/env bash
# GPU validation of the CUDA backend (module CUDABackend), in two halves.
#
#   scripts/gpu.sh pack    Here (no GPU needed): builds the test bundle in release mode and packs it, with the
#                          Swift runtime libraries it links, into .device/pack.tar.xz (.device/ is git-ignored).
#   scripts/gpu.sh run     On the GPU machine, from the repository root (the device tool, carry [".device"]):
#                          unpacks, runs every CUDABackendTests test in its own process (a crash names its test),
#                          then the benchmarks (TVM_CUDA_BENCH=1), then PyTorch reference timings when python3
#                          has torch. $OUT (or /tmp/gpu-out) gets summary.txt and logs.tgz; the console gets the summary.
#
# Options through the environment: SCRATCH (build folder, default /tmp/cuda-build), ONLY (a test filter
# passed to the bundle instead of the full list), SKIP_TESTS=1, SKIP_BENCH=1, SKIP_TORCH=1, TVM_CUDA_SYNC=1
# (wait after every kernel: names a failing kernel), BENCH (the benchmark test, default testBenchmarks; e.g.
# testFlashAttentionBenchmarks), TORCH_ATTENTION_ONLY=1 (PyTorch: the attention timings alone).
set -euo pipefail
cd "$(dirname "$0")/.."
SCRATCH=${SCRATCH:-/tmp/cuda-build}

case "${1:-}" in
pack)
    swift build -c release --build-tests -Xswiftc -enable-testing --scratch-path "$SCRATCH"
    bundle="$SCRATCH/release/TerminalVelocityPackageTests.xctest"
    stage=$(mktemp -d)
    mkdir -p "$stage/lib" .device
    cp "$bundle" "$stage/tests.xctest"
    # The toolchain's libraries (Swift runtime, Foundation, XCTest); the system ones are on the device already.
    ldd "$bundle" | awk '/=> \// {print $3}' | grep '/swift/' | while read -r lib; do cp "$lib" "$stage/lib/"; done
    tar -C "$stage" -cJf .device/pack.tar.xz .
    rm -rf "$stage"
    ls -la .device/pack.tar.xz
    ;;
run)
    final=${OUT:-/tmp/gpu-out}
    work=/tmp/tvm-gpu
    rm -rf "$work" && mkdir -p "$work/logs" "$final"
    out=$work/logs
    # The device tool returns at most 8 files: the summary, plus every log in one archive.
    trap 'cp "$out/summary.txt" "$final/" 2>/dev/null; tar -C "$work" -czf "$final/logs.tgz" logs 2>/dev/null || true' EXIT
    tar -C "$work" -xJf .device/pack.tar.xz
    export TVM_CUDA_LIB_DIRS=${TVM_CUDA_LIB_DIRS:-/usr/local/cuda/lib64}
    export TVM_CUDA_CACHE_DIR=${TVM_CUDA_CACHE_DIR:-$work/kernel-cache}
    libpath="$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    runner() { env LD_LIBRARY_PATH="$libpath" "$work/tests.xctest" "$@"; }
    date -u +"%Y-%m-%d %H:%M UTC" | tee "$out/summary.txt"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader \
        | tee -a "$out/summary.txt" || true
    if [ "${SKIP_TESTS:-0}" != 1 ]; then
        if [ -n "${ONLY:-}" ]; then tests=$ONLY; else
            tests=$(runner --list-tests | grep '^CUDABackendTests\.' | grep -v CUDABenchmarks)
        fi
        pass=0; fail=0; skip=0
        for t in $tests; do
            log="$out/test.${t//\//_}.log"
            start=$(date +%s%N)
            set +e
            timeout 240 env LD_LIBRARY_PATH="$libpath" "$work/tests.xctest" "$t" > "$log" 2>&1
            rc=$?
            set -e
            secs=$(( ($(date +%s%N) - start) / 1000000 ))
            if grep -q "with 1 test skipped" "$log"; then skip=$((skip + 1)); status=SKIP
            elif [ $rc -eq 0 ]; then pass=$((pass + 1)); status=PASS
            else fail=$((fail + 1)); status="FAIL(rc=$rc)"; fi
            printf '%-66s %-12s %7d ms\n' "$t" "$status" "$secs" | tee -a "$out/summary.txt"
            if [ "$status" != PASS ]; then
                grep -E 'error|Fatal|fatal|skipped -|Crash|signal' "$log" | cut -c1-400 | head -n 12 | tee -a "$out/summary.txt"
            fi
            grep -E '^(CUDA:|ERRMAX)' "$log" | cut -c1-330 | tee -a "$out/summary.txt" || true
        done
        echo "$pass passed, $fail failed, $skip skipped" | tee -a "$out/summary.txt"
    fi
    if [ "${SKIP_BENCH:-0}" != 1 ]; then
        set +e
        TVM_CUDA_BENCH=1 runner "CUDABackendTests.CUDABenchmarks/${BENCH:-testBenchmarks}" > "$out/bench.log" 2>&1
        echo "benchmarks exit $?" >> "$out/bench.log"
        set -e
        grep -E '^BENCH|error|exit' "$out/bench.log" | grep -v 'registers, 0 bytes local' | cut -c1-600 | tee -a "$out/summary.txt"
    fi
    if [ "${SKIP_TORCH:-0}" != 1 ] && python3 -c 'import torch' 2>/dev/null; then
        set +e
        PYTHONUNBUFFERED=1 python3 - > "$out/torch.log" 2>&1 <<'PY'
import torch, torch.nn.functional as F
def ms(f, it=20, warm=3):
    for _ in range(warm): f()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(); s.record()
    for _ in range(it): f()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / it
import os
dev = 'cuda'
print('TORCH', torch.__version__, torch.cuda.get_device_name())
def median_ms(f, it=10, reps=5):
    for _ in range(3): f()
    out = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(); s.record()
        for _ in range(it): f()
        e.record(); torch.cuda.synchronize()
        out.append(s.elapsed_time(e) / it)
    return sorted(out)[len(out) // 2]
def math_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v
if os.environ.get('TORCH_ATTENTION_ONLY') == '1':
    torch.backends.cuda.matmul.allow_tf32 = False
    for (B, H, S, D) in [(64, 12, 256, 64), (64, 12, 256, 72), (32, 18, 256, 64), (32, 18, 256, 72), (32, 16, 256, 64)]:
        q, k, v, tq, tk, tv, go = [torch.randn(B, H, S, D, device=dev) for _ in range(7)]
        g = f'B={B} H={H} S={S} D={D}'
        f = median_ms(lambda: F.scaled_dot_product_attention(q, k, v))
        qr, kr, vr = [z.clone().requires_grad_() for z in (q, k, v)]
        def fb():
            o = F.scaled_dot_product_attention(qr, kr, vr); o.backward(go)
        fbt = median_ms(fb, it=5)
        print(f'TORCH attention {g} SDPA fp32: forward {f:.3f} ms, forward+backward {fbt:.3f} ms (backward ~{fbt - f:.3f})')
        try:
            t = median_ms(lambda: torch.func.jvp(F.scaled_dot_product_attention, (q, k, v), (tq, tk, tv)), it=5)
            print(f'TORCH attention {g} SDPA fp32 jvp: {t:.3f} ms')
        except Exception as ex:
            print(f'TORCH attention {g} SDPA jvp: {type(ex).__name__}: {str(ex)[:120]}')
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            t = median_ms(lambda: torch.func.jvp(math_attention, (q, k, v), (tq, tk, tv)), it=5)
            mf = median_ms(lambda: math_attention(q, k, v), it=5)
            print(f'TORCH attention {g} math (matmul+softmax) {"TF32" if tf32 else "fp32"}: forward {mf:.3f} ms, forward+jvp {t:.3f} ms')
        torch.backends.cuda.matmul.allow_tf32 = False
        qb, kb, vb = [z.to(torch.bfloat16) for z in (q, k, v)]
        t = median_ms(lambda: F.scaled_dot_product_attention(qb, kb, vb))
        print(f'TORCH attention {g} SDPA bf16 (flash): forward {t:.3f} ms')
        del q, k, v, tq, tk, tv, go, qr, kr, vr, qb, kb, vb
    raise SystemExit(0)
n = 64 << 20
a = torch.randn(n, device=dev); b = torch.randn(n, device=dev); y = torch.empty_like(a)
t = ms(lambda: torch.add(a, b, out=y)); print(f'TORCH add 64M f32: {t:.3f} ms, {3*n*4/1e9/t:.3f} TB/s')
t = ms(lambda: y.copy_(a)); print(f'TORCH copy 64M f32: {t:.3f} ms, {2*n*4/1e9/t:.3f} TB/s')
t = ms(lambda: F.silu(a, inplace=False)); print(f'TORCH silu 64M f32: {t:.3f} ms, {2*n*4/1e9/t:.3f} TB/s')
x2 = a.view(-1, 256); t = ms(lambda: torch.softmax(x2, -1)); print(f'TORCH softmax [{n//256},256]: {t:.3f} ms, {2*n*4/1e9/t:.3f} TB/s')
for (m, nn, k, bt, label) in [(8192, 8192, 8192, 1, 'square 8192'), (16384, 4608, 1152, 1, 'DiT MLP in'), (16384, 1152, 4608, 1, 'DiT MLP out')]:
    A = torch.randn(m, k, device=dev); B = torch.randn(k, nn, device=dev)
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        t = ms(lambda: A @ B, it=10)
        print(f'TORCH matmul {label} {"TF32" if tf32 else "FP32"}: {t:.3f} ms, {2*m*nn*k/t/1e9:.1f} TFLOP/s')
torch.backends.cuda.matmul.allow_tf32 = False
for d in (64, 72):
    q, k, v, tq, tk, tv, go = [torch.randn(64, 12, 256, d, device=dev) for _ in range(7)]
    t = ms(lambda: F.scaled_dot_product_attention(q, k, v), it=10)
    print(f'TORCH sdpa fp32 B=64 H=12 S=256 D={d}: forward {t:.3f} ms')
    qr, kr, vr = [z.clone().requires_grad_() for z in (q, k, v)]
    def fb():
        o = F.scaled_dot_product_attention(qr, kr, vr); o.backward(go)
    t = ms(fb, it=5); print(f'TORCH sdpa fp32 D={d}: forward+backward {t:.3f} ms')
    try:
        def jv(): return torch.func.jvp(lambda a, b, c: F.scaled_dot_product_attention(a, b, c), (q, k, v), (tq, tk, tv))
        t = ms(jv, it=5); print(f'TORCH sdpa fp32 D={d}: jvp (forward+tangent) {t:.3f} ms')
    except Exception as e:
        print(f'TORCH sdpa jvp failed: {type(e).__name__}: {str(e)[:200]}')
    for bf in (True,):
        qb, kb, vb = [z.to(torch.bfloat16) for z in (q, k, v)]
        t = ms(lambda: F.scaled_dot_product_attention(qb, kb, vb), it=10)
        print(f'TORCH sdpa bf16 D={d}: forward {t:.3f} ms')
PY
        echo "torch exit $?" >> "$out/torch.log"
        set -e
        grep -E '^TORCH|exit|Error' "$out/torch.log" | cut -c1-300 | tee -a "$out/summary.txt"
    fi
    ;;
*)
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
