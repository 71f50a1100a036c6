#!/usr/bin/env python3
"""Makes a VAE reference folder with diffusers, in the format of fixtures/latent/README.md.

The folder holds `config.json` and `diffusion_pytorch_model.safetensors` (a diffusers AutoencoderKL with random
weights, group-norm weights and biases perturbed so their affine part matters) and `reference.safetensors`
(`images`, `posterior_mean`, `posterior_std`, `posterior_logvar`, `latents`, `decoded`, `roundtrip`, float32 on
the CPU). `tvm reference-check DIR` and the NN tests compare this project's VAE with it. Needs torch and
diffusers; `--old-keys` renames the mid-block attention's tensors to the old scheme (query, key, value,
proj_attn), as older uploads of the SD-VAE store them.

    python3 scripts/vae_reference.py OUT --widths 24,40,48 --layers 1 --groups 8 --old-keys
"""
import argparse
import json
import os

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

OLD_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def old_scheme(name):
    for current, old in OLD_ATTENTION_NAMES.items():
        marker = ".attentions.0." + current + "."
        if marker in name:
            return name.replace(marker, ".attentions.0." + old + ".")
    return name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--widths", default="32,32,64,64", help="block_out_channels")
    parser.add_argument("--layers", type=int, default=2, help="layers_per_block")
    parser.add_argument("--groups", type=int, default=8, help="norm_num_groups")
    parser.add_argument("--latent-channels", type=int, default=4)
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--old-keys", action="store_true")
    parser.add_argument("--no-mid-attention", action="store_true")
    parser.add_argument("--no-quant-conv", action="store_true", help="neither quant_conv nor post_quant_conv")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    widths = [int(w) for w in args.widths.split(",")]
    vae = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * len(widths),
        up_block_types=["UpDecoderBlock2D"] * len(widths),
        block_out_channels=widths,
        layers_per_block=args.layers,
        latent_channels=args.latent_channels,
        norm_num_groups=args.groups,
        mid_block_add_attention=not args.no_mid_attention,
        use_quant_conv=not args.no_quant_conv,
        use_post_quant_conv=not args.no_quant_conv,
    ).eval()
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.add_(0.2 * torch.randn_like(module.weight))
                module.bias.add_(0.2 * torch.randn_like(module.bias))

    os.makedirs(args.out, exist_ok=True)
    vae.save_pretrained(args.out, safe_serialization=True)
    weights_path = os.path.join(args.out, "diffusion_pytorch_model.safetensors")
    if args.old_keys:
        state = load_file(weights_path)
        save_file({old_scheme(k): v for k, v in state.items()}, weights_path)

    f = 2 ** (len(widths) - 1)
    images = torch.rand(args.batch, 3, args.size, args.size) * 2 - 1
    latents = torch.randn(args.batch, args.latent_channels, args.size // f, args.size // f)
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        reference = {
            "images": images,
            "posterior_mean": posterior.mean,
            "posterior_std": posterior.std,
            "posterior_logvar": posterior.logvar,
            "latents": latents,
            "decoded": vae.decode(latents).sample,
            "roundtrip": vae.decode(posterior.mean).sample,
        }
    save_file({k: v.contiguous() for k, v in reference.items()}, os.path.join(args.out, "reference.safetensors"))
    print(json.dumps({k: list(v.shape) for k, v in reference.items()}))


if __name__ == "__main__":
    main()
