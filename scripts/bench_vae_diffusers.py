#!/usr/bin/env python3
"""Times diffusers' AutoencoderKL at the SD-VAE's size with random weights, the side `tvm bench vae` is set beside.

The official code encodes and decodes with this class in fp16 (TVM.md, "The latent pipeline"); this does the same
on the GPU, at the same resolution and batch, and prints one line per precision: median encode (to the posterior's
mean and std) and decode times, images/s and peak GPU memory. Needs torch and diffusers (a wheel on the device).

    python3 scripts/bench_vae_diffusers.py [--res 256] [--batch 8] [--steps 5] [--dtypes fp16,fp32]
    python3 scripts/bench_vae_diffusers.py --save DIR

--save DIR writes the same random model (float32) as a diffusers folder instead (config.json and
diffusion_pytorch_model.safetensors, written here without the safetensors package), for timing `tvm prepare --vae DIR`
on SD-VAE-sized weights (scripts/gpu-latents.sh speed).
"""
import argparse
import statistics
import time

import torch
from diffusers import AutoencoderKL


def timed(fn, steps, warmup):
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def sd_vae(res):
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                         layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=res)


def save_folder(vae, folder):
    """config.json by diffusers; the weights as float32 safetensors: a little-endian u64 header length, the JSON
    header (names, dtypes, shapes, byte ranges), then the tensors' bytes in that order."""
    import json
    import os
    import struct
    os.makedirs(folder, exist_ok=True)
    vae.save_config(folder)
    tensors = [(k, v.detach().float().contiguous().cpu().numpy()) for k, v in vae.state_dict().items()]
    header, offset = {}, 0
    for name, array in tensors:
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(folder, "diffusion_pytorch_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, array in tensors:
            f.write(array.tobytes())
    print("wrote %s: %d tensors, %.1f M parameters" % (folder, len(tensors), offset / 4e6))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dtypes", default="fp16,fp32")
    ap.add_argument("--save", metavar="DIR")
    args = ap.parse_args()
    if args.save:
        save_folder(sd_vae(args.res), args.save)
        return
    for name in args.dtypes.split(","):
        dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[name]
        vae = sd_vae(args.res).to("cuda", dtype).eval()
        images = torch.rand(args.batch, 3, args.res, args.res, device="cuda", dtype=dtype) * 2 - 1
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mean
            torch.cuda.reset_peak_memory_stats()

            def encode():
                d = vae.encode(images).latent_dist
                return d.mean, d.std

            encode_s = timed(encode, args.steps, args.warmup)
            decode_s = timed(lambda: vae.decode(latents).sample, args.steps, args.warmup)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print("diffusers AutoencoderKL %s, %dx%d, batch %d, %s: encode median %.1f ms, %.1f img/s; decode median %.1f ms, "
              "%.1f img/s, peak GPU memory %.2f GiB" % (name, args.res, args.res, args.batch, torch.cuda.get_device_name(),
                                                        encode_s * 1000, args.batch / encode_s, decode_s * 1000,
                                                        args.batch / decode_s, peak))


if __name__ == "__main__":
    main()
