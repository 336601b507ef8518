"""Decode-step kernels for MLX's CPU backend: rotary embedding from a table, grouped-query attention
as two batched products.

On the CPU backend `mx.fast.rope` recomputes its frequencies on every call (~115 us for one
decode token's 9 heads, twice per layer), and `mx.fast.scaled_dot_product_attention` expands the
key/value heads of grouped-query attention before ~9 matrix-vector products per layer; together
they were ~40% of a SmolLM2 decode step. For the few-token forwards of decoding our engine uses:

- `TableRoPE`: cos/sin rows from a table built once per module (grown by doubling), applied by a
  compiled elementwise function; the same numbers as `mx.fast.rope` up to float rounding;
- `gqa_attention`: the query heads of each key/value head stacked into rows, so a layer is one
  batched q @ k^T, a softmax and one batched p @ v, with no expanded keys.

`install(model)` swaps in TableRoPE for the model's `nn.RoPE` instances and routes mlx-lm's
attention helper through `attention` for llama/qwen2 models; both fall back to MLX's own
kernels except inside `decoding()` (which our generation engine enters around its forwards)
and for shapes they do not cover (more than `MAX_L` new tokens, quantized
caches, masks with per-head rows). Only on the CPU backend: Metal's fused kernels are faster.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import mlx.core as mx
import mlx.nn as nn

MAX_L = 8  # forwards of at most this many new tokens use these kernels
_DECODING: contextvars.ContextVar[bool] = contextvars.ContextVar("iceburg_cpu_decoding", default=False)
_PATCHED_MODULES: set[str] = set()


_MAX_OFFSET: contextvars.ContextVar[int | None] = contextvars.ContextVar("iceburg_cpu_max_offset", default=None)


@contextlib.contextmanager
def decoding(max_offset: int | None = None):
    """Let the model forwards inside use the decode kernels (where installed).

    `max_offset`: an upper bound on the per-row cache offsets of a batched forward (rows at
    different positions); without it such forwards use MLX's rope (reading the offsets back would
    stall the pipelined decode loop).
    """
    token = _DECODING.set(True)
    bound = _MAX_OFFSET.set(max_offset)
    try:
        yield
    finally:
        _MAX_OFFSET.reset(bound)
        _DECODING.reset(token)


def _rotate(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    parts = [x1 * cos - x2 * sin, x1 * sin + x2 * cos]
    if rest.shape[-1]:
        parts.append(rest)
    return mx.concatenate(parts, axis=-1)


_rotate_compiled = mx.compile(_rotate)


class TableRoPE(nn.Module):
    """`nn.RoPE` (non-traditional) with its cos/sin rows read from a table while decoding."""

    def __init__(self, rope: nn.RoPE):
        super().__init__()
        self.dims, self.traditional, self.base, self.scale = rope.dims, rope.traditional, rope.base, rope.scale
        object.__setattr__(self, "_table", None)   # not a parameter

    def _grow(self, end: int) -> tuple[mx.array, mx.array]:
        """The (cos, sin) table, grown (by doubling) to cover positions below `end`."""
        if self._table is None or self._table[0].shape[0] < end:
            size = 1 << max(8, math.ceil(math.log2(end)))
            half = self.dims // 2   # the frequencies exactly as mx.fast.rope computes them
            inv = mx.exp(-mx.arange(0, half, dtype=mx.float32) * (math.log(self.base) / half))
            ang = (mx.arange(size, dtype=mx.float32) * self.scale)[:, None] * inv[None, :]
            table = (mx.cos(ang), mx.sin(ang))
            mx.eval(table)
            object.__setattr__(self, "_table", table)
        return self._table

    def _rows(self, offset: int, n: int) -> tuple[mx.array, mx.array]:
        cos, sin = self._grow(offset + n)
        return cos[offset:offset + n], sin[offset:offset + n]

    def _gather(self, offset: mx.array, n: int, bound: int) -> tuple[mx.array, mx.array]:
        """Per-row cos/sin (B, 1, n, half) for a (B,) array of offsets <= `bound` (batched decoding)."""
        cos, sin = self._grow(bound + n)
        pos = offset[:, None] + mx.arange(n, dtype=offset.dtype)[None, :]   # (B, n)
        return cos[pos][:, None], sin[pos][:, None]

    def __call__(self, x: mx.array, offset=0) -> mx.array:
        n = x.shape[-2]
        bound = _MAX_OFFSET.get()
        batched = (isinstance(offset, mx.array) and bound is not None and offset.ndim == 1 and x.ndim == 4
                   and offset.shape[0] == x.shape[0])
        if (not _DECODING.get() or self.traditional or not (isinstance(offset, int) or batched) or n > MAX_L
                or x.dtype != mx.float32):
            return mx.fast.rope(x, self.dims, traditional=self.traditional, base=self.base, scale=self.scale,
                                offset=offset)
        cos, sin = self._gather(offset, n, bound) if batched else self._rows(offset, n)
        return _rotate_compiled(x, cos, sin)


def gqa_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask=None) -> mx.array | None:
    """softmax(q k^T * scale + mask) v for q (B, Hq, L, D), k/v (B, Hkv, S, D); None when the
    shapes or mask are not covered (the caller then uses MLX's kernel)."""
    hq, L = q.shape[1], q.shape[2]
    hkv = k.shape[1]
    if hq % hkv or L > MAX_L:
        return None
    if isinstance(mask, str):
        if mask != "causal" or L != 1:
            return None
    elif mask is not None and (mask.ndim != 4 or mask.shape[1] != 1):
        return None
    from iceburg_mlx.models.fast_ops import attention

    return attention(q, k, v, scale, mask)


def _wrap_attention(original):
    def attention(queries, keys, values, cache, scale, mask, sinks=None):
        if (_DECODING.get() and sinks is None and not hasattr(cache, "bits") and isinstance(keys, mx.array)
                and queries.dtype == mx.float32):
            out = gqa_attention(queries, keys, values, scale, mask)
            if out is not None:
                return out
        if sinks is None:
            return original(queries, keys, values, cache, scale, mask)
        return original(queries, keys, values, cache, scale, mask, sinks)

    attention.__wrapped__ = original
    return attention


def install(model) -> bool:
    """Use the decode kernels in `model` (CPU backend, llama/qwen2 attention); True if installed."""
    import importlib

    if mx.default_device() != mx.cpu or mx.metal.is_available():
        return False
    kinds = set()
    for _, mod in model.named_modules():
        if type(mod).__name__ == "Attention" and type(mod.get("rope", None)) is nn.RoPE:
            mod.rope = TableRoPE(mod.rope)
            kinds.add(type(mod).__module__)
    for name in kinds:
        if name in _PATCHED_MODULES or name not in ("mlx_lm.models.llama", "mlx_lm.models.qwen2"):
            continue
        module = importlib.import_module(name)
        module.scaled_dot_product_attention = _wrap_attention(module.scaled_dot_product_attention)
        _PATCHED_MODULES.add(name)
    return bool(kinds)
