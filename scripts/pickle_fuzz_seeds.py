#!/usr/bin/env python3
"""Writes the seed corpus of the `pickle` fuzz harness (Fuzz/corpus/pickle/), Python standard library and numpy only.

The seeds are small files in every format the pickle reader meets:
  - storages cut out of the official fixture (legacy torch.save bytes, as `_load_from_bytes` holds them),
  - a tiny network pickled the way the official code pickles its snapshots (a torch_utils.persistence TVMWrapper
    around a DiT; plain nn.Modules as NEWOBJ + BUILD; parameters as _rebuild_parameter of _rebuild_tensor_v2 of
    _load_from_bytes), and the same network in torch.save's ZIP format (storages as persistent ids),
  - numpy reference statistics in protocols 2, 4 and 5, one structure in every protocol 0-5,
  - pickles that would run code (os.system) or abuse the reader (deep nesting, memo, huge lengths).
PyTorch is not needed: the torch globals are stand-ins registered under PyTorch's module names, so pickle
writes exactly the names PyTorch writes. Nothing here is ever unpickled.

    python3 scripts/pickle_fuzz_seeds.py [FIXTURES_DIR]   (default ../shared/fixtures)
"""
import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "Fuzz", "corpus", "pickle")
FIXTURES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "fixtures")


def module(name):
    """A stand-in module under `name` (and its parents, which imports of it need)."""
    parent = name.rpartition(".")[0]
    if parent and parent not in sys.modules:
        module(parent)
    m = types.ModuleType(name)
    sys.modules[name] = m
    return m


def register(mod, obj, name):
    obj.__module__, obj.__qualname__, obj.__name__ = mod.__name__, name, name
    setattr(mod, name, obj)
    return obj


torch = module("torch")
torch_utils = module("torch._utils")
torch_storage = module("torch.storage")
persistence = module("torch_utils.persistence")
STORAGE_TYPES = {}
for dtype, fmt in [("FloatStorage", "<f"), ("HalfStorage", "<e"), ("BFloat16Storage", None)]:
    STORAGE_TYPES[dtype] = (register(torch, type(dtype, (), {}), dtype), fmt)
for name in ["_rebuild_tensor_v2", "_rebuild_parameter"]:
    register(torch_utils, lambda *a: None, name)
register(torch_storage, lambda *a: None, "_load_from_bytes")
register(persistence, lambda *a: None, "_reconstruct_persistent_obj")


def raw(values, storage_type):
    fmt = STORAGE_TYPES[storage_type][1]
    if fmt is None:  # bfloat16: the high half of float32
        return b"".join(struct.pack("<f", v)[2:] for v in values)
    return struct.pack(fmt[0] + fmt[1] * len(values), *values)


class Storage:
    """A storage; pickled as torch.storage._load_from_bytes(legacy bytes), or as a persistent id in a ZIP."""

    def __init__(self, values, storage_type, key):
        self.values, self.storage_type, self.key = values, storage_type, key

    def legacy_bytes(self):
        out = io.BytesIO()
        for header in [0x1950A86A20F9469CFC6C, 1001,
                       {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}]:
            pickle.dump(header, out, protocol=2)
        pid = ("storage", STORAGE_TYPES[self.storage_type][0], self.key, "cpu", len(self.values), None)

        class WithStorage(pickle.Pickler):
            def persistent_id(self, obj):
                return pid if obj is STORAGE_MARKER else None
        WithStorage(out, protocol=2).dump(STORAGE_MARKER)
        pickle.dump([self.key], out, protocol=2)
        out.write(struct.pack("<q", len(self.values)) + raw(self.values, self.storage_type))
        return out.getvalue()

    def __reduce__(self):
        return (torch_storage._load_from_bytes, (self.legacy_bytes(),))


STORAGE_MARKER = object()


class Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride = [1] * len(self.shape)
        for i in range(len(self.shape) - 2, -1, -1):
            stride[i] = stride[i + 1] * self.shape[i + 1]
        return (torch_utils._rebuild_tensor_v2,
                (self.storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))


class Parameter(Tensor):
    def __reduce__(self):
        return (torch_utils._rebuild_parameter, (Tensor(self.storage, self.shape), True, collections.OrderedDict()))


MODULE_CLASSES = {}


def plain_module(qualified, **attributes):
    """A plain nn.Module: pickled as NEWOBJ of its class and BUILD with its __dict__."""
    mod_name, cls_name = qualified.rsplit(".", 1)
    if qualified not in MODULE_CLASSES:
        mod = sys.modules.get(mod_name) or module(mod_name)
        MODULE_CLASSES[qualified] = register(mod, type(cls_name, (), {}), cls_name)
    obj = MODULE_CLASSES[qualified].__new__(MODULE_CLASSES[qualified])
    obj.__dict__.update({"training": False, "_parameters": attributes.pop("params", {}), "_buffers": {},
                         "_non_persistent_buffers_set": set(), "_modules": attributes.pop("modules", {})})
    obj.__dict__.update(attributes)
    return obj


class Persistent:
    """A torch_utils.persistence object: _reconstruct_persistent_obj({type, version, module_src, class_name, state})."""

    def __init__(self, class_name, init_kwargs, params=None, modules=None, **attributes):
        self.meta = {"type": "class", "version": 6, "module_src": "# the class's Python source; never run\n",
                     "class_name": class_name,
                     "state": {"training": False, "_parameters": params or {}, "_buffers": {},
                               "_non_persistent_buffers_set": set(), "_modules": modules or {}, **attributes,
                               "_init_args": (), "_init_kwargs": init_kwargs}}

    def __reduce__(self):
        return (persistence._reconstruct_persistent_obj, (self.meta,))


def tiny_network(storage_key, model_class="DiT"):
    """A DiT of hidden 8, depth 1, 2 heads, patch 1, 2x2x1 inputs, 2 classes, MLP ratio 2, in mixed dtypes. With
    another `model_class`, a subclass that passes its sizes to DiT.__init__ itself: they are not among the recorded
    constructor arguments."""
    counter = iter(range(10_000))
    types_cycle = ["HalfStorage", "FloatStorage", "BFloat16Storage"]

    def param(*shape):
        n = int(np.prod(shape))
        k = next(counter)
        values = [((i * 7 + k) % 13 - 6) / 64 for i in range(n)]
        return Parameter(Storage(values, types_cycle[k % 3], storage_key(k)), list(shape))

    def linear(i, o):
        return plain_module("torch.nn.modules.linear.Linear", params={"weight": param(o, i), "bias": param(o)},
                            in_features=i, out_features=o)

    def embedder():
        mlp = plain_module("torch.nn.modules.container.Sequential", modules={
            "0": linear(256, 8), "1": plain_module("torch.nn.modules.activation.SiLU"), "2": linear(8, 8)})
        return Persistent("TimestepEmbedder", {"hidden_size": 8}, modules={"mlp": mlp})

    attn = plain_module("training.dit.Attention", modules={
        "qkv": linear(8, 24), "q_norm": plain_module("torch.nn.modules.normalization.RMSNorm", params={"weight": param(4)}),
        "k_norm": plain_module("torch.nn.modules.normalization.RMSNorm", params={"weight": param(4)}),
        "proj": linear(8, 8)}, num_heads=2)
    mlp = plain_module("timm.layers.mlp.Mlp", modules={"fc1": linear(8, 16), "fc2": linear(16, 8)})
    ada = plain_module("torch.nn.modules.container.Sequential", modules={"1": linear(8, 48)})
    block = Persistent("DiTBlock", {"mlp_ratio": 2.0}, modules={"attn": attn, "mlp": mlp, "adaLN_modulation": ada})
    final = Persistent("FinalLayer", {}, modules={
        "linear": linear(8, 1), "adaLN_modulation": plain_module("torch.nn.modules.container.Sequential",
                                                                 modules={"1": linear(8, 16)})})
    proj = plain_module("torch.nn.modules.conv.Conv2d", params={"weight": param(8, 1, 1, 1), "bias": param(8)})
    kwargs = {"patch_size": 1, "hidden_size": 8, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "img_resolution": 2,
              "in_channels": 1, "num_classes": 2, "label_dim": 2}
    if model_class != "DiT":
        kwargs = {"img_resolution": 2, "img_channels": 1, "label_dim": 2}
    dit = Persistent(model_class, kwargs, params={"pos_embed": param(1, 4, 8)}, modules={
        "s_embedder": embedder(), "guidance_embedder": embedder(),
        "x_embedder": plain_module("timm.layers.patch_embed.PatchEmbed", modules={"proj": proj}),
        "t_embedder": embedder(),
        "y_embedder": Persistent("LabelEmbedder", {}, modules={
            "embedding_table": plain_module("torch.nn.modules.sparse.Embedding", params={"weight": param(3, 8)})}),
        "blocks": plain_module("torch.nn.modules.container.ModuleList", modules={"0": block}),
        "final_layer": final})
    return Persistent("TVMWrapper", {"img_resolution": 2, "img_channels": 1, "label_dim": 2, "model_type": "DiT_tiny",
                                     "do_scale_param": True}, modules={"model": dit}, do_scale_param=True)


def torch_save_zip(obj, name):
    """torch.save's ZIP format: name/data.pkl with storages as persistent ids, name/data/<key>, byteorder."""
    storages = {}

    class ZipPickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                storages[o.key] = o
                return ("storage", STORAGE_TYPES[o.storage_type][0], o.key, "cpu", len(o.values))
            return None

    data = io.BytesIO()
    ZipPickler(data, protocol=2).dump(obj)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        def add(entry, data):  # a fixed time stamp keeps the seed the same from run to run
            z.writestr(zipfile.ZipInfo(f"{name}/{entry}", date_time=(2026, 1, 1, 0, 0, 0)), data)
        add("data.pkl", data.getvalue())
        add("byteorder", "little")
        for key, s in sorted(storages.items()):
            add(f"data/{key}", raw(s.values, s.storage_type))
        add("version", "3\n")
    return out.getvalue()


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {}
    snapshot = os.path.join(FIXTURES, "official", "official_snapshot_small.pkl")
    if os.path.exists(snapshot):
        data = open(snapshot, "rb").read()
        # Two storages of the official fixture as the legacy bytes _load_from_bytes holds (a bias, a q_norm weight).
        magic = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")
        starts = [i for i in range(len(data)) if data.startswith(magic, i)]
        for name, length in [("fixture-storage-bias.legacy", 507), ("fixture-storage-qnorm.legacy", 315)]:
            for s in starts:
                n = int.from_bytes(data[s - 4:s], "little")  # BINBYTES' length field just before it
                if n == length:
                    seeds[name] = data[s:s + n]
                    break
    # Seeds are fixed bytes: the storage keys are counters, not addresses.
    seeds["tiny-official-snapshot.pkl"] = pickle.dumps({"ema": tiny_network(str), "dataset_kwargs": {"use_labels": True}},
                                                       protocol=4)
    seeds["tiny-training-state.pt"] = torch_save_zip({"ema": tiny_network(str)}, "archive")
    seeds["tiny-unknown-subclass.pkl"] = pickle.dumps({"net": tiny_network(str, model_class="DiT_custom")}, protocol=4)
    stats = {"mu": np.array([0.5, -1.0]), "sigma": np.array([[2.0, 0.5], [0.5, 1.0]], dtype=np.float32)}
    for p in (2, 4, 5):
        seeds[f"numpy-statistics-protocol{p}.pkl"] = pickle.dumps(stats, protocol=p)
    values = {"ints": [0, -1, 255, 65536, 2**63, -2**70], "text": ["", "caf\u00e9"], "t": (None, True, 1.5, b"\x00")}
    for p in range(6):
        seeds[f"values-protocol{p}.pkl"] = pickle.dumps(values if p >= 2 else {"ints": [0, -1, 255, 65536], "f": 1.5},
                                                        protocol=p)

    class System:
        def __reduce__(self):
            return (os.system, ("touch /tmp/terminalvelocity-fuzz-ran",))
    seeds["os-system.pkl"] = pickle.dumps({"ema": System()}, protocol=4)
    seeds["deep-tuples.pkl"] = b"\x80\x04N" + b"\x85" * 300 + b"."
    seeds["memo-put-4G.pkl"] = b"\x80\x04N\x72\xff\xff\xff\xff\x6a\xff\xff\xff\xff."
    seeds["binunicode8-claims-2-62.pkl"] = b"\x80\x04\x8d" + (1 << 62).to_bytes(8, "little") + b"."
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(seeds)} seeds ({sum(map(len, seeds.values()))} bytes) to {OUT}")


if __name__ == "__main__":
    main()
