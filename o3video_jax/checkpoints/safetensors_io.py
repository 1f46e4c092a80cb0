"""Minimal safetensors reader and streaming writer over numpy (bfloat16 included).

`safetensors.safe_open(..., framework="numpy")` cannot return bfloat16 tensors (numpy has no
bf16), and the released Qwen2.5-VL weights are bf16. The format is simple (an 8-byte
little-endian header length, a JSON header of {name: {dtype, shape, data_offsets}}, then the
raw bytes), so we memory-map files ourselves: a tensor is a lazy numpy view, and slicing it
reads only the slice, which lets every host read just its own shards. The writer streams one
tensor at a time, so a checkpoint never has to be materialised in host memory.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Sequence

import ml_dtypes
import numpy as np

from o3video_jax import io

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsFile:
    """Read-only, memory-mapped view of one .safetensors file."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        self._entries = header
        self._data_start = 8 + header_len
        self._buffer = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def dtype(self, key: str) -> np.dtype:
        name = self._entries[key]["dtype"]
        if name not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {key} has unsupported dtype {name}")
        return _DTYPES[name]

    def get(self, key: str) -> np.ndarray:
        """A lazy (memory-mapped) read-only array; copy or slice it to read."""
        if self._buffer is None:
            self._buffer = np.memmap(self.path, dtype=np.uint8, mode="r")
        begin, end = self._entries[key]["data_offsets"]
        raw = self._buffer[self._data_start + begin : self._data_start + end]
        return raw.view(self.dtype(key)).reshape(self.shape(key))


def write(
    path: str | os.PathLike,
    specs: Sequence[tuple[str, tuple[int, ...], np.dtype]],
    fetch: Callable[[str], np.ndarray],
) -> None:
    """Writes tensors `specs` = [(name, shape, dtype)], calling `fetch(name)` one at a time.

    The header is built from the specs alone, so each tensor is fetched (and may be gathered
    from devices) only when its bytes are written, then dropped.
    """
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in specs:
        dtype = np.dtype(dtype)
        if dtype not in _NAMES:
            raise ValueError(f"tensor {name}: dtype {dtype} cannot be stored in safetensors")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {
            "dtype": _NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the reference writer aligns the data to 8 bytes
    with io.open(path, "wb") as f:  # local or gs:// (a streamed upload)
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype in specs:
            array = np.ascontiguousarray(fetch(name), dtype=dtype)
            if array.shape != tuple(shape):
                raise ValueError(f"tensor {name}: fetched shape {array.shape}, planned {shape}")
            f.write(array.tobytes())
