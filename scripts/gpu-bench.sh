#!/usr/bin/env bash
# GPU parity checks and benchmarks of the `tvm` binary, side by side with earlier binaries and the official code.
#   scripts/gpu-bench.sh pack   here: builds the static tvm binary into .device/tvm (git-ignored; name .device in the
#                               device tool's carry) with the reference fixture. BEFORE=path/to/old/tvm also packs an
#                               earlier binary as .device/tvm-before (xz-compressed, unpacked by `run`).
#   scripts/gpu-bench.sh run    on the GPU machine, from the repository root: reference-check in float32 on the GPU
#                               (and in PRECISION, errors only), then every binary and, with OFFICIAL=1, the official
#                               implementation (eager and under torch.compile reduce-overhead, through
#                               ../shared/bench/official_bench.py copied into .official/ with the official code in
#                               .official/tvm) on the same models, one after another in this one call; a table of all
#                               of them and the ratios against the first row of each model comes last.
# Environment: MODELS ("model:batch[:res]" list, default "S/2:128 B/2:64 XL/2-18:32"), STEPS (timed steps, default
# 15), PRECISION (default --bf16; --tf32, or "" for float32), ROUNDS (times each binary is run per model, alternating,
# default 1), SKIP_CHECK, SKIP_SAMPLE, OFFICIAL=1, OFFICIAL_MODES (default "eager reduce-overhead"), BINARIES ("name:path"
# list in place of before and after, e.g. a script that runs .device/tvm with other settings).
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
pack)
    swift build -c release --static-swift-stdlib --product tvm --scratch-path "${SCRATCH:-/tmp/static-build}" || exit 1
    mkdir -p .device
    cp "${SCRATCH:-/tmp/static-build}/release/tvm" .device/tvm
    if [ -n "${BEFORE:-}" ]; then xz -T2 -c "$BEFORE" > .device/tvm-before.xz; fi
    cp ../shared/fixtures/tvm_reference_small.safetensors .device/ 2>/dev/null || true
    ls -la .device
    ;;
run)
    export TVM_CUDA_LIB_DIRS=${TVM_CUDA_LIB_DIRS:-/usr/local/cuda/lib64} TVM_CUDA_CACHE_DIR=/tmp/tvm-kernel-cache
    out=${OUT:-/tmp/gpu-bench}
    mkdir -p "$out"
    log=$out/bench.log
    table=$out/table.tsv
    precision=${PRECISION---bf16}
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$log"
    binaries=(after:.device/tvm)
    if [ -f .device/tvm-before.xz ]; then
        xz -dc .device/tvm-before.xz > /tmp/tvm-before && chmod +x /tmp/tvm-before
        binaries=(before:/tmp/tvm-before after:.device/tvm)
    fi
    if [ -n "${BINARIES:-}" ]; then read -r -a binaries <<< "$BINARIES"; fi
    if [ -z "${SKIP_CHECK:-}" ]; then
        for b in "${binaries[@]}"; do
            name=${b%%:*}; bin=${b#*:}
            echo "== reference-check, $name, float32 on the GPU" | tee -a "$log"
            "$bin" reference-check .device/tvm_reference_small.safetensors --device cuda 2>&1 | tail -3 | tee -a "$log"
            if [ -n "$precision" ]; then
                echo "== reference-check, $name, $precision (errors against the float32 references)" | tee -a "$log"
                "$bin" reference-check .device/tvm_reference_small.safetensors --device cuda $precision --tolerance 1 \
                    > "$out/reference-check-$name.log" 2>&1
                tail -3 "$out/reference-check-$name.log" | tee -a "$log"
            fi
        done
    fi
    printf 'model\tbatch\tres\tside\tstep_ms\ttrain_img_s\tpeak_GiB\tsample_img_s\n' > "$table"
    # Pulls "median X ms/step, Y img/s ... peak GPU memory Z GiB" and a 1-NFE "N img/s" out of tvm's bench lines.
    figure() { grep -oE "$1" <<< "$2" | head -1 | grep -oE '[0-9]+(\.[0-9]+)?' | head -1; }
    for pair in ${MODELS:-S/2:128 B/2:64 XL/2-18:32}; do
        IFS=: read -r model batch res <<< "$pair"
        res=${res:-32}
        for round in $(seq "${ROUNDS:-1}"); do
            for b in "${binaries[@]}"; do
                name=${b%%:*}; bin=${b#*:}
                echo "== $name: train $model batch $batch ${res}x${res}x4 (round $round)" | tee -a "$log"
                t=$("$bin" bench train --device cuda --model "$model" --res "$res" --channels 4 --classes 1000 --batch "$batch" \
                    --steps "${STEPS:-15}" --warmup 3 $precision 2>&1 | tail -1)
                echo "$t" | tee -a "$log"
                s=""
                if [ -z "${SKIP_SAMPLE:-}" ]; then
                    s=$("$bin" bench sample --device cuda --model "$model" --res "$res" --channels 4 --classes 1000 --batch 256 \
                        --steps 5 --warmup 2 $precision 2>&1 | tail -1)
                    echo "$s" | tee -a "$log"
                fi
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$model" "$batch" "$res" "$name" "$(figure 'median [0-9.]+ ms' "$t")" \
                    "$(figure '[0-9.]+ img/s' "$t")" "$(figure 'memory [0-9.]+ GiB' "$t")" "$(figure '[0-9.]+ img/s' "$s")" >> "$table"
            done
        done
    done
    if [ -n "${OFFICIAL:-}" ]; then
        specs=""
        for pair in ${MODELS:-S/2:128 B/2:64 XL/2-18:32}; do
            IFS=: read -r model batch res <<< "$pair"
            case $model in
                S/2) dims=384:12:6 ;; B/2) dims=768:12:12 ;; L/2) dims=1024:24:16 ;; XL/2) dims=1152:28:16 ;;
                XL/2-18) dims=1152:28:18 ;; *) echo "no official size for $model" | tee -a "$log"; continue ;;
            esac
            specs+="${specs:+,}${model//\//_}:$dims:$batch:${res:-32}"
        done
        for mode in ${OFFICIAL_MODES:-eager reduce-overhead}; do
            flag=""; [ "$mode" != eager ] && flag="--compile $mode"
            echo "== official ($mode): $specs" | tee -a "$log"
            PYTHONUNBUFFERED=1 TVM_OFFICIAL=.official/tvm python3 .official/official_bench.py --bench "$specs" $flag \
                > "$out/official-$mode.log" 2>&1
            grep -E '^BENCH' "$out/official-$mode.log" | tee -a "$log"
            python3 - "$out/official-$mode.log" "$mode" >> "$table" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith('BENCH '):
        r = json.loads(line[6:])
        print('\t'.join(str(v) for v in [r['model'].replace('_', '/'), r['batch'], r['res'], 'official-' + sys.argv[2],
                                         r['train_ms'], r['train_img_s'], r['peak_GiB'], r['sample_img_s']]))
PY
        done
    fi
    echo
    echo "summary (ratios: training and sampling rate against the first side listed for each model):"
    python3 - "$table" <<'PY'
import sys, collections
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1])][1:]
groups = collections.OrderedDict()
for r in rows:
    groups.setdefault((r[0], r[1], r[2]), []).append(r)
print('%-9s %5s %4s %-24s %9s %9s %8s %9s %7s %7s' % ('model', 'batch', 'res', 'side', 'step ms', 'img/s', 'peak GiB', 'b256 1nfe', 'train x', 'samp x'))
def num(v):
    try: return float(v)
    except ValueError: return None
for key, rs in groups.items():
    base = rs[0]
    for r in rs:
        t, bt = num(r[5]), num(base[5])
        s, bs = num(r[7]), num(base[7])
        print('%-9s %5s %4s %-24s %9s %9s %8s %9s %7s %7s' % (r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7],
              '%.2f' % (t / bt) if t and bt else '-', '%.2f' % (s / bs) if s and bs else '-'))
PY
    ;;
*)
    echo "usage: scripts/gpu-bench.sh pack|run" >&2; exit 2 ;;
esac
