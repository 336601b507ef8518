"""NumPy references shared by tests (float64, written from the definitions)."""

from __future__ import annotations

import numpy as np


def attention(q, k, v, scale, mask=None):
    """softmax(q k^T * scale + mask) v with grouped-query heads expanded; `mask` bool (True = may
    attend) or additive, broadcastable to (B, Hq, L, S)."""
    q, k, v = (np.array(a, dtype=np.float64) for a in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = q @ k.swapaxes(-1, -2) * scale
    if mask is not None:
        m = np.array(mask)
        s = np.where(m, s, -np.inf) if m.dtype == bool else s + m
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v
