"""GGUF block quantizers: our Q4_K and Q6_K, and the `gguf` package's legacy types behind one call.

The `gguf` package quantizes F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0 (bit-exact with ggml) but not the
K-quants. Q4_K and Q6_K are written here as small classes registered by type, each implementing
only `quantize_blocks` on an (n_blocks, 256) float32 array -> (n_blocks, type_size) uint8, after the
reference quantizers of ggml-quants.c (`quantize_row_q4_K_ref` with its weighted min/scale search,
`quantize_row_q6_K_ref` with its rmse scale search), vectorised over blocks. The round trip is
checked with `gguf.quants.dequantize` and against llama.cpp's own output in the tests.

With an importance vector (one non-negative weight per column: the mean square of the inputs that
column multiplies, from `export.imatrix`), the searches minimise the importance-weighted error
instead, as llama.cpp's `--imatrix` path does (`quantize_row_*_impl`): Q4_K, Q6_K and the legacy
Q4_0, Q4_1, Q5_0, Q5_1. Q8_0, F16 and BF16 ignore it, as in llama.cpp.

    quantize(w, GGMLQuantizationType.Q4_K)   # (rows, cols) f32 -> (rows, cols // 256 * 144) uint8
    quantize(w, GGMLQuantizationType.Q5_0, importance=imp)   # imp: (cols,) float32
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
    row_weighted: ClassVar[bool] = False   # its importance path also needs each row's mean square

    def __init_subclass__(cls, qtype: Q | None = None, legacy: bool = False, **kw) -> None:
        super().__init_subclass__(**kw)
        if qtype is None:  # an abstract intermediate class
            return
        cls.qtype = qtype
        cls.block_size, cls.type_size = GGML_QUANT_SIZES[qtype]
        (WEIGHTED_LEGACY if legacy else QUANTIZERS)[qtype] = cls

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None = None,
                        row_sigma2: np.ndarray | None = None) -> np.ndarray:  # pragma: no cover - abstract
        """(n, block_size) f32 -> (n, type_size) uint8; qw: (n, block_size) importance or None;
        row_sigma2: (n,) mean square of each block's whole row (the legacy types' weighting)."""
        raise NotImplementedError

    @classmethod
    def quantize(cls, data: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
        """(..., cols) float -> (..., cols // block_size * type_size) uint8, in chunks of blocks."""
        data = np.ascontiguousarray(data, dtype=np.float32)
        cols = data.shape[-1]
        if cols % cls.block_size:
            raise ExportError(f"{cls.qtype.name} needs rows that are a multiple of {cls.block_size}, "
                              f"got {cols}")
        blocks = data.reshape(-1, cls.block_size)
        per_row = cols // cls.block_size
        tiles = None
        if importance is not None:
            importance = np.ascontiguousarray(importance, dtype=np.float32).reshape(-1)
            if importance.shape[0] != cols:
                raise ExportError(f"importance has {importance.shape[0]} values for rows of {cols}")
            if not (np.isfinite(importance).all() and (importance >= 0).all()):
                raise ExportError("importance values must be finite and non-negative")
            tiles = importance.reshape(per_row, cls.block_size)
        out = np.empty((blocks.shape[0], cls.type_size), dtype=np.uint8)
        # chunks of whole rows, so each row's mean square (the legacy types' sigma2) is at hand
        step = max(1, CHUNK_BLOCKS // per_row) * per_row
        for s in range(0, blocks.shape[0], step):
            part = blocks[s:s + step]
            if tiles is None:
                out[s:s + step] = cls.quantize_blocks(part)
                continue
            qw = tiles[np.arange(part.shape[0]) % per_row]
            sigma2 = None
            if cls.row_weighted:
                rows = part.reshape(-1, cols)
                sigma2 = np.repeat(_seqsum(np.ascontiguousarray((rows * rows).T)) / np.float32(cols), per_row)
            out[s:s + step] = cls.quantize_blocks(part, qw, sigma2)
        return out.reshape(*data.shape[:-1], cols * cls.type_size // cls.block_size)


QUANTIZERS: dict[Q, type[BlockQuant]] = {}       # our K-quants
WEIGHTED_LEGACY: dict[Q, type[BlockQuant]] = {}  # legacy types' importance-weighted searches


def _weighted_min_scale(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float,
                        nstep: int, guarded: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants over the columns of x (values, n): x ~ scale * L - min, L in [0, nmax].

    Tries nstep + 1 scales around nmax / (max - min), refitting (scale, min) by weighted least
    squares for each candidate level assignment; keeps the one with the least weighted squared error.
    `guarded`: make_qkx3_quants (the importance path), which maps a candidate level that is not
    positive (or not a number) to 0 before rounding. Returns (scale, min >= 0, L) per column.
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
        if guarded:
            with np.errstate(invalid="ignore"):
                v = iscale * (x - mn)
                la = np.where(v > 0, np.rint(np.minimum(v, f32(nmax))), f32(0))
        else:
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


def _qp_scale(x: np.ndarray, nmax: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qp_quants over the columns of x (values, n), x >= 0: x ~ scale * L, L in [0, nmax].

    Picks the best of 9 inverse scales around nmax / max by weighted squared error, then moves single
    levels while that improves the weighted least-squares fit (up to 5 sweeps, in index order, as
    the C loop does). Returns (scale, L) per column.
    """
    f32 = np.float32
    mx = np.maximum(x.max(axis=0), f32(0))
    zero = mx < _EPS
    mx = np.where(zero, f32(1), mx)
    iscale = f32(nmax) / mx
    L = np.rint(iscale * x)
    diff = x - (f32(1) / iscale) * L
    best = _seqsum(w * diff * diff)
    for step in range(-4, 5):
        if step == 0:
            continue
        cand = (f32(0.1) * f32(step) + f32(nmax)) / mx
        diff = x - (f32(1) / cand) * np.minimum(f32(nmax), np.rint(cand * x))
        mse = _seqsum(w * diff * diff)
        better = mse < best
        best = np.where(better, mse, best)
        iscale = np.where(better, cand, iscale)
    L = np.minimum(f32(nmax), np.rint(iscale * x))
    sumlx, suml2 = _seqsum(w * x * L), _seqsum(w * L * L)
    for _ in range(5):  # a sweep with no change leaves the state as it was, so extra sweeps are no-ops
        for i in range(x.shape[0]):
            wi, xi, li = w[i], x[i], L[i]
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            ok = (slx > 0) & (sl2 > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                new = np.minimum(f32(nmax), np.rint(xi * sl2 / np.where(ok, slx, f32(1))))
            slx = slx + wi * xi * new
            sl2 = sl2 + wi * new * new
            take = ok & (new != li) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            L[i] = np.where(take, new, li)
            sumlx = np.where(take, slx, sumlx)
            suml2 = np.where(take, sl2, suml2)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 > 0, sumlx / suml2, f32(0))
    return np.where(zero, f32(0), scale), np.where(zero, f32(0), L)


def _columns(blocks: np.ndarray, size: int) -> np.ndarray:
    """(n, k * size) -> (size, n * k): sub-blocks of `size` as columns."""
    return np.ascontiguousarray(blocks.astype(np.float32, copy=False).reshape(-1, size).T)


class Q4_K(BlockQuant, qtype=Q.Q4_K):
    """256 values: 8 sub-blocks of 32 with 6-bit scale and min, both scaled by f16 d and dmin.

    Layout (144 bytes): d f16, dmin f16, scales[12] (6-bit packed), qs[128] (nibbles, low then
    high half of each 64).
    """

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None = None,
                        row_sigma2: np.ndarray | None = None) -> np.ndarray:
        f32 = np.float32
        n = blocks.shape[0]
        x = _columns(blocks, 32)  # (32, n * 8)
        if qw is None:  # quantize_row_q4_K_ref
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
        else:  # quantize_row_q4_K_impl: importance-weighted searches, scales fitted by make_qp_quants
            sigma2 = f32(2) * _seqsum(_columns(blocks, 256) ** 2) / f32(256)        # (n,)
            w = _columns(qw, 32) * np.sqrt(np.repeat(sigma2, 8)[None, :] + x * x)  # (32, n * 8)
            sw = _seqsum(w).reshape(n, 8).T                                         # (8, n)
            scales, mins, L = _weighted_min_scale(x, w, 15, -0.9, 0.05, 36, guarded=True)
            L = L.T
            d_block, ls = _qp_scale(np.ascontiguousarray(scales.reshape(n, 8).T), 63, sw)
            m_block, lm = _qp_scale(np.ascontiguousarray(mins.reshape(n, 8).T), 63, sw)
            ls, lm = ls.T.astype(np.uint8), lm.T.astype(np.uint8)
            d, dmin = d_block.astype(np.float16), m_block.astype(np.float16)
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


def _rmse_symmetric_scale(x: np.ndarray, nmax: int, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qx_quants (rmse_type 1) over the columns of x (values, n).

    x ~ scale * l with l in [-nmax, nmax); tries 19 inverse scales around -nmax / max (max: the
    value of largest magnitude) and keeps the best fit weighted by `w` (default x^2).
    Returns (scale, l + nmax).
    """
    f32 = np.float32
    idx = np.abs(x).argmax(axis=0)
    mx = np.take_along_axis(x, idx[None, :], axis=0)[0]
    zero = np.abs(mx) < _EPS
    mx = np.where(zero, f32(1), mx)
    if w is None:
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
    # an all-zero column keeps levels 0 (ggml returns before offsetting them)
    return np.where(zero, f32(0), scale), np.where(zero, f32(0), L + nmax).astype(np.uint8)


class Q6_K(BlockQuant, qtype=Q.Q6_K):
    """256 values: 16 sub-blocks of 16 with int8 scales times one f16 d; 6-bit levels.

    Layout (210 bytes): ql[128] (low nibbles), qh[64] (high 2 bits), scales[16] int8, d f16.
    """

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None = None,
                        row_sigma2: np.ndarray | None = None) -> np.ndarray:
        f32 = np.float32
        n = blocks.shape[0]
        x = _columns(blocks, 16)  # (16, n * 16)
        # quantize_row_q6_K_impl weights the sub-block fits by the importance alone
        scales, L = _rmse_symmetric_scale(x, 32, None if qw is None else _columns(qw, 16))
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


class _LegacyWeighted(BlockQuant):
    """A legacy 32-value type's importance path (`quantize_row_q*_impl`): each value weighted by
    importance * sqrt(sigma2 + x^2), sigma2 the mean square of its row. Without importance:
    the `gguf` package's reference quantizer."""

    row_weighted = True

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, qw: np.ndarray | None = None,
                        row_sigma2: np.ndarray | None = None) -> np.ndarray:
        if qw is None or row_sigma2 is None:
            return gguf_quants.quantize(np.ascontiguousarray(blocks, dtype=np.float32), cls.qtype)
        x = _columns(blocks, 32)
        w = _columns(qw, 32) * np.sqrt(row_sigma2[None, :].astype(np.float32) + x * x)
        return cls.encode(x, w)

    @classmethod
    def encode(cls, x: np.ndarray, w: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def _nibbles(L: np.ndarray) -> np.ndarray:
    """Levels (32, n) -> qs (n, 16): value j in the low nibble of byte j, value j + 16 in the high."""
    L = L.T.astype(np.uint8)
    return (L[:, :16] & 0xF) | ((L[:, 16:] & 0xF) << 4)


def _high_bits(L: np.ndarray) -> np.ndarray:
    """Levels (32, n) in [0, 32) -> qh (n, 4): bit j of a little-endian uint32 is level j's fifth bit."""
    bits = (L.T.astype(np.uint32) >> 4) & 1
    return (bits << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32).astype("<u4").view(np.uint8).reshape(-1, 4)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).reshape(-1, 1).view(np.uint8)


class Q4_0w(_LegacyWeighted, qtype=Q.Q4_0, legacy=True):
    @classmethod
    def encode(cls, x, w):
        d, L = _rmse_symmetric_scale(x, 8, w)
        return np.concatenate([_f16_bytes(d), _nibbles(L)], axis=1)


class Q5_0w(_LegacyWeighted, qtype=Q.Q5_0, legacy=True):
    @classmethod
    def encode(cls, x, w):
        d, L = _rmse_symmetric_scale(x, 16, w)
        return np.concatenate([_f16_bytes(d), _high_bits(L), _nibbles(L)], axis=1)


class Q4_1w(_LegacyWeighted, qtype=Q.Q4_1, legacy=True):
    @classmethod
    def encode(cls, x, w):
        d, the_min, L = _weighted_min_scale(x, w, 15, -0.9, 0.05, 36, guarded=True)
        return np.concatenate([_f16_bytes(d), _f16_bytes(-the_min), _nibbles(L)], axis=1)


class Q5_1w(_LegacyWeighted, qtype=Q.Q5_1, legacy=True):
    @classmethod
    def encode(cls, x, w):
        d, the_min, L = _weighted_min_scale(x, w, 31, -0.9, 0.05, 36, guarded=True)
        return np.concatenate([_f16_bytes(d), _f16_bytes(-the_min), _high_bits(L), _nibbles(L)], axis=1)


LEGACY = (Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0)  # quantized by the gguf package


def quantize(data: np.ndarray, qtype: Q, importance: np.ndarray | None = None) -> np.ndarray:
    """Encode a float array in GGUF type `qtype` (F32 and F16 as float arrays, others as bytes).

    `importance`: one weight per column (see the module doc), or None for llama.cpp's reference
    quantizers; types without an importance path ignore it.
    """
    if qtype == Q.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype in QUANTIZERS:
        return QUANTIZERS[qtype].quantize(data, importance)
    if importance is not None and qtype in WEIGHTED_LEGACY:
        return WEIGHTED_LEGACY[qtype].quantize(data, importance)
    if qtype in LEGACY:
        return gguf_quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)
    supported = ", ".join(t.name for t in (Q.F32, *LEGACY, *QUANTIZERS))
    raise ExportError(f"cannot quantize to {qtype.name} (supported: {supported})")


def supports(qtype: Q, n_cols: int) -> bool:
    """Whether a row of `n_cols` values fits whole blocks of `qtype`."""
    return n_cols % GGML_QUANT_SIZES[qtype][0] == 0


__all__ = ["Q4_K", "Q6_K", "QK_K", "QUANTIZERS", "WEIGHTED_LEGACY", "BlockQuant", "quantize", "supports"]
