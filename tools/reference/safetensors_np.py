"""Read and write safetensors files with NumPy only.

File layout: an 8-byte little-endian header length N, N bytes of JSON
({name: {"dtype", "shape", "data_offsets": [begin, end]}, optional "__metadata__"}),
then the data section; offsets are relative to the start of the data section and the
tensors are laid out back to back in row-major order, little-endian.

bf16 has no NumPy dtype: BF16 tensors are handled as uint16 bit patterns. `to_float64`
widens any stored tensor exactly (bf16 -> fp32 by a 16-bit shift, then fp32 -> fp64).
"""

import json
import os
import struct

import numpy as np

# safetensors dtype name -> NumPy dtype of the stored element (BF16 as raw uint16 bits)
_NP = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


class Tensor:
    """A stored tensor: its safetensors dtype name and the raw array (uint16 for BF16)."""

    def __init__(self, dtype, array):
        if dtype not in _NP:
            raise ValueError(f"unsupported safetensors dtype {dtype!r}")
        array = np.ascontiguousarray(array)
        if array.dtype != _NP[dtype]:
            raise ValueError(f"array dtype {array.dtype} does not store safetensors {dtype}")
        self.dtype = dtype
        self.array = array

    @property
    def shape(self):
        return tuple(self.array.shape)

    def to_float64(self):
        return to_float64(self.dtype, self.array)


def to_float64(dtype, array):
    """Exact widening of a stored tensor to float64."""
    if dtype == "BF16":
        bits = array.astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64)
    return array.astype(np.float64)


def bf16_bits(x):
    """Round float values to bf16 (round to nearest even, as every framework does) -> uint16 bits."""
    f = np.ascontiguousarray(np.asarray(x, dtype=np.float64).astype(np.float32))
    if not np.all(np.isfinite(f)):
        raise ValueError("bf16_bits: non-finite input")
    u = f.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def read_header(path):
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        size = os.path.getsize(path)
        if n > size - 8:
            raise ValueError(f"{path}: header length {n} exceeds the file size {size}")
        header = json.loads(f.read(n).decode("utf-8"))
    return header, 8 + n


def load_file(path):
    """Return ({name: Tensor}, metadata dict) for one safetensors file."""
    header, data_start = read_header(path)
    data = np.fromfile(path, dtype=np.uint8, offset=data_start)
    out = {}
    meta = header.pop("__metadata__", {}) or {}
    for name, info in header.items():
        dtype = info["dtype"]
        if dtype not in _NP:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dtype}")
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(v) for v in info["data_offsets"])
        nbytes = int(np.prod(shape, dtype=np.int64)) * _NP[dtype].itemsize
        if end - begin != nbytes or end > data.size or begin < 0:
            raise ValueError(f"{path}: tensor {name}: data_offsets {begin}..{end} do not hold "
                             f"{dtype}{list(shape)} ({nbytes} bytes, data section {data.size})")
        arr = data[begin:end].view(_NP[dtype]).reshape(shape).copy()
        out[name] = Tensor(dtype, arr)
    return out, meta


def save_file(tensors, path, metadata=None):
    """Write {name: Tensor} to one file; tensors in name order, header padded to 8 bytes."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    names = sorted(tensors)
    for name in names:
        t = tensors[name]
        nbytes = t.array.nbytes
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * ((8 - len(blob) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            f.write(tensors[name].array.tobytes())


def save_sharded(tensors, folder, n_shards, metadata=None):
    """Write tensors into n_shards files model-0000k-of-0000n.safetensors plus
    model.safetensors.index.json. Tensors are assigned in name order, splitting by bytes."""
    names = sorted(tensors)
    total = sum(tensors[n].array.nbytes for n in names)
    if n_shards < 1 or n_shards > len(names):
        raise ValueError(f"cannot split {len(names)} tensors into {n_shards} shards")
    shards = [[] for _ in range(n_shards)]
    acc = 0
    for i, name in enumerate(names):
        k = min(n_shards - 1, acc * n_shards // total)
        # every shard must get at least one tensor: leave enough names for the rest
        k = max(k, n_shards - (len(names) - i))
        shards[k].append(name)
        acc += tensors[name].array.nbytes
    weight_map = {}
    for k, group in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, os.path.join(folder, fname), metadata)
        for n in group:
            weight_map[n] = fname
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return weight_map


def load_folder(folder):
    """All tensors of a checkpoint folder: via model.safetensors.index.json when present,
    else model.safetensors, else every *.safetensors file. Duplicate names are an error."""
    index_path = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index_path}: no weight_map object")
        files = sorted(set(weight_map.values()))
    elif os.path.exists(os.path.join(folder, "model.safetensors")):
        weight_map = None
        files = ["model.safetensors"]
    else:
        weight_map = None
        files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
        if not files:
            raise ValueError(f"{folder}: no safetensors files")
    out = {}
    for fname in files:
        tensors, _ = load_file(os.path.join(folder, fname))
        for name, t in tensors.items():
            if name in out:
                raise ValueError(f"{folder}: tensor {name} appears in more than one file")
            if weight_map is not None and weight_map.get(name) != fname:
                raise ValueError(f"{folder}: tensor {name} found in {fname} but the index says "
                                 f"{weight_map.get(name)}")
            out[name] = t
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise ValueError(f"{index_path}: tensors listed but not found: {missing[:5]}")
    return out
