"""SiLU on a polynomial exp, with an explicit vjp, for training on MLX's CPU backend.

MLX's CPU `exp` runs at ~0.1 Gelem/s (NumPy: 3.2); SiLU over every MLP activation, forward and
backward, is a large share of a LoRA step there. `poly_exp` computes 2^n * 2^f with n = round(x log2 e),
a degree-6 Taylor polynomial for 2^f on [-1/2, 1/2] and 2^n written straight into the float's bits: only
multiply-adds and a shift (relative error < 1.5e-6 for |x| <= 10,
the f32 rounding of x log2 e beyond). Measured here on 12.6M elements: `poly_exp` alone is
no faster than MLX's exp (the bit-cast keeps `mx.compile` from fusing it), but SiLU forward+backward
with the explicit vjp took 0.28 s against 0.42 s for autodiff of `nn.silu`; in the cross-entropy it
gained nothing and doubled the peak, so it is not used there. `fast_swiglu(model)` swaps it into
the model's MLP for the duration of a `with` block, on the CPU backend only; the model classes themselves stay mlx-lm's.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Iterator

import mlx.core as mx

_LOG2E = 1.4426950408889634
# Taylor coefficients of 2^f = e^(f ln 2): (ln 2)^k / k!; on |f| <= 1/2 the error is < 2e-7
_C = tuple(math.log(2.0) ** k / math.factorial(k) for k in range(7))


@mx.compile
def poly_exp(x: mx.array) -> mx.array:
    t = mx.clip(x.astype(mx.float32) * _LOG2E, -126.0, 126.0)
    n = mx.round(t)
    f = t - n
    p = _C[6]
    for c in reversed(_C[:6]):
        p = p * f + c
    bits = (n.astype(mx.int32) + 127) << 23
    return p * bits.view(mx.float32)


@mx.custom_function
def fast_silu(x: mx.array) -> mx.array:
    return x / (1.0 + poly_exp(-x))


@fast_silu.vjp
def _fast_silu_vjp(x, cotangent, output):
    s = 1.0 / (1.0 + poly_exp(-x))
    return cotangent * (s * (1.0 + x * (1.0 - s)))


@mx.compile
def _swiglu(gate: mx.array, x: mx.array) -> mx.array:
    return fast_silu(gate) * x


@mx.custom_function
def fast_softmax(x: mx.array) -> mx.array:
    """Softmax over the last axis on `poly_exp`, with the usual output-only vjp."""
    e = poly_exp(x - mx.max(x, axis=-1, keepdims=True))
    return e / mx.sum(e, axis=-1, keepdims=True)


@fast_softmax.vjp
def _fast_softmax_vjp(x, cotangent, p):
    return p * (cotangent - mx.sum(cotangent * p, axis=-1, keepdims=True))


def _causal(L: int, S: int) -> mx.array:
    """(L, S) bool: query i (the last L of S positions) sees keys up to its own position."""
    return mx.arange(S)[None, :] <= (mx.arange(L) + (S - L))[:, None]


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask=None) -> mx.array:
    """softmax(q k^T * scale + mask) v on CPU: the query heads of each key/value head stacked into
    rows (one batched product per layer, no expanded keys), the softmax on `poly_exp` (MLX's CPU
    exp was ~15-20% of a LoRA step on 512-token rows, and most of a batched decode step's attention).
    q (B, Hq, L, D); k, v (B, Hkv, S, D); mask None, "causal", bool or additive, (L, S) or
    (B|1, 1|Hq, L, S). Used by training (with its vjp) and by `cpu_decode.gqa_attention`."""
    B, hq, L, D = q.shape
    hkv, S = k.shape[1], k.shape[2]
    g = hq // hkv
    if isinstance(mask, str):
        mask = _causal(L, S) if L > 1 else None      # one query (the last position) sees every key
    scores = (q.reshape(B, hkv, g * L, D) * scale) @ k.swapaxes(-1, -2)      # (B, Hkv, g*L, S)
    if mask is not None:
        scores = scores.reshape(B, hkv, g, L, S)
        if mask.ndim == 4:
            mask = mask.reshape(mask.shape[0], hkv, g, L, S) if mask.shape[1] == hq else \
                mask.reshape(mask.shape[0], 1, 1, L, S)
        scores = mx.where(mask, scores, -mx.inf) if mask.dtype == mx.bool_ else scores + mask
        scores = scores.reshape(B, hkv, g * L, S)
    return (fast_softmax(scores) @ v).reshape(B, hq, L, D)


def _training_attention(original):
    def sdpa(queries, keys, values, cache, scale, mask, sinks=None):
        covered_mask = (mask is None or (isinstance(mask, str) and mask == "causal")
                        or (isinstance(mask, mx.array) and mask.ndim == 4))
        if (covered_mask and sinks is None and queries.dtype == mx.float32 and isinstance(keys, mx.array)
                and not hasattr(cache, "bits") and queries.shape[1] % keys.shape[1] == 0):
            return attention(queries, keys, values, scale, mask)
        if sinks is None:
            return original(queries, keys, values, cache, scale, mask)
        return original(queries, keys, values, cache, scale, mask, sinks)

    return sdpa


def cpu_backend() -> bool:
    return not (mx.metal.is_available() or (getattr(mx, "cuda", None) is not None and mx.cuda.is_available()))


@contextlib.contextmanager
def fast_swiglu(model) -> Iterator[bool]:
    """Use the polynomial SiLU in the model's MLP while the block runs (CPU backend only).

    Yields whether it was applied (it is not on Metal/CUDA, whose exp is fast, or for model
    modules that do not route their MLP through mlx-lm's `swiglu`)."""
    mod = importlib.import_module(type(model).__module__)
    applicable = cpu_backend() and hasattr(mod, "swiglu")
    if not applicable:
        yield False
        return
    original = mod.swiglu
    mod.swiglu = _swiglu
    sdpa = getattr(mod, "scaled_dot_product_attention", None)
    if sdpa is not None:
        mod.scaled_dot_product_attention = _training_attention(sdpa)
    try:
        yield True
    finally:
        mod.swiglu = original
        if sdpa is not None:
            mod.scaled_dot_product_attention = sdpa


__all__ = ["poly_exp", "fast_silu", "fast_softmax", "attention", "fast_swiglu"]
