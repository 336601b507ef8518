"""GGUF block quantizers: our Q4_K and Q6_K, and the `gguf` package's legacy types behind one call.

The `gguf` package quantizes F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0 (bit-exact with ggml) but not the
K-quants. Q4_K and Q6_K are written here as small classes registered by type, each implementing
only `quantize_blocks` on an (n_blocks, 256) float32 array -> (n_blocks, type_size) uint8, after the
reference quantizers of ggml-quants.c (`quantize_row_q4_K_ref` with its weighted min/scale search,
`quantize_row_q6_K_ref` with its rmse scale search), vectorised over blocks. The round trip is
checked with `gguf.quants.dequantize` and against llama.cpp's own output in the tests.

    quantize(w, GGMLQuantizationType.Q4_K)   # (rows, cols) f32 -> (rows, cols // 256 * 144) uint8
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from gguf import GGML_QUANT_SIZES, QK_K
from gguf import GGMLQuantizationType as Q
from gguf import quants as gguf_quants

from iceburg_mlx.errors import ExportError

CHUNK_BLOCKS = 2048  # blocks per vectorised step: keeps the temporaries (~2 MiB each) near the caches
_EPS = np.float32(1e-15)  # ggml's GROUP_MAX_EPS


def _seqsum(a: np.ndarray) -> np.ndarray:
    """Sum over the first axis in index order (as the C loops accumulate), in a's dtype.

    The quantizers keep sub-blocks as columns ((values, n) arrays), so each step adds two
    contiguous rows.
    """
    s = a[0].copy()
    for row in a[1:]:
        s += row
    return s


def _f16(x: np.ndarray) -> np.ndarray:
    """Round to the nearest float16 and back (GGML_FP32_TO_FP16 / FP16_TO_FP32)."""
    return x.astype(np.float16).astype(np.float32)


class BlockQuant:
    """A GGUF quant type: subclasses set `qtype` and implement `quantize_blocks`."""

    qtype: ClassVar[Q]
    block_size: ClassVar[int]
    type_size: ClassVar[int]

    def __init_subclass__(cls, qtype: Q, **kw) -> None:
        super().__init_subclass__(**kw)
        cls.qtype = qtype
        cls.block_size, cls.type_size = GGML_QUANT_SIZES[qtype]
        QUANTIZERS[qtype] = cls

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def quantize(cls, data: np.ndarray) -> np.ndarray:
        """(..., cols) float -> (..., cols // block_size * type_size) uint8, in chunks of blocks."""
        data = np.ascontiguousarray(data, dtype=np.float32)
        if data.shape[-1] % cls.block_size:
            raise ExportError(f"{cls.qtype.name} needs rows that are a multiple of {cls.block_size}, "
                              f"got {data.shape[-1]}")
        blocks = data.reshape(-1, cls.block_size)
        out = np.empty((blocks.shape[0], cls.type_size), dtype=np.uint8)
        for s in range(0, blocks.shape[0], CHUNK_BLOCKS):
            out[s:s + CHUNK_BLOCKS] = cls.quantize_blocks(blocks[s:s + CHUNK_BLOCKS])
        return out.reshape(*data.shape[:-1], data.shape[-1] // cls.block_size * cls.type_size)


QUANTIZERS: dict[Q, type[BlockQuant]] = {}


def _weighted_min_scale(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float,
                        nstep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants over the columns of x (values, n): x ~ scale * L - min, L in [0, nmax].

    Tries nstep + 1 scales around nmax / (max - min), refitting (scale, min) by weighted least
    squares for each candidate level assignment; keeps the one with the least weighted squared error.
    Returns (scale, min >= 0, L) per column.
    """
    f32 = np.float32
    lo = np.minimum(x.min(axis=0), f32(0))
    hi = x.max(axis=0)
    flat = hi == lo
    sum_w, sum_x = _seqsum(w), _seqsum(w * x)
    iscale = f32(nmax) / np.where(flat, f32(1), hi - lo)
    scale = f32(1) / iscale
    L = np.clip(np.rint(iscale * (x - lo)), 0, nmax)
    diff = scale * L + lo - x
    best = _seqsum(w * (diff * diff))
    mn = lo.copy()
    for step in range(nstep + 1):
        # as in ggml, each candidate is laid over the best (scale, min) found so far
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / np.where(flat, f32(1), hi - mn)
        la = np.clip(np.rint(iscale * (x - mn)), 0, nmax)
        wl = w * la
        sum_l, sum_l2, sum_xl = _seqsum(wl), _seqsum(wl * la), _seqsum(wl * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        safe = np.where(ok, det, f32(1))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe
        pos = this_min > 0
        this_min = np.where(pos, f32(0), this_min)
        with np.errstate(divide="ignore", invalid="ignore"):
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
        diff = this_scale * la + this_min - x
        err = _seqsum(w * (diff * diff))
        better = ok & (err < best)
        L = np.where(better, la, L)
        best = np.where(better, err, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    scale = np.where(flat, f32(0), scale)
    mn = np.where(flat, lo, mn)
    L = np.where(flat, f32(0), L)
    return scale, -mn, L


class Q4_K(BlockQuant, qtype=Q.Q4_K):
    """256 values: 8 sub-blocks of 32 with 6-bit scale and min, both scaled by f16 d and dmin.

    Layout (144 bytes): d f16, dmin f16, scales[12] (6-bit packed), qs[128] (nibbles, low then
    high half of each 64).
    """

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        f32 = np.float32
        n = blocks.shape[0]
        x = np.ascontiguousarray(blocks.astype(f32, copy=False).reshape(n * 8, 32).T)  # (32, n * 8)
        av = np.sqrt(_seqsum(x * x) / f32(32))
        scales, mins, L = _weighted_min_scale(x, av + np.abs(x), 15, -1.0, 0.1, 20)
        scales, mins, L = scales.reshape(n, 8), mins.reshape(n, 8), L.T
        max_scale = np.maximum(scales.max(axis=1), f32(0))
        max_min = np.maximum(mins.max(axis=1), f32(0))
        with np.errstate(divide="ignore"):
            inv_scale = np.where(max_scale > 0, f32(63) / max_scale, f32(0))
            inv_min = np.where(max_min > 0, f32(63) / max_min, f32(0))
        ls = np.minimum(np.rint(inv_scale[:, None] * scales), 63).astype(np.uint8)
        lm = np.minimum(np.rint(inv_min[:, None] * mins), 63).astype(np.uint8)
        d = (max_scale / f32(63)).astype(np.float16)
        dmin = (max_min / f32(63)).astype(np.float16)
        # final levels against the rounded scales, as the decoder will see them
        dj = d.astype(f32)[:, None] * ls.astype(f32)           # (n, 8)
        dm = dmin.astype(f32)[:, None] * lm.astype(f32)
        xs = blocks.astype(f32, copy=False).reshape(n, 8, 32)
        with np.errstate(divide="ignore", invalid="ignore"):
            req = np.clip(np.rint((xs + dm[..., None]) / dj[..., None]), 0, 15)
        L = np.where((dj != 0)[..., None], req, L.reshape(n, 8, 32)).astype(np.uint8)
        packed = np.empty((n, 12), dtype=np.uint8)
        packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
        packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
        packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
        q = L.reshape(n, 4, 2, 32)
        qs = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(n, 128)
        return np.concatenate([d.reshape(n, 1).view(np.uint8), dmin.reshape(n, 1).view(np.uint8),
                               packed, qs], axis=1)


def _rmse_symmetric_scale(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qx_quants (rmse_type 1: weights x^2) over the columns of x (values, n).

    x ~ scale * l with l in [-nmax, nmax); tries 19 inverse scales around -nmax / max (max: the
    value of largest magnitude) and keeps the best weighted fit. Returns (scale, l + nmax).
    """
    f32 = np.float32
    idx = np.abs(x).argmax(axis=0)
    mx = np.take_along_axis(x, idx[None, :], axis=0)[0]
    zero = np.abs(mx) < _EPS
    mx = np.where(zero, f32(1), mx)
    w = x * x

    def levels(iscale):
        return np.clip(np.rint(iscale * x), -nmax, nmax - 1)

    def fit(lv):
        return _seqsum(w * x * lv), _seqsum(w * lv * lv)

    L = levels(f32(-nmax) / mx)
    sumlx, suml2 = fit(L)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, f32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        la = levels(-(f32(nmax) + f32(0.1) * f32(step)) / mx)
        sumlx, suml2 = fit(la)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        with np.errstate(divide="ignore", invalid="ignore"):
            cand = sumlx / suml2
        L = np.where(better, la, L)
        scale = np.where(better, cand, scale)
        best = np.where(better, cand * sumlx, best)
    scale = np.where(zero, f32(0), scale)
    L = np.where(zero, f32(0), L)
    return scale, (L + nmax).astype(np.uint8)


class Q6_K(BlockQuant, qtype=Q.Q6_K):
    """256 values: 16 sub-blocks of 16 with int8 scales times one f16 d; 6-bit levels.

    Layout (210 bytes): ql[128] (low nibbles), qh[64] (high 2 bits), scales[16] int8, d f16.
    """

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        f32 = np.float32
        n = blocks.shape[0]
        x = np.ascontiguousarray(blocks.astype(f32, copy=False).reshape(n * 16, 16).T)  # (16, n * 16)
        scales, L = _rmse_symmetric_scale(x, 32)
        scales, L = scales.reshape(n, 16), L.T.reshape(n, 16, 16)
        imax = np.abs(scales).argmax(axis=1)
        max_scale = np.take_along_axis(scales, imax[:, None], axis=1)[:, 0]
        dead = np.abs(max_scale) < _EPS
        max_scale = np.where(dead, f32(1), max_scale)
        iscale = f32(-128) / max_scale
        d = (f32(1) / iscale).astype(np.float16)
        sc = np.minimum(np.rint(iscale[:, None] * scales), 127).astype(np.int8)
        dj = d.astype(f32)[:, None] * sc.astype(f32)
        xs = blocks.astype(f32, copy=False).reshape(n, 16, 16)
        with np.errstate(divide="ignore", invalid="ignore"):
            req = np.clip(np.rint(xs / dj[..., None]), -32, 31) + 32
        L = np.where((dj != 0)[..., None], req, L).astype(np.uint8).reshape(n, 2, 4, 32)
        ql = np.empty((n, 2, 64), dtype=np.uint8)
        ql[:, :, :32] = (L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4)
        ql[:, :, 32:] = (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)
        qh = (L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6)
        out = np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8),
                              d.reshape(n, 1).view(np.uint8)], axis=1)
        out[dead] = 0
        return out


LEGACY = (Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0)  # quantized by the gguf package


def quantize(data: np.ndarray, qtype: Q) -> np.ndarray:
    """Encode a float array in GGUF type `qtype` (F32 and F16 as float arrays, others as bytes)."""
    if qtype == Q.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype in QUANTIZERS:
        return QUANTIZERS[qtype].quantize(data)
    if qtype in LEGACY:
        return gguf_quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)
    supported = ", ".join(t.name for t in (Q.F32, *LEGACY, *QUANTIZERS))
    raise ExportError(f"cannot quantize to {qtype.name} (supported: {supported})")


def supports(qtype: Q, n_cols: int) -> bool:
    """Whether a row of `n_cols` values fits whole blocks of `qtype`."""
    return n_cols % GGML_QUANT_SIZES[qtype][0] == 0


__all__ = ["Q4_K", "Q6_K", "QK_K", "QUANTIZERS", "BlockQuant", "quantize", "supports"]
