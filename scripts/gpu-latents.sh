#!/usr/bin/env bash
# The latent pipeline once on the GPU (issue 17, part 6): generated images -> tvm prepare (RGB set, then the latent
# set with the fixture's small SD-VAE, on CUDA and on the CPU) -> tvm train on the latents with decoded grids ->
# tvm sample --vae. Prints the relative error of the CUDA posteriors against the CPU ones and each step's time.
#
#   scripts/gpu-latents.sh pack   here: the static tvm binary (scripts/gpu-bench.sh pack) and the VAE fixture in .device
#   scripts/gpu-latents.sh run    device call, carry [".device/tvm", ".device/vae_small"]; writes $OUT/latents-summary.txt.
#                                 Where the Inception weights are on the machine (INCEPTION, default the file
#                                 scripts/gpu-fid.sh run leaves, /tmp/tvm-fid/inception.safetensors), the training also
#                                 measures FID of decoded samples against the RGB set, and tvm fid measures the samples.
#   scripts/gpu-latents.sh speed  device call, carry [".device/tvm", ".whl"] (the diffusers wheels, as gpu-verify.sh):
#                                 tvm prepare end to end at 256x256 with SD-VAE-sized random weights (diffusers' own
#                                 initialisation, written by scripts/bench_vae_diffusers.py --save): IMAGES (default 512)
#                                 PNGs of 500x375 -> RGB crops (CPU) -> latents (float32, then --bf16), and images ->
#                                 latents in one pass; images/s of each, the bf16 posteriors' error against float32's;
#                                 writes $OUT/prepare-speed.txt (issue 17.7; record in docs/BENCHMARKS.md). VAE=DIR
#                                 takes that diffusers folder instead (DEVICE=cpu IMAGES=4 VAE=.device/vae_small tries it).
#   scripts/gpu-latents.sh paper  device call after `speed` in the same call (its latents and SD-VAE-sized weights): the
#                                 paper's setting end to end at its sizes (issue 17): tvm train on the 256x256 images'
#                                 32x32x4 latents with --preset im256-w2 (DiT-XL/2, the official recipe and its ImageNet
#                                 latent statistics; BATCH, default
#                                 32, and STEPS, default 30, for one GPU and a short call) and training grids decoded by
#                                 the SD-VAE, then tvm sample --vae: 256x256 images at 1 and 4 NFE. Writes
#                                 $OUT/paper-summary.txt and the grids.
# DEVICE=cpu STEPS=3 MODEL=S/2 tries the run half here (with .device/tvm a link to .build/release/tvm).
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
pack)
    scripts/gpu-bench.sh pack || exit 1
    mkdir -p .device/vae_small
    cp "${FIXTURES:-/work/shared/fixtures}"/latent/vae_small/{config.json,diffusion_pytorch_model.safetensors} .device/vae_small/ || exit 1
    ;;
run)
    out=${OUT:-/tmp/gpu-latents-out}
    work=/tmp/tvm-latents
    rm -rf "$work" && mkdir -p "$work" "$out"
    tvm=.device/tvm vae=.device/vae_small device=${DEVICE:-cuda} steps=${STEPS:-200}
    inception=${INCEPTION:-/tmp/tvm-fid/inception.safetensors}
    # 64 images of 4 classes, 40x52 RGB PNGs written with the standard library only.
    python3 - "$work/images" <<'PY' || exit 1
import os, struct, sys, zlib
root = sys.argv[1]
def png(path, w, h, pixel):
    raw = b''.join(b'\0' + bytes(v for x in range(w) for v in pixel(x, y)) for y in range(h))
    chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d) & 0xffffffff)
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))
                + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
for k in range(64):
    folder = os.path.join(root, 'class%d' % (k % 4))
    os.makedirs(folder, exist_ok=True)
    png(os.path.join(folder, 'img%02d.png' % k), 40, 52, lambda x, y: ((x * (k + 3) + y * 5) % 256, (y * 7 + k * 11) % 256, (x * y + k) % 256))
PY
    {
        set -x
        time $tvm prepare "$work/images" --out "$work/rgb.zip" --size 32
        time $tvm prepare "$work/rgb.zip" --out "$work/latents-cuda.zip" --vae $vae --device $device --batch 16 --size 32
        time $tvm prepare "$work/rgb.zip" --out "$work/latents-cpu.zip" --vae $vae --device cpu --batch 16 --size 32
        stats=$($tvm prepare --stats "$work/latents-cuda.zip")
        fid=()
        if [ -f "$inception" ]; then
            fid=(--fid-every "$steps" --fid-samples ${FID_SAMPLES:-256} --fid-nfe 1,4 --fid-dataset "$work/rgb.zip" --fid-weights "$inception")
        fi
        time XDG_CACHE_HOME=$work/cache $tvm train --device $device --data "$work/latents-cuda.zip" --model ${MODEL:-S/2} --batch 32 \
            --steps $steps --every 100 --out "$work/run" --vae $vae $stats ${fid[@]+"${fid[@]}"}
        grep fid_nfe "$work/run/metrics.jsonl"
        time $tvm sample --device $device --checkpoint "$work/run/checkpoint.safetensors" --vae $vae --n 64 --classes random \
            --npy "$work/samples.npy" --out "$out/samples.png"
        if [ -f "$inception" ]; then
            time $tvm fid "$work/samples.npy" --dataset "$work/rgb.zip" --device $device --weights "$inception" --no-cache
        fi
        cp "$work/run/samples_step${steps}_nfe1.png" "$out/"
        set +x
        python3 - "$work" <<'PY'
import io, sys, zipfile
import numpy as np
w = sys.argv[1]
a, b = zipfile.ZipFile(w + '/latents-cuda.zip'), zipfile.ZipFile(w + '/latents-cpu.zip')
names = sorted(n for n in a.namelist() if n.endswith('.npy'))
x = np.stack([np.load(io.BytesIO(a.read(n))) for n in names]); y = np.stack([np.load(io.BytesIO(b.read(n))) for n in names])
print('posteriors', x.shape, x.dtype, 'CUDA vs CPU relative error', np.linalg.norm(x - y) / np.linalg.norm(y))
s = np.load(w + '/samples.npy'); print('decoded samples', s.shape, s.dtype, 'mean', s.mean())
PY
    } 2>&1 | tee "$out/latents-summary.txt"
    ;;
speed)
    out=${OUT:-/tmp/gpu-latents-out}
    work=/tmp/tvm-prepare-speed
    rm -rf "$work" && mkdir -p "$work" "$out"
    tvm=.device/tvm device=${DEVICE:-cuda} n=${IMAGES:-512} batch=${BATCH:-32} vae=${VAE:-$work/sd-vae}
    if [ -z "${VAE:-}" ]; then
        if [ -d .whl ]; then
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
        fi
        PYTHONPATH=/tmp/site python3 scripts/bench_vae_diffusers.py --save "$vae" || exit 1
    fi
    # n PNGs of 500x375 (ImageNet's most common size) in 10 class folders: smooth gradients with noise, numpy and zlib.
    python3 - "$work/images" "$n" <<'PY' || exit 1
import os, struct, sys, zlib
import numpy as np
root, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
y, x = np.mgrid[0:375, 0:500]
chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d) & 0xffffffff)
for k in range(n):
    folder = os.path.join(root, 'n%08d' % (k % 10))
    os.makedirs(folder, exist_ok=True)
    base = np.stack([(x * (k % 7 + 1) + y) % 256, (y * 3 + k) % 256, (x + y * (k % 5 + 1)) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    raw = b''.join(b'\0' + pixels[r].tobytes() for r in range(375))
    with open(os.path.join(folder, 'img%05d.png' % k), 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 500, 375, 8, 2, 0, 0, 0))
                + chunk(b'IDAT', zlib.compress(raw, 1)) + chunk(b'IEND', b''))
PY
    # One timed tvm prepare: its wall time and images/s.
    timed() {
        local what=$1; shift
        local start end
        start=$(date +%s.%N)
        "$tvm" prepare "$@" 2>&1 | tail -2
        end=$(date +%s.%N)
        python3 -c "import sys; s = float(sys.argv[2]) - float(sys.argv[1]); print('%s: %d images in %.2f s, %.1f images/s' % (sys.argv[3], int(sys.argv[4]), s, int(sys.argv[4]) / s))" \
            "$start" "$end" "$what" "$n"
    }
    {
        nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null
        echo "tvm prepare, $n images 500x375 -> 256x256, SD-VAE-sized random weights, batch $batch, $(nproc) CPU cores"
        timed "images -> RGB crops (CPU)" "$work/images" --out "$work/rgb256.zip" --size 256
        timed "RGB crops -> latents, float32" "$work/rgb256.zip" --out "$work/latents-f32.zip" --vae "$vae" --device "$device" --batch "$batch" --size 256
        timed "RGB crops -> latents, --bf16" "$work/rgb256.zip" --out "$work/latents-bf16.zip" --vae "$vae" --device "$device" --batch "$batch" --size 256 --bf16
        timed "images -> latents in one pass, --bf16" "$work/images" --out "$work/latents-direct.zip" --vae "$vae" --device "$device" --batch "$batch" --size 256 --bf16
        python3 - "$work" <<'PY'
import io, sys, zipfile
import numpy as np
w = sys.argv[1]
a, b = zipfile.ZipFile(w + '/latents-bf16.zip'), zipfile.ZipFile(w + '/latents-f32.zip')
names = sorted(n for n in a.namelist() if n.endswith('.npy'))[:64]
x = np.stack([np.load(io.BytesIO(a.read(n))) for n in names]); y = np.stack([np.load(io.BytesIO(b.read(n))) for n in names])
print('posteriors', y.shape[1:], 'of %d images: --bf16 vs float32 relative error' % len(names), np.linalg.norm(x - y) / np.linalg.norm(y))
PY
    } 2>&1 | tee "$out/prepare-speed.txt"
    ;;
paper)
    out=${OUT:-/tmp/gpu-latents-out}
    work=/tmp/tvm-prepare-speed
    tvm=.device/tvm device=${DEVICE:-cuda} steps=${STEPS:-30} vae=${VAE:-$work/sd-vae}
    [ -f "$work/latents-bf16.zip" ] && [ -d "$vae" ] || { echo "error: run scripts/gpu-latents.sh speed first in this call" >&2; exit 1; }
    {
        set -x
        time $tvm train --device "$device" --data "$work/latents-bf16.zip" --preset im256-w2 --batch ${BATCH:-32} --steps "$steps" \
            --every "$steps" --out "$work/paper" --vae "$vae"
        tail -1 "$work/paper/metrics.jsonl"
        for nfe in 1 4; do
            time $tvm sample --device "$device" --checkpoint "$work/paper/checkpoint.safetensors" --vae "$vae" --n 16 \
                --classes random --nfe $nfe --bf16 --out "$out/paper-samples-nfe$nfe.png"
        done
        set +x
        cp "$work/paper/samples_step${steps}_nfe1.png" "$out/paper-grid-nfe1.png"
    } 2>&1 | tee "$out/paper-summary.txt"
    ;;
*)
    echo "usage: scripts/gpu-latents.sh pack|run|speed|paper" >&2
    exit 2
    ;;
esac
