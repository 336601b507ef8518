"""A fast, validating reader for the GGUF container: header, metadata, tensor infos, raw data.

`gguf.GGUFReader` builds a Python object per array element (seconds for a 49k-token vocabulary);
this parses the same structure with `struct` and NumPy in a fraction of that, and checks that every
tensor lies inside the file. Type codes and block sizes come from the `gguf` package's constants.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from iceburg_mlx.errors import BadModelFileError

_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_NP = {GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
       GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
       GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "<u8",
       GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]      # NumPy order (rows first): GGUF's dims reversed
    qtype: GGMLQuantizationType
    offset: int                 # absolute byte offset in the file
    nbytes: int


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 memmap (no copy)."""
        t = self.tensors[name]
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=t.offset, shape=(t.nbytes,))


class _Cursor:
    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise BadModelFileError(f"{self.path}: truncated GGUF (header ends at byte {len(self.buf)})")

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        self.need(size)
        val = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return val

    def string(self) -> str:
        n = self.unpack("<Q")
        self.need(n)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype == GGUFValueType.STRING:
                return [self.string() for _ in range(count)]
            if etype in _NP:
                dt = np.dtype(_NP[etype])
                self.need(count * dt.itemsize)
                arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
                self.pos += count * dt.itemsize
                return arr.tolist()
            return [self.value(etype) for _ in range(count)]
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype])
        raise BadModelFileError(f"{self.path}: unknown GGUF metadata value type {vtype} at byte {self.pos}")


def tensor_nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block, type_size = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape, dtype=np.int64))
    if n % block:
        raise ValueError(f"{n} elements is not a multiple of the {qtype.name} block size {block}")
    return n // block * type_size


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse and validate a GGUF file's header; tensors are left on disk."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise BadModelFileError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        size = path.stat().st_size
        if size < 24:
            raise BadModelFileError(f"{path}: not a GGUF file (only {size} bytes)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _parse(memoryview(mm), path, size)


def _parse(buf, path: Path, size: int) -> GGUFFile:
    cur = _Cursor(buf, path)
    if bytes(buf[:4]) != b"GGUF":
        raise BadModelFileError(f"{path}: not a GGUF file (bad magic {bytes(buf[:4])!r})")
    cur.pos = 4
    try:
        version = cur.unpack("<I")
        if version not in (2, 3):
            raise BadModelFileError(f"{path}: unsupported GGUF version {version}")
        n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            metadata[key] = cur.value(cur.unpack("<I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.unpack("<I")
            dims = tuple(cur.unpack("<Q") for _ in range(n_dims))
            raw_type = cur.unpack("<I")
            rel = cur.unpack("<Q")
            infos.append((name, dims, raw_type, rel))
        buf.release()
    except BadModelFileError:
        buf.release()
        raise
    align = int(metadata.get("general.alignment", 32))
    data_start = (cur.pos + align - 1) // align * align
    tensors: dict[str, TensorInfo] = {}
    for name, dims, raw_type, rel in infos:
        try:
            qtype = GGMLQuantizationType(raw_type)
        except ValueError:
            raise BadModelFileError(f"{path}: tensor '{name}' has unknown GGML type {raw_type}") from None
        shape = tuple(int(d) for d in reversed(dims))
        try:
            nbytes = tensor_nbytes(shape, qtype)
        except (KeyError, ValueError) as e:
            raise BadModelFileError(f"{path}: tensor '{name}': {e}") from None
        offset = data_start + rel
        if offset + nbytes > size:
            raise BadModelFileError(
                f"{path}: truncated GGUF: tensor '{name}' ends at byte {offset + nbytes} but the file has {size}"
            )
        tensors[name] = TensorInfo(name, shape, qtype, offset, nbytes)
    return GGUFFile(path, version, metadata, tensors)
