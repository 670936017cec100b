"""Read a GGUF file's scalar metadata (layers, heads, context) without loading the model.

The memory manager wants a footprint before a load; the `gguf` package parses every tensor and array
with numpy (seconds), while the sizes it needs are a few scalars at the head of the file. Layout:
magic `GGUF`, version (u32), tensor count (u64), key/value count (u64), then the key/value pairs.
Reference: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

#: value type id -> struct format of a scalar (8 = string, 9 = array are handled apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")


class _Cursor:
    """Reads little-endian values from a memory-mapped file, front to back."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data, self.offset = data, 0

    def read(self, fmt: str) -> int | float | bool:
        if self.offset + struct.calcsize(fmt) > len(self.data):
            raise ValueError("the GGUF header ends early")
        (value,) = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = int(self.read("<Q"))
        self.offset += length
        return self.data[self.offset - length : self.offset].decode("utf-8", errors="replace")

    def skip_array(self) -> None:
        item_type, count = int(self.read("<I")), int(self.read("<Q"))
        if item_type == _STRING:  # the vocabulary: tens of thousands of length-prefixed strings
            length_of = _U64.unpack_from
            offset = self.offset
            for _ in range(count):
                offset += 8 + length_of(self.data, offset)[0]
            self.offset = offset
        elif item_type == _ARRAY:
            for _ in range(count):
                self.skip_array()
        else:
            self.offset += struct.calcsize(_SCALARS[item_type]) * count


def read_scalars(path: str | Path) -> dict[str, int | float | bool | str]:
    """Every scalar and string key of a GGUF file's metadata; arrays (the vocabulary) are skipped."""
    values: dict[str, int | float | bool | str] = {}
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cursor = _Cursor(data)
        if data[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        cursor.offset = 4
        version = cursor.read("<I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old (need 2 or later)")
        cursor.read("<Q")  # the tensor count: not needed for metadata
        count = int(cursor.read("<Q"))
        for _ in range(count):
            key = cursor.string()
            kind = int(cursor.read("<I"))
            if kind == _STRING:
                values[key] = cursor.string()
            elif kind == _ARRAY:
                cursor.skip_array()
            else:
                values[key] = cursor.read(_SCALARS[kind])
    return values


def kv_cache_bytes(metadata: dict[str, object], n_ctx: int, bytes_per_value: int = 2) -> int:
    """llama.cpp's K and V caches for `n_ctx` positions (f16 by default), from GGUF metadata.

    Per layer and position: K holds n_head_kv x key_length values and V n_head_kv x value_length; the
    head sizes default to embedding_length / head_count, as llama.cpp reads them.
    """
    arch = str(metadata["general.architecture"])

    def number(name: str, default: int | None = None) -> int:
        value = metadata.get(f"{arch}.{name}", default)
        if value is None:
            raise KeyError(f"{arch}.{name}")
        return int(float(value))  # llama_cpp's own metadata dict holds strings

    layers = number("block_count")
    heads = number("attention.head_count")
    kv_heads = number("attention.head_count_kv", heads)
    head_dim = number("embedding_length") // heads
    key_dim = number("attention.key_length", head_dim)
    value_dim = number("attention.value_length", head_dim)
    return n_ctx * layers * kv_heads * (key_dim + value_dim) * bytes_per_value


def context_length(metadata: dict[str, object]) -> int:
    """The context the model was trained for."""
    return int(float(metadata[f"{metadata['general.architecture']}.context_length"]))  # type: ignore[arg-type]
