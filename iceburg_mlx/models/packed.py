"""Decode from the packed (quantized) weights a dense f32 model was dequantized from.

On Linux CPU a quantized model (GGUF Q4_0/Q4_1/Q8_0, MLX affine 4/8-bit) computes on f32 weights,
because MLX's CPU quantized matmul does not use BLAS. Prompt processing and training are matrix
products where f32 BLAS wins; decoding is matrix-vector products, bound by reading the weights:
4 bytes per weight in f32 against ~0.75 (4-bit codes + f32 scale and bias per 32) in packed form.

`keep_packed(module, codes, scales, biases, group, bits)` hands the packed form of a dense Linear
or Embedding weight to the BLAS shim (`native/sgemm_shim.c`), which then computes `x @ W.T` with
at most 16 rows of x from the packed form. The entry lives as long as the module: it holds the
dense weight (so its address cannot be reused) and the packed arrays, and is removed when the
module is collected. The result equals the dense product up to float summation order.
`ICEBURG_MLX_NO_PACKED=1` (read once per process) or `set_enabled(False)` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import weakref

import numpy as np

from iceburg_mlx import _platform

NO_PACKED_ENV = "ICEBURG_MLX_NO_PACKED"
_LOCK = threading.Lock()
_ENTRIES: dict[int, tuple] = {}   # dense weight address -> (dense weight, codes, scales, biases)


@functools.cache
def _lib():
    shim = _platform.status().gemv_shim
    if not shim or os.environ.get(NO_PACKED_ENV, "") in ("1", "true", "yes"):
        return None
    lib = ctypes.CDLL(shim)
    if not hasattr(lib, "iceburg_qw_register"):
        return None
    lib.iceburg_qw_register.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.iceburg_qw_unregister.argtypes = [ctypes.c_void_p]
    lib.iceburg_qw_calls.restype = ctypes.c_long
    lib.iceburg_qw_entries.restype = ctypes.c_long
    return lib


def available() -> bool:
    """Whether packed decoding can be used in this process (Linux, the shim loaded, not opted out)."""
    return _lib() is not None


def keep_packed(module, codes, scales, biases, group_size: int, bits: int) -> bool:
    """Register `module.weight` (dense f32, N x K) with the packed form it was dequantized from
    (`codes`: uint32 N x K*bits/32, `scales`/`biases`: N x K/group_size); False when not used."""
    import mlx.core as mx

    lib = _lib()
    w = module.weight
    if lib is None or w.dtype != mx.float32 or w.ndim != 2 or bits not in (4, 8) or group_size % 32:
        return False
    n, k = w.shape
    dense = np.asarray(w)                                   # zero-copy view of MLX's buffer
    c = np.ascontiguousarray(np.asarray(codes, dtype=np.uint32))
    s = np.ascontiguousarray(np.asarray(scales.astype(mx.float32), dtype=np.float32))
    b = np.ascontiguousarray(np.asarray(biases.astype(mx.float32), dtype=np.float32))
    if c.shape != (n, k * bits // 32) or s.shape != (n, k // group_size) or b.shape != s.shape:
        return False
    addr = dense.ctypes.data
    with _LOCK:
        rc = lib.iceburg_qw_register(addr, n, k, bits, group_size, c.ctypes.data, s.ctypes.data, b.ctypes.data)
        if rc != 0:
            return False
        _ENTRIES[addr] = (w, c, s, b)
    weakref.finalize(module, _drop, addr)
    return True


_BUSY: list[tuple] = []   # arrays of removed entries that a product was still using (kept)


def _drop(addr: int) -> None:
    """Remove an entry once its module is gone. The shim waits until no product is using it
    (a queued decode step may still run after the model object is dropped) before the arrays
    are released; if that takes too long they are kept instead."""
    lib = _lib()
    with _LOCK:
        arrays = _ENTRIES.pop(addr, None)
        if lib is not None and lib.iceburg_qw_unregister(addr) == 1 and arrays is not None:
            _BUSY.append(arrays)


def nbytes() -> int:
    """Bytes held in packed form (outside MLX's allocator, so not in its peak-memory figure)."""
    with _LOCK:
        return sum(c.nbytes + s.nbytes + b.nbytes for _, c, s, b in _ENTRIES.values())


def set_enabled(on: bool) -> None:
    lib = _lib()
    if lib is not None:
        lib.iceburg_qw_set_enabled(int(on))


def counts() -> tuple[int, int]:
    """(products computed from packed weights since start, weights registered now)."""
    lib = _lib()
    return (int(lib.iceburg_qw_calls()), int(lib.iceburg_qw_entries())) if lib is not None else (0, 0)
