#!/usr/bin/env python3
"""Writes torch.save-format (zip) checkpoint shards without torch, for the convert tests.

torch.save writes <archive>/data.pkl (pickle protocol 2 of the object, with tensors reduced to
torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks) and storages
as persistent ids ('storage', torch.<T>Storage, key, 'cpu', numel)), one <archive>/data/<key>
entry per storage, <archive>/version and <archive>/byteorder. This script builds the same bytes
with stand-in classes registered under torch's module names, so pickle emits the same GLOBALs.

  make_torch_bin.py good DIR   two shards + pytorch_model.bin.index.json + config.json, and
                               expected.json: name -> {dtype, shape, hex} of every tensor's
                               row-major bytes
  make_torch_bin.py evil DIR   pytorch_model.bin whose pickle calls os.system
  make_torch_bin.py legacy DIR pytorch_model.bin in the pre-zip format (a bare pickle)
  make_torch_bin.py from_safetensors SRC DIR N
                               the safetensors checkpoint folder SRC (index + shards) re-saved
                               as N torch.save shards + index, with SRC's config files, i.e. the
                               form the official release of that model would have
"""
import collections
import json
import os
import pickle
import struct
import sys
import types
import zipfile

torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
torch._utils = torch_utils
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils


def _stand_in(name):
    def f(*args):
        raise RuntimeError("stand-in only")
    f.__module__ = "torch._utils"
    f.__name__ = f.__qualname__ = name
    setattr(torch_utils, name, f)
    return f


_rebuild_tensor_v2 = _stand_in("_rebuild_tensor_v2")
_rebuild_parameter = _stand_in("_rebuild_parameter")

STORAGE_CLASSES = {}
for cls_name, dtype, size in [("FloatStorage", "F32", 4), ("HalfStorage", "F16", 2), ("BFloat16Storage", "BF16", 2),
                              ("LongStorage", "I64", 8), ("IntStorage", "I32", 4), ("ByteStorage", "U8", 1)]:
    cls = type(cls_name, (), {})
    cls.__module__ = "torch"
    setattr(torch, cls_name, cls)
    STORAGE_CLASSES[dtype] = (cls, size)


class Storage:
    def __init__(self, key, dtype, data):
        self.key, self.dtype, self.data = key, dtype, data
        self.cls, self.size = STORAGE_CLASSES[dtype]
        assert len(data) % self.size == 0
        self.numel = len(data) // self.size


class Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)

    def __reduce_ex__(self, protocol):
        return (_rebuild_tensor_v2, (self.storage, self.offset, self.shape, self.stride, False,
                                     collections.OrderedDict()))

    def rowmajor_bytes(self):
        size = self.storage.size
        out = bytearray()
        index = [0] * len(self.shape)
        count = 1
        for d in self.shape:
            count *= d
        for _ in range(count):
            src = self.offset + sum(i * s for i, s in zip(index, self.stride))
            out += self.storage.data[src * size:(src + 1) * size]
            for d in reversed(range(len(self.shape))):
                index[d] += 1
                if index[d] < self.shape[d]:
                    break
                index[d] = 0
        return bytes(out)


class Parameter:
    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce_ex__(self, protocol):
        return (_rebuild_parameter, (self.tensor, True, collections.OrderedDict()))


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def contiguous_stride(shape):
    stride, step = [], 1
    for d in reversed(shape):
        stride.insert(0, step)
        step *= d
    return stride


def save(path, state_dict):
    """torch.save(state_dict, path) in the zip format."""
    archive = os.path.splitext(os.path.basename(path))[0]
    buffer = __import__("io").BytesIO()
    TorchPickler(buffer, protocol=2).dump(state_dict)
    storages = {}

    def collect(value):
        tensor = value.tensor if isinstance(value, Parameter) else value
        if isinstance(tensor, Tensor):
            storages[tensor.storage.key] = tensor.storage

    for value in state_dict.values():
        collect(value)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(archive + "/data.pkl", buffer.getvalue())
        z.writestr(archive + "/byteorder", "little")
        for key, storage in sorted(storages.items()):
            z.writestr(archive + "/data/" + key, storage.data)
        z.writestr(archive + "/version", "3\n")


def pattern(seed, n):
    state = seed * 2654435761 % (1 << 32)
    out = bytearray()
    for _ in range(n):
        state = (state * 1103515245 + 12345) % (1 << 31)
        out.append(state >> 23)
    return bytes(out)


def good(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    expected = {}
    shard1 = collections.OrderedDict()
    shard2 = collections.OrderedDict()

    def add(shard, name, tensor, dtype):
        shard[name] = tensor
        t = tensor.tensor if isinstance(tensor, Parameter) else tensor
        expected[name] = {"dtype": dtype, "shape": list(t.shape), "hex": t.rowmajor_bytes().hex()}

    floats = Storage("0", "F32", struct.pack("<12f", *[i * 0.5 - 1 for i in range(12)]))
    add(shard1, "model.tok_embeddings.weight", Tensor(floats, 0, (4, 3), (3, 1)), "F32")
    # A view into the same storage (shared storages are normal in state_dicts).
    add(shard1, "model.slice", Tensor(floats, 3, (2, 3), (3, 1)), "F32")
    bf16 = Storage("1", "BF16", pattern(1, 10))
    add(shard1, "model.layers.0.attention_norm.weight", Tensor(bf16, 0, (5,), (1,)), "BF16")
    longs = Storage("2", "I64", struct.pack("<4q", 1, -2, 3, -(1 << 40)))
    add(shard1, "position_ids", Tensor(longs, 0, (2, 2), (2, 1)), "I64")
    # A transposed (non-contiguous) tensor: the converter must gather it row-major.
    t_storage = Storage("3", "F32", struct.pack("<6f", 1, 2, 3, 4, 5, 6))
    add(shard2, "output.weight", Tensor(t_storage, 0, (3, 2), (1, 3)), "F32")
    half = Storage("4", "F16", pattern(4, 2))
    add(shard2, "scalar", Tensor(half, 0, (), ()), "F16")
    big = Storage("5", "U8", pattern(5, 70000))
    add(shard2, "model.norm.weight", Parameter(Tensor(big, 0, (70000,), (1,))), "U8")
    empty = Storage("6", "I32", b"")
    add(shard2, "empty", Tensor(empty, 0, (0, 4), (4, 1)), "I32")
    # state_dict() returns an OrderedDict carrying a _metadata attribute (pickled via BUILD).
    shard1._metadata = collections.OrderedDict([("", {"version": 1})])

    save(os.path.join(out_dir, "pytorch_model-00001-of-00002.bin"), shard1)
    save(os.path.join(out_dir, "pytorch_model-00002-of-00002.bin"), shard2)
    weight_map = {name: "pytorch_model-00001-of-00002.bin" for name in shard1}
    weight_map.update({name: "pytorch_model-00002-of-00002.bin" for name in shard2})
    with open(os.path.join(out_dir, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    # Not a model config (these tensors are no model); copied along like any other file.
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True}, f)
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(expected, f)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def evil(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    floats = Storage("0", "F32", struct.pack("<2f", 1, 2))
    state = collections.OrderedDict([("w", Tensor(floats, 0, (2,), (1,))), ("payload", Evil())])
    save(os.path.join(out_dir, "pytorch_model.bin"), state)


def legacy(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "pytorch_model.bin"), "wb") as f:
        pickle.dump({"w": [1.0, 2.0]}, f, protocol=2)


def read_safetensors(path):
    """name -> (dtype, shape, bytes), in offset order."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    out = collections.OrderedDict()
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        b, e = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], data[8 + n + b:8 + n + e])
    return out


def from_safetensors(src, out_dir, shards):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(src, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    tensors = collections.OrderedDict()
    for shard in sorted(set(weight_map.values())):
        tensors.update(read_safetensors(os.path.join(src, shard)))
    names = list(tensors)
    per_shard = (len(names) + shards - 1) // shards
    bin_map = {}
    for k in range(shards):
        file = "pytorch_model-%05d-of-%05d.bin" % (k + 1, shards)
        state = collections.OrderedDict()
        for i, name in enumerate(names[k * per_shard:(k + 1) * per_shard]):
            dtype, shape, data = tensors[name]
            state[name] = Tensor(Storage(str(i), dtype, data), 0, shape, contiguous_stride(shape))
            bin_map[name] = file
        state._metadata = collections.OrderedDict()
        save(os.path.join(out_dir, file), state)
    with open(os.path.join(out_dir, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(len(t[2]) for t in tensors.values())}, "weight_map": bin_map}, f)
    for extra in ("config.json", "clip_vision_config.json"):
        if os.path.exists(os.path.join(src, extra)):
            with open(os.path.join(src, extra), "rb") as f, open(os.path.join(out_dir, extra), "wb") as g:
                g.write(f.read())


if __name__ == "__main__":
    if sys.argv[1] == "from_safetensors":
        from_safetensors(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        {"good": good, "evil": evil, "legacy": legacy}[sys.argv[1]](sys.argv[2])
