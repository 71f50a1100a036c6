#!/usr/bin/env bash
# Issue 18.4 on the GPU machine: a checkpoint of this project, loaded into the official TVMWrapper with
# load_state_dict (the loader of README, "Official checkpoints"), samples with the official sampler
# (generator_fn of generate_images.py) what `tvm sample` samples from the same noise and labels.
#
#   scripts/gpu-artifacts.sh pack   here: the static tvm binary, xz-compressed, in .device/tvm.xz
#   scripts/gpu-artifacts.sh run    on the device (carry [".device/tvm.xz"]; the official code in .official/tvm,
#                                   PyTorch with its requirements (timm, einops)): trains a small DiT for a few
#                                   steps, samples it with `tvm sample` (1, 2 and 4 steps, CUDA and CPU) and with the
#                                   official sampler (float32 on the CPU, exact attention), and prints each
#                                   relative error; exits 1 if one is above 1e-4.
# DEVICES (default "cuda cpu") are where `tvm sample` runs, training on the first; TVM=PATH takes that binary instead
# of .device/tvm.xz (DEVICES=cpu TVM=.build/release/tvm TVM_OFFICIAL=DIR runs it on a machine without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
S=${SCRATCH_DIR:-/tmp/tvm-artifacts}
OFFICIAL=${TVM_OFFICIAL:-.official/tvm}
DEVICES=${DEVICES:-cuda cpu}

case "${1:-}" in
pack)
    scripts/gpu-bench.sh pack > /dev/null
    xz -T2 -9 -c .device/tvm > .device/tvm.xz
    ls -la .device/tvm.xz
    ;;
run)
    mkdir -p "$S"
    export TVM_CUDA_LIB_DIRS=${TVM_CUDA_LIB_DIRS:-/usr/local/cuda/lib64} TVM_CUDA_CACHE_DIR=$S/kernel-cache
    if [ -n "${TVM:-}" ]; then cp "$TVM" "$S/tvm"; else xz -dc .device/tvm.xz > "$S/tvm" && chmod +x "$S/tvm"; fi
    # Training data shaped like SD-VAE latents of 64x64 images (4x8x8), 10 classes; the noise and labels to sample.
    python3 - "$S" <<'PY'
import sys
import numpy as np
d = sys.argv[1]
rng = np.random.default_rng(0)
np.save(d + '/x.npy', rng.uniform(-1, 1, (64, 4, 8, 8)).astype(np.float32))
np.save(d + '/y.npy', np.arange(64) % 10)
np.save(d + '/noise.npy', rng.standard_normal((8, 4, 8, 8)).astype(np.float32))
PY
    labels=3,1,4,1,5,9,2,6
    rm -rf "$S/run"
    "$S/tvm" train --device "${DEVICES%% *}" --data "$S/x.npy" --labels "$S/y.npy" --hidden 64 --depth 2 --heads 4 --patch 2 \
        --batch 16 --steps 30 --every 1000 --cfg 2 --out "$S/run" 2>&1 | tail -1
    for device in $DEVICES; do
        for nfe in 1 2 4; do
            "$S/tvm" sample --device $device --checkpoint "$S/run/checkpoint.safetensors" --noise "$S/noise.npy" \
                --classes $labels --nfe $nfe --cfg 2 --npy "$S/ours_${device}_$nfe.npy" --out "$S/grid.png" 2>/dev/null
        done
    done
    PYTHONPATH=$OFFICIAL${PYTHONPATH:+:$PYTHONPATH} python3 - "$S" "$labels" "$DEVICES" <<'PY'
import importlib, json, sys, types
import numpy as np
import torch

d, labels, devices = sys.argv[1], [int(v) for v in sys.argv[2].split(',')], sys.argv[3].split()

# generate_images.py imports hydra, omegaconf and torchvision for its main() only, and dnnlib imports requests and
# distutils (gone from Python 3.12) for downloads and flags: where one is missing, a stand-in lets generator_fn and
# TVMWrapper themselves be imported unchanged. Nothing of the stand-ins is called here but strtobool.
def stand_in(name, **attributes):
    try:
        importlib.import_module(name)
    except ImportError:
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module
        parent, _, child = name.rpartition('.')
        if parent:
            setattr(sys.modules[parent], child, module)
stand_in('hydra', main=lambda **_: (lambda f: f))
stand_in('omegaconf', OmegaConf=None)
stand_in('torchvision')
stand_in('torchvision.utils')
stand_in('requests')
stand_in('distutils')
stand_in('distutils.util', strtobool=lambda v: v.lower() in ('y', 'yes', 't', 'true', 'on', '1'))
from generate_images import generator_fn
from training.wrapper import TVMWrapper

def read_safetensors(path):
    """A safetensors file as (tensors, metadata), without the safetensors package."""
    raw = open(path, 'rb').read()
    n = int.from_bytes(raw[:8], 'little')
    header = json.loads(raw[8:8 + n])
    metadata = header.pop('__metadata__', {})
    types_ = {'F32': torch.float32, 'F64': torch.float64, 'F16': torch.float16, 'BF16': torch.bfloat16}
    tensors = {k: torch.frombuffer(bytearray(raw[8 + n + v['data_offsets'][0]:8 + n + v['data_offsets'][1]]),
                                   dtype=types_[v['dtype']]).reshape(v['shape']) for k, v in header.items()}
    return tensors, metadata

# The loader of README ("Official checkpoints"): our names are the official ones.
tensors, meta = read_safetensors(d + '/run/checkpoint.safetensors')
m = json.loads(meta['model_config'])
scaled = json.loads(meta['training_config']).get('scaled_param', True)
net = TVMWrapper(img_resolution=m['input_size'], img_channels=m['in_channels'], label_dim=m['num_classes'],
                 model_type='DiT', data_type='fp32', do_scale_param=scaled,
                 patch_size=m['patch'], hidden_size=m['hidden'], depth=m['depth'], num_heads=m['heads'],
                 mlp_ratio=m['mlp_ratio'], num_classes=m['num_classes'], do_mod_norm=m['modulation_norm'],
                 time_specinit=m['time_spec_init'])
net.load_state_dict({'model.' + k[len('ema.'):]: v for k, v in tensors.items() if k.startswith('ema.')})
net.eval()

noise = torch.from_numpy(np.load(d + '/noise.npy'))
onehot = torch.nn.functional.one_hot(torch.tensor(labels), m['num_classes']).float()
worst = 0.0
for nfe in (1, 2, 4):
    official = generator_fn(net, noise, onehot, num_steps=nfe, cfg_scale=2.0).double()
    for device in devices:
        ours = torch.from_numpy(np.load(f'{d}/ours_{device}_{nfe}.npy')).double()
        error = ((ours - official).norm() / official.norm()).item()
        worst = max(worst, error)
        print(f'{nfe} steps, tvm sample on {device} vs the official sampler on our checkpoint: relative error {error:.3e}')
print('PASS' if worst <= 1e-4 else 'FAIL', f'(largest {worst:.3e}, tolerance 1e-4)')
sys.exit(0 if worst <= 1e-4 else 1)
PY
    ;;
*)
    echo "usage: scripts/gpu-artifacts.sh pack|run" >&2
    exit 2
    ;;
esac
