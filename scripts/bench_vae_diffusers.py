#!/usr/bin/env python3
"""Times diffusers' AutoencoderKL at the SD-VAE's size with random weights, the side `tvm bench vae` is set beside.

The official code encodes and decodes with this class in fp16 (TVM.md, "The latent pipeline"); this does the same
on the GPU, at the same resolution and batch, and prints one line per precision: median encode (to the posterior's
mean and std) and decode times, images/s and peak GPU memory. Needs torch and diffusers (a wheel on the device).

    python3 scripts/bench_vae_diffusers.py [--res 256] [--batch 8] [--steps 5] [--dtypes fp16,fp32]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dtypes", default="fp16,fp32")
    args = ap.parse_args()
    for name in args.dtypes.split(","):
        dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[name]
        torch.manual_seed(0)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                            layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=args.res)
        vae = vae.to("cuda", dtype).eval()
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
